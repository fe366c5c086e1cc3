"""The sharding service wired into a real FSM and SQLite file (no Raft, no HTTP): the
ownership guard is checked inside the apply transaction before a request runs, a refused
request changes nothing and leaves the other requests of its entry alone, and the SQL
functions exist on the writer and the readers."""
from types import SimpleNamespace

import orjson
import pytest

from raftsqlite.codec import encode_command
from raftsqlite.codec.model import Command, CommandType, Entry, EntryType, Request, Statement
from raftsqlite.db import Database
from raftsqlite.errors import Moved
from raftsqlite.fsm import FSM
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.ownership import GuardItem, encode_guard
from raftsqlite.sharding.service import ShardingService, _needs_push


@pytest.fixture
def shard(tmp_path):
    db = Database(str(tmp_path / "db.sqlite"))
    fsm = FSM(db)
    node = SimpleNamespace(config=SimpleNamespace(shard="s1", join=(), data_dir=str(tmp_path)),
                           db=db, fsm=fsm, store=SimpleNamespace(guard_check=None))
    svc = ShardingService(node)
    cat = Catalog()
    for g in ("s1", "s2"):
        cat.apply("catalog.add_group", {"group": g})
    cat.apply("catalog.register_table", {"table": "users", "shard_key": "id", "key_affinity": "integer"})
    cat.apply("catalog.add_to_shard", {"table": "users", "shard": "s1"})
    cat.apply("catalog.add_to_shard", {"table": "users", "shard": "s2"})
    for m in cat.plan_rebalance("users")["moves"]:
        cat.apply("catalog.assign", {"table": "users", "start": m["start"], "end": m["end"],
                                     "owner": m["target"]})
    fsm.apply([Entry(1, 1, EntryType.NORMAL, encode_command(Command(CommandType.SYSTEM, ops=[
        ("own.set_all", orjson.dumps({"group": "s1", "cols": cat.ownership_for("s1")}))]))),
        Entry(1, 2, EntryType.NORMAL, encode_command(Command(CommandType.EXECUTE, [Request([
            Statement("CREATE TABLE users (id INTEGER PRIMARY KEY, v TEXT)")])])))])
    yield svc, cat, fsm, db, node
    db.close()


def _key(cat, owner):
    return next(k for k in range(1000) if cat.owner_of("users", ks.key_id(k, "hash", "integer")) == owner)


def test_guard_refuses_only_the_foreign_request(shard):
    """Invariant: in one group-committed entry, a request guarded with a key this shard
    does not own fails with code "moved" and writes nothing; the owned one and the
    unguarded one are applied."""
    svc, cat, fsm, db, node = shard
    mine, theirs = _key(cat, "s1"), _key(cat, "s2")
    epoch = cat.shard_epoch(cat.colocation_of("users"), "s1")

    def guarded(k):
        return Request([Statement("INSERT INTO users VALUES (?, 'x')", [k])], guard=encode_guard(
            [GuardItem("users", epoch, [ks.key_id(k, "hash", "integer")])]))
    res = fsm.apply([Entry(1, 3, EntryType.NORMAL, encode_command(Command(CommandType.EXECUTE, [
        guarded(theirs), guarded(mine), Request([Statement("SELECT 1")])])))])[0]["results"]
    assert res[0][0]["code"] == "moved" and "error" in res[0][0]
    assert res[1][0]["rows_affected"] == 1
    assert "error" not in res[2][0]
    rows = db.read([("SELECT id FROM users", None)])[0]["values"]
    assert rows == [[mine]]


def test_read_guard_and_sql_functions(shard):
    """Invariant: a scatter read guarded with a stale epoch raises Moved on the serving
    node; rs_kid and rs_owns are callable on readers and agree with the catalog."""
    svc, cat, fsm, db, node = shard
    col = cat.colocation_of("users")
    with pytest.raises(Moved):
        node.store.guard_check(encode_guard([GuardItem("users", 999, None)]))
    node.store.guard_check(encode_guard([GuardItem("users", cat.shard_epoch(col, "s1"), None)]))
    mine, theirs = _key(cat, "s1"), _key(cat, "s2")
    name = cat.tables["users"]["colocation"]
    r = db.read([("SELECT rs_kid('hash', ?), rs_owns(?, ?), rs_owns(?, ?)",
                  [mine, name, mine, name, theirs])])[0]
    assert "error" not in r, r
    assert r["values"][0] == [ks.signed(ks.key_id(mine, "hash", "integer")), 1, 0]


