"""The Raft core: a pure state machine (no I/O, no clock, no threads), shaped like etcd's raft.

Public API (stable; the driver codes against it)
------------------------------------------------
::

    core = RaftCore(node_id: str, log: LogReader, config: CoreConfig = CoreConfig(),
                    rng: random.Random | None = None, applied: int = 0)

``log`` is the durable log (types.LogReader). ``applied`` is the state machine's durable
applied index at start: committed entries after it are handed out again. Membership is
rebuilt from ``log.snapshot_meta().members`` plus every CONF_CHANGE entry in the log
after the snapshot (one scan at start). ``config`` is a ``CoreConfig`` (ticks, PreVote,
CheckQuorum, batching bounds). Errors raised: ``errors.NotLeader`` (with leader_id and
leader_addr), ``errors.ProposalDropped`` (definitely not appended: transfer in progress,
leader being removed, a membership change pending), ``errors.LeaderNotFound``,
``errors.BadRequest`` (an invalid membership change or transfer target),
``errors.ConfigError`` (bootstrap over another history), ``RaftInvariantError`` (a safety
rule would break: a bug or a lying disk; never catch it).

Inputs (all return quickly; none does I/O)::

    core.bootstrap(members: list[Member]) -> bool  # term-1 CONF_CHANGE entries, committed;
                                             # idempotent: call at every start of a bootstrap node
    core.tick()                              # one logical clock tick (driver's timer)
    core.step(msg: Message)                  # a message received from a peer
    core.propose(data: bytes) -> (term, index)         # leader only: raises NotLeader, ProposalDropped
    core.propose_batch(datas: list) -> (term, first_index)   # same, several entries at once
    core.propose_conf_change(cc: ConfChange) -> (term, index)  # one pending at a time
    core.read_index(context: bytes)          # answer arrives as Ready.read_states[ReadState(index, context)]
    core.transfer_leadership(to: str | None) # leader (or forwarded to it); None = most caught-up voter
    core.campaign(force=False)               # start an election now (force: like a transfer)
    core.report_unreachable(to: str)         # transport failed to send to ``to``
    core.report_snapshot(to: str, ok: bool)  # snapshot stream to ``to`` finished / failed

Outputs::

    core.has_ready() -> bool
    rd = core.ready() -> Ready
    ... the driver handles rd (order in types.Ready) ...
    core.advance(rd)
    core.take_committed() -> list[Entry]     # optional, right after advance: a leader
                                             # alone in its group hands out what advance
                                             # just committed (else []), no second Ready

Properties: ``node_id, role, leader, term, vote, commit, applied, first_index, last_index,
members (list[Member] with raft_addr/http_addr), voters, learners, is_leader``;
``member(node_id) -> Member | None``, ``members_at(index) -> list[Member]`` (membership as of
an applied index, for the snapshot a driver takes), ``progress() -> dict`` (leader:
match/next/state per peer, to decide when a learner is caught up), ``stats() -> dict``,
``log_term(index) -> int | None`` (the core's view of its log, for tests and the simulator),
``hard_state() -> HardState`` (safe to persist at any time, e.g. at shutdown; never build
one from ``core.commit``, which may cover entries that are not durable yet).

The Ready cycle (contract)
--------------------------
* Only one Ready is outstanding: call ``ready()`` again only after ``advance()`` of the
  previous one. Between them the driver may keep calling tick/step/propose.
* ``rd.entries``: append with overwrite semantics. ``rd.entries[0].index`` may be <=
  ``log.last_index()`` (a follower replacing a conflicting suffix, or entries already
  written): drop every stored entry from that index on, then append. After this the
  LogReader must serve them (``last_index()`` covers them).
* ``rd.hard_state``: persist if not None, in any order with the entries: its commit
  index only covers entries durable before this Ready. Only a change of term or vote
  must be fsynced before the messages; a commit-only change need not be.
* ``rd.snapshot`` (SnapshotMeta): make the received file the node's snapshot and reset
  the log so that ``snapshot_meta() == rd.snapshot``, ``first_index() == index + 1``,
  ``last_index() == index`` (durably), then restore the state machine from the file,
  then append ``rd.entries`` (if any). A crash between the two leaves a state machine
  behind the log's snapshot: at start, if ``fsm.applied_index() < snapshot_meta().index``,
  restore from the snapshot file before creating the core (the simulator does this).
* ``rd.messages``: send after the step above is durable, unless ``rd.send_early``.
  A SNAPSHOT message carries only ``snapshot`` (SnapshotMeta = the log's latest
  snapshot); the driver streams the file and, on the receiving side, steps the core with
  one ``Message(SNAPSHOT, frm=leader, to=self, term=msg.term, snapshot=meta, done=True)``
  once the whole file is on disk. The sending driver calls ``report_snapshot(to, ok)``.
  The receiving core answers with APPEND_RESP (index = snapshot index); SNAPSHOT_RESP
  is the drivers' own chunk-flow message, except that a SNAPSHOT_RESP with reject=True
  stepped into the leader core counts as ``report_snapshot(frm, False)``.
* ``rd.committed``: apply in order (they are durable locally by the time step 1 is done).
  The state machine treats CONF_CHANGE entries and empty NORMAL entries (a new leader's
  no-op) as no-ops that still advance its applied index.
* ``rd.read_states``: a read tagged ``context`` may run once applied >= ``index``.
* ``rd.role`` / ``rd.leader``: set when they changed since the previous Ready.
* ``rd.dropped``: always empty. A proposal (term, index) is resolved from the committed
  stream: committed entry at ``index`` with the same term = success, other term =
  definitely not committed. Leadership loss leaves it unknown until then.
* The driver must not change what the LogReader returns (compaction, appends) while a
  core method runs; compaction (``first_index()`` moving up to a snapshot index the
  state machine has applied) may happen at any other time. Take the snapshot's members
  from ``members_at(index)``.
* Performance: the core keeps entries in memory until they are durable *and* applied,
  so replication and applying rarely read the LogReader; ``entries()`` is then needed
  only for followers that lag. Propose in batches (``propose_batch``, or many
  ``propose`` calls between two Ready cycles): one Ready carries them all in one APPEND
  per follower.

The core reads the LogReader only with ``snapshot.index <= i <= last_index()`` for
``term(i)`` and ``first_index() <= lo < hi <= last_index() + 1`` for ``entries``.

Membership
----------
One change at a time, in the Raft thesis' way: a CONF_CHANGE entry takes effect on a
member as soon as it is in its log (appended), and is rolled back if a new leader
overwrites it. A leader refuses a new change until the previous one is committed, and
until it has committed an entry of its own term (Ongaro's 2015 fix for single-server
changes). New members are ADD_LEARNER first, then PROMOTE once caught up (the driver
decides "caught up" from ``progress()``). A leader that removes (or demotes) itself
keeps leading without counting itself until that entry commits, refusing proposals,
then steps down and sends TIMEOUT_NOW to the most caught-up voter. A voter whose removal
is in its log but not known committed may still campaign (thesis 4.2.2), because the
remaining members may need it. A removed node's driver should shut it down once it has
seen the change committed (``member(self) is None`` and a leader other than itself).

Snapshots
---------
A leader whose follower needs an entry below ``log.first_index()`` sends SNAPSHOT (meta
only) and pauses that follower until ``report_snapshot`` or an APPEND_RESP. A follower
accepts a snapshot only if it is newer than its commit index; if its log already holds
the snapshot's last entry it only moves its commit index.
"""
import random

