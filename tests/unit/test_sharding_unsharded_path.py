"""RouterSQL's unsharded path: requests whose statements all plan to the default group go
straight to the node's store, with every flag and the catalog guard of the catalog they
were planned with; a StaleCatalog refusal sends them through the router instead."""
import asyncio
from types import SimpleNamespace

import pytest

from raftsqlite import errors
from raftsqlite.codec.model import Statement
from raftsqlite.http.params import QueryParams
from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.ownership import catalog_guard
from raftsqlite.sharding.planner import Planner
from raftsqlite.sharding.service import RouterSQL

pytestmark = pytest.mark.timeout(30)


class FakeStore:
    def __init__(self, stale=0):
        self.calls = []
        self.stale = stale      # how many calls refuse with StaleCatalog first

    async def _call(self, kind, statements, kw):
        self.calls.append((kind, kw))
        if self.stale:
            self.stale -= 1
            raise errors.StaleCatalog("planned with an old catalog")
        return {"results": [{"from": "store"}], "raft_index": 5}

    async def execute(self, statements, **kw):
        return await self._call("execute", statements, kw)

    async def query(self, statements, **kw):
        return await self._call("query", statements, kw)

    async def request(self, statements, **kw):
        return await self._call("request", statements, kw)


class FakeRouter:
    def __init__(self):
        self.calls = []
        self.planner = Planner()
        self.ex = self

    async def execute(self, statements, **kw):
        self.calls.append(("execute", kw))
        return [{"from": "router"}]

    async def query(self, statements, **kw):
        self.calls.append(("query", kw))
        return [{"from": "router"}]

    async def request(self, *a, **kw):
        self.calls.append(("request", kw))
        return [{"from": "router"}]


def _sql(store, catalog=None):
    refreshed = []

    async def refresh():
        refreshed.append(1)
    cat = catalog or Catalog()
    cache = SimpleNamespace(current=lambda: cat, refresh=refresh)
    svc = SimpleNamespace(is_default=True, _synced=True, cache=cache, router=FakeRouter(),
                          node=SimpleNamespace(store=store), catalog_loaded=lambda: True)
    return RouterSQL(svc), svc, refreshed


STMTS = [Statement("INSERT INTO t(v) VALUES(?)", ["x"])]


def test_unsharded_calls_reach_the_store_with_flags_and_catalog_guard():
    """Invariant: on the unsharded path every call reaches the store once, never the
    router, with the request's flags and guard=catalog_guard(schema_version)."""
    store = FakeStore()
    sql, svc, _ = _sql(store)
    g = catalog_guard(svc.cache.current().schema_version)
    p = QueryParams("timeout=2s&transaction&request_id=r1&level=none&freshness=1s")
    assert asyncio.run(sql.execute(STMTS, p))["results"] == [{"from": "store"}]
    asyncio.run(sql.query(STMTS, p, "none"))
    asyncio.run(sql.request(STMTS, p, "weak"))
    kinds = [k for k, _ in store.calls]
    assert kinds == ["execute", "query", "request"] and svc.router.calls == []
    ex, q, rq = (kw for _, kw in store.calls)
    assert ex == {"transaction": True, "request_id": "r1", "timeout": 2.0, "guard": g}
    assert q["guard"] == g and q["level"] == "none" and q["freshness"] == 1.0
    assert rq["guard"] == g and rq["request_id"] == "r1" and rq["level"] == "weak"


def test_stale_catalog_goes_through_the_router():
    """Invariant: a StaleCatalog refusal (nothing ran) refreshes the catalog and the same
    request is then planned by the router, once; the answer is the router's."""
    for call in (lambda s: s.execute(STMTS, QueryParams("")),
                 lambda s: s.query(STMTS, QueryParams(""), "weak"),
                 lambda s: s.request(STMTS, QueryParams(""), "weak")):
        store = FakeStore(stale=1)
        sql, svc, refreshed = _sql(store)
        assert asyncio.run(call(sql))["results"] == [{"from": "router"}]
        assert len(store.calls) == 1 and refreshed == [1] and len(svc.router.calls) == 1


def test_shard_id_and_shard_nodes_take_the_router():
    """Invariant: shard_id=, a shard group's node, or a default node that has not caught
    up with the catalog never take the unsharded path."""
    store = FakeStore()
    cat = Catalog()
    cat.apply("catalog.add_group", {"group": "s1"})
    sql, svc, _ = _sql(store, cat)
    asyncio.run(sql.execute(STMTS, QueryParams("shard_id=s1")))
    svc.is_default = False
    asyncio.run(sql.execute(STMTS, QueryParams("")))
    svc.is_default, svc._synced = True, False
    asyncio.run(sql.execute(STMTS, QueryParams("")))
    assert store.calls == [] and len(svc.router.calls) == 3
