"""When a leader's own disk is what slows its group down, it hands leadership over.

A leader sends its new entries to the followers before its own write and fdatasync
(``Ready.send_early``) and counts itself only once its write is durable, so a quorum of
followers can commit an entry while the leader's disk is still busy with it. The driver
still handles one Ready at a time, though: nothing committed is applied (and no client
is answered) until the leader's own write is back. A leader whose disk has turned slow
(a failing device, a noisy neighbour, a full controller queue) therefore paces its
whole group at one slow fdatasync per round, although two healthy members could carry
it: the fault campaigns measured 10-45 writes/s under a 20-400 ms leader fsync.

``SlowDiskWatch`` sees, for each of the leader's writes that carried entries, how long
the write took and how long before its end the followers had already committed those
entries (the *drag*: time the group waited for nobody but the leader's disk). When
over the last ``window`` such writes, all within ``span`` seconds, the median write took
at least ``threshold`` and the median drag was at least half of that, the leader's disk
is the group's bottleneck: the driver transfers leadership to the most caught-up voter.
A machine whose disks are all slow gives no drag (the followers' acknowledgements come
no sooner than the leader's write), so leadership does not bounce between equally slow
members; ``cooldown`` bounds hand-offs anyway. Health checks of this kind exist in
production stores (CockroachDB's disk-stall detection kills the node; etcd only logs a
slow fdatasync); handing leadership over keeps the member serving as a follower.
"""
from __future__ import annotations

from collections import deque


class SlowDiskWatch:
    def __init__(self, threshold: float, *, window: int = 8, span: float = 10.0,
                 cooldown: float = 60.0):
        self.threshold = threshold
        self.window = window
        self.span = span
        self.cooldown = cooldown
        self._obs = deque(maxlen=window)       # (time, write seconds, drag seconds)
        self._last_handoff = None
        self.handoffs = 0
        self.watching = 0           # last index of the leader write in flight (0 = none)
        self._committed_at = None   # when a quorum of followers had committed it

    def begin(self, last_index: int) -> None:
        """A leader write of entries up to ``last_index`` starts."""
        self.watching = last_index
        self._committed_at = None

    def committed(self, commit: int, now: float) -> None:
        """The core's commit index after a message was stepped during the write."""
        if commit >= self.watching and self._committed_at is None:
            self._committed_at = now

    def end(self, now: float, write_s: float) -> bool:
        """The write is durable: observe it (see ``observe``)."""
        at, self.watching = self._committed_at, 0
        return self.observe(now, write_s, now - at if at is not None else 0.0)

    @property
    def on(self) -> bool:
        return self.threshold > 0

    def reset(self) -> None:
        """Forget the observations (leadership changed: they were of another term)."""
        self._obs.clear()

    def observe(self, now: float, write_s: float, drag_s: float) -> bool:
        """Record one leader write of entries; True when leadership should be handed over
        now (the caller does it, and the watch starts afresh)."""
        if not self.on:
            return False
        obs = self._obs
        obs.append((now, write_s, drag_s))
        if len(obs) < self.window or now - obs[0][0] > self.span:
            return False
        if self._last_handoff is not None and now - self._last_handoff < self.cooldown:
            return False
        writes = sorted(o[1] for o in obs)
        drags = sorted(o[2] for o in obs)
        mid = len(obs) // 2
        if writes[mid] < self.threshold or drags[mid] < self.threshold / 2:
            return False
        obs.clear()
        self._last_handoff = now
        self.handoffs += 1
        return True

    def stats(self) -> dict:
        return {"slow_disk_handoffs": self.handoffs,
                "slow_disk_threshold_s": self.threshold}