from raftsqlite import errors
from raftsqlite.codec import encode_conf_change
from raftsqlite.codec.model import ConfChange, Entry, Message
from raftsqlite.raft.corebase import (  # noqa: F401
    _C_ADD_LEARNER, _C_DEMOTE, _C_PROMOTE, _C_REMOVE,
    _E_CONF_CHANGE, _M_APPEND, _M_APPEND_RESP, _M_HEARTBEAT,
    _M_HEARTBEAT_RESP, _M_PREVOTE, _M_PREVOTE_RESP, _M_READ_INDEX,
    _M_READ_INDEX_RESP, _M_SNAPSHOT, _M_SNAPSHOT_RESP, _M_TIMEOUT_NOW,
    _M_TRANSFER_LEADER, _M_VOTE, _R_CANDIDATE,
    _R_FOLLOWER, _R_LEADER, _R_LEARNER, _R_PRE_CANDIDATE)
from raftsqlite.raft.corebase import (CoreConfig, LogViewMixin, MembershipMixin,  # noqa: F401
                                      RaftInvariantError, ReplicationMixin, _TRANSFER,
                                      _VOTE_MSGS)
from raftsqlite.raft.progress import PROBE, REPLICATE, SNAPSHOT, Progress
from raftsqlite.raft.corebase import LOST_LOG_STRIKES
from raftsqlite.raft.corefollow import FollowerMixin
from raftsqlite.raft.types import HardState, ReadState, Ready


