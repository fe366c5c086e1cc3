"""POST /table/remove's order of steps (sharding/remove.py) against a recording fake of the
service: the fence comes before the counts, the catalog changes only after them, every
fence is lifted, and a refusal changes nothing but the fence it lifts again."""
import asyncio

import pytest

from raftsqlite import errors
from raftsqlite.sharding.catalog import DEFAULT_GROUP, Catalog
from raftsqlite.sharding.remove import remove_table

from sharding_env import StaticCache


class _Exec:
    def __init__(self, svc):
        self.svc = svc

    async def query(self, group, stmts, level="weak", **kw):
        assert level == "linearizable"
        self.svc.log.append(("count", group))
        n = self.svc.rows.get(group)
        if n is None:
            return [{"error": "no such table: t"}]
        return [{"values": [[n]]}]

    async def execute(self, group, stmts, **kw):
        self.svc.log.append(("drop", group))
        self.svc.rows.pop(group, None)
        return [{}]


class FakeSvc:
    def __init__(self, rows):
        cat = Catalog()
        for g in ("s1", "s2", "s3"):
            cat.apply("catalog.add_group", {"group": g})
        cat.apply("catalog.register_table", {"table": "t", "shard_key": "id"})
        cat.apply("catalog.add_to_shard", {"table": "t", "shard": "s1"})
        self.cache = StaticCache(cat)
        self.executor = _Exec(self)
        self.rows = dict(rows)
        self.log = []

    async def system(self, group, ops):
        self.log += [(n, group) for n, _ in ops]
        if group != DEFAULT_GROUP:
            return [{}]
        out = []
        for n, a in ops:        # catalog ops apply to the fake's catalog, as in the log
            try:
                out.append(self.cache.cat.apply(n, a))
            except errors.RaftSQLiteError as e:
                out.append({"error": str(e), "code": e.code})
        return out

    async def catalog_op(self, name, args):
        self.log.append(("catalog", DEFAULT_GROUP))
        self.cache.cat.apply(name, args)
        return {}

    async def push_ownership(self, group, cat=None):
        self.log.append(("push", group))


def _run(coro):
    return asyncio.run(coro)


def test_refusal_fences_counts_unfences_and_changes_nothing_else():
    """Invariant: with rows on a shard and no drop_rows, the owners are fenced before any
    count, the answer is a Conflict naming the count, the catalog keeps the table, and
    the fence is lifted; nothing else is proposed anywhere."""
    svc = FakeSvc({"s1": 5, "s3": 2})          # s3: rows held without owning (a leftover)
    before = svc.cache.cat.to_bytes()
    with pytest.raises(errors.Conflict) as e:
        _run(remove_table(svc, {"table_name": "t"}))
    assert "7 row(s)" in str(e.value) and "s3: 2" in str(e.value) and "drop_rows" in str(e.value)
    assert svc.cache.cat.tables == Catalog.from_bytes(before).tables
    assert "removing" not in svc.cache.cat.colocations["t"]     # the mark is cleared
    assert svc.log == [("catalog.remove_begin", DEFAULT_GROUP), ("own.fence", "s1"),
                       ("count", "s1"), ("count", "s2"), ("count", "s3"),
                       ("own.unfence", "s1"), ("catalog.remove_end", DEFAULT_GROUP)]


def test_removal_order_and_drop_rows():
    """Invariant: fence, counts, catalog op, ownership push, unfence, then (drop_rows)
    drops on exactly the groups that had the table."""
    svc = FakeSvc({"s1": 5, "s2": 0})
    doc = _run(remove_table(svc, {"table_name": "t", "drop_rows": True}))
    assert doc["rows_on_shards"] == 5 and doc["dropped_on"] == ["s1", "s2"]
    assert "t" not in svc.cache.cat.tables
    assert svc.log == [("catalog.remove_begin", DEFAULT_GROUP), ("own.fence", "s1"),
                       ("count", "s1"), ("count", "s2"), ("count", "s3"),
                       ("catalog", DEFAULT_GROUP), ("push", "s1"), ("own.unfence", "s1"),
                       ("drop", "s1"), ("drop", "s2")]


