"""The Raft core: a pure state machine (no I/O, no clock, no threads), shaped like etcd's raft.

Public API (stable; the driver codes against it)
------------------------------------------------
::

    core = RaftCore(node_id: str, log: LogReader, config: CoreConfig = CoreConfig(),
                    rng: random.Random | None = None, applied: int = 0)

``log`` is the durable log (types.LogReader). ``applied`` is the state machine's durable
applied index at start: committed entries after it are handed out again, and membership
is rebuilt from ``log.snapshot_meta().members`` plus the CONF_CHANGE entries in
``(snapshot.index, applied]`` (one scan at start).

Inputs (all return quickly; none does I/O)::

    core.bootstrap(members: list[Member])   # fresh log only; term-1 CONF_CHANGE entries, committed
    core.tick()                              # one logical clock tick (driver's timer)
    core.step(msg: Message)                  # a message received from a peer
    core.propose(data: bytes) -> (term, index)         # leader only: raises NotLeader, ProposalDropped
    core.propose_batch(datas: list) -> (term, first_index)   # same, several entries at once
    core.propose_conf_change(cc: ConfChange) -> (term, index)  # one pending at a time
    core.read_index(context: bytes)          # answer arrives as Ready.read_states[ReadState(index, context)]
    core.transfer_leadership(to: str | None) # leader (or forwarded to it); None = most caught-up voter
    core.campaign()                          # start an election now (tests; a lone bootstrapped node)
    core.report_unreachable(to: str)         # transport failed to send to ``to``
    core.report_snapshot(to: str, ok: bool)  # snapshot stream to ``to`` finished / failed

Outputs::

    core.has_ready() -> bool
    rd = core.ready() -> Ready
    ... the driver handles rd (order in types.Ready) ...
    core.advance(rd)

Properties: ``node_id, role, leader, term, commit, applied, first_index, last_index,
members (list[Member] with raft_addr/http_addr), voters, learners, is_leader``;
``member(node_id) -> Member | None``, ``members_at(index) -> list[Member]`` (membership as of
an applied index, for the snapshot a driver takes), ``progress() -> dict`` (leader:
match/next/state per peer, to decide when a learner is caught up), ``stats() -> dict``,
``log_term(index) -> int | None`` (the core's view of its log, for tests and the simulator).

The Ready cycle (contract)
--------------------------
* Only one Ready is outstanding: call ``ready()`` again only after ``advance()`` of the
  previous one. Between them the driver may keep calling tick/step/propose.
* ``rd.entries``: append with overwrite semantics. ``rd.entries[0].index`` may be <=
  ``log.last_index()`` (a follower replacing a conflicting suffix, or entries already
  written): drop every stored entry from that index on, then append. After this the
  LogReader must serve them (``last_index()`` covers them).
* ``rd.hard_state``: persist if not None. Write entries before the hard state (a commit
  index above the last stored entry is clamped at restart, but never rely on it).
* ``rd.snapshot`` (SnapshotMeta): restore the state machine from the received file, then
  reset the log so that ``snapshot_meta() == rd.snapshot``, ``first_index() ==
  index + 1``, ``last_index() == index``; then append ``rd.entries`` (if any).
* ``rd.messages``: send after the step above is durable, unless ``rd.send_early``.
  A SNAPSHOT message carries only ``snapshot`` (SnapshotMeta = the log's latest
  snapshot); the driver streams the file and, on the receiving side, steps the core with
  one ``Message(SNAPSHOT, frm=leader, to=self, term=msg.term, snapshot=meta, done=True)``
  once the whole file is on disk. The sending driver calls ``report_snapshot(to, ok)``.
  The receiving core answers with APPEND_RESP (index = snapshot index); SNAPSHOT_RESP
  is the drivers' own chunk-flow message, except that a SNAPSHOT_RESP with reject=True
  stepped into the leader core counts as ``report_snapshot(frm, False)``.
* ``rd.committed``: apply in order (they are durable locally by the time step 1 is done).
  CONF_CHANGE entries take effect in the core when handed out here (see Membership);
  the state machine should treat them as no-ops that still advance its applied index.
* ``rd.read_states``: a read tagged ``context`` may run once applied >= ``index``.
* ``rd.role`` / ``rd.leader``: set when they changed since the previous Ready.
* ``rd.dropped``: always empty. A proposal (term, index) is resolved from the committed
  stream: committed entry at ``index`` with the same term = success, other term =
  definitely not committed. Leadership loss leaves it unknown until then.
* The driver must not change what the LogReader returns (compaction, appends) while a
  core method runs; compaction (``first_index()`` moving up to a snapshot index the
  state machine has applied) may happen at any other time.

The core reads the LogReader only with ``snapshot.index <= i <= last_index()`` for
``term(i)`` and ``first_index() <= lo < hi <= last_index() + 1`` for ``entries``.

Membership
----------
Changes are one at a time and take effect when the CONF_CHANGE entry is *applied*, i.e.
handed out in ``Ready.committed`` (etcd's choice; no rollback on truncation). A leader
refuses a new change while one is pending (proposed but not applied), and a fresh leader
treats its whole uncommitted tail as possibly pending (avoids the single-server-change
bug Ongaro described in 2015). New members are ADD_LEARNER first, then PROMOTE once
caught up (the driver decides "caught up" from ``progress()``). A leader that applies
its own REMOVE (or DEMOTE) steps down and sends TIMEOUT_NOW to the most caught-up voter.

Snapshots
---------
A leader whose follower needs an entry below ``log.first_index()`` sends SNAPSHOT (meta
only) and pauses that follower until ``report_snapshot`` or an APPEND_RESP. A follower
accepts a snapshot only if it is newer than its commit index; if its log already holds
the snapshot's last entry it only moves its commit index.
"""
import random
from dataclasses import dataclass

