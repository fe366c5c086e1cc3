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
from raftsqlite.raft.types import HardState, LogReader, ReadState, Ready, Role


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
    max_uncommitted_bytes: int = 0   # leader refuses proposals beyond this (0 = no limit)

    def __post_init__(self):
        if self.election_tick <= self.heartbeat_tick or self.heartbeat_tick < 1:
            raise errors.ConfigError("election_tick must exceed heartbeat_tick >= 1")
        if self.max_inflight < 1 or self.max_msg_bytes < 1:
            raise errors.ConfigError("max_inflight and max_msg_bytes must be >= 1")


class RaftCore:
    """See the module docstring for the contract."""

    def __init__(self, node_id, log, config=CoreConfig(), rng=None, applied=0):
        raise NotImplementedError

    def bootstrap(self, members):
        raise NotImplementedError

    def tick(self):
        raise NotImplementedError

    def step(self, m):
        raise NotImplementedError

    def propose(self, data):
        raise NotImplementedError

    def propose_batch(self, datas):
        raise NotImplementedError

    def propose_conf_change(self, cc):
        raise NotImplementedError

    def read_index(self, context):
        raise NotImplementedError

    def transfer_leadership(self, to=None):
        raise NotImplementedError

    def campaign(self):
        raise NotImplementedError

    def report_unreachable(self, to):
        raise NotImplementedError

    def report_snapshot(self, to, ok):
        raise NotImplementedError

    def has_ready(self):
        raise NotImplementedError

    def ready(self):
        raise NotImplementedError

    def advance(self, rd):
        raise NotImplementedError
