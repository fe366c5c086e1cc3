"""RaftNode: runs the pure core on the node's event loop. See docs/design/raft-io.md.

One task (``_run``) turns the core's Ready batches into I/O, strictly one at a time:
persist (one executor thread: write + one fdatasync for the whole batch), send (one write
per peer), hand committed entries to the state machine (a second single-thread executor,
so applying overlaps with the next batch's fsync), then ``core.advance``. Everything that
arrives while a batch is being persisted (proposals, reads, messages) piles up and goes
into the next batch: under load many proposals share one Ready, one fdatasync and one
AppendEntries per follower. Snapshots (taking, streaming, receiving, installing) are in
driver_snap.py, a mixin of RaftNode.
"""
import asyncio
import heapq
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from raftsqlite import errors
from raftsqlite.codec.model import ConfChange, ConfChangeType, MsgType
from raftsqlite.raft.core import CoreConfig, RaftCore
from raftsqlite.raft.diskwatch import SlowDiskWatch
from raftsqlite.raft.driver_disk import DiskMixin, _Stopping
from raftsqlite.raft.driver_snap import SnapshotMixin
from raftsqlite.raft.lane import Lane
from raftsqlite.raft.driver_reap import ReapMixin
from raftsqlite.raft.reaper import Reaper
from raftsqlite.raft.log import RaftLog
from raftsqlite.raft import diskerr, trace
from raftsqlite.raft.segfiles import lower_thread_priority
from raftsqlite.raft.transport import Transport
from raftsqlite.raft.types import Role

log = logging.getLogger(__name__)

