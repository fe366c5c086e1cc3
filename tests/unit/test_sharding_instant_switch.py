"""/table/rebalance's instant switch (sources hold no rows: ``assign`` at once,
http_api._switch_empty_ranges) against a recording fake of the service: the sources are
fenced on the moving ranges before the emptiness check, the check is linearizable, the
catalog switches only after it, and every fence is lifted whatever the outcome."""
import asyncio

import orjson
import pytest

from raftsqlite import errors
from raftsqlite.sharding import ops
from raftsqlite.sharding.catalog import DEFAULT_GROUP, Catalog
from raftsqlite.sharding.http_api import _switch_empty_ranges

from sharding_env import StaticCache


class _Exec:
    def __init__(self, svc):
        self.svc = svc

    async def query(self, group, stmts, level="weak", **kw):
        self.svc.log.append(("check", group, level))
        return [{"values": [[1]]} if group in self.svc.holding else {"values": []}]


class FakeSvc:
    def __init__(self, holding=()):
        cat = Catalog()
        for g in ("s1", "s2"):
            cat.apply("catalog.add_group", {"group": g})
        cat.apply("catalog.register_table", {"table": "t", "shard_key": "id"})
        cat.apply("catalog.add_to_shard", {"table": "t", "shard": "s1"})
        cat.apply("catalog.add_to_shard", {"table": "t", "shard": "s2"})
        self.cache = StaticCache(cat)
        self.executor = _Exec(self)
        self.holding = set(holding)
        self.log = []

    async def system(self, group, ops_):
        out = []
        for n, a in ops_:
            self.log.append((n, group))
            if group == DEFAULT_GROUP:
                try:
                    out.append(self.cache.cat.apply(n, a))
                except errors.RaftSQLiteError as e:
                    out.append({"error": str(e), "code": e.code})
            else:
                out.append({})
        return out

    async def push_ownership(self, group, cat=None):
        self.log.append(("push", group))


def _plan(svc):
    return ops.rebalance_plan({"table_name": "t"}, svc.cache.cat)


def _names(log):
    return [x[0] for x in log]


def test_sources_are_fenced_before_a_linearizable_check_and_unfenced_after():
    """Invariant: fence (each source) < linearizable check < acquire < assign < release
    < unfence; the catalog ends with the plan applied."""
    svc = FakeSvc()
    plan = _plan(svc)
    resp = asyncio.run(_switch_empty_ranges(svc, svc.cache.cat, plan))
    assert orjson.loads(resp.body)["status"] == "applied"
    n = _names(svc.log)
    assert n[0] == "own.fence" and svc.log[1] == ("check", "s1", "linearizable")
    assert n.index("catalog.assign") > n.index("check") and n[-1] == "own.unfence"
    assert ("own.unfence", "s1") in svc.log
    assert set(svc.cache.cat.colocations["t"]["owners"]) == {"s1", "s2"}


def test_rows_found_after_the_fence_change_nothing_and_lift_it():
    """Invariant: a row that reached a source (a write racing the rebalance) makes the
    switch refuse (needs_data_movement), the catalog unchanged, the fence lifted."""
    svc = FakeSvc(holding={"s1"})
    before = svc.cache.cat.to_bytes()
    resp = asyncio.run(_switch_empty_ranges(svc, svc.cache.cat, _plan(svc)))
    assert orjson.loads(resp.body)["status"] == "needs_data_movement"
    assert svc.cache.cat.to_bytes() == before
    assert _names(svc.log) == ["own.fence", "check", "own.unfence"]


def test_a_removal_in_progress_refuses_the_switch():
    """Invariant: while /table/remove holds its mark the instant switch is refused before
    any fence (and the catalog's assign refuses it too, in the log)."""
    svc = FakeSvc()
    plan = _plan(svc)
    svc.cache.cat.apply("catalog.remove_begin", {"table": "t"})
    with pytest.raises(errors.Conflict, match="being removed"):
        asyncio.run(_switch_empty_ranges(svc, svc.cache.cat, plan))
    assert svc.log == []
    n, a = ops.assign_ops(plan)[0]
    with pytest.raises(errors.Conflict):
        svc.cache.cat.apply(n, a)
