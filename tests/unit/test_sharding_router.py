"""Router protocol: stale catalogs, fences, refusals, transactions, DDL fan-out, cache."""
import asyncio

import pytest

from raftsqlite.errors import Fenced, Moved, RoutingRefused
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.fake import FakeCluster
from raftsqlite.sharding.ownership import GuardItem
from raftsqlite.sharding.planner import Planner
from raftsqlite.sharding.router import PartialWrite, Router

from sharding_env import checksum, make_env, run

pytestmark = pytest.mark.timeout(60)


def kid(v):
    return ks.key_id(v, "hash", "integer")


def move_range(cl, start, end, src, dst, refresh=False):
    """Move [start, end) of users/orders from src to dst like a finished rebalance would:
    copy the rows, switch ownership in the catalog and on the shards, delete the source
    copy. ``refresh=False`` leaves the router's cached catalog stale."""
    lo, hi = ks.signed(start), ks.signed(end) if end < ks.KEYSPACE_END else None
    for t, key in (("users", "id"), ("orders", "user_id")):
        cond = f"rs_kid('hash', {key}) >= ?" + (f" AND rs_kid('hash', {key}) < ?" if hi is not None else "")
        args = (lo, hi) if hi is not None else (lo,)
        rows = cl.sql(src, f"SELECT * FROM {t} WHERE {cond}", args)
        if rows:
            cl.groups[dst].conn.executemany(
                f"INSERT INTO {t} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        cl.sql(src, f"DELETE FROM {t} WHERE {cond}", args)
    cl.op("assign", refresh=refresh, table="users", start=start, end=ks.end_to_json(end), owner=dst)


def a_key_owned_by(cl, users, group):
    for u in users:
        if cl.catalog.owner_of("users", kid(u[0])) == group:
            return u[0]
    raise AssertionError("no key")


@pytest.fixture()
def env():
    return make_env(shards=("s1", "s2", "s3"), n_users=90, n_orders=120)


def test_stale_router_write_is_moved_and_retried(env):
    """Invariant: a router with a stale catalog never writes to the old owner: the old
    owner rejects with Moved (nothing applied), the router refreshes, the row lands on
    the new owner."""
    cl, router, plain, users, orders = env
    col = cl.catalog.colocation_of("users")
    i = col["owners"].index("s1")
    start, end = ks.range_of(col["starts"], i)
    move_range(cl, start, end, "s1", "s2")
    assert router.cat.current().owner_of("users", start) == "s1"  # the router is stale
    # a new key inside the moved range
    k = next(x for x in range(10 ** 6, 10 ** 6 + 10000) if start <= kid(x) < end)
    before = cl.groups["s1"].rejected
    res = run(router.execute([("INSERT INTO users (id, name) VALUES (?, ?)", [k, "new"])]))
    assert "error" not in res[0]
    assert cl.groups["s1"].rejected == before + 1
    assert cl.sql("s1", "SELECT COUNT(*) FROM users WHERE id = ?", (k,))[0][0] == 0
    assert cl.sql("s2", "SELECT COUNT(*) FROM users WHERE id = ?", (k,))[0][0] == 1
    assert router.cat.current().owner_of("users", start) == "s2"
    assert router.stats()["moved_retries"] >= 1


def test_stale_router_scatter_read_and_write(env):
    """Invariant: a stale scatter read or write is refused by the shards whose ranges
    changed and re-run on the new owners: counts match the plain database and the
    scatter UPDATE touches every row exactly once."""
    cl, router, plain, users, orders = env
    col = cl.catalog.colocation_of("users")
    i = col["owners"].index("s3")
    start, end = ks.range_of(col["starts"], i)
    move_range(cl, start, (start + end) // 2, "s3", "s1")
    got = run(router.query(["SELECT COUNT(*), SUM(age) FROM users"]))[0]["values"]
    assert got == [list(plain.execute("SELECT COUNT(*), SUM(age) FROM users").fetchone())]
    move_range(cl, (start + end) // 2, end, "s3", "s2")
    res = run(router.execute(["UPDATE users SET age = COALESCE(age, 0) + 1000"]))[0]
    plain.execute("UPDATE users SET age = COALESCE(age, 0) + 1000")
    assert res["rows_affected"] == len(users)
    rows = sum((cl.sql(g, "SELECT id, age FROM users") for g in ("s1", "s2", "s3")), [])
    assert sorted(rows) == sorted(plain.execute("SELECT id, age FROM users").fetchall())


def test_fenced_write_waits_then_succeeds(env):
    """Invariant: a write to a fenced range is not an error to the client: the router
    waits until the fence lifts and then writes exactly once."""
    cl, router, plain, users, orders = env
    k = a_key_owned_by(cl, users, "s2")
    kk = kid(k)

    async def go():
        cl.groups["s2"].own.apply("own.fence", {"colocation": "users", "start": kk, "end": kk + 1})

        async def lift():
            await asyncio.sleep(0.1)
            cl.groups["s2"].own.apply("own.unfence", {"colocation": "users", "start": kk, "end": kk + 1})
        t = asyncio.create_task(lift())
        res = await router.execute([("UPDATE users SET name = 'f' WHERE id = ?", [k])])
        await t
        return res
    res = run(go())
    assert res[0]["rows_affected"] == 1
    assert router.stats()["fenced_waits"] >= 1
    assert cl.sql("s2", "SELECT name FROM users WHERE id = ?", (k,)) == [("f",)]


def test_fence_that_never_lifts_is_retryable_error(env):
    """Invariant: a fence that outlasts the bounded wait surfaces as Fenced (retryable),
    and nothing was written."""
    cl, router, plain, users, orders = env
    router.fence_wait_s = 0.15
    k = a_key_owned_by(cl, users, "s1")
    cl.groups["s1"].own.apply("own.fence", {"colocation": "users", "start": 0, "end": None})
    before = checksum(cl)
    with pytest.raises(Fenced):
        run(router.execute([("UPDATE users SET name = 'f' WHERE id = ?", [k])]))
    assert checksum(cl) == before
    # reads are not fenced: the source still holds the rows until the switch
    assert run(router.query([("SELECT id FROM users WHERE id = ?", [k])]))[0]["values"] == [[k]]


def test_guard_check_rules():
    """Invariant: the shard-side check accepts exactly: owned keys; scatters at the
    shard's own epoch; and refuses writes into fences with Fenced, the rest with Moved."""
    cl = FakeCluster(("s1", "s2"))
    cl.op("register_table", table="t", shard_key="id")
    cl.op("add_to_shard", table="t", shard="s1")
    cl.op("add_to_shard", table="t", shard="s2")
    half = 1 << 63
    cl.op("assign", table="t", start=half, end=None, owner="s2")
    o1, o2 = cl.groups["s1"].own, cl.groups["s2"].own
    e1, e2 = o1.cols["t"]["epoch"], o2.cols["t"]["epoch"]
    o1.check([GuardItem("t", 0, [0, half - 1])])
    o2.check([GuardItem("t", 999, [half])])          # key-bound: epoch not compared
    with pytest.raises(Moved):
        o1.check([GuardItem("t", e1, [half])])
    with pytest.raises(Moved):
        o1.check([GuardItem("t", e1 - 1, None)])     # stale scatter
    o1.check([GuardItem("t", e1, None)])
    with pytest.raises(Moved):
        o1.check([GuardItem("other", e1, None)])
    o2.apply("own.fence", {"colocation": "t", "start": half, "end": half + 10})
    with pytest.raises(Fenced):
        o2.check([GuardItem("t", e2, [half + 3])])
    o2.check([GuardItem("t", e2, [half + 3])], write=False)
    o2.check([GuardItem("t", e2, [half + 10])])
    with pytest.raises(Fenced):
        o2.check([GuardItem("t", e2, None)])
    # an older ownership view arriving late is ignored
    assert o2.apply("own.set", {"colocation": "t", "epoch": e2 - 1, "tables": ["t"],
                                "ranges": [[0, None]]}) == {"applied": False}
    with pytest.raises(Moved):
        o2.check([GuardItem("t", e2, [0])])


REFUSED = [
    "UPDATE users SET id = id + 1 WHERE age > 3",
    "SELECT * FROM users WHERE age > (SELECT AVG(age) FROM users)",
    "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)",
    "SELECT u.id FROM users u JOIN orders o ON u.name = o.status",
    "SELECT u.id FROM users u JOIN other x ON u.id = x.id",
    "SELECT GROUP_CONCAT(name) FROM users",
    "SELECT COUNT(DISTINCT city) FROM users",
    "SELECT city, age FROM users GROUP BY city",
    "SELECT DISTINCT city FROM users ORDER BY age",
    "SELECT id, ROW_NUMBER() OVER (ORDER BY age) FROM users",
    "INSERT INTO users (name) VALUES ('no key')",
    "INSERT INTO users (id, name) VALUES (NULL, 'null key')",
    "INSERT INTO users (id, name) VALUES (abs(-5), 'expr key')",
    "INSERT INTO users (id, name) SELECT order_id, status FROM orders",
    "INSERT INTO users (id, name) VALUES (1, 'a') ON CONFLICT(id) DO UPDATE SET id = 5",
    "UPDATE users SET name = 'x' WHERE id IN (SELECT user_id FROM orders)",
    "WITH x AS (SELECT id FROM users) SELECT * FROM x",
    "SELECT id FROM users UNION SELECT user_id FROM orders",
    "ALTER TABLE users RENAME TO people",
    "ALTER TABLE users DROP COLUMN id",
    "CREATE VIEW v AS SELECT * FROM users",
    "DELETE FROM users WHERE age > 50 LIMIT 3",
    "REPLACE INTO users (id) VALUES (1)",
    "SELECT * FROM users WHERE id = ?2",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refusals_are_clear_and_change_nothing(env, sql):
    """Invariant: each statement that cannot be answered correctly across shards is
    refused with RoutingRefused saying why and what to do, and no group changes."""
    cl, router, plain, users, orders = env
    before = checksum(cl)
    calls = len(cl.executor.log)
    with pytest.raises(RoutingRefused) as ei:
        if sql.split()[0].upper() in ("SELECT", "WITH"):
            run(router.query([(sql, [1, 2])]))
        else:
            run(router.execute([(sql, None)]))
    msg = str(ei.value)
    assert "What to do:" in msg and len(msg) > 40, msg
    assert checksum(cl) == before
    assert len(cl.executor.log) == calls


def test_cross_shard_transaction_refused_single_shard_transaction_atomic(env):
    """Invariant: a transaction is atomic only inside one shard: one spanning shards is
    refused before anything runs; one inside a shard runs as one unit."""
    cl, router, plain, users, orders = env
    a, b = a_key_owned_by(cl, users, "s1"), a_key_owned_by(cl, users, "s2")
    before = checksum(cl)
    with pytest.raises(RoutingRefused, match="one shard"):
        run(router.execute([("UPDATE users SET age = 1 WHERE id = ?", [a]),
                            ("UPDATE users SET age = 1 WHERE id = ?", [b])], transaction=True))
    assert checksum(cl) == before
    res = run(router.execute([("UPDATE users SET age = 7 WHERE id = ?", [a]),
                              ("INSERT INTO orders (order_id, user_id, amount) VALUES (9999, ?, 1)", [a])],
                             transaction=True))
    assert [r["rows_affected"] for r in res] == [1, 1]


def test_unregistered_and_explicit_shard_pass_through(env):
    """Invariant: statements on unregistered tables reach the default group unchanged;
    shard_id= reaches exactly that group, bypassing routing."""
    cl, router, plain, users, orders = env
    run(router.execute(["CREATE TABLE other (id INTEGER, v TEXT)",
                        ("INSERT INTO other VALUES (?, ?)", [1, "a"])]))
    log = cl.executor.log[-2:]
    assert log == [("default", "CREATE TABLE other (id INTEGER, v TEXT)"),
                   ("default", "INSERT INTO other VALUES (?, ?)")]
    assert run(router.query(["SELECT * FROM other"]))[0]["values"] == [[1, "a"]]
    n = cl.sql("s3", "SELECT COUNT(*) FROM users")[0][0]
    assert run(router.query(["SELECT COUNT(*) FROM users"], shard_id="s3"))[0]["values"] == [[n]]


def test_ddl_fans_out_idempotently(env):
    """Invariant: DDL on a sharded table reaches every shard holding it and the default
    group; re-running it (or running it after a partial failure) converges."""
    cl, router, plain, users, orders = env
    cl.sql("s2", "ALTER TABLE users ADD COLUMN extra INTEGER")   # a half-applied earlier run
    res = run(router.execute(["ALTER TABLE users ADD COLUMN extra INTEGER"]))[0]
    assert "error" not in res, res
    res = run(router.execute(["CREATE INDEX ix_age ON users(age)"]))[0]
    assert "error" not in res
    run(router.execute(["CREATE INDEX ix_age ON users(age)"]))
    for g in ("default", "s1", "s2", "s3"):
        cols = [r[1] for r in cl.sql(g, "PRAGMA table_info(users)")]
        assert "extra" in cols, g
        assert cl.sql(g, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'ix_age'")[0][0] == 1


def test_partial_multi_shard_write_is_reported_not_repeated():
    """Invariant: when ranges move during a scatter UPDATE onto a shard that already
    applied it, the router raises PartialWrite naming where it applied, and applies
    nothing twice."""
    cl = FakeCluster(("s1", "s2"))
    cl.op("register_table", table="t", shard_key="id", key_affinity="integer")
    cl.op("add_to_shard", table="t", shard="s1")
    cl.op("add_to_shard", table="t", shard="s2")
    cl.op("assign", table="t", start=1 << 63, end=None, owner="s2")
    router = Router(cl.executor, cl.source)
    run(router.execute(["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"]))
    run(router.execute([("INSERT INTO t (id, v) VALUES " + ", ".join(f"({i}, 0)" for i in range(40)), None)]))
    orig = cl.executor.execute

    s1_applied = asyncio.Event()

    async def racing(group, statements, **kw):
        if group == "s1" and statements[0].sql.startswith("UPDATE"):
            r = await orig(group, statements, **kw)
            s1_applied.set()
            return r
        if group == "s2" and statements[0].sql.startswith("UPDATE") and not racing.done:
            racing.done = True
            await asyncio.wait_for(s1_applied.wait(), 5)
            # s1 has applied; now half of s2's ranges move to s1 before s2 sees the write
            start = (1 << 63) + (1 << 62)
            rows = cl.sql("s2", "SELECT * FROM t WHERE rs_kid('hash', id) >= ?", (ks.signed(start),))
            cl.groups["s1"].conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
            cl.sql("s2", "DELETE FROM t WHERE rs_kid('hash', id) >= ?", (ks.signed(start),))
            cl.op("assign", refresh=False, table="t", start=start, end=None, owner="s1")
        return await orig(group, statements, **kw)
    racing.done = False
    cl.executor.execute = racing
    with pytest.raises(PartialWrite) as ei:
        run(router.execute(["UPDATE t SET v = v + 1"]))
    assert "What to do" in str(ei.value)
    assert ei.value.applied == ["s1"]
    vals = sum((cl.sql(g, "SELECT v FROM t") for g in ("s1", "s2")), [])
    assert max(v for (v,) in vals) == 1 and len(vals) == 40


def test_plan_cache_is_bounded_and_follows_registrations(env):
    """Invariant: the plan cache hits on repeated text, never exceeds its capacity, and is
    dropped when registrations change (a plan depends on which tables are sharded)."""
    cl, router, plain, users, orders = env
    p = Planner(cache_size=4)
    cat = cl.catalog
    for i in range(10):
        p.plan(f"SELECT * FROM users WHERE id = {i}", cat)
    assert p.stats()["cached"] == 4
    p.plan("SELECT * FROM users WHERE id = 9", cat)
    assert p.stats()["hits"] == 1
    plan = p.plan("SELECT * FROM other WHERE id = 1", cat)
    assert plan.kind == "default"
    cl.op("register_table", table="other", shard_key="id")
    with pytest.raises(RoutingRefused, match="no shard yet"):
        p.plan("SELECT * FROM other WHERE id = 1", cl.catalog).route(cl.catalog, None)


def test_explain_shape(env):
    """Invariant: explain names the shards, the SQL each runs and the merge steps."""
    cl, router, plain, users, orders = env
    e = router.explain("SELECT city, AVG(age) FROM users GROUP BY city ORDER BY 2 LIMIT 3")
    assert e["route"] == "scatter" and sorted(e["shards"]) == ["s1", "s2", "s3"]
    assert all("SUM(age)" in s["sql"] and "COUNT(age)" in s["sql"] for s in e["sql"])
    assert any("re-aggregate" in m for m in e["merge"])
    e = router.explain("SELECT * FROM users WHERE id = ?", [users[0][0]])
    assert e["route"] == "single" and len(e["shards"]) == 1
    e = router.explain("INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
    assert e["kind"] == "insert" and sum(s["sql"].count("(") - 1 for s in e["sql"]) == 4


def test_catalog_cache_long_poll_and_shared_refresh():
    """Invariants: a waiting long-poll returns as soon as a newer catalog is published
    (well within a second); concurrent refreshes share one fetch; older copies never
    replace newer ones."""
    from raftsqlite.sharding.cache import CatalogCache

    async def go():
        master = Catalog()
        server = CatalogCache(catalog=master.copy())
        fetches = []

        async def fetch(after, timeout):
            fetches.append(after)
            await asyncio.sleep(0.01)
            return master.to_bytes()
        client = CatalogCache(fetch)
        waiter = asyncio.create_task(server.wait_newer(server.current().version, 2.0))
        await asyncio.sleep(0.01)
        master.apply("catalog.add_group", {"group": "s1"})
        t0 = asyncio.get_running_loop().time()
        await server.publish(master.to_bytes())
        got = await waiter
        assert got is not None and "s1" in got.groups
        assert asyncio.get_running_loop().time() - t0 < 0.5
        assert await server.wait_newer(got.version, 0.05) is None
        await asyncio.gather(*[client.refresh() for _ in range(5)])
        assert len(fetches) == 1 and "s1" in client.current().groups
        assert not await client.publish(Catalog().to_bytes())
    run(go())


def test_rows_of_unowned_ranges_are_never_answered(env):
    """Invariant (fits #7): while a move's target holds copied rows it does not own yet,
    and while its source still holds rows it no longer owns, scatter reads and writes
    count every row exactly once."""
    cl, router, plain, users, orders = env
    col = cl.catalog.colocation_of("users")
    i = col["owners"].index("s1")
    start, end = ks.range_of(col["starts"], i)
    mv = cl.op("move_create", table="users", start=start, end=ks.end_to_json(end), target="s2")
    cl.op("move_update", move_id=mv["id"], phase="copying")
    lo = ks.signed(start)
    hi_sql, hi = (" AND rs_kid('hash', id) < ?", (ks.signed(end),)) if end < ks.KEYSPACE_END else ("", ())
    rows = cl.sql("s1", "SELECT * FROM users WHERE rs_kid('hash', id) >= ?" + hi_sql, (lo,) + hi)
    assert rows
    cl.groups["s2"].conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", rows)  # copied
    q = "SELECT COUNT(*), SUM(age) FROM users"
    want = [list(plain.execute(q).fetchone())]
    assert run(router.query([q]))[0]["values"] == want
    res = run(router.execute(["UPDATE users SET score = 1.5 WHERE age > 40"]))[0]
    assert res["rows_affected"] == plain.execute("UPDATE users SET score = 1.5 WHERE age > 40").rowcount
    # the switch: the target owns the range, the source keeps its copy until cleanup
    cl.sql("s2", "DELETE FROM users WHERE rs_kid('hash', id) >= ?" + hi_sql, (lo,) + hi)
    cl.groups["s2"].conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                                     cl.sql("s1", "SELECT * FROM users WHERE rs_kid('hash', id) >= ?" + hi_sql, (lo,) + hi))
    cl.op("move_update", move_id=mv["id"], phase="fenced")
    cl.op("move_switch", move_id=mv["id"])
    assert run(router.query([q]))[0]["values"] == want
    got = run(router.query(["SELECT id, score FROM users ORDER BY id"]))[0]["values"]
    assert [tuple(r) for r in got] == plain.execute("SELECT id, score FROM users ORDER BY id").fetchall()
    cl.op("move_update", move_id=mv["id"], phase="done")
    assert cl.catalog.foreign_holders("users") == set()


def test_fsm_glue_state_follows_the_database():
    """Invariants: own.*/catalog.* handlers keep their state only in the meta table of the
    apply transaction: a rolled-back transaction leaves no trace in what check() sees,
    a bad op changes nothing, and a fresh state object reads the same bytes."""
    import sqlite3
    from raftsqlite.errors import BadRequest
    from raftsqlite.sharding.glue import CATALOG_OPS, CatalogState, ShardState, op_args

    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE _raftsqlite_meta (k TEXT PRIMARY KEY, v)")

    class Ctx:
        def execute(self, sql, params=None):
            return conn.execute(sql, params or ()).fetchall()

    class FakeFSM:
        def __init__(self):
            self.h = {}

        def register_system_handler(self, name, fn):
            self.h[name] = fn
    fsm, ctx = FakeFSM(), Ctx()
    shard = ShardState("s1")
    shard.register(fsm)
    changes = []
    cat = CatalogState(on_change=changes.append)
    cat.register(fsm)
    assert "catalog.register_table" in CATALOG_OPS and "own.set" in fsm.h
    fsm.h["catalog.add_group"](ctx, op_args({"group": "s1"}))
    assert changes and Catalog.from_bytes(changes[-1]).groups.keys() >= {"s1"}
    conn.execute("BEGIN")
    fsm.h["own.set"](ctx, op_args({"colocation": "t", "epoch": 1, "tables": ["t"], "ranges": [[0, None]]}))
    shard.check(ctx.execute, [GuardItem("t", 1, [5])])
    conn.execute("ROLLBACK")
    with pytest.raises(Moved):
        shard.check(ctx.execute, [GuardItem("t", 1, [5])])
    fsm.h["own.set"](ctx, op_args({"colocation": "t", "epoch": 1, "tables": ["t"], "ranges": [[0, None]]}))
    before = conn.execute("SELECT v FROM _raftsqlite_meta WHERE k = 'sharding.ownership'").fetchone()
    with pytest.raises(BadRequest):
        fsm.h["own.fence"](ctx, op_args({"colocation": "nope", "start": 0}))
    assert conn.execute("SELECT v FROM _raftsqlite_meta WHERE k = 'sharding.ownership'").fetchone() == before
    ShardState("s1").check(ctx.execute, [GuardItem("t", 1, [5])])


def test_db_request_mixes_reads_and_writes(env):
    """Invariant: /db/request routes each statement by its own plan: unsharded ones to
    the default group unchanged, sharded reads merged, sharded writes per shard."""
    cl, router, plain, users, orders = env
    run(router.execute(["CREATE TABLE kv (k TEXT, v TEXT)"]))
    res = run(router.request([("INSERT INTO kv VALUES ('a', 'b')", None),
                              ("SELECT COUNT(*) FROM users", None),
                              ("UPDATE users SET age = 1 WHERE id = ?", [users[0][0]]),
                              ("SELECT v FROM kv", None)]))
    assert res[0]["rows_affected"] == 1
    assert res[1]["values"] == [[len(users)]]
    assert res[2]["rows_affected"] == 1
    assert res[3]["values"] == [["b"]]
    assert run(router.request([("SELECT * FROM kv", None)]))[0]["values"] == [["a", "b"]]


def test_retried_routed_write_with_request_id_is_idempotent(env):
    """Invariant: a routed request retried with the same request_id applies once on every
    shard it reaches (a multi-row INSERT split over shards, a keyed UPDATE and a scatter
    UPDATE in one request) and answers the first attempt's results; a different id, or
    none, applies again."""
    cl, router, plain, users, orders = env
    ks_ = [10 ** 6 + i for i in range(12)]
    ins = ("INSERT INTO users (id, name, age) VALUES " + ", ".join("(?, 'r', 1)" for _ in ks_),
           ks_)
    stmts = [ins, ("UPDATE users SET age = age + 1 WHERE id = ?", [ks_[0]]),
             "UPDATE users SET age = age + 1 WHERE name = 'r'"]
    groups = {cl.catalog.owner_of("users", kid(k)) for k in ks_}
    assert len(groups) > 1, "the keys must span several shards for this test to mean anything"

    def ages():
        return sorted(r for g in cl.groups for r in cl.sql(
            g, "SELECT id, age FROM users WHERE name = 'r'") if g != "default")

    first = run(router.execute(stmts, request_id="req-1"))
    assert all("error" not in r for r in first), first
    after_first = ages()
    assert len(after_first) == len(ks_)
    again = run(router.execute(stmts, request_id="req-1"))
    assert again == first
    assert ages() == after_first
    assert sum(g.dedup_hits for g in cl.groups.values()) >= len(groups)
    # a new id is a new request: the INSERT now fails on duplicate keys, the UPDATEs apply
    other = run(router.execute(stmts, request_id="req-2"))
    assert "error" in other[0]
    assert ages() != after_first


def test_route_one_matches_route_and_follows_catalog_changes(env):
    """Invariant: the one-row insert shortcut (``InsertPlan.route_one``) names the same
    group and the same guard bytes as the general ``route`` for every key, and after a
    catalog change (same catalog object or a new one) it routes by the new ranges."""
    from raftsqlite.sharding.ownership import encode_guard
    cl, router, plain, users, orders = env
    plan = Planner().plan("INSERT INTO users (id, name) VALUES (?, ?)", cl.catalog)

    def same(cat):
        for k in list(range(-50, 400, 7)) + ["123", 2 ** 62]:
            r = plan.route(cat, [k, "x"])
            assert plan.route_one(cat, [k, "x"]) == (r.calls[0].group,
                                                      encode_guard(r.calls[0].guard))
    same(cl.catalog)
    col = cl.catalog.colocation_of("users")
    i = col["owners"].index("s1")
    start, end = ks.range_of(col["starts"], i)
    k = next(u[0] for u in users if start <= kid(u[0]) < end)
    assert plan.route_one(cl.catalog, [k, "x"])[0] == "s1"
    move_range(cl, start, end, "s1", "s2")          # mutates cl.catalog in place
    assert plan.route_one(cl.catalog, [k, "x"])[0] == "s2"
    same(cl.catalog)
    same(Catalog.from_bytes(cl.catalog.to_bytes()))


def test_merged_answers_type_undeclared_columns_as_one_node_does(env):
    """Invariant: a scattered answer's ``types`` follow rqlite's rule as an unsharded answer
    does: a column with no declared type (an aggregate computed in the merge, or a column of
    shards that returned no rows) takes the first row's storage class, never ""."""
    cl, router, plain, users, orders = env
    res = run(router.query(["SELECT COUNT(*) AS n, AVG(age) AS a, MAX(name) FROM users"]))[0]
    assert res["types"] == ["integer", "real", "text"], res
    res = run(router.query(["SELECT id, name FROM users ORDER BY id LIMIT 3"]))[0]
    assert res["types"] == ["integer", "text"] and len(res["values"]) == 3, res
    res = run(router.query(["SELECT id FROM users WHERE id < -100000"]))[0]
    assert not res.get("values"), res        # no row: nothing to take a type from
