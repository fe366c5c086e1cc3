"""Parts of the Raft core (see core.py for the contract): shared constants, the
configuration, and three mixins of RaftCore that keep core.py readable: the log view
(durable storage + in-memory tail), membership, and the leader's replication and
ReadIndex rounds. They use RaftCore's attributes."""
import logging
from dataclasses import dataclass

from raftsqlite import errors
from raftsqlite.codec import decode_conf_change
from raftsqlite.codec.model import (ConfChangeType, Entry, EntryType, Member, Message, MsgType,
                                    SnapshotMeta)
from raftsqlite.raft.progress import PROBE, REPLICATE, Progress
from raftsqlite.raft.types import Role

log = logging.getLogger("raftsqlite.raft")

#: Rejections in a row below a follower's match index before its log counts as lost (one
#: could be an old answer overtaken by a later acknowledgement on another connection).
LOST_LOG_STRIKES = 2

# Enum members cached as module constants: attribute access on an Enum class costs
# ~10x a global lookup, and these sit on the per-message path.
_R_CANDIDATE = Role.CANDIDATE
_R_FOLLOWER = Role.FOLLOWER
_R_LEADER = Role.LEADER
_R_LEARNER = Role.LEARNER
_R_PRE_CANDIDATE = Role.PRE_CANDIDATE
_M_APPEND = MsgType.APPEND
_M_APPEND_RESP = MsgType.APPEND_RESP
_M_HEARTBEAT = MsgType.HEARTBEAT
_M_HEARTBEAT_RESP = MsgType.HEARTBEAT_RESP
_M_PREVOTE = MsgType.PREVOTE
_M_PREVOTE_RESP = MsgType.PREVOTE_RESP
_M_READ_INDEX = MsgType.READ_INDEX
_M_READ_INDEX_RESP = MsgType.READ_INDEX_RESP
_M_SNAPSHOT = MsgType.SNAPSHOT
_M_SNAPSHOT_RESP = MsgType.SNAPSHOT_RESP
_M_TIMEOUT_NOW = MsgType.TIMEOUT_NOW
_M_TRANSFER_LEADER = MsgType.TRANSFER_LEADER
_M_VOTE = MsgType.VOTE
_M_VOTE_RESP = MsgType.VOTE_RESP
_E_CONF_CHANGE = EntryType.CONF_CHANGE
_E_NORMAL = EntryType.NORMAL
_C_ADD_LEARNER = ConfChangeType.ADD_LEARNER
_C_DEMOTE = ConfChangeType.DEMOTE
_C_PROMOTE = ConfChangeType.PROMOTE
_C_REMOVE = ConfChangeType.REMOVE
_TRANSFER = b"transfer"      # VOTE context of a campaign started by TIMEOUT_NOW
_NOT_MEMBER = b"not-member"  # (PRE)VOTE_RESP context: the leader's configuration omits you
_VOTE_MSGS = frozenset((_M_PREVOTE, _M_VOTE, _M_PREVOTE_RESP, _M_VOTE_RESP))
_ENTRY_OVERHEAD = 24         # per-entry bytes counted on top of the payload


@dataclass(frozen=True)
class CoreConfig:
    """Tunables of the core; ticks are the driver's timer periods."""

    election_tick: int = 10          # follower waits [election_tick, 2*election_tick) ticks
    heartbeat_tick: int = 1          # leader heartbeat period
    pre_vote: bool = True
    check_quorum: bool = True
    max_msg_bytes: int = 1 << 20     # entry bytes per APPEND (at least one entry is sent)
    max_inflight: int = 256          # APPEND messages in flight per follower
    max_committed_bytes: int = 8 << 20   # entry bytes handed out per Ready.committed

    def __post_init__(self):
        if self.election_tick <= self.heartbeat_tick or self.heartbeat_tick < 1:
            raise errors.ConfigError("election_tick must exceed heartbeat_tick >= 1")
        if self.max_inflight < 1 or self.max_msg_bytes < 1:
            raise errors.ConfigError("max_inflight and max_msg_bytes must be >= 1")