from raftsqlite import errors
from raftsqlite.codec.model import (ConfChange, ConfChangeType, Entry, EntryType, Member,
                                    Message, MsgType, SnapshotMeta)
from raftsqlite.codec import decode_conf_change, encode_conf_change
from raftsqlite.raft.progress import PROBE, REPLICATE, SNAPSHOT, Progress
from raftsqlite.raft.types import HardState, ReadState, Ready, Role

_TRANSFER = b"transfer"      # VOTE context of a campaign started by TIMEOUT_NOW
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


def _esize(e):
    return len(e.data) + _ENTRY_OVERHEAD


class RaftCore:
    """See the module docstring for the contract."""

    def __init__(self, node_id, log, config=CoreConfig(), rng=None, applied=0):
        if not node_id or not isinstance(node_id, str):
            raise errors.ConfigError("node_id must be a non-empty string")
        self.node_id = node_id
        self._log = log
        self.cfg = config
        self._rng = rng if rng is not None else random.Random()
        snap = log.snapshot_meta()
        hs = log.hard_state()
        last = log.last_index()
        # The log view is storage[..offset-1] + unstable (+ a pending snapshot below).
        self._unstable = []
        self._offset = last + 1
        self._in_progress = last          # last unstable index handed out in a Ready
        self._pending_snap = None          # SnapshotMeta accepted, not installed yet
        self._snap_handed = False
        self.term = hs.term
        self.vote = hs.vote
        self.commit = max(min(hs.commit, last), snap.index)
        self.applied = max(snap.index, min(applied, last))
        self.commit = max(self.commit, self.applied)
        self.role_ = Role.FOLLOWER
        # membership
        self._members = {}
        self._voters = set()
        self._learners = set()
        self._set_members(snap.members)
        self._conf_history = [(snap.index, self.members)]
        self._replay_conf_changes(snap.index, self.applied)
        self._pending_conf_index = 0
        # role
        self.leader = None
        self._prs = {}
        self._votes = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._rand_timeout = self._new_timeout()
        self._transferee = None
        self._transfer_elapsed = 0
        # outputs
        self._msgs = []
        self._read_states = []
        self._bcast = False
        self._dirty = set()
        self._probe = set()               # peers owed an APPEND even if it is empty
        # ReadIndex (leader): reads waiting for our first commit in this term, reads
        # waiting for a round, rounds in flight [id, index, acks, requests]
        self._reads_blocked = []
        self._reads_waiting = []
        self._read_rounds = []
        self._round_seq = 0
        # what the last Ready handed out
        self._hs_handed = (hs.term, hs.vote, hs.commit)
        self._rl_handed = (None, None)
        self._stats = {"elections": 0, "leader_terms": 0, "snapshots_sent": 0,
                       "snapshots_installed": 0, "truncations": 0, "msgs_out": 0,
                       "proposals": 0, "reads": 0, "steps": 0}

    # ---- log view ----------------------------------------------------------------

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
                used += _esize(e)
            if len(out) < shi - lo or hi <= off:
                return out
            lo = off
        u = self._unstable
        for k in range(lo - off, hi - off):
            e = u[k]
            sz = _esize(e)
            if out and used + sz > max_bytes:
                break
            out.append(e)
            used += sz
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
            return
        self._stats["truncations"] += 1
        if first <= off:
            self._offset = first
            self._unstable = list(ents)
        else:
            del u[first - off:]
            u.extend(ents)
        self._in_progress = min(self._in_progress, first - 1)

    def _append_new(self, datas, etype=EntryType.NORMAL):
        """Leader: append our own entries; returns the first index."""
        first = self.last_index + 1
        t = self.term
        u = self._unstable
        i = first
        for d in datas:
            u.append(Entry(t, i, etype, d))
            i += 1
        self._bcast = True
        return first

    def _commit_to(self, c):
        if c > self.commit:
            if c > self.last_index:
                raise RaftInvariantError(f"{self.node_id}: commit {c} beyond last index {self.last_index}")
            self.commit = c

    # ---- membership --------------------------------------------------------------

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

    def members_at(self, index):
        """Membership as of applied index ``index`` (the snapshot a driver takes)."""
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

    def _replay_conf_changes(self, lo, hi):
        i = lo + 1
        while i <= hi:
            ents = self._slice(i, hi + 1, self.cfg.max_committed_bytes)
            if not ents:
                break
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    self._apply_conf_change(e)
            i = ents[-1].index + 1

    def _apply_conf_change(self, e):
        cc = decode_conf_change(e.data)
        ms = self._members
        cur = ms.get(cc.node_id)
        t = cc.type
        if t == ConfChangeType.ADD_LEARNER:
            if cur is None:
                ms[cc.node_id] = Member(cc.node_id, cc.raft_addr, cc.http_addr, False)
        elif t == ConfChangeType.PROMOTE:
            if cur is not None:
                cur.voter = True
        elif t == ConfChangeType.DEMOTE:
            if cur is not None and len(self._voters) > 1:
                cur.voter = False
        elif t == ConfChangeType.REMOVE:
            if cur is not None and (not cur.voter or len(self._voters) > 1):
                del ms[cc.node_id]
        self._voters = {i for i, m in ms.items() if m.voter}
        self._learners = {i for i, m in ms.items() if not m.voter}
        self._conf_history.append((e.index, self.members))
        self._prune_conf_history()
        if self.role_ == Role.LEADER:
            last = self.last_index
            for nid in ms:
                if nid not in self._prs:
                    self._prs[nid] = Progress(last + 1)
                    self._prs[nid].recent_active = True
            for nid in list(self._prs):
                if nid not in ms:
                    del self._prs[nid]
                    self._dirty.discard(nid)
            if self._transferee is not None and self._transferee not in self._voters:
                self._transferee = None
            if self.node_id not in self._voters:
                self._step_down_removed()
            elif self._maybe_commit():
                self._bcast = True

    def _prune_conf_history(self):
        h = self._conf_history
        snap_idx = self._log.first_index() - 1
        while len(h) > 1 and h[1][0] <= snap_idx:
            h.pop(0)

    def _step_down_removed(self):
        # Our removal is applied, hence committed: tell the others the commit index,
        # and hand leadership to the most caught-up voter so nobody waits a timeout.
        self._flush_appends()
        best = None
        for nid in sorted(self._voters):
            pr = self._prs.get(nid)
            if pr is not None and (best is None or pr.match > self._prs[best].match):
                best = nid
        if best is not None:
            self._send(Message(MsgType.TIMEOUT_NOW, to=best))
        self._become_follower(self.term, None)

    # ---- role changes --------------------------------------------------------------

    @property
    def role(self):
        r = self.role_
        if r == Role.FOLLOWER and self.node_id in self._learners:
            return Role.LEARNER
        return r

    @property
    def is_leader(self):
        return self.role_ == Role.LEADER

    def _new_timeout(self):
        et = self.cfg.election_tick
        return et + self._rng.randrange(et)

    def _reset(self, term):
        if term != self.term:
            self.term = term
            self.vote = ""
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._rand_timeout = self._new_timeout()
        self._transferee = None
        self._votes = {}
        self._reads_blocked = []
        self._reads_waiting = []
        self._read_rounds = []
        self._bcast = False
        self._dirty.clear()
        self._probe.clear()

    def _become_follower(self, term, leader):
        self._reset(term)
        self.role_ = Role.FOLLOWER
        self.leader = leader
        self._prs = {}

    def _become_pre_candidate(self):
        self._reset(self.term)   # keeps term and vote: a pre-vote changes nothing durable
        self.role_ = Role.PRE_CANDIDATE
        self._prs = {}
        self._votes = {self.node_id: True}

    def _become_candidate(self):
        self._reset(self.term + 1)
        self.role_ = Role.CANDIDATE
        self.vote = self.node_id
        self._prs = {}
        self._votes = {self.node_id: True}
        self._stats["elections"] += 1

    def _become_leader(self):
        self._reset(self.term)
        self.role_ = Role.LEADER
        self.leader = self.node_id
        last = self.last_index
        self._prs = {nid: Progress(last + 1) for nid in self._members}
        me = self._prs.get(self.node_id)
        if me is not None:
            me.match = self._offset - 1
            me.become_replicate()
            me.recent_active = True
        # A fresh leader does not know whether its uncommitted tail holds a membership
        # change; forbid a new one until its own no-op is applied.
        self._pending_conf_index = self._append_new([b""])
        self._stats["leader_terms"] += 1

    def _promotable(self):
        return self.node_id in self._voters and self._pending_snap is None

    def _has_unapplied_conf_change(self):
        i = self.applied + 1
        while i <= self.commit:
            ents = self._slice(i, self.commit + 1, self.cfg.max_committed_bytes)
            if not ents:
                return False
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    return True
            i = ents[-1].index + 1
        return False

    def _hup(self, transfer, pre_done=False):
        """Start an election: PreVote first unless disabled, already won (``pre_done``)
        or asked by the leader (``transfer``, which also overrides followers' lease)."""
        if self.role_ == Role.LEADER or not self._promotable():
            return
        if self._has_unapplied_conf_change():
            return
        if self.cfg.pre_vote and not transfer and not pre_done:
            self._become_pre_candidate()
            vtype, vterm = MsgType.PREVOTE, self.term + 1
        else:
            self._become_candidate()
            vtype, vterm = MsgType.VOTE, self.term
        if self._tally()[0] >= self._quorum():
            if vtype == MsgType.PREVOTE:
                self._hup(transfer=False, pre_done=True)
            else:
                self._become_leader()
            return
        li = self.last_index
        lt = self.log_term(li) or 0
        ctx = _TRANSFER if transfer else b""
        for nid in sorted(self._voters):
            if nid != self.node_id:
                self._send(Message(vtype, to=nid, term=vterm, index=li, log_term=lt, context=ctx))

    def _quorum(self):
        return len(self._voters) // 2 + 1

    def _tally(self):
        g = r = 0
        for nid, ok in self._votes.items():
            if nid in self._voters:
                if ok:
                    g += 1
                else:
                    r += 1
        return g, r

    def _send(self, m):
        m.frm = self.node_id
        t = m.type
        if m.term == 0 and t not in (MsgType.READ_INDEX, MsgType.TRANSFER_LEADER,
                                     MsgType.PREVOTE, MsgType.PREVOTE_RESP):
            m.term = self.term
        self._msgs.append(m)

    # ---- inputs ----------------------------------------------------------------------

    def bootstrap(self, members):
        """Start a new group: term-1 CONF_CHANGE entries adding ``members``, committed.
        Every member bootstrapped with the same list gets the same log."""
        if self.last_index != 0 or self.term != 0 or self._log.snapshot_meta().index != 0:
            raise errors.ConfigError(f"{self.node_id}: cannot bootstrap, the log is not empty")
        members = list(members)
        if not any(m.voter for m in members):
            raise errors.ConfigError("bootstrap needs at least one voter")
        if len({m.node_id for m in members}) != len(members):
            raise errors.ConfigError("bootstrap members have duplicate ids")
        ents = []
        for m in members:
            ents.append(ConfChange(ConfChangeType.ADD_LEARNER, m.node_id, m.raft_addr, m.http_addr))
            if m.voter:
                ents.append(ConfChange(ConfChangeType.PROMOTE, m.node_id))
        self.term = 1
        self._unstable = [Entry(1, i + 1, EntryType.CONF_CHANGE, encode_conf_change(cc))
                          for i, cc in enumerate(ents)]
        self.commit = len(ents)
        # Take effect now (idempotent when handed out again as committed entries), so
        # the node can campaign without waiting for a Ready cycle.
        for e in self._unstable:
            self._apply_conf_change(e)

    def tick(self):
        if self.role_ == Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._rand_timeout and self._promotable():
            self._election_elapsed = 0
            self._rand_timeout = self._new_timeout()
            self._hup(transfer=False)

    def _tick_leader(self):
        cfg = self.cfg
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= cfg.election_tick:
                self._transferee = None
        if self._election_elapsed >= cfg.election_tick:
            self._election_elapsed = 0
            if cfg.check_quorum:
                active = 0
                for nid in self._voters:
                    pr = self._prs.get(nid)
                    if nid == self.node_id or (pr is not None and pr.recent_active):
                        active += 1
                for nid, pr in self._prs.items():
                    pr.recent_active = nid == self.node_id
                if active < self._quorum():
                    self._become_follower(self.term, None)
                    return
        if self._heartbeat_elapsed >= cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._read_rounds[-1][0] if self._read_rounds else 0)

    def _bcast_heartbeat(self, round_id):
        ctx = round_id.to_bytes(8, "big") if round_id else b""
        c = self.commit
        for nid, pr in self._prs.items():
            if nid != self.node_id:
                self._send(Message(MsgType.HEARTBEAT, to=nid, commit=min(pr.match, c), context=ctx))

    def campaign(self):
        """Start an election now (skipping the timeout, not PreVote)."""
        self._hup(transfer=False)

    def propose(self, data):
        return self.propose_batch([data])

    def propose_batch(self, datas):
        self._check_proposable()
        datas = list(datas)
        if not datas:
            raise errors.BadRequest("empty proposal batch")
        self._stats["proposals"] += len(datas)
        return self.term, self._append_new(datas)

    def _check_proposable(self):
        if self.role_ != Role.LEADER:
            m = self._members.get(self.leader) if self.leader else None
            raise errors.NotLeader(leader_id=self.leader, leader_addr=m.http_addr if m else None)
        if self._transferee is not None:
            raise errors.ProposalDropped("leadership transfer in progress")

    def propose_conf_change(self, cc):
        self._check_proposable()
        if self._pending_conf_index > self.applied:
            raise errors.ProposalDropped("a membership change is already in progress")
        cur = self._members.get(cc.node_id)
        t = cc.type
        if not cc.node_id:
            raise errors.BadRequest("membership change without a node id")
        if t == ConfChangeType.ADD_LEARNER:
            if cur is not None:
                raise errors.BadRequest(f"{cc.node_id} is already a member")
        elif t == ConfChangeType.PROMOTE:
            if cur is None or cur.voter:
                raise errors.BadRequest(f"{cc.node_id} is not a learner")
        elif t in (ConfChangeType.REMOVE, ConfChangeType.DEMOTE):
            if cur is None:
                raise errors.BadRequest(f"{cc.node_id} is not a member")
            if t == ConfChangeType.DEMOTE and not cur.voter:
                raise errors.BadRequest(f"{cc.node_id} is not a voter")
            if cur.voter and len(self._voters) == 1:
                raise errors.BadRequest(f"{cc.node_id} is the last voter")
        else:
            raise errors.BadRequest(f"unknown membership change type {t!r}")
        data = encode_conf_change(cc)
        idx = self._append_new([data], EntryType.CONF_CHANGE)
        self._pending_conf_index = idx
        return self.term, idx

    def read_index(self, context):
        """Ask for a linearizable read point; the answer comes as a ReadState."""
        self._stats["reads"] += 1
        if self.role_ == Role.LEADER:
            self._leader_read(self.node_id, context)
            return
        if self.leader is None:
            raise errors.LeaderNotFound("no known leader for a linearizable read")
        self._send(Message(MsgType.READ_INDEX, to=self.leader, context=context))

    def _leader_read(self, frm, ctx):
        if self.log_term(self.commit) != self.term:
            # Our commit index may lag the group's until our own no-op commits.
            self._reads_blocked.append((frm, ctx))
        elif len(self._voters) == 1 and self.node_id in self._voters:
            self._answer_read(frm, ctx, self.commit)
        else:
            self._reads_waiting.append((frm, ctx))

    def _answer_read(self, frm, ctx, index):
        if frm == self.node_id:
            self._read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, to=frm, index=index, context=ctx))

    def transfer_leadership(self, to=None):
        if self.role_ != Role.LEADER:
            if self.leader is None:
                raise errors.LeaderNotFound("no known leader to transfer leadership from")
            self._send(Message(MsgType.TRANSFER_LEADER, to=self.leader,
                               context=(to or "").encode()))
            return
        self._start_transfer(to)

    def _start_transfer(self, to):
        if not to:
            best = None
            for nid in sorted(self._voters):
                if nid != self.node_id and (best is None or self._prs[nid].match > self._prs[best].match):
                    best = nid
            to = best
            if to is None:
                raise errors.BadRequest("no other voter to transfer leadership to")
        if to == self.node_id:
            return
        if to not in self._voters:
            raise errors.BadRequest(f"{to} is not a voter")
        self._transferee = to
        self._transfer_elapsed = 0
        if self._prs[to].match == self.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, to=to))
        else:
            self._dirty.add(to)

    def report_unreachable(self, to):
        pr = self._prs.get(to) if self.role_ == Role.LEADER else None
        if pr is not None and pr.state == REPLICATE:
            pr.become_probe()

    def report_snapshot(self, to, ok):
        pr = self._prs.get(to) if self.role_ == Role.LEADER else None
        if pr is None or pr.state != SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the follower's APPEND_RESP (or a heartbeat answer) before probing.
        pr.paused = True

    # ---- messages ------------------------------------------------------------------

    def step(self, m):
        self._stats["steps"] += 1
        if m.to and m.to != self.node_id:
            return
        t = m.term
        typ = m.type
        if t > self.term:
            if typ == MsgType.VOTE or typ == MsgType.PREVOTE:
                in_lease = (self.cfg.check_quorum and self.leader is not None
                            and self._election_elapsed < self.cfg.election_tick)
                if in_lease and m.context != _TRANSFER:
                    # We heard from a live leader recently: a disruptive (often removed
                    # or partitioned) node must not depose it.
                    return
            if typ == MsgType.PREVOTE or (typ == MsgType.PREVOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            elif typ in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(t, m.frm)
            else:
                self._become_follower(t, None)
        elif 0 < t < self.term:
            if typ in (MsgType.APPEND, MsgType.HEARTBEAT) and (self.cfg.check_quorum or self.cfg.pre_vote):
                # Lets a stale leader (cut off, then back) learn our term and step down.
                self._send(Message(MsgType.APPEND_RESP, to=m.frm))
            elif typ == MsgType.PREVOTE:
                self._send(Message(MsgType.PREVOTE_RESP, to=m.frm, term=self.term, reject=True))
            return
        if typ == MsgType.VOTE or typ == MsgType.PREVOTE:
            self._handle_vote(m)
            return
        role = self.role_
        if role == Role.LEADER:
            self._step_leader(m)
        elif role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _handle_vote(self, m):
        pre = m.type == MsgType.PREVOTE
        rtype = MsgType.PREVOTE_RESP if pre else MsgType.VOTE_RESP
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
        pre = self.role_ == Role.PRE_CANDIDATE
        if typ in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif (pre and typ == MsgType.PREVOTE_RESP) or (not pre and typ == MsgType.VOTE_RESP):
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
        elif typ == MsgType.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))

    def _step_follower(self, m):
        typ = m.type
        if typ == MsgType.APPEND:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_append(m)
        elif typ == MsgType.HEARTBEAT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._commit_to(min(m.commit, self.last_index))
            self._send(Message(MsgType.HEARTBEAT_RESP, to=m.frm, context=m.context))
        elif typ == MsgType.SNAPSHOT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_snapshot(m)
        elif typ == MsgType.TIMEOUT_NOW:
            if self._promotable():
                self._hup(transfer=True)
        elif typ == MsgType.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))
        elif typ in (MsgType.READ_INDEX, MsgType.TRANSFER_LEADER):
            if self.leader is not None and m.frm != self.leader:
                self._msgs.append(Message(typ, frm=m.frm, to=self.leader, context=m.context))

    def _handle_append(self, m):
        if m.index < self.commit:
            self._send(Message(MsgType.APPEND_RESP, to=m.frm, index=self.commit))
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
            self._send(Message(MsgType.APPEND_RESP, to=m.frm, index=last_new))
            return
        hint = self._find_conflict_by_term(min(prev, self.last_index), m.log_term)
        self._send(Message(MsgType.APPEND_RESP, to=m.frm, index=prev, reject=True,
                           reject_hint=hint, log_term=self.log_term(hint) or 0))

    def _handle_snapshot(self, m):
        s = m.snapshot
        if s is None:
            return
        if s.index <= self.commit:
            self._send(Message(MsgType.APPEND_RESP, to=m.frm, index=self.commit))
            return
        if self.log_term(s.index) == s.term:
            self._commit_to(s.index)
            self._send(Message(MsgType.APPEND_RESP, to=m.frm, index=s.index))
            return
        self._stats["snapshots_installed"] += 1
        self._pending_snap = SnapshotMeta(s.index, s.term, s.members)
        self._snap_handed = False
        self._unstable = []
        self._offset = s.index + 1
        self._in_progress = s.index
        self.commit = s.index
        self.applied = s.index
        self._set_members(s.members)
        self._conf_history = [(s.index, self.members)]
        self._send(Message(MsgType.APPEND_RESP, to=m.frm, index=s.index))

    def _step_leader(self, m):
        typ = m.type
        if typ == MsgType.APPEND_RESP:
            pr = self._prs.get(m.frm)
            if pr is None:
                return
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self._find_conflict_by_term(hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == REPLICATE:
                        pr.become_probe()
                    self._dirty.add(m.frm)
                return
            if pr.maybe_update(m.index):
                if pr.state == PROBE:
                    pr.become_replicate()
                elif pr.state == SNAPSHOT and pr.match + 1 >= self._log.first_index():
                    pr.become_probe()
                    pr.become_replicate()
                else:
                    pr.free_to(m.index)
                if self._maybe_commit():
                    self._bcast = True
                if m.frm == self._transferee and pr.match == self.last_index:
                    self._send(Message(MsgType.TIMEOUT_NOW, to=m.frm))
            self._dirty.add(m.frm)
        elif typ == MsgType.HEARTBEAT_RESP:
            pr = self._prs.get(m.frm)
            if pr is None:
                return
            pr.recent_active = True
            if pr.state == PROBE:
                pr.paused = False
            if pr.match < self.last_index and pr.state != SNAPSHOT:
                # APPENDs may have been lost: free a slot and send one from pr.next,
                # even empty, so a follower missing entries rejects and we back off.
                if len(pr.inflight) >= self.cfg.max_inflight:
                    pr.inflight.popleft()
                self._probe.add(m.frm)
            if pr.match < self.last_index or pr.commit_sent < self.commit:
                self._dirty.add(m.frm)
            if m.context and m.frm in self._voters:
                self._read_ack(m.frm, int.from_bytes(m.context, "big"))
        elif typ == MsgType.SNAPSHOT_RESP:
            if m.reject:
                self.report_snapshot(m.frm, False)
        elif typ == MsgType.READ_INDEX:
            self._leader_read(m.frm, m.context)
        elif typ == MsgType.TRANSFER_LEADER:
            try:
                self._start_transfer(m.context.decode() if m.context else m.frm)
            except errors.RaftSQLiteError:
                pass  # a remote request we cannot honour; the asker times out

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

    # ---- replication ---------------------------------------------------------------

    def _flush_appends(self):
        if self.role_ != Role.LEADER:
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
            self._send(Message(MsgType.APPEND, to=to, index=prev, log_term=pt,
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
        self._send(Message(MsgType.SNAPSHOT, to=to,
                           snapshot=SnapshotMeta(meta.index, meta.term, meta.members)))

    def _start_read_round(self):
        if self.role_ != Role.LEADER:
            self._reads_waiting = []
            return
        self._round_seq += 1
        rid = self._round_seq
        self._read_rounds.append([rid, self.commit, {self.node_id}, self._reads_waiting])
        self._reads_waiting = []
        if self._quorum() <= 1:
            self._read_ack(self.node_id, rid)
        else:
            self._bcast_heartbeat(rid)

    # ---- the Ready cycle -----------------------------------------------------------

    def _hs(self):
        return (self.term, self.vote, self.commit)

    def has_ready(self):
        return bool(
            self._msgs or self._read_states or self._bcast or self._dirty or self._reads_waiting
            or self.last_index > self._in_progress
            or (self._pending_snap is not None and not self._snap_handed)
            or self.commit > self.applied
            or self._hs() != self._hs_handed
            or (self.role, self.leader) != self._rl_handed)

    def ready(self):
        rd = Ready()
        if self._pending_snap is not None and not self._snap_handed:
            rd.snapshot = self._pending_snap
            self._snap_handed = True
        if self.last_index > self._in_progress:
            rd.entries = self._unstable[self._in_progress + 1 - self._offset:]
            self._in_progress = self.last_index
        if self.commit > self.applied:
            ents = self._slice(self.applied + 1, self.commit + 1, self.cfg.max_committed_bytes)
            if ents is None:
                raise RaftInvariantError(f"{self.node_id}: committed entries after "
                                         f"{self.applied} are compacted")
            rd.committed = ents
            if ents:
                self.applied = ents[-1].index
                for e in ents:
                    if e.type == EntryType.CONF_CHANGE:
                        self._apply_conf_change(e)
        if self._bcast or self._dirty:
            self._flush_appends()
        if self._reads_waiting:
            self._start_read_round()
        hs = self._hs()
        if hs != self._hs_handed:
            rd.hard_state = HardState(*hs)
        rd.messages = self._msgs
        self._msgs = []
        self._stats["msgs_out"] += len(rd.messages)
        rd.read_states = self._read_states
        self._read_states = []
        rl = (self.role, self.leader)
        if rl != self._rl_handed:
            rd.role, rd.leader = rl
            self._rl_handed = rl
        rd.send_early = (self.role_ == Role.LEADER and rd.snapshot is None
                         and hs[:2] == self._hs_handed[:2])
        self._hs_handed = hs
        return rd

    def advance(self, rd):
        if rd.snapshot is not None and self._pending_snap is not None \
                and rd.snapshot.index == self._pending_snap.index \
                and rd.snapshot.term == self._pending_snap.term:
            self._pending_snap = None
            self._prune_conf_history()
        if rd.entries:
            e = rd.entries[-1]
            k = e.index - self._offset
            if 0 <= k < len(self._unstable) and self._unstable[k].term == e.term:
                del self._unstable[:k + 1]
                self._offset = e.index + 1
                if self._in_progress < self._offset - 1:
                    self._in_progress = self._offset - 1
        if self.role_ == Role.LEADER:
            me = self._prs.get(self.node_id)
            if me is not None and me.maybe_update(self._offset - 1) and self._maybe_commit():
                self._bcast = True

    # ---- introspection ---------------------------------------------------------------

    def progress(self):
        """Leader only: per-member replication progress (empty otherwise)."""
        return {nid: pr.as_dict() for nid, pr in self._prs.items()}

    def stats(self):
        d = dict(self._stats)
        d.update(node_id=self.node_id, role=self.role.value, leader=self.leader,
                 term=self.term, commit=self.commit, applied=self.applied,
                 last_index=self.last_index, unstable=len(self._unstable),
                 voters=sorted(self._voters), learners=sorted(self._learners),
                 pending_reads=sum(len(r[3]) for r in self._read_rounds)
                 + len(self._reads_waiting) + len(self._reads_blocked))
        return d
