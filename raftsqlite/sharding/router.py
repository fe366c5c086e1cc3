"""The router: statements in, group-local statements out, one answer back.

It depends only on two small interfaces it declares here, so it can be tested with fakes
and wired by the node without this module knowing about HTTP, Raft or apsw:

``GroupExecutor``
    ``async execute(group, statements, *, transaction=False, guard=None, request_id=None)
    -> list[dict]`` (``request_id``: bytes or None; a group that already applied a request
    with that id answers the recorded results instead of applying it again)
    ``async query(group, statements, *, guard=None, **opts) -> list[dict]``
    ``async request(group, statements, *, transaction=False, guard=None, **opts)
    -> list[dict]`` (rqlite's mixed /db/request; used only for the default group)
    ``statements`` is a list of ``raftsqlite.codec.model.Statement``; ``guard`` is the
    bytes of ``ownership.encode_guard``; for the default group, ``ownership.catalog_guard``
    (the catalog schema version the plan was made with; None for ``shard_id=``).
    One result per statement: ``{"columns","types","values"}`` for a query,
    ``{"last_insert_id","rows_affected"}`` for a write, ``{"error": str}`` for a failed
    statement. A guard that fails makes the whole call raise ``errors.Moved`` or
    ``errors.Fenced`` (``errors.StaleCatalog`` from the default group) *before any
    statement runs*: that is what makes a retry safe.

``CatalogSource``
    ``current() -> Catalog`` (cached, never blocks) and
    ``async refresh() -> Catalog`` (fetch now, e.g. after ``Moved``).

On ``Moved`` the router refreshes and re-routes, on ``Fenced`` it waits (a move's fence is
short) and retries, both bounded. A multi-shard write retries only the shards that
refused; if the refreshed catalog would send it again to a shard that already applied it,
the router stops and says exactly where it was applied (decision 15) instead of applying
anything twice.

A client's ``request_id`` makes a retried write idempotent on every group it reaches:
each call the router makes is sent with its own id, derived from the client's id, the
statements the call covers (their positions in the request) and the group, so the same
request routed the same way derives the same ids. If the catalog changed between a write
and its retry, the retry may split differently; groups reached with the same statements
still deduplicate, but rows whose owner changed in between can be written by their new
owner (a move copies them there), which a unique key then refuses.
"""
import asyncio
import time

from raftsqlite.codec.model import BulkStatements, Statement
from raftsqlite.errors import Fenced, Moved, RaftSQLiteError, RoutingRefused, StaleCatalog
from raftsqlite.sharding.merge import ShardError, merge_aggregates, merge_rows, merge_writes
from raftsqlite.sharding.ownership import catalog_guard, encode_guard
from raftsqlite.sharding.planner import DEFAULT_GROUP, Planner

# A shard answering one of these to a fanned-out DDL means it already has the change.
_ALREADY = ("duplicate column name", "already exists")


class PartialWrite(RaftSQLiteError):
    """A multi-shard write was applied on some shards and could not be completed on the
    others without applying it twice somewhere. ``applied`` names the shards."""

    code = "partial_write"

    def __init__(self, message, applied=()):
        super().__init__(message)
        self.applied = list(applied)