class RaftInvariantError(AssertionError):
    """Raised when the core would break a Raft safety rule (a bug, or a lying disk)."""


class LogViewMixin:
    """The core's view of its log: storage[..offset-1] + tail (+ a pending snapshot)."""

    @property
    def last_index(self):
        return self._offset - 1 + len(self._unstable)

    @property
    def first_index(self):
        if self._pending_snap is not None:
            return self._pending_snap.index + 1
        return self._log.first_index()

    def log_term(self, i):
        """Term of entry ``i`` in this core's view of its log; None if compacted or absent."""
        off = self._offset
        if i >= off:
            k = i - off
            if k < len(self._unstable):
                return self._unstable[k].term
            return None
        if i <= 0:
            return 0
        ps = self._pending_snap
        if ps is not None:
            return ps.term if i == ps.index else None
        first = self._log.first_index()
        if i < first - 1:
            return None
        return self._log.term(i)

    def _slice(self, lo, hi, max_bytes):
        """Entries [lo, hi) (at least one if lo < hi), or None if lo is compacted."""
        off = self._offset
        out = []
        used = 0
        if lo < off:
            if self._pending_snap is not None or lo < self._log.first_index():
                return None
            shi = min(hi, off)
            out = self._log.entries(lo, shi, max_bytes)
            for e in out:
                used += len(e.data) + _ENTRY_OVERHEAD
            if len(out) < shi - lo or hi <= off:
                return out
            lo = off
        u = self._unstable
        for k in range(lo - off, hi - off):
            e = u[k]
            used += len(e.data) + _ENTRY_OVERHEAD
            if used > max_bytes and out:
                break
            out.append(e)
        return out

    def _up_to_date(self, index, term):
        lt = self.log_term(self.last_index) or 0
        return term > lt or (term == lt and index >= self.last_index)

    def _find_conflict_by_term(self, index, term):
        """Largest i <= index whose term is <= term (fast back-off)."""
        if index > self.last_index:
            return index
        while index > 0:
            t = self.log_term(index)
            if t is None or t <= term:
                break
            index -= 1
        return index

    def _truncate_append(self, ents):
        first = ents[0].index
        off = self._offset
        u = self._unstable
        if first == off + len(u):
            u.extend(ents)
            self._scan_conf(ents)
            return
        self._rollback_conf(first)
        self._scan_conf(ents)
        self._stats["truncations"] += 1
        if first <= off:
            self._offset = first
            self._unstable = list(ents)
        else:
            del u[first - off:]
            u.extend(ents)
        self._in_progress = min(self._in_progress, first - 1)
        self._durable = min(self._durable, first - 1)

    def _append_new(self, datas, etype=_E_NORMAL):
        """Leader: append our own entries; returns the first index."""
        first = self.last_index + 1
        t = self.term
        u = self._unstable
        i = first
        for d in datas:
            u.append(Entry(t, i, etype, d))
            i += 1
        self._bcast = True
        if etype == _E_CONF_CHANGE:
            self._scan_conf(u[first - self._offset:])
        return first

    def _commit_to(self, c):
        if c > self.commit:
            if c > self.last_index:
                raise RaftInvariantError(f"{self.node_id}: commit {c} beyond last index {self.last_index}")
            self.commit = c


