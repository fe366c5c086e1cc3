"""What a leader knows about each follower's log (etcd's tracker.Progress, simplified).

States: PROBE (one APPEND in flight until an answer, used after a rejection or a restart),
REPLICATE (optimistic pipelining: ``next`` runs ahead of ``match``, bounded by the count
of APPEND messages in flight), SNAPSHOT (waiting for a snapshot stream to finish).
"""
from collections import deque

PROBE, REPLICATE, SNAPSHOT = 0, 1, 2
STATE_NAMES = {PROBE: "probe", REPLICATE: "replicate", SNAPSHOT: "snapshot"}


class Progress:
    __slots__ = ("match", "next", "state", "paused", "inflight", "pending_snapshot",
                 "recent_active", "commit_sent", "lost_strikes", "heard")

    def __init__(self, next_index, match=0, heard=0):
        self.match = match
        self.next = next_index
        self.state = PROBE
        self.paused = False
        self.inflight = deque()      # last index of each APPEND in flight (REPLICATE)
        self.pending_snapshot = 0
        self.recent_active = False   # heard from since the last CheckQuorum round
        self.commit_sent = 0         # highest commit index sent (avoids empty appends)
        self.lost_strikes = 0        # rejections in a row saying its log ends below match
        self.heard = heard           # leader's tick count (this term) when last heard from

    def become_probe(self):
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = PROBE
        self.paused = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self):
        self.state = REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_snapshot(self, index):
        self.state = SNAPSHOT
        self.pending_snapshot = index
        self.paused = False
        self.inflight.clear()

    def maybe_update(self, n):
        """An APPEND_RESP acknowledged ``n``: True if match advanced."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.paused = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected, match_hint):
        """A rejection of the APPEND whose previous index was ``rejected``. False when
        the rejection is stale (answers an older message)."""
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.paused = False
        return True

    def free_to(self, index):
        q = self.inflight
        while q and q[0] <= index:
            q.popleft()

    def blocked(self, max_inflight):
        if self.state == REPLICATE:
            return len(self.inflight) >= max_inflight
        if self.state == PROBE:
            return self.paused
        return True

    def as_dict(self):
        return {"match": self.match, "next": self.next, "state": STATE_NAMES[self.state],
                "inflight": len(self.inflight), "recent_active": self.recent_active,
                "pending_snapshot": self.pending_snapshot}