def test_ownership_push_needed_only_when_behind(shard):
    """Invariant: the shard leader re-proposes its ownership only when its replicated view
    lags the catalog (so the follow loop is quiet in steady state)."""
    svc, cat, fsm, db, node = shard
    have = svc.shard.load(db.read_internal)
    assert not _needs_push(have, cat.ownership_for("s1"))
    cat.apply("catalog.register_table", {"table": "orders", "shard_key": "uid", "colocate_with": "users",
                                             "key_affinity": "integer"})
    assert _needs_push(have, cat.ownership_for("s1"))


def test_shard_node_refuses_to_route_before_it_has_the_catalog(shard):
    """Invariant: a shard node that has not received the catalog (restarted, default
    group not reached yet) refuses routed statements with a retryable 503 instead of
    planning them as unsharded ones, which sent writes for sharded tables to the
    default group's empty template table; once the catalog arrives it routes."""
    import asyncio
    from raftsqlite.errors import Unavailable
    svc, cat, *_ = shard
    assert svc.cache.current().version == 0 and not svc.catalog_loaded()
    p = SimpleNamespace(shard_id=None, transaction=False, request_id=None, timeout=None,
                        freshness=None, db_timeout=None)
    for call in (lambda: svc.sql.execute([Statement("UPDATE users SET v = 'x' WHERE id = 1")], p),
                 lambda: svc.sql.query([Statement("SELECT v FROM users WHERE id = 1")], p,
                                       "linearizable"),
                 lambda: svc.sql.request([Statement("SELECT 1")], p, "weak")):
        with pytest.raises(Unavailable, match="catalog"):
            asyncio.run(call())
    asyncio.run(svc.cache.publish(cat.to_bytes()))
    assert svc.catalog_loaded()


def test_refused_request_id_is_not_remembered(shard):
    """Invariant: a request refused by the ownership guard ran nothing, so its request id
    is not recorded: the same id retried with a valid guard applies (a recorded refusal
    would answer "moved" to every retry), and a second retry is then deduplicated."""
    svc, cat, fsm, db, node = shard
    k = _key(cat, "s1")
    epoch = cat.shard_epoch(cat.colocation_of("users"), "s1")

    def attempt(index, ep):
        rq = Request([Statement("INSERT INTO users VALUES (?, 'x')", [k])], request_id=b"r1",
                     guard=encode_guard([GuardItem("users", ep, None)]))
        return fsm.apply([Entry(1, index, EntryType.NORMAL, encode_command(
            Command(CommandType.EXECUTE, [rq])))])[0]["results"][0]
    assert attempt(3, epoch + 5)[0]["code"] == "moved"   # a stale routing epoch
    ok = attempt(4, epoch)
    assert ok[0]["rows_affected"] == 1
    again = attempt(5, epoch)
    assert [{k: v for k, v in r.items() if k != "time"} for r in again] == \
        [{k: v for k, v in r.items() if k != "time"} for r in ok]
    assert db.read([("SELECT COUNT(*) FROM users", None)])[0]["values"] == [[1]]


def test_first_claim_of_a_new_group_wins():
    """Invariant: of two nodes claiming a new group, the first claim in log order wins
    (it bootstraps) and the second is told to join the winner; a winner that restarts
    before bootstrapping wins again; once the group has another member, nobody can claim
    it anew (a wiped node joins the members instead)."""
    cat = Catalog()

    def claim(nid):
        return cat.apply("catalog.claim_group", {"group": "g", "member": {
            "node_id": nid, "raft_addr": f"r-{nid}", "http_addr": f"h-{nid}"}})
    a, b = claim("a"), claim("b")
    assert a["won"] and not b["won"]
    assert {n: m["http_addr"] for n, m in b["members"].items()} == {"a": "h-a"}
    assert sorted(cat.groups["g"]["members"]) == ["a"]
    assert claim("a")["won"]
    cat.apply("catalog.set_member", {"group": "g", "node_id": "b", "http_addr": "h-b"})
    again = claim("a")
    assert not again["won"] and set(again["members"]) == {"b"}
    with pytest.raises(Exception, match="default group"):
        cat.apply("catalog.claim_group", {"group": "default", "member": {"node_id": "x"}})