class MembershipMixin:
    """Members and the history of configurations (a change takes effect when appended)."""

    @property
    def members(self):
        return [Member(m.node_id, m.raft_addr, m.http_addr, m.voter) for m in self._members.values()]

    @property
    def voters(self):
        return set(self._voters)

    @property
    def learners(self):
        return set(self._learners)

    def member(self, node_id):
        m = self._members.get(node_id)
        return None if m is None else Member(m.node_id, m.raft_addr, m.http_addr, m.voter)

    @property
    def conf_index(self):
        """Log index of the configuration in force (the latest appended; a snapshot's
        index when no change came after it). Grows with every change."""
        return self._conf_history[-1][0]

    def members_at(self, index):
        """Membership as of committed index ``index`` (for the snapshot a driver takes)."""
        best = self._conf_history[0][1]
        for idx, ms in self._conf_history:
            if idx <= index:
                best = ms
            else:
                break
        return [Member(m.node_id, m.raft_addr, m.http_addr, m.voter) for m in best]

    def _set_members(self, members):
        self._members = {}
        for m in members:
            self._members[m.node_id] = Member(m.node_id, m.raft_addr, m.http_addr, m.voter)
        self._voters = {i for i, m in self._members.items() if m.voter}
        self._learners = {i for i, m in self._members.items() if not m.voter}
        if self.node_id in self._members:
            self._was_member = True

    def _replay_conf_changes(self, lo, hi):
        i = lo + 1
        while i <= hi:
            ents = self._slice(i, hi + 1, self.cfg.max_committed_bytes)
            if not ents:
                break
            for e in ents:
                if e.type == _E_CONF_CHANGE:
                    self._apply_conf_change(e)
            i = ents[-1].index + 1

    def _scan_conf(self, ents):
        for e in ents:
            if e.type == _E_CONF_CHANGE:
                self._apply_conf_change(e)

    def _rollback_conf(self, first):
        """Entries from ``first`` on are being replaced: forget their changes."""
        h = self._conf_history
        if h[-1][0] >= first:
            while len(h) > 1 and h[-1][0] >= first:
                h.pop()
            self._set_members(h[-1][1])

    def _apply_conf_change(self, e):
        cc = decode_conf_change(e.data)
        ms = self._members
        cur = ms.get(cc.node_id)
        t = cc.type
        if t == _C_ADD_LEARNER:
            if cur is None:
                ms[cc.node_id] = Member(cc.node_id, cc.raft_addr, cc.http_addr, False)
        elif t == _C_PROMOTE:
            if cur is not None:
                cur.voter = True
        elif t == _C_DEMOTE:
            if cur is not None and len(self._voters) > 1:
                cur.voter = False
        elif t == _C_REMOVE:
            if cur is not None and (not cur.voter or len(self._voters) > 1):
                del ms[cc.node_id]
        self._voters = {i for i, m in ms.items() if m.voter}
        self._learners = {i for i, m in ms.items() if not m.voter}
        if self.node_id in ms:
            self._was_member = True
        self._conf_history.append((e.index, self.members))
        self._prune_conf_history()
        if self.role_ is _R_LEADER:
            last = self.last_index
            for nid in ms:
                if nid not in self._prs:
                    self._prs[nid] = Progress(last + 1, heard=self._lead_ticks)
                    self._prs[nid].recent_active = True
            for nid in list(self._prs):
                if nid not in ms:
                    del self._prs[nid]
                    self._dirty.discard(nid)
            if self._transferee is not None and self._transferee not in self._voters:
                self._transferee = None
            self._leaving = self.node_id not in self._voters
            if self._maybe_commit():
                self._bcast = True

    def _prune_conf_history(self):
        h = self._conf_history
        snap_idx = self._log.first_index() - 1
        while len(h) > 1 and h[1][0] <= snap_idx:
            h.pop(0)

    # ---- membership housekeeping (reaper.py, removed members) -----------------------

    def silent_ticks(self):
        """Leader only: peer -> ticks since this leader last heard from it (an APPEND or
        heartbeat answer), counted from this leader's election or the peer's addition,
        whichever is later. Empty on a non-leader."""
        if self.role_ is not _R_LEADER:
            return {}
        now = self._lead_ticks
        return {nid: now - pr.heard for nid, pr in self._prs.items() if nid != self.node_id}

    def conf_change_allowed(self):
        """Whether ``propose_conf_change`` would accept a change now: this node leads, is
        not transferring leadership nor being removed, no change is pending, and it has
        committed an entry of its own term."""
        return (self.role_ is _R_LEADER and self._transferee is None and not self._leaving
                and self._conf_history[-1][0] <= self.commit
                and self.log_term(self.commit) == self.term)

    @property
    def removed(self):
        """Why this node believes it is no longer a member, or None: ``"removed"`` when
        it was in a configuration it held and the latest one leaves it out (its own
        removal is in its log), ``"leader <id> of term <t> says so"`` when a leader
        refused its campaign for not being a member (``_tell_not_member``; cleared once a
        leader replicates to it again, i.e. it was added back)."""
        if self._was_member and self.node_id not in self._members:
            return "its removal is in its log"
        n = self._removed_notice
        if n is not None:
            return f"leader {n[0]} of term {n[1]} says it is not a member"
        return None

    def _vote_from_outside(self, m):
        """(Pre)votes and their answers, before the term rules: a leader answers a node
        outside its committed configuration (True: the message is handled); a refusal
        saying "not a member" is recorded (``removed``) and then handled as usual."""
        typ = m.type
        if typ == _M_PREVOTE or typ == _M_VOTE:
            if self.role_ is _R_LEADER and m.frm not in self._members \
                    and self._conf_history[-1][0] <= self.commit:
                self._tell_not_member(m)
                return True
        elif m.reject and m.context == _NOT_MEMBER:
            self._removed_notice = (m.frm, m.term)
        return False

    def _tell_not_member(self, m):
        """A leader whose configuration is committed got a (pre)vote request from a node
        outside it: a member removed while it was away (reaped, or removed while down)
        that still holds the old configuration. Its campaign is refused as before (a
        leader in its lease ignores it), and the refusal says why, so the node can tell
        its operator (``removed``). The leader's term is not raised by it: without
        CheckQuorum a removed node's higher-term VOTE used to depose the leader; ignoring
        a message is always safe, and this answer only adds a refusal."""
        rtype = _M_PREVOTE_RESP if m.type == _M_PREVOTE else _M_VOTE_RESP
        self._send(Message(rtype, to=m.frm, term=self.term, reject=True, context=_NOT_MEMBER))

    def _step_down_removed(self):
        # Our removal is committed: the remaining voters hold it and use the new
        # configuration already. Send the commit index and hand leadership to the most
        # caught-up voter so nobody waits for an election timeout.
        self._bcast = True
        self._flush_appends()
        best = None
        for nid in sorted(self._voters):
            pr = self._prs.get(nid)
            if pr is not None and (best is None or pr.match > self._prs[best].match):
                best = nid
        if best is not None:
            self._send(Message(_M_TIMEOUT_NOW, to=best))
        self._become_follower(self.term, None)