class Router:
    def __init__(self, executor, catalog_source, planner=None, max_moved_retries=5,
                 fence_wait_s=5.0, fence_poll_s=0.02):
        self.ex = executor
        self.cat = catalog_source
        self.planner = planner or Planner()
        self.max_moved_retries = max_moved_retries
        self.fence_wait_s = fence_wait_s
        self.fence_poll_s = fence_poll_s
        self.counts = {"statements": 0, "single": 0, "scatter": 0, "default": 0, "fanout": 0,
                       "moved_retries": 0, "fenced_waits": 0, "refused": 0, "partial_writes": 0,
                       "stale_catalog_retries": 0}

    # ---- public ------------------------------------------------------------------------
    async def execute(self, statements, transaction=False, shard_id=None, request_id=None):
        """Writes. ``statements``: Statement objects or ``(sql, params)`` pairs;
        ``request_id`` (str or bytes) makes a retry of the same request idempotent."""
        if (shard_id is None and request_id is None and not transaction
                and type(statements) is list and len(statements) == 1):
            return await self._execute_one(statements)
        statements = _stmts(statements)
        rid = _rid_bytes(request_id)
        if shard_id is not None:
            if rid is None:
                return await self.ex.execute(shard_id, statements, transaction=transaction)
            return await self.ex.execute(shard_id, statements, transaction=transaction,
                                         request_id=rid)
        return await self._run(statements, transaction, write=True, rid=rid)

    async def query(self, statements, shard_id=None, **opts):
        statements = _stmts(statements)
        if shard_id is not None:
            return await self.ex.query(shard_id, statements, **opts)
        return await self._run(statements, False, write=False, opts=opts)

    async def request(self, statements, transaction=False, **opts):
        """rqlite's ``/db/request``: reads and writes mixed. All-unsharded requests go to
        the default group's ``request`` unchanged; otherwise each statement takes the read
        or the write path by its plan (a transaction must then stay in one group)."""
        statements = _stmts(statements)
        out = []
        stale = 0
        while True:
            try:
                return await self._request_from(statements, transaction, opts, out)
            except StaleCatalog:
                stale += 1        # as in _run: plan what is not done yet again
                self.counts["stale_catalog_retries"] += 1
                if stale > self.max_moved_retries:
                    raise
                await self.cat.refresh()
                if stale > 1:
                    await asyncio.sleep(min(self.fence_poll_s * stale, 0.2))

    async def _request_from(self, statements, transaction, opts, out):
        cat = self.cat.current()
        g = catalog_guard(cat.schema_version)
        plans = [self.planner.plan(s.sql, cat) for s in statements]
        if not out and all(p.kind == "default" for p in plans):
            return await self.ex.request(DEFAULT_GROUP, statements, transaction=transaction,
                                         guard=g, **opts)
        if transaction:
            return await self._run(statements, True, write=True)
        for k in range(len(out), len(statements)):
            st, p = statements[k], plans[k]
            if p.kind == "default":
                out.extend(await self.ex.request(DEFAULT_GROUP, [st], guard=g, **opts))
            elif p.kind == "read":
                out.extend(await self.query([st], **opts))
            else:
                out.extend(await self.execute([st]))
        return out

    def plan(self, sql):
        return self.planner.plan(sql, self.cat.current())

    def explain(self, sql, params=None):
        return self.plan(sql).explain(self.cat.current(), params)

    def stats(self):
        return dict(self.counts, plan_cache=self.planner.stats())

    # ---- running -------------------------------------------------------------------------
    async def _execute_one(self, statements):
        """``execute`` of the commonest routed write, one statement without a request
        id or transaction, in one frame: the plan, route, counts and call of ``_run_one``.
        A default plan, a statement for several groups and any refusal take the general
        path from where this one stopped (a refused call ran nothing)."""
        s = statements[0]
        if type(s) is not Statement:
            statements = _stmts(statements)
            s = statements[0]
        cat = self.cat.current()
        try:
            plan = self.planner.plan(s.sql, cat)
        except RoutingRefused:
            self.counts["refused"] += 1
            raise
        if plan.kind == "default":
            return await self._run(statements, False, True)
        self.counts["statements"] += 1
        if plan.kind == "insert" and len(plan.keys) == 1:
            # one row, one owner: the group and guard bytes without a Route
            g, guard = plan.route_one(cat, s.params)
            self.counts["single"] += 1
            return await self._one_call(g, s, guard, plan, statements, cat)
        route = plan.route(cat, s.params)
        if len(route.calls) != 1 or route.merge is not None:
            ver = cat.schema_version

            async def multi():
                return [await self._multi(plan, s, True, {}, None, ver)]
            return await self._run(statements, False, True, first=multi)
        c = route.calls[0]
        g = c.group
        self.counts["default" if g == DEFAULT_GROUP and not c.guard else "single"] += 1
        if c.sql is not s.sql or c.params is not s.params:
            s = Statement(c.sql, c.params)
        if c.guard:
            guard = encode_guard(c.guard)
        elif g == DEFAULT_GROUP:
            guard = catalog_guard(cat.schema_version)
        else:
            guard = None
        return await self._one_call(g, s, guard, plan, statements, cat)

    async def _one_call(self, g, s, guard, plan, statements, cat):
        """One statement's call to its one group; refused as moved or fenced, the general
        path takes over from that answer (a refused call ran nothing)."""
        try:
            return await self.ex.execute(g, [s], transaction=False, guard=guard)
        except (Moved, Fenced) as e:
            first = e
        ver = cat.schema_version
        return await self._run(statements, False, True, first=lambda: self._single_batch(
            [plan], statements, True, {}, rid=None, ver=ver, first=first))

    async def _run(self, statements, transaction, write, opts=None, rid=None, first=None):
        """``first``: the first attempt, when a caller already began it (a coroutine
        function, run in place of planning from the start)."""
        opts = opts or {}
        results = []     # of the statements done so far, in order
        stale = 0
        while True:
            try:
                if first is not None:
                    fn, first = first, None
                    return await fn()
                return await self._run_from(statements, transaction, write, opts, rid, results)
            except StaleCatalog:
                # The default group refused a default plan made with an older catalog
                # than a registration it applied (nothing of that call ran): plan the
                # statements not yet done again with a fresh catalog.
                stale += 1
                self.counts["stale_catalog_retries"] += 1
                if stale > self.max_moved_retries:
                    raise
                await self.cat.refresh()
                if stale > 1:
                    await asyncio.sleep(min(self.fence_poll_s * stale, 0.2))

    async def _run_from(self, statements, transaction, write, opts, rid, results):
        cat = self.cat.current()
        # A default plan is only as good as the catalog it was made with: the default
        # group checks this version at apply time (StaleCatalog above).
        ver = cat.schema_version
        if not results and not transaction and type(statements) is list and len(statements) == 1:
            try:
                plan = self.planner.plan(statements[0].sql, cat)
            except RoutingRefused:
                self.counts["refused"] += 1
                raise
            if plan.kind != "default":
                return await self._run_one(plan, statements, write, opts, rid, cat, ver)
        try:
            plans = _plan_all(self.planner, statements, cat)
        except RoutingRefused:
            self.counts["refused"] += 1
            raise
        if not results:
            self.counts["statements"] += len(statements)
        if not results and all(p.kind == "default" for p in plans):
            self.counts["default"] += 1
            return await self._call(DEFAULT_GROUP, statements, None, write, transaction, opts,
                                    _sub_rid(rid, 0, len(statements)), ver)
        if transaction:
            return await self._run_together(statements, plans, write, transaction, opts,
                                            _sub_rid(rid, 0, len(statements)))
        i = len(results)
        # Consecutive statements for one and the same group travel together (in order);
        # everything else runs statement by statement.
        while i < len(statements):
            routes = plans[i].route(cat, statements[i].params)
            if len(routes.calls) == 1 and routes.merge is None:
                g = routes.calls[0].group
                batch = [routes]
                j = i + 1
                while j < len(statements):
                    r2 = plans[j].route(cat, statements[j].params)
                    if len(r2.calls) == 1 and r2.merge is None and r2.calls[0].group == g:
                        batch.append(r2)
                        j += 1
                    else:
                        break
                # the routes just made serve the first attempt (same catalog object)
                results.extend(await self._single_batch(plans[i:j], statements[i:j], write, opts,
                                                        (cat, batch), _sub_rid(rid, i, j), ver))
                i = j
            else:
                results.append(await self._multi(plans[i], statements[i], write, opts,
                                                 _sub_rid(rid, i, i + 1), ver))
                i += 1
        return results

    async def _run_one(self, plan, statements, write, opts, rid, cat, ver=None):
        """``_run`` for the commonest routed request, one statement on a sharded table
        outside a transaction, with fewer steps: the same route, counts and call; after
        a ``Moved`` or ``Fenced`` the general retry loop takes over from that refusal.
        (A default plan takes the general path, with whatever the default group checks.)"""
        st = statements[0]
        self.counts["statements"] += 1
        rid = _sub_rid(rid, 0, 1)
        route = plan.route(cat, st.params)
        if len(route.calls) != 1 or route.merge is not None:
            return [await self._multi(plan, st, write, opts, rid, ver)]
        c = route.calls[0]
        self.counts["default" if c.group == DEFAULT_GROUP and not c.guard else "single"] += 1
        try:
            return await self._call(c.group, [Statement(c.sql, c.params)], c.guard or None,
                                    write, False, opts, rid, ver)
        except (Moved, Fenced) as e:
            first = e
        return await self._single_batch([plan], statements, write, opts, rid=rid, ver=ver,
                                        first=first)

    async def _run_together(self, statements, plans, write, transaction, opts, rid=None):
        """A transaction: atomic only inside one group, so every statement must route to
        one and the same single group."""
        async def attempt():
            cat = self.cat.current()
            routes = [p.route(cat, s.params) for p, s in zip(plans, statements)]
            groups = {c.group for r in routes for c in r.calls}
            if len(groups) != 1 or any(len(r.calls) != 1 for r in routes):
                raise RoutingRefused(
                    "a transaction must touch one shard only (it would touch "
                    f"{', '.join(sorted(groups))}); atomic multi-shard commit is not available. "
                    "What to do: split the transaction per shard key, or run the statements "
                    "without transaction=true and check each shard's result.")
            g = groups.pop()
            guard = [it for r in routes for c in r.calls for it in (c.guard or [])]
            sts = [Statement(r.calls[0].sql, r.calls[0].params) for r in routes]
            return await self._call(g, sts, guard or None, write, transaction, opts, rid)
        self.counts["single"] += 1
        return await self._retrying(attempt)

    async def _single_batch(self, plans, statements, write, opts, routed=None, rid=None,
                            ver=None, first=None):
        async def attempt():
            nonlocal routed
            cat = self.cat.current()
            if routed is not None and routed[0] is cat:
                routes = routed[1]
            else:
                routes = [p.route(cat, s.params) for p, s in zip(plans, statements)]
            routed = None
            groups = {r.calls[0].group for r in routes}
            if len(groups) != 1 or any(len(r.calls) != 1 or r.merge is not None for r in routes):
                # The catalog changed under us and the batch no longer shares one group.
                out = []
                for k, (p, s) in enumerate(zip(plans, statements)):
                    out.append(await self._multi(p, s, write, opts, _sub_rid(rid, k, k + 1),
                                                 ver))
                return out
            g = groups.pop()
            guard = [it for r in routes for it in (r.calls[0].guard or [])]
            sts = [Statement(r.calls[0].sql, r.calls[0].params) for r in routes]
            self.counts["default" if g == DEFAULT_GROUP and not guard else "single"] += 1
            return await self._call(g, sts, guard or None, write, False, opts, rid, ver)
        return await self._retrying(attempt, first)

    async def _multi(self, plan, st, write, opts, rid=None, ver=None):
        """One statement that may need several groups, merged into one result."""
        cat = self.cat.current()
        route = plan.route(cat, st.params)
        if len(route.calls) == 1 and route.merge is None:
            return (await self._single_batch([plan], [st], write, opts, rid=rid, ver=ver))[0]
        self.counts["fanout" if route.kind == "fanout" else "scatter"] += 1
        if route.write or write and route.merge and route.merge["kind"] == "write":
            return await self._multi_write(plan, st, route, opts, rid)
        return await self._retrying(lambda: self._scatter_read(plan, st, opts))

    async def _scatter_read(self, plan, st, opts):
        route = plan.route(self.cat.current(), st.params)
        if len(route.calls) == 1 and route.merge is None:
            c = route.calls[0]
            return (await self._call(c.group, [Statement(c.sql, c.params)], c.guard, False, False, opts))[0]
        outs = await asyncio.gather(*[
            self._call(c.group, [Statement(c.sql, c.params)], c.guard, False, False, opts)
            for c in route.calls], return_exceptions=True)
        for o in outs:
            if isinstance(o, BaseException):
                raise o
        res = [(c.group, o[0]) for c, o in zip(route.calls, outs)]
        try:
            if route.merge["kind"] == "agg":
                return merge_aggregates(res, route.merge, st.params)
            return merge_rows(res, route.merge, st.params)
        except ShardError as e:
            return {"error": str(e)}

    async def _multi_write(self, plan, st, route, opts, rid=None):
        """Run a write on several groups; after ``Moved``/``Fenced`` re-send only what was
        refused, and never to a group that already applied it (that would apply twice)."""
        done = {}          # group -> result
        done_epoch = {}    # group -> the epoch of its ownership when it applied
        pending = route.calls
        deadline = time.monotonic() + self.fence_wait_s
        moved = 0
        ddl = bool(route.merge and route.merge.get("ddl"))
        keyed = getattr(plan, "keys", None) is not None or plan.kind == "insert"
        while True:
            outs = await asyncio.gather(*[
                self._call(c.group, [Statement(c.sql, c.params)], c.guard, True, False, opts, rid)
                for c in pending], return_exceptions=True)
            failed = []
            for c, o in zip(pending, outs):
                if isinstance(o, (Moved, Fenced)):
                    failed.append((c, o))
                    continue
                if isinstance(o, BaseException):
                    r = {"error": f"{type(o).__name__}: {o}"}
                else:
                    r = o[0]
                    if ddl and r.get("error") and any(a in r["error"] for a in _ALREADY):
                        r = {"rows_affected": 0, "last_insert_id": None, "note": "already applied"}
                done[c.group] = r
                done_epoch[c.group] = c.guard[0].epoch if c.guard else None
            if not failed:
                break
            if any(isinstance(o, Moved) for _, o in failed):
                moved += 1
                self.counts["moved_retries"] += 1
                if moved > self.max_moved_retries:
                    self._partial(done, failed, "the catalog kept changing")
                await self.cat.refresh()
                if moved > 1:
                    await asyncio.sleep(min(self.fence_poll_s * moved, 0.2))
            else:
                self.counts["fenced_waits"] += 1
                if time.monotonic() > deadline:
                    self._partial(done, failed, "a range stayed fenced too long")
                await asyncio.sleep(self.fence_poll_s)
            fresh = plan.route(self.cat.current(), st.params)
            if ddl:
                pending = [c for c in fresh.calls if c.group not in done]
            elif keyed:
                # Rows are keyed: re-send to whoever owns the keys the refusing shards
                # did not take. A group that applied already cannot own them unless its
                # ranges changed after it applied, and then it would apply twice.
                lost = {k for c, _ in failed for it in (c.guard or []) for k in (it.kids or [])}
                pending = [c for c in fresh.calls
                           if any(k in lost for it in (c.guard or []) for k in (it.kids or []))]
                again = [c.group for c in pending if c.group in done]
                if again:
                    self._partial(done, failed, f"keys moved to {', '.join(again)}, which "
                                  "already applied this statement")
            else:
                # A scatter: groups that applied are complete for the ranges they owned
                # then; if their ranges changed since, part of the data was not covered.
                again = [c.group for c in fresh.calls if c.group in done
                         and c.guard and c.guard[0].epoch != done_epoch[c.group]]
                if again:
                    self._partial(done, failed, f"ranges moved to {', '.join(again)} after it "
                                  "applied this statement")
                pending = [c for c in fresh.calls if c.group not in done]
        if len(done) == 1:
            return next(iter(done.values()))
        return merge_writes(sorted(done.items()))

    def _partial(self, done, failed, why):
        self.counts["partial_writes"] += 1
        applied = sorted(g for g, r in done.items() if not r.get("error"))
        raise PartialWrite(
            f"statement applied on shard(s) {', '.join(applied) or 'none'} but not on "
            f"{', '.join(sorted(c.group for c, _ in failed))}: {why}. What to do: re-run it "
            "restricted to the keys that were not written (it is not atomic across shards).",
            applied)

    async def _retrying(self, fn, first=None):
        """Run ``fn`` again after ``Moved`` (refreshing the catalog) or ``Fenced``
        (waiting), both bounded; only safe for calls that were refused as a whole.
        ``first``: the refusal a first attempt already met (handled as if ``fn`` had
        raised it)."""
        moved = 0
        deadline = time.monotonic() + self.fence_wait_s
        delay = self.fence_poll_s
        while True:
            try:
                if first is not None:
                    e, first = first, None
                    raise e
                return await fn()
            except StaleCatalog:
                raise       # the plan itself is stale: _run plans again
            except Moved:
                moved += 1
                self.counts["moved_retries"] += 1
                if moved > self.max_moved_retries:
                    raise
                await self.cat.refresh()
                if moved > 1:
                    # The shard may not have applied its new ownership yet: give it a moment.
                    await asyncio.sleep(min(delay * moved, 0.2))
            except Fenced:
                self.counts["fenced_waits"] += 1
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
                await self.cat.refresh()

    async def _call(self, group, statements, guard, write, transaction, opts, rid=None,
                    ver=None):
        if guard:
            g = encode_guard(guard)
        elif group == DEFAULT_GROUP and ver is not None:
            g = catalog_guard(ver)   # a default plan: the version it was made with
        else:
            g = None
        if write:
            if rid is not None:
                # one id per (client id, statements covered, group): see the module doc
                return await self.ex.execute(group, statements, transaction=transaction, guard=g,
                                             request_id=rid + b"@" + group.encode())
            return await self.ex.execute(group, statements, transaction=transaction, guard=g)
        return await self.ex.query(group, statements, guard=g, **opts)


def _stmts(statements):
    if type(statements) is BulkStatements:
        return statements   # a sequence of Statement already, kept whole (codec.model)
    out = []
    for s in statements:
        if isinstance(s, Statement):
            out.append(s)
        elif isinstance(s, str):
            out.append(Statement(s))
        else:
            sql, params = s
            out.append(Statement(sql, params))
    return out


def _plan_all(planner, statements, cat):
    """One plan per statement, each SQL text looked up once per request (a bulk request
    repeats one text)."""
    if type(statements) is BulkStatements:
        return [planner.plan(statements.sql, cat)] * len(statements)
    memo = {}
    out = []
    for s in statements:
        p = memo.get(s.sql)
        if p is None:
            p = memo[s.sql] = planner.plan(s.sql, cat)
        out.append(p)
    return out


def _rid_bytes(rid):
    if rid is None or rid == "" or rid == b"":
        return None
    if isinstance(rid, str):
        return rid.encode("utf-8")
    return bytes(rid)


def _sub_rid(rid, i, j):
    """The id of the part of a request covering its statements ``i .. j-1``."""
    return None if rid is None else rid + b"#%d-%d" % (i, j)