class RaftCore(LogViewMixin, MembershipMixin, ReplicationMixin, FollowerMixin):
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
        # The log view is storage[..offset-1] + tail (+ a pending snapshot below it). The
        # tail holds entries not yet durable, and durable ones until they are applied, so
        # the hot path (replication, applying) never reads them back from storage.
        self._unstable = []               # the tail
        self._offset = last + 1           # index of _unstable[0]
        self._durable = last              # entries up to here are on disk
        self._in_progress = last          # last tail index handed out in a Ready
        self._pending_snap = None          # SnapshotMeta accepted, not installed yet
        self._snap_handed = False
        self.term = hs.term
        self.vote = hs.vote
        self.commit = max(min(hs.commit, last), snap.index)
        self.applied = max(snap.index, min(applied, last))
        self.commit = max(self.commit, self.applied)
        self.role_ = _R_FOLLOWER
        # membership
        self._members = {}
        self._voters = set()
        self._learners = set()
        self._was_member = False          # this node was in some configuration it held
        self._removed_notice = None       # (leader, term) that said we are not a member
        self._set_members(snap.members)
        self._conf_history = [(snap.index, self.members)]   # (index, members) per change
        self._leaving = False             # leader whose own removal is in its log
        self._replay_conf_changes(snap.index, last)
        # role
        self.leader = None
        self._prs = {}
        self._votes = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._rand_timeout = self._new_timeout()
        self._transferee = None
        self._transfer_elapsed = 0
        self._lead_ticks = 0              # ticks since this node became leader (this term)
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
                       "proposals": 0, "reads": 0, "steps": 0, "lost_logs_detected": 0}
        self._lost_logs = {}              # peer -> the last lost-log report (leader side)

    # ---- role changes --------------------------------------------------------------

    @property
    def role(self):
        r = self.role_
        if r == _R_FOLLOWER and self.node_id in self._learners:
            return _R_LEARNER
        return r

    @property
    def is_leader(self):
        return self.role_ is _R_LEADER

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
        self._leaving = False
        self._votes = {}
        self._reads_blocked = []
        self._reads_waiting = []
        self._read_rounds = []
        self._bcast = False
        self._dirty.clear()
        self._probe.clear()

    def _become_follower(self, term, leader):
        self._reset(term)
        self.role_ = _R_FOLLOWER
        self.leader = leader
        self._prs = {}

    def _become_pre_candidate(self):
        self._reset(self.term)   # keeps term and vote: a pre-vote changes nothing durable
        self.role_ = _R_PRE_CANDIDATE
        self._prs = {}
        self._votes = {self.node_id: True}

    def _become_candidate(self):
        self._reset(self.term + 1)
        self.role_ = _R_CANDIDATE
        self.vote = self.node_id
        self._prs = {}
        self._votes = {self.node_id: True}
        self._stats["elections"] += 1

    def _become_leader(self):
        self._reset(self.term)
        self.role_ = _R_LEADER
        self.leader = self.node_id
        last = self.last_index
        # Every peer's silence is counted from now (Progress.heard = 0): a new leader has
        # heard from nobody yet, so nobody may look long silent to it (reaper.py).
        self._lead_ticks = 0
        self._prs = {nid: Progress(last + 1) for nid in self._members}
        me = self._prs.get(self.node_id)
        if me is not None:
            me.match = self._durable
            me.become_replicate()
            me.recent_active = True
        self._leaving = self.node_id not in self._voters
        self._append_new([b""])
        self._stats["leader_terms"] += 1

    def _promotable(self):
        if self._pending_snap is not None:
            return False
        if self.node_id in self._voters:
            return True
        # Raft thesis 4.2.2: a voter whose removal (or demotion) is in its log but not
        # known committed may still be needed to elect the leader that commits it; it
        # campaigns, but does not count its own vote.
        h = self._conf_history
        return (len(h) > 1 and h[-1][0] > self.commit
                and any(m.node_id == self.node_id and m.voter for m in h[-2][1]))

    def _hup(self, transfer, pre_done=False):
        """Start an election: PreVote first unless disabled, already won (``pre_done``)
        or asked by the leader (``transfer``, which also overrides followers' lease)."""
        if self.role_ is _R_LEADER or not self._promotable():
            return
        if self.cfg.pre_vote and not transfer and not pre_done:
            self._become_pre_candidate()
            vtype, vterm = _M_PREVOTE, self.term + 1
        else:
            self._become_candidate()
            vtype, vterm = _M_VOTE, self.term
        if self._tally()[0] >= self._quorum():
            if vtype == _M_PREVOTE:
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
        if m.term == 0 and t not in (_M_READ_INDEX, _M_TRANSFER_LEADER,
                                     _M_PREVOTE, _M_PREVOTE_RESP):
            m.term = self.term
        self._msgs.append(m)

    # ---- inputs ----------------------------------------------------------------------

    def bootstrap(self, members):
        """Start a new group: term-1 CONF_CHANGE entries adding ``members``, committed.
        Every member bootstrapped with the same list gets the same log. Idempotent, so a
        driver started as a bootstrap node may call it at every start: it completes a
        bootstrap that a crash cut short (a prefix of the entries, maybe the hard state
        without them) and returns True, returns False once it is done (or the log is
        already compacted), and raises ConfigError if the log holds another history."""
        members = list(members)
        if not any(m.voter for m in members):
            raise errors.ConfigError("bootstrap needs at least one voter")
        if len({m.node_id for m in members}) != len(members):
            raise errors.ConfigError("bootstrap members have duplicate ids")
        ccs = []
        for m in members:
            ccs.append(ConfChange(_C_ADD_LEARNER, m.node_id, m.raft_addr, m.http_addr))
            if m.voter:
                ccs.append(ConfChange(_C_PROMOTE, m.node_id))
        ents = [Entry(1, i + 1, _E_CONF_CHANGE, encode_conf_change(cc)) for i, cc in enumerate(ccs)]
        n = len(ents)
        if self._log.snapshot_meta().index > 0 or self._pending_snap is not None:
            return False
        have = min(self.last_index, n)
        for i in range(1, have + 1):
            # (term-1 entries after ours would be another, longer bootstrap)
            if self._slice(i, i + 1, 1)[0] != ents[i - 1] or self.log_term(n + 1) == 1:
                raise errors.ConfigError(
                    f"{self.node_id}: cannot bootstrap, the log holds another history")
        if self.commit >= n:
            return False
        if self.term > 1 or self.vote:
            raise errors.ConfigError(f"{self.node_id}: cannot bootstrap, the node has voted")
        self.term = 1
        if have < n:
            self._rollback_conf(have + 1)
            self._truncate_append(ents[have:])
        self.commit = n
        return True

    def tick(self):
        if self.role_ is _R_LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._rand_timeout and self._promotable():
            self._election_elapsed = 0
            self._rand_timeout = self._new_timeout()
            self._hup(transfer=False)
        elif self.leader is not None and self._election_elapsed >= 2 * self.cfg.election_tick:
            # A member that cannot campaign (a learner, a removed voter) heard nothing
            # from its leader for two election timeouts: forget it, as a voter does when
            # it campaigns, so "no leader" is visible (/readyz) instead of a stale one.
            self.leader = None

    def _tick_leader(self):
        cfg = self.cfg
        self._lead_ticks += 1
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
                self._send(Message(_M_HEARTBEAT, to=nid, commit=min(pr.match, c), context=ctx))

    def campaign(self, force=False):
        """Start an election now. ``force`` campaigns as a leadership transfer does:
        no PreVote, and voters' leader lease is overridden (tests, operators)."""
        self._hup(transfer=force)

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
        if self.role_ is not _R_LEADER:
            m = self._members.get(self.leader) if self.leader else None
            raise errors.NotLeader(leader_id=self.leader, leader_addr=m.http_addr if m else None)
        if self._transferee is not None:
            raise errors.ProposalDropped("leadership transfer in progress")
        if self._leaving:
            raise errors.ProposalDropped("this leader is being removed from the group")

    def propose_conf_change(self, cc):
        self._check_proposable()
        if self._conf_history[-1][0] > self.commit:
            raise errors.ProposalDropped("a membership change is already in progress")
        if self.log_term(self.commit) != self.term:
            # Ongaro's fix for single-server changes: commit in our term first.
            raise errors.ProposalDropped("new leader has not committed its first entry yet")
        cur = self._members.get(cc.node_id)
        t = cc.type
        if not cc.node_id:
            raise errors.BadRequest("membership change without a node id")
        if t == _C_ADD_LEARNER:
            if cur is not None:
                raise errors.BadRequest(f"{cc.node_id} is already a member")
        elif t == _C_PROMOTE:
            if cur is None or cur.voter:
                raise errors.BadRequest(f"{cc.node_id} is not a learner")
        elif t in (_C_REMOVE, _C_DEMOTE):
            if cur is None:
                raise errors.BadRequest(f"{cc.node_id} is not a member")
            if t == _C_DEMOTE and not cur.voter:
                raise errors.BadRequest(f"{cc.node_id} is not a voter")
            if cur.voter and len(self._voters) == 1:
                raise errors.BadRequest(f"{cc.node_id} is the last voter")
        else:
            raise errors.BadRequest(f"unknown membership change type {t!r}")
        data = encode_conf_change(cc)
        idx = self._append_new([data], _E_CONF_CHANGE)
        return self.term, idx

    def read_index(self, context):
        """Ask for a linearizable read point; the answer comes as a ReadState."""
        self._stats["reads"] += 1
        if self.role_ is _R_LEADER:
            self._leader_read(self.node_id, context)
            return
        if self.leader is None:
            raise errors.LeaderNotFound("no known leader for a linearizable read")
        self._send(Message(_M_READ_INDEX, to=self.leader, context=context))

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
            self._send(Message(_M_READ_INDEX_RESP, to=frm, index=index, context=ctx))

    def transfer_leadership(self, to=None):
        if self.role_ is not _R_LEADER:
            if self.leader is None:
                raise errors.LeaderNotFound("no known leader to transfer leadership from")
            self._send(Message(_M_TRANSFER_LEADER, to=self.leader,
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
            self._send(Message(_M_TIMEOUT_NOW, to=to))
        else:
            self._dirty.add(to)

    def report_unreachable(self, to):
        pr = self._prs.get(to) if self.role_ is _R_LEADER else None
        if pr is not None and pr.state == REPLICATE:
            pr.become_probe()

    def report_snapshot(self, to, ok):
        pr = self._prs.get(to) if self.role_ is _R_LEADER else None
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
        # (pre)votes from outside a leader's configuration and the answers saying so:
        # _vote_from_outside, on these rare paths only (never an APPEND's or heartbeat's)
        if t > self.term:
            if typ == _M_VOTE or typ == _M_PREVOTE:
                if self._vote_from_outside(m):
                    return
                in_lease = (self.cfg.check_quorum and self.leader is not None
                            and self._election_elapsed < self.cfg.election_tick)
                if in_lease and m.context != _TRANSFER:
                    # We heard from a live leader recently: a disruptive (often removed
                    # or partitioned) node must not depose it.
                    return
            if typ == _M_PREVOTE or (typ == _M_PREVOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            elif typ in (_M_APPEND, _M_HEARTBEAT, _M_SNAPSHOT):
                self._become_follower(t, m.frm)
            else:
                if typ in _VOTE_MSGS:
                    self._vote_from_outside(m)
                self._become_follower(t, None)
        elif 0 < t < self.term:
            if typ in (_M_APPEND, _M_HEARTBEAT):
                # Tell a stale leader our term so it steps down. (etcd does this only with
                # CheckQuorum or PreVote; without, a member whose stale configuration sends
                # its votes to nobody reachable would ignore the leader forever: sim seed
                # 312506.)
                self._send(Message(_M_APPEND_RESP, to=m.frm))
            elif typ in _VOTE_MSGS and self._vote_from_outside(m):
                pass
            elif typ == _M_PREVOTE:
                self._send(Message(_M_PREVOTE_RESP, to=m.frm, term=self.term, reject=True))
            return
        if typ == _M_VOTE or typ == _M_PREVOTE:
            if not self._vote_from_outside(m):
                self._handle_vote(m)
            return
        role = self.role_
        if role is _R_LEADER:
            self._step_leader(m)
        elif role is _R_FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_leader(self, m):
        typ = m.type
        if typ == _M_APPEND_RESP:
            pr = self._prs.get(m.frm)
            if pr is None:
                return
            pr.recent_active = True
            pr.heard = self._lead_ticks
            if m.reject:
                if m.reject_hint < pr.match <= m.index:
                    # It says its log ends (or stops matching) below what it acknowledged
                    # to this leader: in one term a follower's log is only changed by
                    # this leader's APPENDs, which never shorten the acknowledged prefix,
                    # so its storage lost entries. maybe_decr_to would call this answer
                    # stale and we would probe at match + 1 forever.
                    pr.lost_strikes += 1
                    if pr.lost_strikes >= LOST_LOG_STRIKES:
                        self._follower_lost_log(m.frm, pr, m.reject_hint)
                        self._dirty.add(m.frm)
                    return
                pr.lost_strikes = 0
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self._find_conflict_by_term(hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == REPLICATE:
                        pr.become_probe()
                    self._dirty.add(m.frm)
                return
            pr.lost_strikes = 0
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
                    self._send(Message(_M_TIMEOUT_NOW, to=m.frm))
            self._dirty.add(m.frm)
        elif typ == _M_HEARTBEAT_RESP:
            pr = self._prs.get(m.frm)
            if pr is None:
                return
            pr.recent_active = True
            pr.heard = self._lead_ticks
            if m.reject and m.reject_hint < pr.match:
                pr.lost_strikes += 1
                if pr.lost_strikes >= LOST_LOG_STRIKES:
                    self._follower_lost_log(m.frm, pr, m.reject_hint)
            elif not m.reject:
                pr.lost_strikes = 0
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
        elif typ == _M_SNAPSHOT_RESP:
            if m.reject:
                self.report_snapshot(m.frm, False)
        elif typ == _M_READ_INDEX:
            self._leader_read(m.frm, m.context)
        elif typ == _M_TRANSFER_LEADER:
            try:
                self._start_transfer(m.context.decode() if m.context else m.frm)
            except errors.RaftSQLiteError:
                pass  # a remote request we cannot honour; the asker times out

    # ---- the Ready cycle -----------------------------------------------------------

    def _hs(self):
        # The persisted commit index covers only entries durable before this Ready: a
        # driver may write the hard state before (or without) the entries of the same
        # Ready, and after a truncation a stale entry may still sit on disk at an index
        # we know committed with another term (found by sim seed 303011).
        return (self.term, self.vote, min(self.commit, self._durable))

    def hard_state(self):
        """The hard state that may be persisted now (e.g. once more at shutdown). Never
        persist ``core.commit`` itself: it may cover entries not yet durable."""
        return HardState(*self._hs())

    def has_ready(self):
        if (self._leaving and self.commit >= self._conf_history[-1][0]) or self._msgs \
                or self._read_states or self._bcast or self._dirty or self._reads_waiting \
                or self.last_index > self._in_progress \
                or (self._pending_snap is not None and not self._snap_handed) \
                or self.commit > self.applied or (self.role, self.leader) != self._rl_handed:
            return True
        hs = self._hs()
        hh = self._hs_handed
        if hs == hh:
            return False
        # A leader alone in its group hands a commit-only change out with its next Ready
        # instead of one of its own: the commit index on disk is a hint written at most
        # once a second anyway (log.py), and its entries were handed out by
        # take_committed. Anything else (term, vote, a group with peers) is a Ready now.
        return hs[0] != hh[0] or hs[1] != hh[1] or not self.alone

    def ready(self):
        if self._leaving and self.role_ is _R_LEADER and self.commit >= self._conf_history[-1][0]:
            self._step_down_removed()
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
            if rl[1] is not None:
                self._removed_notice = None   # a leader leads us: we are a member again
            rd.role, rd.leader = rl
            self._rl_handed = rl
        rd.send_early = (self.role_ is _R_LEADER and rd.snapshot is None
                         and hs[:2] == self._hs_handed[:2])
        self._hs_handed = hs
        return rd

    def take_heartbeats(self):
        """Remove and return the queued HEARTBEAT and HEARTBEAT_RESP messages, keeping the
        others in order. A driver may send these while a Ready is being persisted: a
        heartbeat's commit is capped at the follower's match index and a response claims
        nothing about the log, so neither depends on the pending write (only on term and
        vote being durable, which the driver checks)."""
        msgs = self._msgs
        if not msgs:
            return []
        kinds = (_M_HEARTBEAT, _M_HEARTBEAT_RESP)
        hb = [m for m in msgs if m.type in kinds]
        if hb:
            self._msgs = [m for m in msgs if m.type not in kinds]
            self._stats["msgs_out"] += len(hb)
        return hb

    def advance(self, rd):
        if rd.snapshot is not None and self._pending_snap is not None \
                and rd.snapshot.index == self._pending_snap.index \
                and rd.snapshot.term == self._pending_snap.term:
            self._pending_snap = None
            self._prune_conf_history()
        if rd.entries:
            e = rd.entries[-1]
            k = e.index - self._offset
            if 0 <= k < len(self._unstable) and self._unstable[k].term == e.term \
                    and e.index > self._durable:
                self._durable = e.index
        cut = min(self._durable, self.applied) - self._offset + 1
        if cut > 0:
            del self._unstable[:cut]
            self._offset += cut
        if self.role_ is _R_LEADER:
            me = self._prs.get(self.node_id)
            if me is not None and me.maybe_update(self._durable) and self._maybe_commit() \
                    and len(self._prs) > 1:
                # (Alone: nobody to tell; take_committed hands the entries out.)
                self._bcast = True

    # ---- introspection ---------------------------------------------------------------

    def progress(self):
        """Leader only: per-member replication progress (empty otherwise)."""
        out = {nid: pr.as_dict() for nid, pr in self._prs.items()}
        for nid, rep in self._lost_logs.items():
            if nid in out:
                out[nid]["lost_log"] = rep
        return out

    def stats(self):
        d = dict(self._stats)
        d.update(node_id=self.node_id, role=self.role.value, leader=self.leader,
                 term=self.term, commit=self.commit, applied=self.applied,
                 last_index=self.last_index, unstable=self.last_index - self._durable,
                 voters=sorted(self._voters), learners=sorted(self._learners),
                 pending_reads=sum(len(r[3]) for r in self._read_rounds)
                 + len(self._reads_waiting) + len(self._reads_blocked),
                 lost_logs={p: dict(r) for p, r in self._lost_logs.items()})
        return d