class RaftNode(SnapshotMixin, ReapMixin, DiskMixin):
    def __init__(self, config, state_machine, loop=None):
        self.config = config
        self.fsm = state_machine
        self.node_id = config.node_id
        self.log = RaftLog(config.data_dir, group=config.group_id,
                           segment_bytes=config.segment_bytes,
                           cache_entries=config.cache_entries, cache_bytes=config.cache_bytes,
                           fsync=config.fsync, recycle_bytes=config.recycle_bytes)
        self.core = None
        self.transport = None
        self._loop = loop
        self._persist_exec = None   # the one path for log writes and fsyncs
        self._apply_exec = None     # the one path for state-machine calls
        self._io_exec = None        # snapshot file streaming and receiving
        self._snap_exec = None      # taking snapshots, deleting what compaction dropped
        self._cleanups = 0          # file deletions queued on _snap_exec
        self._sending = {}          # snapshot path -> streams reading it
        self._wake = None
        self._run_task = None
        self._tick_handle = None
        self._running = False
        self._started = False
        self._failed = None
        self._props = []            # (data, future) not yet given to the core
        self._pending = {}          # index -> (term, future)
        self._deadlines = []        # heap of (deadline, seq, future)
        self._seq = itertools.count()
        self._reads = []            # futures waiting for the next ReadIndex round
        self._read_rounds = {}      # context -> [futures]
        self._read_wait = []        # heap of (index, seq, [futures]) until applied
        self._ctx_seq = itertools.count(1)
        self._applied = 0
        self._apply_queued = 0      # last index handed to the apply executor
        self._snap_index = 0
        self._snapshotting = False
        self._apply_on_thread = False   # a snapshot runs on the apply thread: no inline applies
        self._leader_contact = None  # time.monotonic() of the last message from the leader
        self._compact_req = None
        self._streams = {}          # peer -> task streaming a snapshot
        self._recv = {}             # peer -> _SnapRecv
        self._held = None           # messages held while a received snapshot is finalized
        self._leader_waiters = []
        # Commit-only APPENDs to caught-up followers, held until the next APPEND to the
        # same follower (which carries the commit index too) or commit_notify_delay.
        self._commit_held = {}
        self._held_timer = None
        # Heartbeats flow while a Ready is being persisted (see _send_heartbeats): set
        # during the write; the term and vote known to be on disk.
        self._persisting = False
        self._durable_tv = None
        # A lone leader's small writes are inline while they are quick (see _persist).
        self._inline_ok = True
        self._diskwatch = SlowDiskWatch(config.slow_disk_handoff)   # diskwatch.py
        self._handoff = False
        self._reaper = Reaper.from_seconds(config.reap_voter_after, config.reap_learner_after,
                                           config.tick_interval, config.election_ticks)
        self._reaped = {"reaped_voters": 0, "reaped_non_voters": 0, "reap_failures": 0,
                        "last_reaped": None}
        self._stats = {"proposals": 0, "batches": 0, "ready": 0, "applied_entries": 0,
                       "apply_calls": 0, "reads": 0, "read_rounds": 0, "snapshots_taken": 0,
                       "snapshots_sent": 0, "snapshots_received": 0, "timeouts": 0,
                       "persist_s": 0.0, "persists": 0, "heartbeats_during_persist": 0,
                       "applied_inline": 0, "inline_undone": 0, "persist_waited": 0, "commit_piggybacked": 0,
                       "persist_inline": 0, "inline_slow": 0, "persist_threaded": 0,
                       "committed_at_persist": 0, "leader_changes": 0}
        self._leader_seen = None
        self._init_disk(config)     # driver_disk.py

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self):
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._persist_exec = Lane("raft-persist")
        self._apply_exec = ThreadPoolExecutor(1, thread_name_prefix="raft-apply")
        self._io_exec = ThreadPoolExecutor(1, thread_name_prefix="raft-io")
        # Snapshot work has its own thread: a 1 GB copy or deletion must not queue in
        # front of a snapshot stream's reads (nor anything else), and it runs at a lower
        # CPU priority than the loop, apply and persist threads (docs/design/raft-io.md).
        self._snap_exec = ThreadPoolExecutor(1, thread_name_prefix="raft-snap",
                                             initializer=lower_thread_priority)
        self._wake = asyncio.Event()
        await self._in(self._persist_exec, self.log.open)
        applied = await self._in(self._apply_exec, self.fsm.applied_index)
        snap = self.log.snapshot_meta()
        if applied < snap.index:
            path = self.log.snapshot_path(snap.index, snap.term)
            if not os.path.exists(path):
                raise errors.StorageCorrupt(
                    f"state machine is at index {applied} but the log starts after snapshot "
                    f"{snap.index}, whose file {path} is missing")
            await self._in(self._apply_exec, self.fsm.restore, path, snap)
            applied = snap.index
        if applied > self.log.last_index():
            raise errors.StorageCorrupt(
                f"state machine is at index {applied} but the Raft log in {self.log.dir} ends at "
                f"{self.log.last_index()}: the log was lost; remove this member and re-add it")
        self._applied = self._apply_queued = applied
        self._snap_index = snap.index
        self.core = RaftCore(self.node_id, self.log, CoreConfig(
            election_tick=cfg.election_ticks, heartbeat_tick=cfg.heartbeat_ticks,
            pre_vote=cfg.pre_vote, check_quorum=cfg.check_quorum,
            max_msg_bytes=cfg.max_msg_bytes, max_inflight=cfg.max_inflight), applied=applied)
        self._durable_tv = (self.core.term, self.core.vote)
        self.transport = Transport(cfg, self._on_message, resolve=self._resolve,
                                   on_unreachable=self.core.report_unreachable)
        await self.transport.start()
        self._running = True
        self._started = True
        self._run_task = self._loop.create_task(self._run())
        self._tick_handle = self._loop.call_later(cfg.tick_interval, self._on_tick)
        self._wake.set()

    async def stop(self):
        if not self._started:
            return
        self._started = False
        if self._failed is not None:
            await self._close_failed()
            return
        if self.config.transfer_on_stop and self.is_leader and len(self.core.voters) > 1:
            try:
                await self.transfer_leadership(None, timeout=2.0)
            except errors.RaftSQLiteError as e:
                log.warning("leadership transfer on stop failed: %s", e)
        self._running = False
        self._apply_stop.set()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._wake.set()
        if self._run_task is not None:
            try:
                await asyncio.wait_for(self._run_task, 5.0)
            except (asyncio.TimeoutError, Exception) as e:
                log.warning("raft loop did not stop cleanly: %r", e)
                self._run_task.cancel()
        for t in list(self._streams.values()):
            t.cancel()
        await self.transport.stop()
        self._fail_all(errors.OutcomeUnknown("node stopped"), proposed_only=False)
        # Applies already queued finish before the commit index is written.
        await self._in(self._apply_exec, lambda: None)
        # The commit index is written lazily while running; write it once more on the way out.
        # Never core.commit itself: it may cover entries that are not durable yet.
        hs = self.core.hard_state()
        try:
            await self._in(self._persist_exec, self.log.persist, hs, (), None, True)
        except OSError as e:
            # The commit index is recoverable (leader, applied index): a full disk must
            # not keep the member from stopping.
            log.warning("could not write the final commit index on stop: %r", e)
        self.log.close()
        for ex in (self._persist_exec, self._apply_exec, self._io_exec, self._snap_exec):
            ex.shutdown(wait=True)

    async def _close_failed(self):
        """Release sockets, files and threads of a member that failed; write nothing."""
        self._apply_stop.set()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        for t in list(self._streams.values()):
            t.cancel()
        await self.transport.stop()
        self.log.close()
        for ex in (self._persist_exec, self._apply_exec, self._io_exec, self._snap_exec):
            ex.shutdown(wait=False)

    async def bootstrap(self, members):
        """Make this member the first of a new group (fresh data dir only)."""
        if self.log.last_index() > 0 or self.log.snapshot_meta().index > 0:
            raise errors.BadRequest("bootstrap on a data dir that already holds a log")
        self.core.bootstrap(list(members))
        self._wake.set()
        await self._until(lambda: self.log.last_index() >= len(members), 5.0)
        if len(members) == 1 and members[0].node_id == self.node_id:
            self.core.campaign()
            self._wake.set()

    def _in(self, executor, fn, *args):
        return self._loop.run_in_executor(executor, fn, *args)

    async def _until(self, cond, timeout, err=None):
        deadline = self._loop.time() + timeout
        while not cond():
            if self._failed is not None:
                raise errors.Unavailable(f"raft node failed: {self._failed}")
            if self._loop.time() > deadline:
                raise err or errors.Timeout("timed out")
            await asyncio.sleep(self.config.tick_interval / 2)

    # ---- public API ------------------------------------------------------------------

    @property
    def failed(self):
        """Why this member fail-stopped (a log write, fsync or apply raised), or None.
        A failed member leads nothing and knows no leader: its core may still say it
        leads, but it sends nothing more, and the others elect another."""
        return self._failed

    @property
    def is_leader(self):
        return self._failed is None and self.core is not None and self.core.role == Role.LEADER

    @property
    def leader_id(self):
        return self.core.leader if self.core is not None and self._failed is None else None

    @property
    def term(self):
        return self.core.term

    @property
    def members(self):
        return self.core.members

    @property
    def commit_index(self):
        return self.core.commit

    @property
    def applied_index(self):
        return self._applied

    @property
    def last_log_index(self):
        return self.core.last_index

    @property
    def last_snapshot_index(self):
        return self.log.snapshot_meta().index

    @property
    def last_leader_contact(self):
        """``time.monotonic()`` when this member last heard from the leader it follows
        (any message from it), or None if it never has. On the leader: now. Reads with
        ``freshness`` compare against it."""
        if self.is_leader:
            return time.monotonic()
        return self._leader_contact

    def _not_leader(self):
        lid = self.core.leader
        m = self.core.member(lid) if lid else None
        return errors.NotLeader(leader_id=lid, leader_addr=m.http_addr if m else None)

    async def propose(self, data, timeout=10.0):
        """Replicate ``data``; returns what the state machine's apply returned for it."""
        return await self.propose_future(data, timeout)

    def propose_future(self, data, timeout=10.0):
        """``propose`` without a coroutine: returns the future (hot path for servers that
        answer from a callback)."""
        if self._failed is not None:
            raise errors.Unavailable(f"raft node failed: {self._failed}")
        if not self._running:
            raise errors.ProposalDropped("node is not running")
        if self.core.role != Role.LEADER:
            raise self._not_leader()
        if self._refuse is not None:
            raise errors.DiskFull(self._refuse)
        if len(data) > self.config.max_proposal_bytes:
            raise errors.PayloadTooLarge(
                f"this write's log entry is {len(data)} bytes, over the largest the group "
                f"takes ({self.config.max_proposal_bytes} bytes, set on every member with "
                f"-raft-opt max_proposal_bytes=N); split it into several requests")
        if len(self._pending) + len(self._props) >= self.config.max_pending_proposals:
            raise errors.ProposalDropped("too many proposals in flight")
        fut = self._loop.create_future()
        self._props.append((data, fut))
        if trace.ON:
            trace.mark("d_prop")
        heapq.heappush(self._deadlines, (self._loop.time() + timeout, next(self._seq), fut))
        self._wake.set()
        return fut

    async def read_index(self, timeout=5.0):
        """Return once a linearizable read may run on this member's state machine."""
        if self._failed is not None:
            raise errors.Unavailable(f"raft node failed: {self._failed}")
        fut = self._loop.create_future()
        self._reads.append(fut)
        heapq.heappush(self._deadlines, (self._loop.time() + timeout, next(self._seq), fut))
        self._stats["reads"] += 1
        self._wake.set()
        await fut

    async def wait_applied(self, index, timeout=1.0):
        """Return True once this member's state machine has applied ``index``, False if
        ``timeout`` seconds pass first. Woken by the apply itself (no polling); raises
        ``Unavailable`` if the member fails meanwhile."""
        if self._applied >= index:
            return True
        if self._failed is not None:
            raise errors.Unavailable(f"raft node failed: {self._failed}")
        fut = self._loop.create_future()
        heapq.heappush(self._read_wait, (index, next(self._seq), [fut]))
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def add_member(self, node_id, raft_addr, http_addr="", voter=True, timeout=30.0):
        """Add as a learner, wait until it has caught up, then promote it (if voter)."""
        deadline = self._loop.time() + timeout
        m = self.core.member(node_id)
        if m is None:
            await self._conf_change(ConfChange(ConfChangeType.ADD_LEARNER, node_id, raft_addr,
                                               http_addr), deadline)
            m = self.core.member(node_id)
        if not voter or (m is not None and m.voter):
            return

        def caught_up():
            if not self.is_leader:
                raise self._not_leader()
            pr = self.core.progress().get(node_id)
            return pr is not None and pr.get("match", 0) >= self.core.commit - 16
        await self._until(caught_up, max(0.1, deadline - self._loop.time()),
                          errors.Timeout(f"{node_id} did not catch up within {timeout}s"))
        await self._conf_change(ConfChange(ConfChangeType.PROMOTE, node_id), deadline)

    async def remove_member(self, node_id, timeout=10.0):
        if self.core.member(node_id) is None:
            return
        await self._conf_change(ConfChange(ConfChangeType.REMOVE, node_id),
                                self._loop.time() + timeout)
        self.transport.forget(node_id)

    async def _conf_change(self, cc, deadline):
        while True:
            if self.core.role != Role.LEADER:
                raise self._not_leader()
            try:
                term, index = self.core.propose_conf_change(cc)
                break
            except errors.ProposalDropped:
                # one change at a time: wait for the previous one to apply
                if self._loop.time() > deadline:
                    raise errors.Timeout("another membership change is still in progress")
                await asyncio.sleep(self.config.tick_interval)
        fut = self._loop.create_future()
        self._pending[index] = (term, fut)
        heapq.heappush(self._deadlines, (deadline, next(self._seq), fut))
        self._wake.set()
        await fut

    async def transfer_leadership(self, to=None, timeout=5.0):
        before = self.core.leader
        self.core.transfer_leadership(to)
        self._wake.set()

        def moved():
            lead = self.core.leader
            return lead is not None and lead != before and (to is None or lead == to)
        await self._until(moved, timeout, errors.Timeout("leadership transfer timed out"))

    def stats(self):
        s = dict(self._stats)
        s.update(self._diskwatch.stats())
        s.update(self.disk.stats(), min_free_disk=self.config.min_free_disk,
                 disk_space_low=self._space_low, writes_refused=self._refuse)
        s.update(self._reaped, reap_voter_after_s=self.config.reap_voter_after,
                 reap_non_voter_after_s=self.config.reap_learner_after,
                 removed=self.removed)
        s.update(node_id=self.node_id, role=self.core.role.value if self.core else None,
                 leader=self.leader_id if self.core else None,
                 term=self.core.term if self.core else 0,
                 commit=self.core.commit if self.core else 0, applied=self._applied,
                 pending_proposals=len(self._pending) + len(self._props),
                 failed=self._failed,
                 # a snapshot being taken or the files its compaction freed being deleted
                 snapshot_busy=self._snapshotting or self._cleanups > 0)
        if self.core is not None:
            s["core"] = self.core.stats()
            if self.core.role == Role.LEADER:
                s["progress"] = self.core.progress()
        s["log"] = self.log.stats()
        if self.transport is not None:
            s["transport"] = self.transport.stats()
        return s

    # ---- the loop ------------------------------------------------------------------------

    def _on_tick(self):
        if not self._running:
            return
        self._tick_handle = self._loop.call_later(self.config.tick_interval, self._on_tick)
        if self.config.min_free_disk and self._loop.time() >= self._space_at:
            self._space_at = self._loop.time() + 1.0
            self._check_space()
        try:
            self.core.tick()
            if self._persisting:
                self._send_heartbeats()
            if self._reaper.on and self.core.role == Role.LEADER and not self._reaper.busy:
                self._maybe_reap()
        except Exception:
            log.exception("core.tick failed")
        self._expire(self._loop.time())
        self._wake.set()

    def _send_heartbeats(self):
        """While a Ready's write and fdatasync run (the _run task waits for them), send the
        heartbeats and heartbeat responses the core queued meanwhile instead of holding
        them for the next Ready: a slow fsync on the leader must not look like a dead
        leader to its followers. Only when the term and vote are already durable (a
        message of a term this member could forget after a crash must not go out)."""
        core = self.core
        if (core.term, core.vote) != self._durable_tv:
            return
        msgs = core.take_heartbeats()
        if self._log_stuck and core.role == Role.LEADER:
            # This leader cannot write its log: let the followers time out and elect
            # one that can (it would otherwise hold the group with heartbeats alone).
            return
        if msgs:
            tr = self.transport
            for m in msgs:
                tr.send(m)
            tr.flush()
            self._stats["heartbeats_during_persist"] += len(msgs)

    def _expire(self, now):
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, _, fut = heapq.heappop(dl)
            if not fut.done():
                self._stats["timeouts"] += 1
                fut.set_exception(errors.OutcomeUnknown("timed out waiting for commit"))
        if len(dl) > 4 * (len(self._pending) + len(self._props) + len(self._reads) + 64):
            self._deadlines = [d for d in dl if not d[2].done()]
            heapq.heapify(self._deadlines)
        if len(self._read_rounds) > 64:
            # Rounds whose answer never came (leader lost): their callers timed out.
            self._read_rounds = {c: fs for c, fs in self._read_rounds.items()
                                 if not all(f.done() for f in fs)}

    def _resolve(self, node_id):
        m = self.core.member(node_id) if self.core is not None else None
        return m.raft_addr if m is not None and m.raft_addr else None

    def _on_message(self, msg):
        if self._held is not None:
            self._held.append(msg)
            return
        t = msg.type
        if trace.ON:
            trace.mark(f"m_in:{t.name}:{len(msg.entries or ())}:{msg.frm}")
        if t == MsgType.SNAPSHOT:
            # On the wire a SNAPSHOT is always a chunk of a streamed file; the core only
            # sees the completed one (_finish_recv).
            self._on_snapshot_chunk(msg)
            return
        try:
            self.core.step(msg)
            if self._diskwatch.watching:
                self._diskwatch.committed(self.core.commit, time.monotonic())
            if msg.frm == self.core.leader:
                self._leader_contact = time.monotonic()
            if self._persisting and t == MsgType.HEARTBEAT:
                self._send_heartbeats()
        except errors.RaftSQLiteError as e:
            log.debug("step %s from %s: %s", t, msg.frm, e)
        except Exception:
            log.exception("core.step failed on %r", msg)
        self._wake.set()

    async def _run(self):
        core = self.core
        while self._running:
            await self._wake.wait()
            self._wake.clear()
            if trace.ON:
                trace.mark("d_wake")
            try:
                self._feed_core()
                while core.has_ready():
                    rd = core.ready()
                    await self._handle_ready(rd)
                    core.advance(rd)
                    if self._handoff:
                        self._hand_off()
                    if rd.entries and core.alone:
                        # Alone in its group: what advance just made durable is
                        # committed; apply it now rather than in a second Ready.
                        ents = core.take_committed()
                        if ents:
                            self._stats["committed_at_persist"] += 1
                            self._apply(ents)
                            if trace.ON:
                                trace.mark("d_applied")
                    self._feed_core()
                if self._compact_req is not None:
                    await self._compact()
            except _Stopping:
                return
            except Exception as e:
                # A failed fsync or write leaves the log in an unknown state: stop here
                # rather than acknowledge anything more (fail-stop). (A disk error is
                # retried instead, in _persist_retrying.)
                log.exception("raft node %s failed", self.node_id)
                self._failed = repr(e)
                self._fail_all(errors.Unavailable(f"raft node failed: {e!r}"), proposed_only=False)
                self._running = False
                return

    def _feed_core(self):
        if self._props:
            props = [p for p in self._props if not p[1].done()]
            self._props = []
            if props:
                try:
                    term, first = self.core.propose_batch([d for d, _ in props])
                except errors.RaftSQLiteError as e:
                    if isinstance(e, errors.NotLeader):
                        e = self._not_leader()
                    for _, f in props:
                        if not f.done():
                            f.set_exception(e)
                else:
                    pend = self._pending
                    for k, (_, f) in enumerate(props):
                        pend[first + k] = (term, f)
                    self._stats["proposals"] += len(props)
                    self._stats["batches"] += 1
        if self._reads:
            reads = [f for f in self._reads if not f.done()]
            self._reads = []
            if reads:
                ctx = next(self._ctx_seq).to_bytes(8, "little")
                try:
                    self.core.read_index(ctx)
                except errors.RaftSQLiteError as e:
                    for f in reads:
                        f.set_exception(e)
                else:
                    self._read_rounds[ctx] = reads
                    self._stats["read_rounds"] += 1

    async def _handle_ready(self, rd):
        self._stats["ready"] += 1
        if trace.ON:
            trace.mark(f"d_rdy:{len(rd.entries)}:{len(rd.committed)}:{len(rd.messages)}")
        if rd.send_early and rd.messages:
            self._send(rd.messages)
            if trace.ON:
                trace.mark("d_early")
        sent = rd.send_early
        if rd.entries or rd.hard_state is not None or rd.snapshot is not None:
            b = self.log.prepare(rd.hard_state, rd.entries, rd.snapshot)
            if b.blob or b.state_bytes is not None or b.reset or b.truncate is not None:
                t0 = time.perf_counter()
                dw = self._diskwatch
                if dw.on and rd.entries and rd.send_early and len(self.core._voters) > 1:
                    dw.begin(rd.entries[-1].index)
                self._persisting = True
                try:
                    await self._persist_retrying(b, rd)
                finally:
                    self._persisting = False
                if dw.watching:
                    self._handoff = dw.end(time.monotonic(), time.perf_counter() - t0)
                if trace.ON:
                    trace.mark("p_back")
                self._stats["persist_s"] += time.perf_counter() - t0
                self._stats["persists"] += 1
            if not sent and rd.messages and rd.snapshot is None:
                # Durable now: a follower's acknowledgement leaves before the log's
                # in-memory bookkeeping (finish), which nothing it says depends on.
                self._send(rd.messages)
                sent = True
                if trace.ON:
                    trace.mark("d_late")
            self.log.finish(b)
            if rd.hard_state is not None:
                self._durable_tv = (rd.hard_state.term, rd.hard_state.vote)
        if rd.snapshot is not None:
            # The log is reset to the snapshot first (above), then the state machine is
            # restored: a crash in between is finished at start, which restores from the
            # snapshot file whenever the state machine is behind the log's snapshot index.
            await self._install_snapshot(rd.snapshot)
        if not sent and rd.messages:
            self._send(rd.messages)
            if trace.ON:
                trace.mark("d_late")
        if rd.committed:
            self._apply(rd.committed)
            if trace.ON:
                trace.mark("d_applied")
        if rd.read_states:
            for rs in rd.read_states:
                futs = self._read_rounds.pop(rs.context, None)
                if futs:
                    if self._applied >= rs.index:
                        for f in futs:
                            if not f.done():
                                f.set_result(None)
                    else:
                        heapq.heappush(self._read_wait, (rs.index, next(self._seq), futs))
        if rd.role is not None:
            self._diskwatch.reset()
            if rd.leader is not None and rd.leader != self._leader_seen:
                # as etcd's leader_changes_seen: a leader other than the last one known
                self._stats["leader_changes"] += 1
            self._leader_seen = rd.leader
        if rd.role is not None and rd.role != Role.LEADER:
            self._fail_all(errors.OutcomeUnknown("leadership lost before commit"),
                           proposed_only=True)

    def _hand_off(self):
        """This leader's disk holds its group back (diskwatch.py): hand leadership to the
        most caught-up voter. It stays a member and catches up as a follower."""
        self._handoff = False
        if self.core.role != Role.LEADER:
            return
        try:
            self.core.transfer_leadership(None)
        except errors.RaftSQLiteError as e:
            log.warning("slow disk: cannot hand leadership over: %s", e)
            return
        log.warning("%s: this leader's log writes are slow (median over %d writes >= %.0f ms, "
                    "followers committed first); handing leadership over",
                    self.node_id, self._diskwatch.window, self._diskwatch.threshold * 1000)

    async def _persist(self, b, rd):
        """Write and fdatasync ``b`` on the persist thread. A small write is waited for
        blocked (the GIL released) for up to ``persist_wait``: the persist thread wakes
        this thread with one futex, without the loop's wake-up and callback round; a
        slower one is awaited, so a slow disk holds the loop for at most ``persist_wait``
        (heartbeats flow, docs/design/raft-io.md). (Writing small appends on this thread
        instead, with a guard thread for stalls, measured slower on 2 shared cores: the
        fdatasync's CPU part then runs where the other members just woken are queued.)

        A leader alone in its group (a shard group of one member) has nothing to send
        and no other member to leave the CPU to, so its small writes are written right
        here (no hand-off per Raft round; sharding.md). After one slower than
        ``persist_wait`` they go back to the persist thread until one is quick again,
        so a slow disk never holds the loop longer than the threaded path would."""
        wait = self._persist_wait(b)
        if wait and not rd.messages and len(self.core._members) <= 1:
            if self._inline_ok:
                if trace.ON:
                    trace.mark("p_sub")
                t0 = time.monotonic()
                self.log.write(b)
                if time.monotonic() - t0 > wait:
                    self._inline_ok = False
                    self._stats["inline_slow"] += 1
                self._stats["persist_inline"] += 1
                return
            self._stats["persist_threaded"] += 1
        if trace.ON:
            trace.mark("p_sub")
        job = self._persist_exec.call(self.log.write, b)
        if wait and job.wait(wait):
            self._stats["persist_waited"] += 1
            self._inline_ok = True      # quick again: a lone leader's next small write is inline
        elif not job.done:
            # Slow disk, or a large write: the loop goes on (ticks, heartbeats, HTTP)
            # and resumes this Ready when the write is done.
            fut = self._loop.create_future()
            loop = self._loop
            job.add_done_callback(lambda j: loop.call_soon_threadsafe(_settle, fut))
            await fut
        job.value()     # a failed write raises here: fail-stop in _run

    def _persist_wait(self, b):
        """How long the loop may block waiting for this write: only small appends (no
        truncation, reset or new segment), and never longer than ``persist_wait``, so
        ticks, heartbeats and HTTP are held up by at most that."""
        w = self.config.persist_wait
        if not w or b.reset or b.truncate is not None or b.new_segment is not None \
                or len(b.blob) > self.config.apply_inline_bytes:
            return 0
        return w

    def _send(self, messages):
        tr = self.transport
        held = self._commit_held
        delay = self.config.commit_notify_delay
        for m in messages:
            t = m.type
            if t == MsgType.APPEND:
                if not m.entries and delay and m.index == self.core.last_index:
                    # Only tells a caught-up follower the new commit index: held for a
                    # moment, the next APPEND (which carries the commit) replaces it.
                    if not held and self._held_timer is None:
                        self._held_timer = self._loop.call_later(delay, self._send_held)
                    held[m.to] = m
                    continue
                h = held.pop(m.to, None)
                if h is not None and h.commit > m.commit:
                    tr.send(h)   # (not expected: a later APPEND carries the newer commit)
                self._stats["commit_piggybacked"] += h is not None
                tr.send(m)
            elif t == MsgType.SNAPSHOT:
                self._start_stream(m)
            else:
                tr.send(m)
        tr.flush()

    def _send_held(self):
        """Send the commit-only APPENDs no later APPEND has carried (the group is idle)."""
        self._held_timer = None
        held, self._commit_held = self._commit_held, {}
        if not held or not self._running or self.core.role != Role.LEADER:
            return
        term = self.core.term
        tr = self.transport
        for m in held.values():
            if m.term == term:
                tr.send(m)
        tr.flush()

    def _fail_all(self, exc, proposed_only):
        pend = self._pending
        self._pending = {}
        for _, f in pend.values():
            if not f.done():
                f.set_exception(exc)
        if not proposed_only:
            for _, f in self._props:
                if not f.done():
                    f.set_exception(errors.ProposalDropped(str(exc)))
            self._props = []
            for futs in list(self._read_rounds.values()) + [w[2] for w in self._read_wait]:
                for f in futs:
                    if not f.done():
                        f.set_exception(errors.Unavailable(str(exc)))
            self._read_rounds = {}
            self._read_wait = []
        else:
            # Reads in flight on a lost leadership will never be answered.
            for futs in self._read_rounds.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(self._not_leader())
            self._read_rounds = {}

    # ---- applying ------------------------------------------------------------------------

    def awaits_result(self, index):
        """Whether a proposer on this member waits for the apply result of the entry at
        ``index``. Called by the state machine from the apply thread (one dict lookup,
        atomic under the GIL): an entry proposed here is pending from propose_batch,
        before it can commit, until its result is delivered."""
        return index in self._pending

    def _apply(self, entries):
        n = self.config.apply_batch
        small = self.config.apply_inline_bytes
        for i in range(0, len(entries), n):
            chunk = entries[i:i + n]
            # Small batches are applied right here when the apply thread has nothing
            # queued (so the order holds): the two hand-offs to and from that thread cost
            # more than such an apply. Large ones (bulk loads) stay on the thread so the
            # loop is never blocked for long.
            if small and self._apply_queued == self._applied and not self._apply_on_thread \
                    and self._failed is None and sum(len(e.data) for e in chunk) <= small:
                self._apply_queued = chunk[-1].index
                bounded = getattr(self.fsm, "apply_bounded", None)
                try:
                    results = self.fsm.apply(chunk) if bounded is None \
                        else bounded(chunk, self.config.apply_inline_budget)
                except Exception as e:  # noqa: BLE001 - fail-stop, as on the thread
                    if diskerr.classify(e) is None:
                        self._applied_done(chunk, None, e)
                        return
                    results = None  # undone: the apply thread retries it (_apply_retrying)
                if results is not None:
                    self._stats["applied_inline"] += 1
                    self._applied_done(chunk, results, None)
                    continue
                # Too slow for the loop: it was undone; the apply thread runs it (and,
                # to keep the order, everything after it that is already committed).
                self._stats["inline_undone"] += 1
            self._apply_queued = chunk[-1].index
            fut = self._in(self._apply_exec, self._apply_retrying, chunk)
            fut.add_done_callback(lambda f, c=chunk: self._on_applied(c, f))

    def _on_applied(self, entries, fut):
        if fut.cancelled():
            self._applied_done(entries, None, RuntimeError("apply cancelled"))
        else:
            exc = fut.exception()
            self._applied_done(entries, None if exc is not None else fut.result(), exc)

    def _applied_done(self, entries, results, exc):
        if self._failed is not None or isinstance(exc, _Stopping):
            return   # a member that failed acknowledges nothing more
        if exc is not None:
            # The state machine's contract is to never raise; if it does, its state is
            # unknown, so this member stops applying (fail-stop) instead of diverging.
            log.error("state machine apply failed at index %d: %r", entries[0].index, exc)
            self._failed = f"apply failed at index {entries[0].index}: {exc!r}"
            self._fail_all(errors.Unavailable(self._failed), proposed_only=False)
            self._running = False
            self._wake.set()
            return
        pend = self._pending
        if pend:
            for e, r in zip(entries, results):
                p = pend.pop(e.index, None)
                if p is not None and not p[1].done():
                    if p[0] == e.term:
                        p[1].set_result(r)
                    else:
                        p[1].set_exception(errors.ProposalDropped(
                            "entry was replaced by a new leader's entry"))
        self._applied = entries[-1].index
        self._stats["applied_entries"] += len(entries)
        self._stats["apply_calls"] += 1
        rw = self._read_wait
        while rw and rw[0][0] <= self._applied:
            for f in heapq.heappop(rw)[2]:
                if not f.done():
                    f.set_result(None)
        th = self.config.snapshot_threshold
        if th and self._running and not self._snapshotting and \
                self._applied - self._snap_index >= th and \
                (not self._snap_retry_at or self._loop.time() >= self._snap_retry_at):
            self._snapshotting = True
            self._loop.create_task(self._take_snapshot())


def _settle(fut):
    if not fut.done():
        fut.set_result(None)
