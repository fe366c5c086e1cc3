"""Part of the Raft core (see core.py for the contract): a mixin of RaftCore with the
message handlers of the roles that do not lead. Votes and pre-votes (any role), a
candidate's tally, and a follower's APPEND, HEARTBEAT, SNAPSHOT, TIMEOUT_NOW and
forwarded READ_INDEX/TRANSFER_LEADER. It uses RaftCore's attributes."""
from raftsqlite.codec.model import Message, SnapshotMeta
from raftsqlite.raft.corebase import (
    _M_APPEND, _M_APPEND_RESP, _M_HEARTBEAT, _M_HEARTBEAT_RESP, _M_PREVOTE,
    _M_PREVOTE_RESP, _M_READ_INDEX, _M_READ_INDEX_RESP, _M_SNAPSHOT, _M_TIMEOUT_NOW,
    _M_TRANSFER_LEADER, _M_VOTE_RESP, _R_PRE_CANDIDATE, RaftInvariantError)
from raftsqlite.raft.types import ReadState


class FollowerMixin:
    """Followers and candidates: votes, the tally, APPEND/HEARTBEAT/SNAPSHOT handling."""

    def _handle_vote(self, m):
        pre = m.type == _M_PREVOTE
        rtype = _M_PREVOTE_RESP if pre else _M_VOTE_RESP
        can_vote = (self.vote == m.frm or (self.vote == "" and self.leader is None)
                    or (pre and m.term > self.term))
        if can_vote and self._up_to_date(m.index, m.log_term):
            self._send(Message(rtype, to=m.frm, term=m.term))
            if not pre:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(rtype, to=m.frm, term=self.term, reject=True))

    def _step_candidate(self, m):
        typ = m.type
        pre = self.role_ is _R_PRE_CANDIDATE
        if typ in (_M_APPEND, _M_HEARTBEAT, _M_SNAPSHOT):
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif (pre and typ == _M_PREVOTE_RESP) or (not pre and typ == _M_VOTE_RESP):
            self._vote_from_outside(m)
            if m.frm not in self._votes:
                self._votes[m.frm] = not m.reject
            g, r = self._tally()
            q = self._quorum()
            if g >= q:
                if pre:
                    self._hup(transfer=False, pre_done=True)
                else:
                    self._become_leader()
            elif r >= q:
                self._become_follower(self.term, None)
        elif typ == _M_READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))

    def _step_follower(self, m):
        typ = m.type
        if typ == _M_APPEND:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_append(m)
        elif typ == _M_HEARTBEAT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._commit_to(min(m.commit, self.last_index))
            if m.commit > self.last_index:
                # The leader counts on entries up to m.commit (it sends min(match,
                # commit)) that this log does not hold: they were lost. Say so, with
                # where this log ends; the answer still acknowledges the leader.
                self._send(Message(_M_HEARTBEAT_RESP, to=m.frm, context=m.context,
                                   reject=True, reject_hint=self.last_index))
            else:
                self._send(Message(_M_HEARTBEAT_RESP, to=m.frm, context=m.context))
        elif typ == _M_SNAPSHOT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_snapshot(m)
        elif typ == _M_TIMEOUT_NOW:
            if self._promotable():
                self._hup(transfer=True)
        elif typ == _M_READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))
        elif typ in (_M_READ_INDEX, _M_TRANSFER_LEADER):
            if self.leader is not None and m.frm != self.leader:
                self._msgs.append(Message(typ, frm=m.frm, to=self.leader, context=m.context))

    def _handle_append(self, m):
        if m.index < self.commit:
            self._send(Message(_M_APPEND_RESP, to=m.frm, index=self.commit))
            return
        prev = m.index
        if self.log_term(prev) == m.log_term:
            ents = m.entries
            last_new = prev + len(ents)
            if ents:
                if ents[0].index > self.last_index:
                    conflict = ents[0].index   # prev matched, so this is last_index + 1
                else:
                    conflict = 0
                    for e in ents:
                        if self.log_term(e.index) != e.term:
                            conflict = e.index
                            break
                if conflict:
                    if conflict <= self.commit:
                        raise RaftInvariantError(
                            f"{self.node_id}: conflict at {conflict} <= commit {self.commit}")
                    self._truncate_append(ents[conflict - ents[0].index:])
            self._commit_to(min(m.commit, last_new))
            self._send(Message(_M_APPEND_RESP, to=m.frm, index=last_new))
            return
        hint = self._find_conflict_by_term(min(prev, self.last_index), m.log_term)
        self._send(Message(_M_APPEND_RESP, to=m.frm, index=prev, reject=True,
                           reject_hint=hint, log_term=self.log_term(hint) or 0))

    def _handle_snapshot(self, m):
        s = m.snapshot
        if s is None:
            return
        if s.index <= self.commit:
            self._send(Message(_M_APPEND_RESP, to=m.frm, index=self.commit))
            return
        if self.log_term(s.index) == s.term:
            self._commit_to(s.index)
            self._send(Message(_M_APPEND_RESP, to=m.frm, index=s.index))
            return
        self._stats["snapshots_installed"] += 1
        self._pending_snap = SnapshotMeta(s.index, s.term, s.members)
        self._snap_handed = False
        self._unstable = []
        self._offset = s.index + 1
        self._in_progress = s.index
        self._durable = s.index
        self.commit = s.index
        self.applied = s.index
        self._set_members(s.members)
        self._conf_history = [(s.index, self.members)]
        self._send(Message(_M_APPEND_RESP, to=m.frm, index=s.index))
