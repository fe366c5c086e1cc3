"""Which member a leader should remove because it has been silent too long (rqlite's
``-raft-reap-node-timeout`` / ``-raft-reap-read-only-node-timeout``).

Long-running groups (autoscaling groups, Kubernetes) lose members for good: a machine
is replaced, a pod rescheduled under a new id. A dead voter left in the configuration
still counts toward the quorum size, so a 3-voter group with one gone tolerates no
further failure; a dead read replica costs the leader a connection attempt per
heartbeat forever. Reaping removes such a member through the ordinary membership-change
path (a REMOVE entry through the log), so it needs a quorum and is one change like any
other.

The policy is pure and counts in ticks, like the core: the core records, per peer, the
leader tick at which it last answered (``Progress.heard``; ``core.silent_ticks()``),
and the driver asks ``Reaper.pick(core)`` on its tick. Rules, each tested
(tests/unit/test_raft_reaper.py):

- only a leader picks, never itself;
- a voter is picked after ``voter_ticks`` without an answer, a learner after
  ``learner_ticks`` (0 = never, per kind);
- nothing while a membership change is pending, a transfer runs, the leader is being
  removed, or it has not committed an entry of its own term (``conf_change_allowed``);
- nothing unless the voters left after the removal that answered within the last
  election timeout (the leader included) are a quorum of the new configuration: the
  removal then commits promptly instead of pinning the group's one pending change, and
  a leader cut off from the group reaps nobody (with CheckQuorum it steps down anyway);
- one removal at a time (the driver holds ``busy`` until the change commits or fails);
- silence is counted from this leader's election (or the member's addition), so a new
  leader reaps nobody until it has itself waited the whole timeout: it has not yet had
  the chance to hear from anyone.

Ticks, not wall-clock time: a leader whose loop stalls (or a process that was paused)
counts fewer ticks than seconds went by, so it reaps later, never sooner.
"""
from __future__ import annotations

import math


class Reaper:
    def __init__(self, voter_ticks: int = 0, learner_ticks: int = 0, election_tick: int = 10):
        self.voter_ticks = max(0, int(voter_ticks))
        self.learner_ticks = max(0, int(learner_ticks))
        self.election_tick = election_tick
        self.busy = False

    @classmethod
    def from_seconds(cls, voter_s: float, learner_s: float, tick_interval: float,
                     election_tick: int) -> "Reaper":
        def ticks(s):
            return math.ceil(s / tick_interval) if s > 0 else 0
        return cls(ticks(voter_s), ticks(learner_s), election_tick)

    @property
    def on(self) -> bool:
        return bool(self.voter_ticks or self.learner_ticks)

    def pick(self, core):
        """-> (node_id, silent ticks, was a voter) of the member to remove now, or None."""
        if self.busy or not core.conf_change_allowed():
            return None
        silent = core.silent_ticks()
        if not silent:
            return None
        voters = core.voters
        best = None
        for nid in sorted(silent):
            s = silent[nid]
            limit = self.voter_ticks if nid in voters else self.learner_ticks
            if limit and s >= limit and (best is None or s > silent[best]):
                best = nid
        if best is None:
            return None
        remaining = voters - {best}
        # the leader counts as heard: it is the one proposing
        heard = sum(1 for v in remaining
                    if v == core.node_id or silent.get(v, 0) < self.election_tick)
        if not remaining or heard < len(remaining) // 2 + 1:
            return None
        return best, silent[best], best in voters