def test_empty_table_is_removed_without_drop_rows_and_bad_flag_refused():
    """Invariant: an empty table needs no flag (its empty shard tables stay); a drop_rows
    that is not a boolean is a 400 before anything happens."""
    svc = FakeSvc({"s1": 0})
    with pytest.raises(errors.BadRequest):
        _run(remove_table(svc, {"table_name": "t", "drop_rows": "yes"}))
    assert svc.log == []
    doc = _run(remove_table(svc, {"table_name": "t"}))
    assert doc["rows_on_shards"] == 0 and "dropped_on" not in doc and ("drop", "s1") not in svc.log
    with pytest.raises(errors.NotFound):
        _run(remove_table(svc, {"table_name": "t"}))


def _with_move(svc):
    cat = svc.cache.cat
    cat.apply("catalog.add_to_shard", {"table": "t", "shard": "s2"})
    return cat.apply("catalog.move_create", {"table": "t", "start": 0, "end": 2 ** 63,
                                             "target": "s2"})["id"]


def test_a_move_in_progress_is_refused_with_409_naming_it_and_nothing_is_fenced():
    """Invariant: /table/remove during a move answers Conflict naming the move, and
    neither fences, counts nor changes the catalog (the move's fence stays its own)."""
    svc = FakeSvc({"s1": 0})
    mid = _with_move(svc)
    before = svc.cache.cat.to_bytes()
    with pytest.raises(errors.Conflict) as e:
        _run(remove_table(svc, {"table_name": "t", "drop_rows": True}))
    assert mid in str(e.value) and "cancel" in str(e.value)
    assert svc.cache.cat.to_bytes() == before and svc.log == []


def test_a_move_started_after_the_check_is_caught_by_the_mark_in_the_log():
    """Invariant: a move created between the handler's check and its mark (a coordinator
    that planned first) makes the mark refuse: 409 naming the move, nothing fenced."""
    svc = FakeSvc({"s1": 0})
    real = svc.system
    state = {}

    async def system(group, ops):
        if ops[0][0] == "catalog.remove_begin" and not state:
            state["mid"] = _with_move(svc)       # lands in the log just before the mark
        return await real(group, ops)
    svc.system = system
    with pytest.raises(errors.Conflict) as e:
        _run(remove_table(svc, {"table_name": "t"}))
    assert state["mid"] in str(e.value)
    assert not any(n.startswith("own.") for n, _ in svc.log)
    assert "t" in svc.cache.cat.tables


def test_no_move_starts_while_a_removal_holds_the_mark():
    """Invariant: between remove_begin and its end no move of the colocation can be
    created (its fence would merge into the removal's and be lifted with it); after
    remove_end it can; unregister refuses while any move of the colocation runs."""
    cat = FakeSvc({}).cache.cat
    cat.apply("catalog.add_to_shard", {"table": "t", "shard": "s2"})
    cat.apply("catalog.remove_begin", {"table": "t", "now": 1.0})
    with pytest.raises(errors.Conflict, match="being removed"):
        cat.apply("catalog.move_create", {"table": "t", "start": 0, "end": 2 ** 63, "target": "s2"})
    cat.apply("catalog.remove_end", {"table": "t"})
    cat.apply("catalog.move_create", {"table": "t", "start": 0, "end": 2 ** 63, "target": "s2"})
    with pytest.raises(errors.Conflict):
        cat.apply("catalog.remove_begin", {"table": "t"})
    cat.apply("catalog.register_table", {"table": "u", "shard_key": "id", "colocate_with": "t"})
    with pytest.raises(errors.Conflict, match="move in progress"):
        cat.apply("catalog.unregister_table", {"table": "u"})   # even if t keeps the colocation


def test_a_second_table_of_the_colocation_waits_for_the_first_removal():
    """Invariant: while one table's removal holds the colocation's mark, removing another
    table of it is refused (409 naming the first) without a fence; repeating the first
    (its node failed) is allowed and clears the mark."""
    svc = FakeSvc({"s1": 0})
    cat = svc.cache.cat
    cat.apply("catalog.register_table", {"table": "u", "shard_key": "id", "colocate_with": "t"})
    cat.apply("catalog.remove_begin", {"table": "t"})      # a removal whose node died
    with pytest.raises(errors.Conflict, match="table t, colocated with u, is being removed"):
        _run(remove_table(svc, {"table_name": "u"}))
    assert not any(n.startswith("own.") for n, _ in svc.log)
    _run(remove_table(svc, {"table_name": "t"}))
    assert "t" not in cat.tables and "removing" not in cat.colocations["t"]
    _run(remove_table(svc, {"table_name": "u"}))
    assert not cat.tables