def test_strong_read_guard_is_checked_at_apply(shard):
    """Invariant: a strong read (a QUERY entry) guarded with the epoch that was current
    when it was proposed is refused with "moved" when an ownership change is applied
    before it (a move's switch), instead of reading a shard that no longer owns the
    range; with the new epoch it reads."""
    svc, cat, fsm, db, node = shard
    col = cat.colocation_of("users")
    old = cat.shard_epoch(col, "s1")
    fsm.apply([Entry(1, 3, EntryType.NORMAL, encode_command(Command(CommandType.EXECUTE, [
        Request([Statement("INSERT INTO users VALUES (?, 'x')", [_key(cat, "s1")])])])))])
    c = cat.tables["users"]["colocation"]
    i = cat.colocations[c]["owners"].index("s1")
    start, end = ks.range_of(cat.colocations[c]["starts"], i)
    cat.apply("catalog.assign", {"table": "users", "start": start, "end": ks.end_to_json(end),
                                 "owner": "s2"})

    def read(index, epoch):
        rq = Request([Statement("SELECT count(*) FROM users")],
                     guard=encode_guard([GuardItem("users", epoch, None)]))
        return fsm.apply([Entry(1, index, EntryType.NORMAL, encode_command(
            Command(CommandType.QUERY, [rq])))])[0]["results"][0]
    assert read(4, old)[0]["values"] == [[1]]     # before the switch: the epoch holds
    switch = Entry(1, 5, EntryType.NORMAL, encode_command(Command(CommandType.SYSTEM, ops=[
        ("own.set_all", orjson.dumps({"group": "s1", "cols": cat.ownership_for("s1")}))])))
    stale = Entry(1, 6, EntryType.NORMAL, encode_command(Command(CommandType.QUERY, [Request(
        [Statement("SELECT count(*) FROM users")],
        guard=encode_guard([GuardItem("users", old, None)]))])))
    res = fsm.apply([switch, stale])[1]["results"][0]
    assert res[0]["code"] == "moved", res
    new = cat.shard_epoch(cat.colocation_of("users"), "s1")
    assert new != old and "values" in read(7, new)[0]


def test_default_node_routes_only_once_caught_up_with_its_leader(tmp_path):
    """Invariant: a default-group node whose own catalog is older than its leader's (just
    joined, or restarted before replaying its log) refuses routed statements, /readyz
    readiness and catalog serving with a retryable 503; it opens only once its applied
    catalog reaches the version its leader reported."""
    import asyncio
    from raftsqlite.errors import Unavailable
    db = Database(str(tmp_path / "db.sqlite"))
    fsm = FSM(db)
    lead = SimpleNamespace(node_id="d1", http_addr="127.0.0.1:1")
    store = SimpleNamespace(guard_check=None, node_id="d2", is_leader=lambda: False,
                            leader=lambda: lead)
    node = SimpleNamespace(config=SimpleNamespace(shard=None, join=("127.0.0.1:1",),
                                                  data_dir=str(tmp_path)),
                           db=db, fsm=fsm, store=store)
    svc = ShardingService(node)
    leaders = Catalog()
    leaders.apply("catalog.add_group", {"group": "s1"})
    leaders.apply("catalog.register_table", {"table": "users", "shard_key": "id",
                                             "key_affinity": "integer"})
    asked = []

    class FakeClient:
        async def request(self, method, addr, path, **kw):
            asked.append((addr, path))
            return SimpleNamespace(status=200, body=leaders.to_bytes())

        async def close(self):
            pass
    svc._client = FakeClient()
    svc.catch_up_wait = 0.2             # a routed call waits this long, then 503
    p = SimpleNamespace(shard_id=None, transaction=False, request_id=None, timeout=None,
                        freshness=None, db_timeout=None)

    async def scenario():
        svc.loop = asyncio.get_running_loop()
        await svc.cache.publish(svc.catalog_state.load(db.read_internal).to_bytes())
        task = asyncio.get_running_loop().create_task(svc._catch_up())
        await asyncio.sleep(0.3)
        assert asked and not svc.catalog_loaded() and not store.ready_check()
        with pytest.raises(Unavailable, match="caught up"):
            await svc.sql.execute([Statement("INSERT INTO users VALUES (1, 'x')")], p)
        with pytest.raises(Unavailable):
            await svc.serve_catalog(-1, 0)
        # the log brings the leader's catalog ops; the node then opens
        await svc.cache.publish(leaders.to_bytes())
        await asyncio.wait_for(task, 5)
        assert svc.catalog_loaded() and store.ready_check()
        assert await svc.serve_catalog(-1, 0)
    try:
        asyncio.run(scenario())
    finally:
        db.close()
