"""The store: what the HTTP layer calls. Writes through the Raft log with group commit,
reads at the consistency levels of rqlite, membership, backups and loads.

Group commit (DESIGN.md decision 10): a write arriving when fewer than ``max_inflight``
proposals are in flight is proposed at once (one client sees one round trip); writes
arriving while proposals are in flight queue up and leave together, as one log entry,
when a slot frees. The FSM applies each entry in one SQLite transaction and keeps every
request's results and atomicity apart.

Reads: ``none`` reads locally (optionally bounded by ``freshness``), ``weak`` reads
locally on a node that believes it leads, ``linearizable`` first confirms leadership
with a ReadIndex round, ``strong`` sends the read through the log, ``auto`` is ``none``
on a non-voter and ``weak`` elsewhere. Local reads run on one thread pool, never on the
event loop.

Membership, snapshots, backups and loads are in ``store_admin.StoreAdmin``, a base class.
"""
import asyncio
import collections
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

from raftsqlite import sqlrewrite
from raftsqlite.codec import check_rows
from raftsqlite.codec.model import (BulkStatements, Command, CommandType, InsertRun, Request,
                                    Statement)
from raftsqlite.config import StoreConfig
from raftsqlite.db import ReadCancel
from raftsqlite.fsm import clock_op, result_op, steps_op
from raftsqlite.fsm_vacuum import is_vacuum_sql
from raftsqlite.raft import trace
from raftsqlite.store_admin import StoreAdmin
from raftsqlite.errors import (BadRequest, EncodeError, LeaderNotFound, NotLeader,
                               OutcomeUnknown, PayloadTooLarge, ProposalDropped, Moved, Fenced,
                               StaleCatalog, CoordinatorFenced,
                               RaftSQLiteError, StaleRead,
                               Timeout, Unavailable)

log = logging.getLogger("raftsqlite.store")

LEVELS = ("none", "weak", "linearizable", "strong", "auto")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_QUERY_WRITE_ERROR = "attempt to change database via query operation"


