"""Membership housekeeping of the driver (a mixin of ``RaftNode``, like driver_snap.py):
the leader removes members that stayed silent past ``reap_voter_after`` /
``reap_learner_after`` (the policy is raft/reaper.py; this part proposes the change,
waits for it, logs and counts it), and ``removed`` says when this member was itself
removed. See docs/design/raft.md, "Reaping silent members"."""
import heapq
import logging
import time

from raftsqlite import errors
from raftsqlite.codec.model import ConfChange, ConfChangeType

log = logging.getLogger("raftsqlite.raft.driver")


class ReapMixin:
    def _maybe_reap(self):
        """The leader removes the member reaper.py picks (silent past its timeout), through
        the ordinary membership change: one at a time, and only when that change can
        commit. Picked and proposed in one step of the loop, so nothing changes between
        the check and the proposal."""
        pick = self._reaper.pick(self.core)
        if pick is None or self._failed is not None or not self._running:
            return
        nid, ticks, voter = pick
        try:
            term, index = self.core.propose_conf_change(ConfChange(ConfChangeType.REMOVE, nid))
        except errors.RaftSQLiteError as e:
            log.warning("%s: could not start reaping %s: %s", self.node_id, nid, e)
            self._reaped["reap_failures"] += 1
            return
        silent = ticks * self.config.tick_interval
        fut = self._loop.create_future()
        self._pending[index] = (term, fut)
        heapq.heappush(self._deadlines, (self._loop.time() + 30.0, next(self._seq), fut))
        self._reaper.busy = True
        self._wake.set()
        self._loop.create_task(self._reaped_done(fut, nid, voter, silent))

    async def _reaped_done(self, fut, nid, voter, silent):
        kind = "voter" if voter else "non-voter"
        try:
            await fut
        except Exception as e:  # noqa: BLE001 - reported, and the next tick may try again
            self._reaped["reap_failures"] += 1
            log.warning("%s: reaping %s %s (silent %.1fs) did not commit: %s",
                        self.node_id, kind, nid, silent, e)
        else:
            self._reaped["reaped_voters" if voter else "reaped_non_voters"] += 1
            self._reaped["last_reaped"] = {"node_id": nid, "voter": voter,
                                           "silent_s": round(silent, 3), "at": time.time()}
            if self.transport is not None:
                self.transport.forget(nid)
            log.warning("%s: reaped %s %s: no contact from it for %.1fs (timeout %.1fs); "
                        "it is no longer a member", self.node_id, kind, nid, silent,
                        self.config.reap_voter_after if voter else self.config.reap_learner_after)
        finally:
            self._reaper.busy = False

    @property
    def removed(self):
        """Why this member believes it was removed from its group, or None (core.removed)."""
        return self.core.removed if self.core is not None else None
