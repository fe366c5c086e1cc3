"""``RouterSQL``: the node's SQL backend (``node.sql_backend``) when sharding is on, the
seam between the HTTP handlers and the router: the three SQL calls, and the backup and
load seams (``backup.backup_for``, ``load.load_for``). Moved out of ``service.py``, which
keeps the service itself (FSM wiring, catalog transport, executor)."""
import time

from raftsqlite import errors
from raftsqlite.codec.model import BulkStatements, Statement
from raftsqlite.fsm_vacuum import is_vacuum_sql
from raftsqlite.sharding.backup import backup_for
from raftsqlite.sharding.load import load_for
from raftsqlite.sharding.merge import merge_writes
from raftsqlite.sharding.ownership import catalog_guard

_LAZY = {"lazy_results": True}


class RouterSQL:
    """``node.sql_backend``: the HTTP handlers' SQL seam, through the router. Statements
    on registered tables are always routed (``auto_route`` is accepted and implied);
    ``shard_id`` sends them to one group unchanged.

    The unsharded path skips the router: on a default-group node whose catalog is
    loaded, a request without ``shard_id`` whose statements all plan to the default
    group goes to this node's store as without sharding (every flag, the client's
    request id, ``raft_index``; a follower raises ``NotLeader`` and the HTTP layer
    forwards or redirects the original request), carrying the catalog guard of the
    catalog it was planned with, like every default plan (router.py): the default group
    refuses it with ``StaleCatalog`` (nothing ran) when a registration it missed makes
    the plan wrong, and then the request is planned again, through the router. With no
    table registered the plan is one attribute check; otherwise one cached plan lookup
    per SQL text."""

    def __init__(self, svc):
        self.svc = svc
        self.store = svc.node.store
        self._default_seen = -1e9     # monotonic time the default group last answered

    async def check_queue(self, statements):
        """rqlite answers a queued write 503 when there is no leader to write it to, since
        the write happens after the answer. The HTTP layer checks this node's own group;
        on a shard node, statements that plan to the default group (unsharded tables,
        DDL) need that group's leader too, or they were answered 200 and then lost. A
        catalog read tells: a default member without a leader refuses to serve it. One
        success covers a second of queued writes."""
        svc = self.svc
        if svc.is_default or not svc.catalog_loaded():
            return
        cat = svc.cache.current()
        plan = self.router.planner.plan
        try:
            if type(statements) is BulkStatements:
                to_default = plan(statements.sql, cat).kind == "default"
            else:
                to_default = any(plan(getattr(s, "sql", s), cat).kind == "default"
                                 for s in statements)
        except errors.RaftSQLiteError:
            return      # the write itself will say why it cannot run
        if not to_default or time.monotonic() - self._default_seen < 1.0:
            return
        try:
            await svc.cache.refresh()
        except svc.cache.UNREACHABLE as e:
            raise errors.LeaderNotFound(
                "leader not found: the default group, which holds the unsharded tables this "
                f"write goes to, has no leader ({e}); nothing was queued") from None
        self._default_seen = time.monotonic()

    @property
    def router(self):
        return self.svc.router

    def _unsharded(self, statements, p):
        """The catalog the request was planned with when it takes the unsharded path,
        else None."""
        svc = self.svc
        if not svc.is_default or not svc._synced or \
                (p is not None and getattr(p, "shard_id", None) is not None):
            return None
        cat = svc.cache.current()
        if not cat.tables:
            return cat
        plan = self.router.planner.plan
        try:
            if type(statements) is BulkStatements:
                return cat if plan(statements.sql, cat).kind == "default" else None
            seen = set()
            for st in statements:
                sql = getattr(st, "sql", st)
                if sql not in seen:
                    if plan(sql, cat).kind != "default":
                        return None
                    seen.add(sql)
            return cat
        except errors.RaftSQLiteError:
            return None   # the router words the refusal

    async def _ready(self):
        # Without the catalog every statement plans as an unsharded one, so a write for
        # a sharded table would reach the default group's empty template table (found
        # by the sharded fault suite: a shard member restarted after kill -9 answered a
        # compare-and-set as "0 rows" from the default group before its first poll).
        if not self.svc.catalog_loaded() and self.svc.is_default:
            # Usually a matter of milliseconds (a new leader's barrier, a restarted
            # member's replay): wait a little rather than refuse at once.
            await self.svc.wait_caught_up(self.svc.catch_up_wait)
        if not self.svc.catalog_loaded():
            if self.svc.is_default:
                raise errors.Unavailable("this default-group node has not caught up with the "
                                         "shard catalog yet (it is starting, joining or "
                                         "cut off from its leader); retry")
            raise errors.Unavailable("this node has not loaded the shard catalog yet (it is "
                                     "starting, or cannot reach the default group); retry")

    async def _shard(self, p):
        await self._ready()
        sid = getattr(p, "shard_id", None) if p is not None else None
        if sid is not None and sid not in self.svc.cache.current().groups:
            raise errors.NotFound(f"shard {sid!r} is not a known group; GET /shards lists them")
        return sid

    async def backup(self, p, spool_dir):
        """A whole-cluster (or one group's) backup file, or None for the plain one."""
        await self._ready()
        return await backup_for(self.svc, p, spool_dir)

    async def load(self, path, fmt, p, spool_dir):
        """A load that fills registered tables on their shards, or None for the plain one."""
        await self._ready()
        return await load_for(self.svc, path, fmt, p, spool_dir)

    # ---- the three calls ------------------------------------------------------------
    async def _unrouted(self, statements, p):
        """-> (catalog, None) when the default group answers ``statements`` as they are
        (nothing touches a registered table, no ``shard_id``), else (None, the
        ``shard_id`` asked for or None): route them."""
        cat = self._unsharded(statements, p)
        if cat is not None:
            return cat, None
        sid = await self._shard(p)
        return (self._unsharded(statements, p) if sid is None else None), sid

    def _vacuum_everywhere(self, statements, p):
        """A lone ``VACUUM`` without ``shard_id`` or a transaction, on a cluster with
        shard groups: compact every group, not only the default one."""
        if type(statements) is not list or len(statements) != 1 or p is None or \
                getattr(p, "shard_id", None) is not None or p.transaction:
            return False
        return is_vacuum_sql(getattr(statements[0], "sql", statements[0])) and \
            len(self.svc.cache.current().groups) > 1

    async def _vacuum_all(self, statements):
        """VACUUM on every group, one after another (each holds up its own group's writes
        while it runs; one at a time keeps the cluster's disk I/O to one copy). Not one
        operation: the result says, per group, what was compacted (decision 15)."""
        await self._ready()
        sql = getattr(statements[0], "sql", statements[0])
        groups = sorted(self.svc.cache.current().groups, key=lambda g: (g != "default", g))
        per = []
        for g in groups:
            try:
                # alone in its call: a coalesced batch with other writes is refused
                r = (await self.router.ex.execute_alone(g, [Statement(sql)]))[0]
            except errors.RaftSQLiteError as e:
                r = {"error": f"{type(e).__name__}: {e}"}
            per.append((g, dict(r)))
        out = merge_writes(per)
        out.pop("shards", None)     # per-group results: the error (if any) names them
        out.pop("applied_on", None)
        # beside "results" (wire.rqlite_body): one check per request, none per result
        return {"results": [out], "vacuumed": [g for g, r in per if not r.get("error")]}

    async def execute(self, statements, p):
        if self._vacuum_everywhere(statements, p):
            return await self._vacuum_all(statements)
        cat, sid = await self._unrouted(statements, p)
        if cat is not None:
            try:
                return await self.store.execute(
                    statements, transaction=bool(p is not None and p.transaction),
                    request_id=getattr(p, "request_id", None),
                    timeout=p.timeout if p is not None else None,
                    guard=catalog_guard(cat.schema_version),
                    # the rqlite handler renders the results unbuilt (Store.execute)
                    **_LAZY if getattr(p, "lazy_results", False) else {})
            except errors.StaleCatalog:
                await self.svc.cache.refresh()   # nothing ran: plan again, routed
        # Routed: every call the router makes carries an id derived from the client's
        # (Router module doc), so a retried request is idempotent on each shard too.
        res = await self.router.execute(statements, transaction=bool(p is not None and
                                                                     p.transaction),
                                        shard_id=sid, request_id=getattr(p, "request_id", None))
        return {"results": res}

    async def query(self, statements, p, level):
        cat, sid = await self._unrouted(statements, p)
        if cat is not None:
            timeout = p.timeout
            if level == "linearizable" and p.linearizable_timeout:
                timeout = p.linearizable_timeout  # rqlite's bound on the leadership check
            try:
                return await self.store.query(
                    statements, level=level, freshness=p.freshness,
                    freshness_strict=p.freshness_strict, transaction=p.transaction,
                    db_timeout=p.db_timeout, timeout=timeout,
                    guard=catalog_guard(cat.schema_version))
            except errors.StaleCatalog:
                await self.svc.cache.refresh()
        opts = {"level": level}
        if p is not None:
            if p.freshness:
                opts["freshness"] = p.freshness
            if p.db_timeout:
                opts["db_timeout"] = p.db_timeout
        return {"results": await self.router.query(statements, shard_id=sid, **opts)}

    async def request(self, statements, p, level):
        cat, sid = await self._unrouted(statements, p)
        if cat is not None:
            try:
                return await self.store.request(
                    statements, transaction=p.transaction,
                    request_id=getattr(p, "request_id", None), level=level,
                    freshness=p.freshness, freshness_strict=p.freshness_strict,
                    db_timeout=p.db_timeout, timeout=p.timeout,
                    guard=catalog_guard(cat.schema_version))
            except errors.StaleCatalog:
                await self.svc.cache.refresh()
        if sid is not None:
            res = await self.router.ex.request(sid, list(statements),
                                               transaction=bool(p.transaction), level=level)
        else:
            res = await self.router.request(statements, transaction=bool(p.transaction),
                                            level=level)
        return {"results": res}