class Store(StoreAdmin):
    def __init__(self, raft, fsm, db, config: StoreConfig = None, *, node_id="", voter=True,
                 encode=None):
        self.raft = raft
        self.fsm = fsm
        self.db = db
        self.config = config or StoreConfig()
        # every write entry carries this leader's limits (fsm.py, "The write budget")
        self._limit_ops = [steps_op(self.config.max_apply_steps),
                           result_op(self.config.max_result_bytes)]
        self.node_id = node_id
        self.voter = voter
        if encode is None:
            from raftsqlite.codec import encode_command as encode
            prime = getattr(fsm, "prime", None)
            if prime is not None:
                encode = _priming(encode, prime)
        self._encode = encode
        if hasattr(fsm, "lazy_results"):
            # proven bulk results are built here, and only for callers that read them
            # (_batch_done); the rqlite handler renders them unbuilt (lazy_results)
            fsm.lazy_results = True
        self._lazy_futs = set()
        self._reads = ThreadPoolExecutor(self.config.read_threads,
                                         thread_name_prefix="raftsqlite-read")
        self._io = ThreadPoolExecutor(1, thread_name_prefix="raftsqlite-store-io")
        self._queue = collections.deque()
        self._inflight = 0
        self._wait_handle = None
        # Write timeouts: one FIFO per timeout value (deadlines in order) and one timer
        # for the earliest, instead of a timer per write (_expire_due).
        self._expiry = {}
        self._expiry_handle = None
        self._expiry_at = 0.0
        self._rng = random.Random()
        self._closed = False
        self.guard_check = None     # fn(guard: bytes) for reads; the sharding layer sets it
        self.ready_check = None     # fn() -> bool, also required by ready(); sharding sets it
        self.counters = {"writes": 0, "write_batches": 0, "batched_requests": 0,
                         "max_batch": 0, "reads_local": 0, "reads_cancelled": 0,
                         "reads_linearizable": 0,
                         "reads_strong": 0, "not_leader": 0, "write_errors": 0}

    # ---- lifecycle ------------------------------------------------------------------
    def close(self):
        self._closed = True
        for _, fut, _ in self._queue:
            if not fut.done():
                fut.set_exception(OutcomeUnknown("node is shutting down"))
        self._queue.clear()
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
            self._expiry_handle = None
        self._reads.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)

    # ---- leadership -------------------------------------------------------------------
    def is_leader(self) -> bool:
        return bool(self.raft.is_leader)

    def members(self):
        return list(self.raft.members)

    def member(self, node_id):
        for m in self.raft.members:
            if m.node_id == node_id:
                return m
        return None

    def leader(self):
        lid = self.raft.leader_id
        return self.member(lid) if lid else None

    def _not_leader(self):
        self.counters["not_leader"] += 1
        lead = self.leader()
        if lead is None:
            return LeaderNotFound("leader not found")
        return NotLeader(f"not leader; leader is {lead.node_id} at {lead.http_addr}",
                         leader_id=lead.node_id, leader_addr=lead.http_addr)

    def _require_leader(self):
        if not self.raft.is_leader:
            raise self._not_leader()

    def ready(self) -> bool:
        """A leader is known and this node has applied what it knew to be committed."""
        if not self.raft.leader_id or getattr(self.raft, "failed", None) or self.removed() \
                or self.disk_error():
            return False
        if self.ready_check is not None and not self.ready_check():
            return False
        return self.fsm.applied_index() >= min(self.raft.commit_index,
                                               self.raft.last_log_index)

    def disk_error(self):
        """The disk error this node is retrying (its Raft log or SQLite cannot be
        written: full or failing), or None. diskerr.py."""
        return getattr(self.raft, "disk_error", None)

    def removed(self):
        """Why this node believes it is no longer a member of its group (reaped, or
        removed while it was away), or None. driver_reap.py / core ``removed``."""
        return getattr(self.raft, "removed", None)

    async def wait_ready(self, timeout=1.0) -> bool:
        """``ready()`` as of the moment asked. While a node takes writes its commit index
        always runs a little ahead of its applies, so the instant check fails on a
        healthy busy node (/readyz of a leader under writes answered 503 to ~1 poll in
        4): wait up to ``timeout`` for what was committed when asked to be applied."""
        if self.ready():
            return True
        if not self.raft.leader_id or (self.ready_check is not None and not self.ready_check()):
            return False
        target = min(self.raft.commit_index, self.raft.last_log_index)
        try:
            if not await self.raft.wait_applied(target, timeout):
                return False
        except Unavailable:
            return False
        return bool(self.raft.leader_id)

    # ---- writes -----------------------------------------------------------------------
    async def execute(self, statements, *, transaction=False, request_id=None, timeout=None,
                      guard=None, lazy_results=False):
        """Apply statements through the log. -> {"results": [...], "raft_index": int}.
        ``guard`` (bytes, from the sharding router) travels in the log entry and is checked
        by the FSM before the request runs; a failed check raises ``Moved``/``Fenced``
        (nothing of the request ran). ``lazy_results``: the caller renders the results
        with ``wire.render_results`` and nothing else, so a proven bulk run may come back
        as an ``InsertRun`` with its results pending (not built: 1000 dicts fewer)."""
        stmts = self._validate(statements, bulk_ok=True)
        if not stmts:
            return {"results": [], "raft_index": self.fsm.applied_index()}
        stmts = sqlrewrite.rewrite_statements(stmts, rng=self._rng)
        self._require_leader()
        rid = _request_id(request_id)
        if guard is not None and not isinstance(guard, (bytes, bytearray)):
            raise BadRequest("guard must be bytes")
        if type(stmts) is list and any(is_vacuum_sql(st.sql) for st in stmts):
            return await self._vacuum(stmts, rid, timeout)
        index, results = await self._submit(
            Request(stmts, bool(transaction), rid, bytes(guard) if guard is not None else None),
            timeout or self.config.write_timeout, lazy_results)
        self.counters["writes"] += 1
        if guard is not None and results and len(results) == 1 \
                and type(results) is not InsertRun:     # a refusal is one plain result
            _raise_guard_refusal(results[0])
        return {"results": results, "raft_index": index}

    async def _vacuum(self, stmts, rid, timeout):
        """VACUUM runs outside any transaction, so it is an entry of its own, never
        group-committed with other requests (fsm_vacuum.py)."""
        if len(stmts) != 1 or stmts[0].params:
            raise BadRequest("VACUUM must be the only statement of its request (it runs "
                             "outside any transaction); send it on its own")
        res = await self._propose_one(
            Command(CommandType.EXECUTE, [Request(stmts, False, rid, None)],
                    [clock_op(self.db.clock_now_ms()), *self._limit_ops]),
            timeout or self.config.write_timeout)
        self.counters["writes"] += 1
        return {"results": res["results"][0], "raft_index": res["index"]}

    def _submit(self, req, timeout, lazy=False):
        loop = asyncio.get_running_loop()
        if trace.ON:
            trace.mark("s_sub")
        fut = loop.create_future()
        if lazy:
            self._lazy_futs.add(fut)
            fut.add_done_callback(self._lazy_futs.discard)
        size = _request_size(req.statements)
        self._queue.append((req, fut, size))
        cfg = self.config
        # An idle pipeline proposes at once (one client: one round trip). While a batch is
        # in flight, arrivals wait for it to complete and leave together, unless a whole
        # batch is already waiting: proposing each arrival into a free second slot made a
        # batch of one per slot (64 clients averaged 11 requests per entry, against 22
        # with this rule), and every entry costs a Ready, an fsync on each member and an
        # AppendEntries round.
        if self._inflight == 0:
            if cfg.batch_wait > 0:
                if self._wait_handle is None:
                    self._wait_handle = loop.call_later(cfg.batch_wait, self._flush)
            else:
                self._flush()
        elif self._inflight < cfg.max_inflight and len(self._queue) >= cfg.batch_max_requests:
            self._flush()
        self._expire_at(loop, fut, timeout)
        return fut

    async def execute_many(self, requests, *, timeout=None):
        """Independent write requests that arrived together (a sharding router's coalesced
        call): queued at once, so they leave in one group-commit batch instead of the
        first alone and the rest one entry later. Each keeps its own statements,
        transaction, guard and results. -> one outcome per request, in order:
        ``{"results", "raft_index"}`` or the exception that request alone met.
        Raises ``NotLeader`` (before anything is queued) on a follower."""
        self._require_leader()
        loop = asyncio.get_running_loop()
        timeout = timeout or self.config.write_timeout
        outs = [None] * len(requests)
        futs = []
        for i, rq in enumerate(requests):
            try:
                stmts = self._validate(rq.statements)
                if not stmts:
                    outs[i] = {"results": [], "raft_index": self.fsm.applied_index()}
                    continue
                if type(stmts) is list and any(is_vacuum_sql(st.sql) for st in stmts):
                    raise BadRequest("VACUUM cannot be sent in a coalesced call; send it "
                                     "on its own to the group's leader")
                stmts = sqlrewrite.rewrite_statements(stmts, rng=self._rng)
                g = rq.guard
                if g is not None and not isinstance(g, (bytes, bytearray)):
                    raise BadRequest("guard must be bytes")
                req = Request(stmts, bool(rq.transaction), _request_id(rq.request_id),
                              bytes(g) if g is not None else None)
            except RaftSQLiteError as e:
                outs[i] = e
                continue
            fut = loop.create_future()
            size = sum(len(st.sql) + 16 * (len(st.params) if st.params else 0) for st in stmts)
            self._queue.append((req, fut, size))
            futs.append((i, fut, g is not None))
        if futs and self._inflight < self.config.max_inflight:
            self._flush()
        handle = loop.call_later(timeout, _expire_all, [f for _, f, _ in futs], timeout)
        try:
            for i, fut, guarded in futs:
                try:
                    index, results = await fut
                    if guarded and results and len(results) == 1:
                        _raise_guard_refusal(results[0])
                except RaftSQLiteError as e:
                    outs[i] = e
                    continue
                except Exception as e:  # noqa: BLE001 - one request's outcome, not the call's
                    outs[i] = OutcomeUnknown(f"write failed: {type(e).__name__}: {e}")
                    continue
                self.counters["writes"] += 1
                outs[i] = {"results": results, "raft_index": index}
        finally:
            handle.cancel()
        return outs

    def _expire_at(self, loop, fut, timeout):
        """Fail ``fut`` with Timeout if it is not done ``timeout`` seconds from now. The
        batch still completes for everyone else; this caller just stops waiting. (A timer
        per write cost more than the rest of the store's own work for it.)"""
        dq = self._expiry.get(timeout)
        if dq is None:
            dq = self._expiry[timeout] = collections.deque()
        else:
            while dq and dq[0][1].done():    # writes finish about in order: keep it short
                dq.popleft()
        at = loop.time() + timeout
        dq.append((at, fut))
        if self._expiry_handle is None or at < self._expiry_at:
            if self._expiry_handle is not None:
                self._expiry_handle.cancel()
            self._expiry_at = at
            self._expiry_handle = loop.call_at(at, self._expire_due)

    def _expire_due(self):
        self._expiry_handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        first = None
        for timeout, dq in list(self._expiry.items()):
            while dq:
                at, fut = dq[0]
                if fut.done():
                    dq.popleft()
                elif at <= now:
                    dq.popleft()
                    _expire(fut, timeout)
                else:
                    break
            if dq:
                first = dq[0][0] if first is None else min(first, dq[0][0])
            else:
                del self._expiry[timeout]
        if first is not None and not self._closed:
            self._expiry_at = first
            self._expiry_handle = loop.call_at(first, self._expire_due)

    def _flush(self):
        self._wait_handle = None
        cfg = self.config
        while self._queue and self._inflight < cfg.max_inflight:
            batch, nbytes = [], 0
            while self._queue and len(batch) < cfg.batch_max_requests:
                item = self._queue[0]
                if batch and nbytes + item[2] > cfg.batch_max_bytes:
                    break
                self._queue.popleft()
                if item[1].done():      # caller gave up before we proposed: drop it
                    continue
                batch.append(item)
                nbytes += item[2]
            if not batch:
                continue
            self._inflight += 1
            self._propose_batch(batch)

    def _propose_batch(self, batch):
        """Propose one batch (its slot in ``_inflight`` already taken) and return at once:
        no task per batch, the outcome arrives in ``_batch_done``."""
        try:
            data = self._encode(Command(CommandType.EXECUTE, [b[0] for b in batch],
                                        [clock_op(self.db.clock_now_ms()),
                                         *self._limit_ops]))
        except (EncodeError, ValueError, TypeError, OverflowError) as exc:
            if len(batch) == 1:
                self._batch_failed(batch, exc)
                self._release_slot()
                return
            # one request cannot be encoded: propose each alone (a slot each) so only it fails
            self._inflight += len(batch) - 1
            for b in batch:
                self._propose_batch([b])
            return
        self.counters["write_batches"] += 1
        self.counters["batched_requests"] += len(batch)
        self.counters["max_batch"] = max(self.counters["max_batch"], len(batch))
        try:
            pf = getattr(self.raft, "propose_future", None)
            fut = (pf(data, self.config.write_timeout) if pf is not None else
                   asyncio.ensure_future(self.raft.propose(data, self.config.write_timeout)))
        except Exception as exc:  # noqa: BLE001 - refused up front (not leader, ...)
            self._batch_failed(batch, exc)
            self._release_slot()
            return
        fut.add_done_callback(lambda f: self._batch_done(batch, f))

    def _batch_done(self, batch, fut):
        if trace.ON:
            trace.mark("s_done")
        try:
            exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
            if exc is not None:
                self._batch_failed(batch, exc)
                return
            res = fut.result()
            index, results = res["index"], res["results"]
            lazy = self._lazy_futs
            for i, (_, f, _) in enumerate(batch):
                if not f.done():
                    r = results[i]
                    if type(r) is InsertRun and f not in lazy:
                        r.materialize()
                    f.set_result((index, r))
        except Exception as exc:  # noqa: BLE001 - a malformed result fails the batch
            self._batch_failed(batch, exc)
        finally:
            self._release_slot()

    def _batch_failed(self, batch, exc):
        # every caller of the batch learns the same outcome
        self.counters["write_errors"] += 1
        err = self._map_error(exc)
        for _, f, _ in batch:
            if not f.done():
                f.set_exception(err)

    def _release_slot(self):
        self._inflight -= 1
        if self._queue and not self._closed:
            self._flush()

    def _map_error(self, exc):
        if isinstance(exc, NotLeader):
            return self._not_leader()
        if isinstance(exc, ProposalDropped) and not self.raft.is_leader:
            # definitely not committed and we lost leadership: the caller (HTTP) may
            # safely forward the same request to the new leader
            return self._not_leader()
        if isinstance(exc, (EncodeError, OverflowError, TypeError, ValueError)) and \
                not isinstance(exc, RaftSQLiteError):
            return BadRequest(f"cannot encode request: {exc}")
        if isinstance(exc, EncodeError):
            return BadRequest(f"cannot encode request: {exc}")
        if isinstance(exc, RaftSQLiteError):
            return exc
        if isinstance(exc, asyncio.TimeoutError):
            return Timeout("proposal timed out; outcome unknown")
        return OutcomeUnknown(f"write failed: {type(exc).__name__}: {exc}")

    async def system(self, ops, *, timeout=None):
        """Propose SYSTEM ops ``[(name, args: bytes)]`` (handled by FSM handlers registered
        by name, e.g. the sharding catalog). -> {"results": [one per op], "raft_index"}."""
        ops = [(str(n), bytes(a)) for n, a in ops]
        self._require_leader()
        res = await self._propose_one(Command(CommandType.SYSTEM, ops=ops),
                                      timeout or self.config.write_timeout)
        return {"results": res["results"], "raft_index": res["index"]}

    async def barrier(self, *, timeout=None):
        """Return once everything proposed before this call is applied here (leader)."""
        self._require_leader()
        res = await self._propose_one(Command(CommandType.NOOP),
                                      timeout or self.config.write_timeout)
        return res["index"]

    async def _propose_one(self, cmd, timeout):
        try:
            data = self._encode(cmd)
        except (EncodeError, ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(f"cannot encode request: {exc}") from None
        try:
            return await self.raft.propose(data, timeout)
        except Exception as exc:
            raise self._map_error(exc) from None

    # ---- reads ------------------------------------------------------------------------
    async def query(self, statements, *, level="weak", freshness=None, freshness_strict=False,
                    transaction=False, db_timeout=None, timeout=None, guard=None):
        """Run reads. -> {"results": [...]} (a write statement gets an error result).
        ``guard``: a routed read's ownership guard, checked here before reading
        (``guard_check``, installed by the sharding layer; raises ``Moved``); a ``strong``
        read carries it through the log too, checked again where it is applied."""
        stmts = self._validate(statements)
        level = self._level(level)
        if guard is not None and self.guard_check is not None:
            self.guard_check(bytes(guard))
        for st in stmts:
            sqlrewrite.check(st.sql)
        if not stmts:
            return {"results": []}
        timeout = timeout or self.config.read_timeout
        if level == "strong":
            self._require_leader()
            reads = [st if sqlrewrite.is_read_only(st.sql) else None for st in stmts]
            runnable = [_schema_hidden(st) for st in reads if st is not None]
            g = bytes(guard) if guard is not None else None
            res = await self._propose_one(
                Command(CommandType.QUERY, [Request(runnable, bool(transaction), None, g)],
                        [clock_op(self.db.clock_now_ms()), *self._limit_ops]), timeout)
            self.counters["reads_strong"] += 1
            if g is not None and runnable and len(res["results"][0]) == 1:
                _raise_guard_refusal(res["results"][0][0])
            return {"results": _merge_refused(reads, res["results"][0] if runnable else []),
                    "raft_index": res["index"]}
        if level == "none":
            self._check_fresh(freshness, freshness_strict)
        else:
            self._require_leader()
            if level == "linearizable":
                try:
                    await self.raft.read_index(timeout)
                except Exception as exc:
                    raise self._map_error(exc) from None
                self.counters["reads_linearizable"] += 1
        return {"results": await self._local_read(stmts, transaction, db_timeout)}

    async def _local_read(self, stmts, transaction, db_timeout):
        reads = [st if sqlrewrite.is_read_only(st.sql) else None for st in stmts]
        pairs = [(st.sql, st.params) for st in reads if st is not None]
        budget = self.config.inline_read_budget
        if budget > 0 and (db_timeout is None or db_timeout > budget):
            res = self.db.read_inline(pairs, transaction=bool(transaction), budget=budget)
            if res is not None:
                self.counters["reads_local"] += 1
                return _merge_refused(reads, res)
        loop = asyncio.get_running_loop()
        cancel = ReadCancel()
        try:
            res = await loop.run_in_executor(
                self._reads, lambda: self.db.read(pairs, transaction=bool(transaction),
                                                  db_timeout=db_timeout, cancel=cancel))
        except asyncio.CancelledError:
            # The caller is gone (the client closed its connection): stop SQLite rather
            # than let an unbounded query hold a reader thread and a core.
            cancel.cancelled = True
            self.counters["reads_cancelled"] += 1
            raise
        self.counters["reads_local"] += 1
        return _merge_refused(reads, res)

    def _level(self, level):
        level = (level or "weak").lower()
        if level not in LEVELS:
            raise BadRequest(f"unknown read consistency level {level!r}; use one of "
                             f"{', '.join(LEVELS)}")
        if level == "auto":
            level = "weak" if self.voter else "none"
        return level

    def _check_fresh(self, freshness, strict):
        if not freshness or self.raft.is_leader:
            return
        age = self._leader_contact_age()
        if not self.raft.leader_id or age is None:
            raise StaleRead("no leader contact; data may be stale beyond freshness")
        if age > freshness:
            raise StaleRead(f"last leader contact {age:.3f}s ago exceeds freshness "
                            f"{freshness:g}s")
        if strict and self.fsm.applied_index() < self.raft.commit_index:
            raise StaleRead("this node has not applied everything committed yet "
                            "(freshness_strict)")

    def _leader_contact_age(self):
        """Seconds since this follower last heard from its leader, or None if unknown."""
        contact = self.raft.last_leader_contact
        return None if contact is None else time.monotonic() - contact

    async def request(self, statements, *, transaction=False, request_id=None, level="weak",
                      freshness=None, freshness_strict=False, db_timeout=None, timeout=None,
                      guard=None):
        """Mixed reads and writes: all reads -> a read at ``level``; any write -> the
        whole request goes through the log (reads in it see the log's order). ``guard``
        as for ``query``/``execute``."""
        stmts = self._validate(statements)
        if stmts and all(sqlrewrite.is_read_only(st.sql) for st in stmts):
            return await self.query(stmts, level=level, freshness=freshness,
                                    freshness_strict=freshness_strict, transaction=transaction,
                                    db_timeout=db_timeout, timeout=timeout, guard=guard)
        return await self.execute(stmts, transaction=transaction, request_id=request_id,
                                  timeout=timeout, guard=guard)

    # ---- validation -------------------------------------------------------------------
    def _validate(self, statements, bulk_ok=False):
        """-> a list of Statement, or (writes only, ``bulk_ok``) a BulkStatements, whose
        text and rows are checked here once and kept as they are."""
        if type(statements) is BulkStatements:
            if bulk_ok:
                return self._validate_bulk(statements)
            statements = list(statements)
        if not isinstance(statements, (list, tuple)):
            raise BadRequest("statements must be a list")
        if len(statements) > self.config.max_statements:
            raise PayloadTooLarge(f"too many statements: {len(statements)} > "
                                  f"{self.config.max_statements}")
        out = []
        for i, st in enumerate(statements):
            if isinstance(st, str):
                st = Statement(st)
            if not isinstance(st, Statement) or not isinstance(st.sql, str):
                raise BadRequest(f"statement {i} is not SQL text")
            p = st.params
            if p is not None:
                if isinstance(p, tuple):
                    p = list(p)
                    st = Statement(st.sql, p)
                if isinstance(p, list):
                    lo, hi = _INT64
                    for v in p:
                        t = type(v)
                        if t is str or v is None or t is float or t is bytes or t is bool \
                                or (t is int and lo <= v <= hi):
                            continue
                        _check_value(v, i)
                elif isinstance(p, dict):
                    for k, v in p.items():
                        if not isinstance(k, str) or not k:
                            raise BadRequest(f"statement {i}: parameter names must be "
                                             f"non-empty strings")
                        _check_value(v, i)
                else:
                    raise BadRequest(f"statement {i}: parameters must be a list or an object")
            out.append(st)
        return out

    def _validate_bulk(self, bulk):
        rows = bulk.rows
        if len(rows) > self.config.max_statements:
            raise PayloadTooLarge(f"too many statements: {len(rows)} > "
                                  f"{self.config.max_statements}")
        if not isinstance(bulk.sql, str):
            raise BadRequest("statement 0 is not SQL text")
        if not isinstance(rows, list) or not rows:
            raise BadRequest("bulk statements need a non-empty list of parameter rows")
        width = len(rows[0]) if type(rows[0]) is list else -1
        start = check_rows(rows, width)    # one compiled pass over the common types
        if start < 0:
            return bulk
        lo, hi = _INT64
        for i in range(start, len(rows)):
            row = rows[i]
            if type(row) is not list or len(row) != width:
                raise BadRequest(f"statement {i}: bulk rows must be lists of one length")
            for v in row:
                t = type(v)
                if t is str or v is None or t is float or t is bytes or t is bool \
                        or (t is int and lo <= v <= hi):
                    continue
                _check_value(v, i)
        return bulk

    # ---- status -----------------------------------------------------------------------
    def status(self) -> dict:
        """rqlite's /status "store" section (its keys), plus ours."""
        lead = self.leader()
        r = self.raft
        role = getattr(r, "role", None)
        state = (getattr(role, "value", role) or ("leader" if r.is_leader else "follower"))
        if getattr(r, "failed", None):
            state = "shutdown"   # rqlite's word for a Raft that stopped; raft.failed says why
        return {
            "node_id": self.node_id,
            "raft": {"state": str(state).replace("-", " ").title().replace(" ", ""),
                     "voter": self.voter, "term": r.term,
                     "commit_index": r.commit_index, "applied_index": r.applied_index,
                     "last_log_index": r.last_log_index,
                     "last_snapshot_index": r.last_snapshot_index},
            "leader": {"node_id": lead.node_id if lead else "",
                       "addr": lead.raft_addr if lead else "",
                       "api_addr": lead.http_addr if lead else ""},
            "is_leader": self.is_leader(),
            "ready": self.ready(),
            "removed": self.removed(),
            "disk_error": self.disk_error(),
            "fsm_index": self.fsm.applied_index(),
            "db_applied_index": self.fsm.applied_index(),
            "sqlite3": {"path": self.db.path, "size": self.db.file_size(),
                        # rqlite's keys (its CLI reads fk_constraints before a backup)
                        "fk_constraints": "enabled" if getattr(self.db, "foreign_keys", False)
                        else "disabled",
                        "extensions": [os.path.basename(p) for p in
                                       getattr(self.db, "extensions", ())]},
            "members": [{"node_id": m.node_id, "raft_addr": m.raft_addr,
                         "http_addr": m.http_addr, "voter": m.voter} for m in self.members()],
            "group_commit": {"batches": self.counters["write_batches"],
                             "requests": self.counters["batched_requests"],
                             "max_batch": self.counters["max_batch"]},
        }

    async def wait_synced(self, timeout=None):
        """Wait until this node has applied everything committed when called."""
        target = self.raft.commit_index
        deadline = time.monotonic() + (timeout or self.config.read_timeout)
        while self.fsm.applied_index() < target:
            if time.monotonic() > deadline:
                raise Timeout(f"not synced within {timeout}s (applied "
                              f"{self.fsm.applied_index()} < {target})")
            await asyncio.sleep(0.01)

    def stats(self) -> dict:
        c = dict(self.counters)
        c["queue_depth"] = len(self._queue)
        c["inflight"] = self._inflight
        c["avg_batch"] = (c["batched_requests"] / c["write_batches"]) if c["write_batches"] else 0
        return {"store": c, "fsm": self.fsm.stats(), "db": self.db.stats(),
                "raft": self.raft.stats() if hasattr(self.raft, "stats") else {}}


def _priming(encode, prime):
    """``encode`` that also hands each Command and its bytes to ``prime`` (FSM.prime): our
    own apply of those bytes may then skip decoding them (FSM.prime says when that is
    exact; it ignores every other command)."""
    def encode_and_prime(cmd):
        data = encode(cmd)
        try:
            prime(data, cmd)
        except Exception:   # noqa: BLE001 - only a shortcut: the apply decodes instead
            pass
        return data
    return encode_and_prime


def _request_size(statements):
    """About how many bytes a request takes in a log entry (for batch_max_bytes)."""
    if type(statements) is BulkStatements:
        rows = statements.rows
        return len(statements.sql) + 16 * len(rows) * (len(rows[0]) if rows else 0)
    return sum(len(s.sql) + 16 * (len(s.params) if s.params else 0) for s in statements)


def _schema_hidden(st):
    """A strong read runs in the log on every member's writer, where ``Database.read``'s
    rewrite does not reach: the node's tables are left out of sqlite_master here, before
    logging (sqlrewrite.hide_internal)."""
    if sqlrewrite.may_name_schema(st.sql):
        sql = sqlrewrite.hide_internal(st.sql)
        if sql is not st.sql:
            return Statement(sql, st.params)
    return st


def _raise_guard_refusal(r):
    """The FSM answers a refused guard with one ``{"error", "code"}`` result."""
    code = r.get("code")
    if code == StaleCatalog.code:
        raise StaleCatalog(r.get("error") or "stale catalog")
    if code == CoordinatorFenced.code:
        raise CoordinatorFenced(r.get("error") or "coordinator fenced")
    if code == Moved.code:
        raise Moved(r.get("error") or "moved")
    if code == Fenced.code:
        raise Fenced(r.get("error") or "fenced")


def _expire_all(futs, timeout):
    for f in futs:
        _expire(f, timeout)


def _expire(fut, timeout):
    if not fut.done():
        fut.set_exception(Timeout(f"write not confirmed within {timeout:g}s; it may still "
                                  f"be applied (outcome unknown)"))


def _check_value(v, i):
    if v is None or isinstance(v, (str, bytes, bool, float)):
        return
    if isinstance(v, int):
        if not (_INT64[0] <= v <= _INT64[1]):
            raise BadRequest(f"statement {i}: integer parameter {v} is outside 64 bits")
        return
    if isinstance(v, (bytearray, memoryview)):
        return
    raise BadRequest(f"statement {i}: unsupported parameter type {type(v).__name__}")


def _request_id(rid):
    if rid is None or rid == "" or rid == b"":
        return None
    if isinstance(rid, str):
        return rid.encode("utf-8")
    if isinstance(rid, (bytes, bytearray)):
        return bytes(rid)
    if isinstance(rid, int):
        return str(rid).encode()
    raise BadRequest("request_id must be a string")


def _merge_refused(reads, results):
    """Re-insert an error result for each write statement that a read refused to run."""
    out, it = [], iter(results)
    for st in reads:
        out.append(next(it, {"error": "not executed"}) if st is not None
                   else {"error": _QUERY_WRITE_ERROR})
    return out
