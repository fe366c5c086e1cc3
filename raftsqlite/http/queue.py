"""Queued writes (rqlite's ``/db/execute?queue``): the request is acknowledged at once with
a sequence number, and written later in a batch with other queued requests. With
``wait``, the answer comes once the batch holding it has been written.

Batches are written through the same SQL backend as any write; on a follower the batch
is forwarded to the leader as one ``/db/execute`` request. A failed batch is counted and
logged, and ``wait`` callers receive its error (rqlite only logs it; we prefer that the
one client who asked to wait learns its write failed).
"""
import asyncio
import logging
import time

import orjson

from raftsqlite import errors
from raftsqlite.client import FORWARDED_HEADER

log = logging.getLogger("raftsqlite.http.queue")


def statement_json(st):
    """A Statement back into rqlite's request form (BLOBs as byte arrays)."""
    if not st.params:
        return st.sql
    if isinstance(st.params, dict):
        return [st.sql, {k: (list(v) if isinstance(v, bytes) else v)
                         for k, v in st.params.items()}]
    return [st.sql] + [list(v) if isinstance(v, bytes) else v for v in st.params]


class _TxParams:
    """What the SQL backend reads of a request's parameters, for a queued batch written in
    one transaction."""
    transaction = True
    timeout = None
    request_id = None
    lazy_results = False
    shard_id = None
    auto_route = False


_TX = _TxParams()


class WriteQueue:
    def __init__(self, ctx, *, capacity, batch, interval, tx=False):
        self.ctx = ctx
        self.tx = tx              # each batch in one transaction (rqlite's -write-queue-tx)
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self._items = []          # (seq, statements, future or None)
        self._wake = None
        self._task = None
        self._last_seq = 0
        self.last_written_seq = 0
        self.counters = {"queued": 0, "batches": 0, "written": 0, "failed_batches": 0}

    def start(self):
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        if self._task is None:
            return
        t, self._task = self._task, None
        t.cancel()
        try:
            await t
        except (asyncio.CancelledError, Exception):
            pass
        if self._items:  # best effort: write what was acknowledged
            try:
                await asyncio.wait_for(self._flush(), timeout=5)
            except Exception as e:
                log.warning("queued writes lost at shutdown: %s", e)

    def _next_seq(self):
        # Increasing across restarts as rqlite's are (time based), and strictly increasing.
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    def put(self, statements, wait):
        """Queue a request; returns (sequence number, future or None)."""
        if self._task is None:
            raise errors.Unavailable("the write queue is not running")
        if len(self._items) >= self.capacity:
            raise errors.Unavailable(f"the write queue is full ({self.capacity} requests); "
                                     f"retry later")
        fut = None
        if wait:
            fut = asyncio.get_running_loop().create_future()
            # A waiter that timed out no longer reads the outcome; consume it so a failed
            # batch is not reported as "exception never retrieved".
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        seq = self._next_seq()
        self._items.append((seq, statements, fut))
        self.counters["queued"] += 1
        if sum(len(s) for _, s, _ in self._items) >= self.batch or wait:
            self._wake.set()
        return seq, fut

    async def _run(self):
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._items:
                await self._flush()

    async def _flush(self):
        while self._items:
            take, n = 0, 0
            for _, stmts, _ in self._items:
                if take and n + len(stmts) > self.batch:
                    break
                take += 1
                n += len(stmts)
            items, self._items = self._items[:take], self._items[take:]
            stmts = [s for _, ss, _ in items for s in ss]
            err = None
            try:
                if stmts:
                    await self._write(stmts)
                self.counters["batches"] += 1
                self.counters["written"] += len(stmts)
                self.last_written_seq = items[-1][0]
            except Exception as e:  # the batch failed; tell waiters, keep serving
                err = e
                self.counters["failed_batches"] += 1
                log.warning("queued batch of %d statements failed: %s", len(stmts), e)
            for _, _, fut in items:
                if fut is not None and not fut.done():
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(err)

    async def _write(self, stmts):
        ctx = self.ctx
        try:
            await ctx.sql.execute(stmts, _TX if self.tx else None)
        except errors.NotLeader as e:
            from raftsqlite.http.forward import leader_http_addr
            addr = leader_http_addr(ctx, e)
            if not addr:
                raise errors.LeaderNotFound("leader not found") from None
            body = orjson.dumps([statement_json(s) for s in stmts])
            path = "/db/execute?transaction" if self.tx else "/db/execute"
            r = await ctx.client.request("POST", addr, path, body=body, headers={
                "Content-Type": "application/json", FORWARDED_HEADER: "1"},
                timeout=ctx.settings.default_timeout)
            if r.status != 200:
                raise errors.Unavailable(f"leader {addr} refused a queued batch: "
                                         f"{r.status} {r.body[:200]!r}")

    def stats(self):
        return dict(self.counters, pending=len(self._items), capacity=self.capacity,
                    sequence_number=self.last_written_seq)
