"""In-process groups for tests and benchmarks: each group is a sqlite3 database with its
own ``ShardOwnership``, behind the router's ``GroupExecutor`` interface, and a catalog
source whose cached copy can be made stale on purpose.

It does what a shard's FSM will do for real: check the guard before running a request,
and register ``rs_kid``/``rs_owns`` SQL functions. No Raft, no HTTP.
"""
import asyncio
import sqlite3

from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import DEFAULT_GROUP, Catalog
from raftsqlite.sharding.ownership import (ShardOwnership, check_catalog_version,
                                          decode_catalog_guard, decode_token_guard,
                                          is_catalog_guard, is_token_guard)


def _result_of(cur, conn):
    if cur.description is not None:
        rows = cur.fetchall()
        return {"columns": [d[0] for d in cur.description],
                "types": ["" for _ in cur.description],
                "values": [list(r) for r in rows]}
    return {"last_insert_id": conn.execute("SELECT last_insert_rowid()").fetchone()[0],
            "rows_affected": cur.rowcount if cur.rowcount >= 0 else 0}


class FakeGroup:
    def __init__(self, name, path=":memory:"):
        self.name = name
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.own = ShardOwnership(name)
        self.conn.create_function("rs_kid", 2, ks.sql_kid, deterministic=True)
        self.conn.create_function("rs_owns", 2, lambda c, v: self.own.owns(c, v))
        self.calls = 0
        self.rejected = 0
        self.applied_ids = {}    # request id -> results (the FSM's dedup table)
        self.dedup_hits = 0
        self.catalog = None      # the default group: fn() -> the authoritative Catalog

    def run(self, statements, transaction=False, guard=None, write=True, request_id=None):
        self.calls += 1
        if request_id is not None and request_id in self.applied_ids:
            self.dedup_hits += 1
            return self.applied_ids[request_id]
        if guard is not None:
            try:
                if is_catalog_guard(guard):
                    if self.catalog is not None:   # the default group holds the catalog
                        check_catalog_version(decode_catalog_guard(guard),
                                              self.catalog().schema_version)
                elif is_token_guard(guard):        # a rebalance coordinator's write
                    self.own.take_token(*decode_token_guard(guard))
                else:
                    self.own.check(guard, write=write)
            except Exception:
                self.rejected += 1
                raise
        out = []
        c = self.conn
        if transaction:
            c.execute("BEGIN")
        for st in statements:
            try:
                cur = c.execute(st.sql, st.params if st.params is not None else ())
                out.append(_result_of(cur, c))
            except sqlite3.Error as e:
                out.append({"error": str(e)})
                if transaction:
                    c.execute("ROLLBACK")
                    return out
        if transaction:
            c.execute("COMMIT")
        if request_id is not None:
            self.applied_ids[request_id] = out
        return out


class FakeExecutor:
    """``GroupExecutor`` over ``FakeGroup`` objects. ``yield_each`` lets other tasks run
    between calls, like a network round trip would."""

    def __init__(self, groups, yield_each=True):
        self.groups = groups
        self.yield_each = yield_each
        self.log = []  # (group, sql) of every call that ran

    async def execute(self, group, statements, *, transaction=False, guard=None,
                      request_id=None):
        if self.yield_each:
            await asyncio.sleep(0)
        r = self.groups[group].run(statements, transaction, guard, write=True,
                                   request_id=request_id)
        self.log.extend((group, s.sql) for s in statements)
        return r

    async def query(self, group, statements, *, guard=None, **opts):
        if self.yield_each:
            await asyncio.sleep(0)
        r = self.groups[group].run(statements, False, guard, write=False)
        self.log.extend((group, s.sql) for s in statements)
        return r


    async def request(self, group, statements, *, transaction=False, guard=None, **opts):
        if self.yield_each:
            await asyncio.sleep(0)
        r = self.groups[group].run(statements, transaction, guard, write=True)
        self.log.extend((group, s.sql) for s in statements)
        return r


class FakeCatalogSource:
    """The authoritative catalog plus the router's cached copy. ``refresh`` copies."""

    def __init__(self, catalog):
        self.master = catalog
        self.cached = catalog.copy()
        self.refreshes = 0

    def current(self):
        return self.cached

    async def refresh(self):
        self.refreshes += 1
        self.cached = self.master.copy()
        return self.cached


class FakeCluster:
    """Default group + named shard groups, a catalog, and helpers to change it the way
    the integrated node will: catalog op first, then each shard's own view."""

    def __init__(self, shards=("s1", "s2"), yield_each=True):
        self.groups = {DEFAULT_GROUP: FakeGroup(DEFAULT_GROUP)}
        for s in shards:
            self.groups[s] = FakeGroup(s)
        cat = Catalog()
        for s in shards:
            cat.apply("catalog.add_group", {"group": s})
        self.source = FakeCatalogSource(cat)
        self.groups[DEFAULT_GROUP].catalog = lambda: self.source.master
        self.executor = FakeExecutor(self.groups, yield_each)

    @property
    def catalog(self):
        return self.source.master

    def op(self, name, push=True, refresh=True, **args):
        """Apply a catalog op; push each shard's ownership; refresh the router's copy."""
        res = self.catalog.apply("catalog." + name, args)
        if push:
            self.push_ownership()
        if refresh:
            self.source.cached = self.catalog.copy()
        return res

    def push_ownership(self, only=None):
        for g, grp in self.groups.items():
            if g == DEFAULT_GROUP or (only and g not in only):
                continue
            grp.own.apply("own.set_all", {"group": g, "cols": self.catalog.ownership_for(g)})

    def sql(self, group, sql, params=()):
        return self.groups[group].conn.execute(sql, params).fetchall()