class ReplicationMixin:
    """Leader side: commit rule, APPEND/SNAPSHOT sending with flow control, ReadIndex rounds."""

    @property
    def alone(self):
        """A leader that is the only member of its group (no other voter, no learner):
        what it has durably appended is committed, with nothing to send."""
        return self.role_ is _R_LEADER and len(self._members) == 1 and not self._leaving

    def take_committed(self):
        """Committed entries not yet handed out, for a leader alone in its group, to call
        right after ``advance``: its durable appends are committed at once (it is the
        whole quorum), and this hands them out in the same driver pass instead of in a
        second Ready. Apply them in order, as ``Ready.committed`` (they are durable:
        ``advance`` counted them). Returns [] in any other case (a group with peers
        learns its commits from Ready as before)."""
        if self.commit <= self.applied or not self.alone or self._pending_snap is not None:
            return []
        ents = self._slice(self.applied + 1, self.commit + 1, self.cfg.max_committed_bytes)
        if ents is None:
            raise RaftInvariantError(f"{self.node_id}: committed entries after "
                                     f"{self.applied} are compacted")
        if ents:
            self.applied = ents[-1].index
        return ents

    def _maybe_commit(self):
        prs = self._prs
        ms = sorted((prs[v].match if v in prs else 0) for v in self._voters)
        if not ms:
            return False
        idx = ms[len(ms) - self._quorum()]   # the highest index a quorum has durably
        if idx > self.commit and self.log_term(idx) == self.term:
            self.commit = idx
            if self._reads_blocked:
                self._reads_waiting.extend(self._reads_blocked)
                self._reads_blocked = []
            return True
        return False

    def _read_ack(self, frm, round_id):
        rounds = self._read_rounds
        q = self._quorum()
        done = -1
        for k, rd in enumerate(rounds):
            if rd[0] > round_id:
                break
            rd[2].add(frm)
            if len(rd[2] & self._voters) >= q:
                done = k
        if done < 0:
            return
        # A quorum answering round r also confirms every earlier round.
        for rd in rounds[:done + 1]:
            for frm_, ctx in rd[3]:
                self._answer_read(frm_, ctx, rd[1])
        del rounds[:done + 1]

    def _flush_appends(self):
        if self.role_ is not _R_LEADER:
            self._bcast = False
            self._dirty.clear()
            return
        if self._bcast:
            targets = [n for n in self._prs if n != self.node_id]
        else:
            # dict order, not set order: runs must not depend on PYTHONHASHSEED
            dirty = self._dirty
            targets = [n for n in self._prs if n in dirty and n != self.node_id]
        self._bcast = False
        self._dirty.clear()
        self._probe.intersection_update(targets)
        for nid in targets:
            self._send_appends(nid, self._prs[nid])

    def _send_appends(self, to, pr):
        cfg = self.cfg
        last = self.last_index
        allow_empty = True
        force = to in self._probe
        if force:
            self._probe.discard(to)
        while not pr.blocked(cfg.max_inflight):
            nxt = pr.next
            if nxt > last and not (allow_empty and (force or pr.commit_sent < self.commit)):
                return
            prev = nxt - 1
            pt = self.log_term(prev)
            ents = self._slice(nxt, last + 1, cfg.max_msg_bytes) if pt is not None else None
            if ents is None:
                self._send_snapshot(to, pr)
                return
            self._send(Message(_M_APPEND, to=to, index=prev, log_term=pt,
                               entries=ents, commit=self.commit))
            if self.commit > pr.commit_sent:
                pr.commit_sent = self.commit
            allow_empty = False
            if not ents:
                if pr.state == PROBE:
                    pr.paused = True
                return
            if pr.state == REPLICATE:
                pr.next = ents[-1].index + 1
                pr.inflight.append(ents[-1].index)
            else:
                pr.paused = True
                return

    def _send_snapshot(self, to, pr):
        if not pr.recent_active or self._pending_snap is not None:
            return
        meta = self._log.snapshot_meta()
        pr.become_snapshot(meta.index)
        self._stats["snapshots_sent"] += 1
        self._send(Message(_M_SNAPSHOT, to=to,
                           snapshot=SnapshotMeta(meta.index, meta.term, meta.members)))

    def _start_read_round(self):
        if self.role_ is not _R_LEADER:
            self._reads_waiting = []
            return
        self._round_seq += 1
        rid = self._round_seq
        self._read_rounds.append([rid, self.commit, {self.node_id}, self._reads_waiting])
        self._reads_waiting = []
        if self._quorum() <= 1 and self.node_id in self._voters:
            self._read_ack(self.node_id, rid)
        else:
            self._bcast_heartbeat(rid)

    def _follower_lost_log(self, peer, pr, log_end):
        """``peer`` lost entries it had acknowledged (its disk was wiped or rolled back).
        Report it, and replicate to it again from what it really holds: its match goes
        back to 0 (only what it proves again counts; commit never goes back, so nothing
        already committed changes) and the probe starts at its log's end, which falls
        back to a snapshot when those entries are compacted. See raft.md "A follower
        that lost its log"."""
        acked = pr.match
        self._stats["lost_logs_detected"] += 1
        prev = self._lost_logs.get(peer)
        self._lost_logs[peer] = {"acknowledged": acked, "log_end": log_end,
                                 "term": self.term, "commit": self.commit,
                                 "times": (prev["times"] + 1) if prev else 1}
        log.warning("raft %s: member %s lost its log: it acknowledged up to index %d in term "
                    "%d but its log now ends at %d (storage wiped or rolled back?); "
                    "replicating everything to it again. Entries committed with its "
                    "acknowledgement were held by fewer members than counted until it "
                    "catches up.", self.node_id, peer, acked, self.term, log_end)
        pr.match = 0
        pr.lost_strikes = 0
        pr.become_probe()
        pr.next = log_end + 1
