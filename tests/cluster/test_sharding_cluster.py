"""Sharding on real processes: a default group and two shard groups (one member each),
set up through the seed's API exactly as its README shows it, checked against one plain
SQLite file; stale routers; refusals."""
import asyncio
import os
import sqlite3
import sys
import time

import pytest

from raftsqlite.sharding.local import LocalCluster, http, q

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "unit"))
from sharding_env import ORDERS, USERS, norm_rows  # noqa: E402
from test_sharding_diff import corpus  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def _stmt(sql, params):
    if params is None:
        return [sql]
    if isinstance(params, dict):
        return [sql, params]
    return [sql] + list(params)


def execute(addr, statements, **flags):
    st, body = http("POST", addr, "/db/execute" + ("?" + "&".join(f"{k}={v}" for k, v in flags.items())
                                                   if flags else ""), statements)
    assert st == 200, body
    return body["results"]


def query(addr, statements, **flags):
    path = "/db/query" + ("?" + "&".join(f"{k}={v}" for k, v in flags.items()) if flags else "")
    st, body = http("POST", addr, path, statements)
    return st, body


def count(addr, table, shard):
    st, body = query(addr, [[f"SELECT COUNT(*) FROM {table}"]], shard_id=shard)
    assert st == 200, body
    return body["results"][0]["values"][0][0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cl = LocalCluster(str(tmp_path_factory.mktemp("sharded")))
    cl.start()
    try:
        yield cl
    finally:
        cl.stop()


@pytest.fixture(scope="module")
def loaded(cluster):
    """users + orders (colocated) registered, spread over shard1 and shard2 and loaded;
    the same rows in one plain SQLite file."""
    d = cluster.addrs["default"]
    execute(d, [[USERS], [ORDERS]])
    for body in ({"table_name": "users", "shard_key": "id", "shard_func": "hash"},
                 {"table_name": "orders", "shard_key": "user_id", "shard_func": "hash",
                  "colocate_with": "users"}):
        st, res = http("POST", d, "/table/register", body)
        assert st == 200, res
    for s in ("shard1", "shard2"):
        st, res = http("POST", d, "/table/add-to-shard", {"table_name": "users", "shard_id": s})
        assert st == 200, res
    st, plan = http("POST", d, "/table/rebalance", {"table_name": "users"})
    assert st == 200 and plan["status"] == "applied", plan
    import random
    from sharding_env import CITIES, NAMES
    rnd = random.Random(1)
    users = [(i * 7 - 300, rnd.choice(NAMES), rnd.choice([None] + list(range(15, 70))),
              rnd.choice(CITIES), round(rnd.uniform(0, 100), 2) if rnd.random() > 0.1 else None)
             for i in range(1, 241)]
    orders = [(j, rnd.choice(users)[0], rnd.randint(1, 500), rnd.choice(["new", "paid", "sent"]))
              for j in range(1, 601)]
    plain = sqlite3.connect(":memory:", isolation_level=None)
    plain.execute(USERS)
    plain.execute(ORDERS)
    # load through a shard node's router too: every node routes
    entry = [d, cluster.addrs["shard1"], cluster.addrs["shard2"]]
    for b in range(0, len(users), 40):
        rows = users[b:b + 40]
        sql = "INSERT INTO users (id, name, age, city, score) VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(rows))
        params = [v for r in rows for v in r]
        plain.execute(sql, params)
        res = execute(entry[b // 40 % 3], [[sql] + params])
        assert "error" not in res[0], res
    for b in range(0, len(orders), 100):
        rows = orders[b:b + 100]
        sql = "INSERT INTO orders (order_id, user_id, amount, status) VALUES " + ", ".join(["(?, ?, ?, ?)"] * len(rows))
        params = [v for r in rows for v in r]
        plain.execute(sql, params)
        assert "error" not in execute(d, [[sql] + params])[0]
    return cluster, plain, users, orders


def test_rows_live_on_their_owners(loaded):
    """Invariant: every row is on exactly one shard, both shards hold some, the default
    group holds none of a registered table."""
    cl, plain, users, orders = loaded
    d = cl.addrs["default"]
    n1, n2 = count(d, "users", "shard1"), count(d, "users", "shard2")
    assert n1 > 0 and n2 > 0 and n1 + n2 == len(users)
    assert count(d, "users", "default") == 0
    assert count(d, "orders", "shard1") + count(d, "orders", "shard2") == len(orders)


@pytest.mark.parametrize("seed", range(2))
def test_differential_corpus_real_cluster(loaded, seed):
    """Invariant: every corpus query answered by the real sharded cluster (through the
    default node's and a shard node's router) equals the plain SQLite file's answer."""
    cl, plain, users, orders = loaded
    entry = [cl.addrs["default"], cl.addrs["shard2"]]
    for i, (sql, params, ordered) in enumerate(corpus(users, orders, seed)):
        cur = plain.execute(sql, params if params is not None else ())
        want_cols = [x[0] for x in cur.description]
        want = cur.fetchall()
        st, body = query(entry[i % 2], [_stmt(sql, params)])
        assert st == 200, (sql, body)
        got = body["results"][0]
        assert "error" not in got, (sql, got)
        assert got["columns"] == want_cols, sql
        assert norm_rows(got.get("values", []), ordered) == norm_rows(want, ordered), sql


def test_seed_readme_examples(loaded):
    """Invariant: the seed README's auto_route calls work as written (curl's
    ``-d '{json}' -d auto_route=true`` body included) and land on the owning shard."""
    cl, *_ = loaded
    d = cl.addrs["default"]
    st, res = http("POST", d, "/execute?", b'{"query":"INSERT INTO users (id, name, city) VALUES (?, ?, ?)", '
                   b'"args":["456000", "Jane Doe", "Oslo"]}&auto_route=true')
    assert st == 200 and res["rows_affected"] == 1, res
    st, rows = http("GET", d, "/query" + q("SELECT id, name FROM users WHERE id=456000", auto_route="true"))
    assert st == 200 and rows == [{"id": 456000, "name": "Jane Doe"}], rows
    st, plan = http("GET", d, "/table/explain" + q("SELECT * FROM users WHERE id=456000"))
    owner = plan["shards"][0]
    other = "shard2" if owner == "shard1" else "shard1"
    st, b = query(d, [["SELECT COUNT(*) FROM users WHERE id = 456000"]], shard_id=owner)
    assert b["results"][0]["values"] == [[1]]
    st, b = query(d, [["SELECT COUNT(*) FROM users WHERE id = 456000"]], shard_id=other)
    assert b["results"][0]["values"] == [[0]]
    execute(d, [["DELETE FROM users WHERE id = 456000"]])
    st, tables = http("GET", cl.addrs["shard1"], "/tables")
    assert {t["table_name"] for t in tables["tables"]} == {"users", "orders"}
    st, shards = http("GET", cl.addrs["shard2"], "/shards")
    assert {g["group"]: g["health"] for g in shards["shards"]} == {
        "default": "ok", "shard1": "ok", "shard2": "ok"}


def _snapshot(cl):
    d = cl.addrs["default"]
    return {g: (count(d, "users", g), count(d, "orders", g)) for g in ("default", "shard1", "shard2")}


def test_refusals_are_clear_and_change_nothing(loaded):
    """Invariant: each refused request gets a 4xx with a message saying why and what to
    do, and no group's data or the catalog changes."""
    cl, *_ = loaded
    d = cl.addrs["default"]
    before = _snapshot(cl)
    st, cat_before = http("GET", d, "/tables")
    execute(d, [["CREATE TABLE legacy (id INTEGER PRIMARY KEY, v TEXT)"], ["INSERT INTO legacy VALUES (1, 'x')"]])
    cases = [
        ("POST", "/table/register", {"table_name": "legacy", "shard_key": "id"}, "already has rows"),
        ("POST", "/table/register", {"table_name": "users2"}, "shard_key"),
        ("POST", "/table/add-to-shard", {"table_name": "users", "shard_id": "nope"}, "nope"),
        ("POST", "/db/execute?transaction", [["INSERT INTO users (id, name) VALUES (1000001, 'a')"],
                                             ["INSERT INTO users (id, name) VALUES (1000002, 'b')"],
                                             ["INSERT INTO users (id, name) VALUES (1000003, 'c')"],
                                             ["INSERT INTO users (id, name) VALUES (1000004, 'd')"]],
         "one shard"),
        ("POST", "/db/execute", [["UPDATE users SET id = id + 1 WHERE age > 30"]], "shard key"),
        ("POST", "/db/query", [["SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)"]], "What to do"),
        ("POST", "/db/query?shard_id=nowhere", [["SELECT 1"]], "nowhere"),
        ("POST", "/table/remove", {"table_name": "orders"}, "drop_rows"),
        ("POST", "/table/remove", {"table_name": "users", "drop_rows": "yes"}, "drop_rows"),
    ]
    for method, path, body, needle in cases:
        st, res = http(method, d, path, body)
        assert 400 <= st < 500, (path, body, st, res)
        assert needle.lower() in res["error"].lower(), (path, res)
    assert _snapshot(cl) == before
    st, cat_after = http("GET", d, "/tables")
    assert cat_after == cat_before
    st, res = http("POST", cl.addrs["shard2"], "/table/remove", {"table_name": "users"})
    assert st == 409 and res["code"] == "conflict", res
    assert f"{before['shard1'][0]} row" in res["error"] or f"shard1: {before['shard1'][0]}" in res["error"]
    # the refusal lifted its fence: a write to the colocation group goes through at once
    t0 = time.monotonic()
    execute(d, [["INSERT INTO orders (order_id, user_id, amount) VALUES (999999, 1, 1)"]])
    execute(d, [["DELETE FROM orders WHERE order_id = 999999"]])
    assert time.monotonic() - t0 < 5
    assert _snapshot(cl) == before


def _table_on(d, table, shard):
    """Rows of ``table`` on ``shard`` read directly (None: the shard has no such table)."""
    st, body = query(d, [[f"SELECT COUNT(*) FROM {table}"]], shard_id=shard)
    assert st == 200, body
    r = body["results"][0]
    if "no such table" in r.get("error", ""):
        return None
    return r["values"][0][0]


def _scratch(d, name):
    execute(d, [[f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, v TEXT)"]])
    assert http("POST", d, "/table/register", {"table_name": name, "shard_key": "id"})[0] == 200
    for s in ("shard1", "shard2"):
        assert http("POST", d, "/table/add-to-shard", {"table_name": name, "shard_id": s})[0] == 200
    assert http("POST", d, "/table/rebalance", {"table_name": name})[1]["status"] == "applied"


@pytest.mark.parametrize("writer_first", [True, False])
def test_remove_hides_no_rows_under_concurrent_writes(loaded, writer_first):
    """Invariants of POST /table/remove: with rows on the shards and no drop_rows it
    answers 409 and the table stays registered with every row; while writes race the
    removal no acknowledged row ends up hidden (each one is readable through the router
    afterwards, from the shards while registered or from the default group once not);
    with drop_rows the table is dropped on every shard and the registration is gone.
    ``writer_first=False`` starts the writes just after the removal began (the removal
    usually wins: 200); True starts them first (409, then drop_rows). The order of the
    fence, counts and catalog change is pinned in tests/unit/test_sharding_remove.py."""
    import threading
    cl, *_ = loaded
    d = cl.addrs["default"]
    name = f"scratch_{int(writer_first)}"
    _scratch(d, name)
    acked, stop, out = [], threading.Event(), {}

    def writer():
        i, t_end = 0, time.monotonic() + 20
        while not stop.is_set() and i < 400 and time.monotonic() < t_end:
            i += 1
            st, body = http("POST", cl.addrs["shard1"], "/db/execute", [[f"INSERT INTO {name} VALUES ({i}, 'w')"]])
            if st == 200 and "error" not in body["results"][0]:
                acked.append(i)

    def remover():
        out["r"] = http("POST", d, "/table/remove", {"table_name": name})
    w, r = threading.Thread(target=writer), threading.Thread(target=remover)
    first, second = (w, r) if writer_first else (r, w)
    first.start()
    time.sleep(0.05 if writer_first else 0.01)
    second.start()
    r.join(30)
    time.sleep(0.2)             # let the writer run on after the outcome
    stop.set()
    w.join(30)
    st, res = out["r"]
    assert acked
    registered = any(t["table_name"] == name for t in http("GET", d, "/tables")[1]["tables"])
    st_q, body = query(d, [[f"SELECT id FROM {name} ORDER BY id"]])
    seen = {r[0] for r in body["results"][0].get("values", [])}
    assert set(acked) <= seen, (st, res, sorted(set(acked) - seen)[:10])
    if st == 200:
        assert not registered and res["rows_on_shards"] == 0
        assert all(_table_on(d, name, g) in (0, None) for g in ("shard1", "shard2")), res
        return
    assert st == 409 and registered and "drop_rows" in res["error"], res
    on_shards = [_table_on(d, name, g) for g in ("shard1", "shard2")]
    assert sum(on_shards) == len(seen) and _table_on(d, name, "default") == 0
    st, res = http("POST", d, "/table/remove", {"table_name": name, "drop_rows": True})
    assert st == 200 and res["rows_on_shards"] == len(seen) and res["dropped_on"] == ["shard1", "shard2"], res
    assert [_table_on(d, name, g) for g in ("shard1", "shard2")] == [None, None]
    assert not any(t["table_name"] == name for t in http("GET", d, "/tables")[1]["tables"])
    assert _table_on(d, name, "default") == 0


def test_stale_router_write_is_rejected_and_retried(loaded):
    """Invariant: a router whose catalog predates an ownership change sends a write to
    the old owner; the shard refuses it (Moved) before anything runs; the router
    refreshes and writes to the new owner; the row exists exactly once."""
    cl, *_ = loaded
    d = cl.addrs["default"]
    execute(d, [["CREATE TABLE events (k INTEGER PRIMARY KEY, v TEXT)"]])
    for path, body in (("/table/register", {"table_name": "events", "shard_key": "k"}),
                       ("/table/add-to-shard", {"table_name": "events", "shard_id": "shard1"})):
        st, res = http("POST", d, path, body)
        assert st == 200, res
    from raftsqlite.sharding.catalog import Catalog
    from raftsqlite.sharding.cache import CatalogCache
    from raftsqlite.sharding.router import Router
    from raftsqlite.sharding import keyspace as ks
    import urllib.request
    stale = urllib.request.urlopen(f"http://{d}/shard/catalog?after=-1").read()
    # shard2 joins the table and takes half of the (empty) keyspace: epoch changes
    for path, body in (("/table/add-to-shard", {"table_name": "events", "shard_id": "shard2"}),
                       ("/table/rebalance", {"table_name": "events"})):
        st, res = http("POST", d, path, body)
        assert st == 200, res
    fresh = Catalog.from_bytes(urllib.request.urlopen(f"http://{d}/shard/catalog?after=-1").read())
    key = next(k for k in range(1, 1000) if fresh.owner_of("events", ks.key_id(k, "hash", "integer")) == "shard2")
    assert Catalog.from_bytes(stale).owner_of("events", ks.key_id(key, "hash", "integer")) == "shard1"

    async def scenario():
        from raftsqlite.client import Client
        from raftsqlite.codec import encode_command
        from raftsqlite.codec.model import Command, CommandType, Request
        from raftsqlite.sharding.service import error_from, load_results
        client = Client()

        class Exec:
            calls = []

            async def execute(self, group, statements, *, transaction=False, guard=None):
                self.calls.append(group)
                body = encode_command(Command(CommandType.EXECUTE, [Request(statements, transaction, None, guard)]))
                r = await client.request("POST", cl.addrs[group], "/shard/call?kind=execute", body=body)
                if r.status != 200:
                    raise error_from(r.status, r.body)
                return load_results(r.body)

        async def fetch(after, timeout):
            r = await client.request("GET", d, f"/shard/catalog?after={after}&poll={timeout}")
            return r.body if r.status == 200 else None
        cache = CatalogCache(fetch=fetch, catalog=Catalog.from_bytes(stale))
        ex = Exec()
        router = Router(ex, cache)
        try:
            res = await router.execute([("INSERT INTO events (k, v) VALUES (?, ?)", [key, "once"])])
        finally:
            await client.close()
        return res, ex.calls, router.counts
    res, calls, counts = asyncio.run(scenario())
    assert "error" not in res[0], res
    assert calls == ["shard1", "shard2"], calls
    assert counts["moved_retries"] == 1
    assert count(d, "events", "shard1") == 0
    assert count(d, "events", "shard2") == 1


def test_node_router_learns_catalog_within_a_second(loaded):
    """Invariant: a change made through one node reaches another node's router (long-poll)
    within a second."""
    cl, *_ = loaded
    d, s2 = cl.addrs["default"], cl.addrs["shard2"]
    execute(d, [["CREATE TABLE quick (id INTEGER PRIMARY KEY)"]])
    st, res = http("POST", d, "/table/register", {"table_name": "quick", "shard_key": "id"})
    assert st == 200, res
    t0 = time.monotonic()
    while True:
        # unknown table: a default-group plan; registered (on no shard yet): refused
        st, plan = http("GET", s2, "/table/explain" + q("SELECT * FROM quick WHERE id = 1"))
        if st == 400 or "quick" in plan.get("tables", []):
            break
        assert time.monotonic() - t0 < 3.0, plan
        time.sleep(0.05)
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("lane", ["post", "over_http"])
def test_coalesced_routed_writes_keep_their_own_outcomes(loaded, lane):
    """Invariant: concurrent routed inserts from one client-side router share /shard/call
    batches (batch=1), yet each client gets exactly its own result: its key as
    last_insert_id, its own error for a duplicate key, and after a stale catalog each
    row lands once, on the shard that owns it. Both executor lanes: the awaited ``post``
    and ``RemoteExecutor.over_http`` (writes over ``CallClient.send``, no task per call)."""
    cl, *_ = loaded
    d = cl.addrs["default"]
    table = f"burst_{lane}"
    execute(d, [[f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v TEXT)"]])
    for path, body in (("/table/register", {"table_name": table, "shard_key": "k"}),
                       ("/table/add-to-shard", {"table_name": table, "shard_id": "shard1"})):
        st, res = http("POST", d, path, body)
        assert st == 200, res
    import urllib.request
    from raftsqlite.client import Client
    from raftsqlite.sharding import keyspace as ks
    from raftsqlite.sharding.cache import CatalogCache
    from raftsqlite.sharding.catalog import Catalog
    from raftsqlite.sharding.coalesce import RemoteExecutor
    from raftsqlite.sharding.router import Router
    from raftsqlite.sharding.service import error_from
    stale = urllib.request.urlopen(f"http://{d}/shard/catalog?after=-1").read()
    for path, body in (("/table/add-to-shard", {"table_name": table, "shard_id": "shard2"}),
                       ("/table/rebalance", {"table_name": table})):
        st, res = http("POST", d, path, body)
        assert st == 200, res
    fresh = Catalog.from_bytes(urllib.request.urlopen(f"http://{d}/shard/catalog?after=-1").read())
    keys = list(range(1, 61))

    async def scenario():
        client = Client()

        async def post(group, path, body):
            r = await client.request("POST", cl.addrs[group], path, body=body)
            if r.status != 200:
                raise error_from(r.status, r.body)
            return r.body

        async def fetch(after, timeout):
            r = await client.request("GET", d, f"/shard/catalog?after={after}&poll={timeout}")
            return r.body if r.status == 200 else None
        ex = (RemoteExecutor(post, max_inflight=1) if lane == "post" else
              RemoteExecutor.over_http(dict(cl.addrs), max_inflight=1))
        router = Router(ex, CatalogCache(fetch=fetch, catalog=Catalog.from_bytes(stale)))
        sql = f"INSERT INTO {table} (k, v) VALUES (?, ?)"
        try:
            res = await asyncio.wait_for(asyncio.gather(
                *[router.execute([(sql, [k, f"v{k}"])]) for k in keys],
                *[router.execute([(sql, [k, "dup"])]) for k in (3, 3)]), 60)
        finally:
            await client.close()
            if ex.client is not None:
                ex.client.close()
        return res, ex.stats(), router.counts
    res, stats, counts = asyncio.run(scenario())
    dup = res[len(keys):]
    first = {k: r[0] for k, r in zip(keys, res)}
    for k, r in first.items():
        if k == 3 and "error" in r:
            continue        # one of the three writers of key 3 won; the others must fail
        assert r.get("last_insert_id") == k and r.get("rows_affected") == 1, (k, r)
    assert sum("error" in r[0] for r in dup + [[first[3]]]) == 2, (first[3], dup)
    assert stats["max_batch"] > 1, stats
    assert counts["moved_retries"] >= 1, counts
    owners = {k: fresh.owner_of(table, ks.key_id(k, "hash", "integer")) for k in keys}
    for s in ("shard1", "shard2"):
        st, body = query(d, [[f"SELECT k, v FROM {table} ORDER BY k"]], shard_id=s)
        assert st == 200, body
        got = body["results"][0].get("values", [])
        assert [row[0] for row in got] == [k for k in keys if owners[k] == s], (s, got)


def test_retried_routed_write_with_request_id_applies_once(loaded):
    """Invariant: a routed write retried with the same request_id (a client retry after a
    lost answer) applies once on every shard it reaches, through a default node and a
    shard node's router (local and remote shard calls), and answers without error."""
    cl, *_ = loaded
    d, s1 = cl.addrs["default"], cl.addrs["shard1"]
    ids = list(range(10 ** 7, 10 ** 7 + 16))
    stmts = [["INSERT INTO users (id, name, age) VALUES " + ", ".join("(?, 'rid', 1)" for _ in ids)]
             + ids, ["UPDATE users SET age = age + 1 WHERE name = 'rid'"]]
    try:
        for n, entry in enumerate((d, s1)):
            execute(d, [["DELETE FROM users WHERE name = 'rid'"]])
            first = execute(entry, stmts, request_id=f"tidy-{n}")
            assert all("error" not in r for r in first), first
            spread = [count_where(d, "name = 'rid'", s) for s in ("shard1", "shard2")]
            assert sum(spread) == len(ids) and min(spread) > 0, spread
            for other in (entry, d if entry != d else s1):
                again = execute(other, stmts, request_id=f"tidy-{n}")
                assert all("error" not in r for r in again), again
            st, body = query(d, [["SELECT COUNT(*), SUM(age) FROM users WHERE name = 'rid'"]])
            assert st == 200 and body["results"][0]["values"] == [[len(ids), 2 * len(ids)]], body
    finally:
        execute(d, [["DELETE FROM users WHERE name = 'rid'"]])


def count_where(addr, cond, shard):
    st, body = query(addr, [[f"SELECT COUNT(*) FROM users WHERE {cond}"]], shard_id=shard)
    assert st == 200, body
    return body["results"][0]["values"][0][0]


def test_two_first_nodes_of_a_new_group_started_together_form_one_group(cluster):
    """Invariant: two nodes started at once with ``-shard NEW -join ...`` form one Raft
    group: the catalog's claim decides which one bootstraps, the other joins it (never
    two single-node groups under one name)."""
    d = cluster.addrs["default"]
    a = cluster.start_node("race-a", "race", join=d)
    b = cluster.start_node("race-b", "race", join=d)
    for addr in (a, b):
        cluster.wait_ready(addr, 60)

    def members(addr):
        st, body = http("GET", addr, "/status")
        assert st == 200, body
        return sorted(m["node_id"] for m in body["store"]["members"])
    deadline = time.monotonic() + 30
    while True:
        got = (members(a), members(b))
        st, shards = http("GET", d, "/shards")
        grp = next((g for g in shards["shards"] if g["group"] == "race"), None)
        in_cat = sorted(m["node_id"] for m in grp["members"]) if grp else []
        if got == (["race-a", "race-b"],) * 2 and in_cat == ["race-a", "race-b"]:
            break
        assert time.monotonic() < deadline, (got, grp)
        time.sleep(0.1)


def _get_bytes(addr, path, timeout=60):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _rows(conn, table, order):
    return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


def test_backup_of_a_sharded_database_holds_every_row(loaded, tmp_path):
    """Invariant: GET /db/backup from any node (the default group's, a shard's), as a
    SQLite file or a SQL dump, holds every row of the registered tables (they live on the
    shards) and the unsharded tables, exactly the rows of the plain file; with
    shard_id=NAME it holds that group's own rows only. (It used to hold the default group's
    empty templates: a backup that restored to empty tables.)"""
    cl, plain, users, orders = loaded
    d = cl.addrs["default"]
    execute(d, [["CREATE TABLE IF NOT EXISTS notes (k TEXT PRIMARY KEY, v TEXT)"],
                ["INSERT OR REPLACE INTO notes VALUES ('a', 'unsharded')"]])
    want_u, want_o = _rows(plain, "users", "id"), _rows(plain, "orders", "user_id, order_id")
    for i, entry in enumerate((d, cl.addrs["shard1"])):
        st, blob = _get_bytes(entry, "/db/backup")
        assert st == 200 and blob[:16] == b"SQLite format 3\x00", (st, blob[:200])
        f = tmp_path / f"b{i}.sqlite"
        f.write_bytes(blob)
        b = sqlite3.connect(str(f))
        assert _rows(b, "users", "id") == want_u
        assert _rows(b, "orders", "user_id, order_id") == want_o
        assert b.execute("SELECT v FROM notes").fetchall() == [("unsharded",)]
        b.close()
        st, dump = _get_bytes(entry, "/db/backup?fmt=sql")
        assert st == 200, dump[:300]
        m = sqlite3.connect(":memory:")
        m.executescript(dump.decode())
        assert _rows(m, "users", "id") == want_u
        assert _rows(m, "orders", "user_id, order_id") == want_o
    st, one = _get_bytes(d, "/db/backup?fmt=sql&shard_id=shard1")
    assert st == 200
    n1 = count(d, "users", "shard1")
    assert 0 < n1 < len(users)
    assert one.decode().count('INSERT INTO "users" ') == n1
    st, body = _get_bytes(d, "/db/backup?shard_id=nope")
    assert st == 404 and b"not a known group" in body


def test_backup_refuses_a_primary_key_two_shards_hold(loaded):
    """Invariant: a registered table whose primary key is not its shard key can hold the
    same key on two shards; a backup cannot put both in one file and answers 400 naming
    the table and what to do, instead of dropping one of them."""
    cl, *_ = loaded
    d = cl.addrs["default"]
    execute(d, [["CREATE TABLE evts (id INTEGER PRIMARY KEY, k INTEGER)"]])
    st, res = http("POST", d, "/table/register", {"table_name": "evts", "shard_key": "k"})
    assert st == 200, res
    for s in ("shard1", "shard2"):
        st, res = http("POST", d, "/table/add-to-shard", {"table_name": "evts", "shard_id": s})
        assert st == 200, res
    st, res = http("POST", d, "/table/rebalance", {"table_name": "evts"})
    assert st == 200, res
    owner = {}
    for k in range(1, 200):
        st, plan = http("GET", d, "/table/explain" + q(f"SELECT * FROM evts WHERE k = {k}"))
        owner.setdefault(plan["shards"][0], k)
        if len(owner) == 2:
            break
    k1, k2 = owner.values()
    execute(d, [["INSERT INTO evts (id, k) VALUES (1, ?)", k1], ["INSERT INTO evts (id, k) VALUES (1, ?)", k2]])
    try:
        st, body = _get_bytes(d, "/db/backup")
        assert st == 400, (st, body[:300])
        assert b"evts" in body and b"same primary key" in body and b"shard_id" in body, body
    finally:
        execute(d, [["DELETE FROM evts"]])
    st, blob = _get_bytes(d, "/db/backup")
    assert st == 200 and blob[:16] == b"SQLite format 3\x00"


def _post_bytes(addr, path, data, ctype="application/octet-stream"):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method="POST",
                                 headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_load_restores_a_sharded_backup_onto_the_shards(loaded, tmp_path):
    """Invariants: POST /db/load of a sharded database's backup (SQLite file or SQL dump,
    sent to any node) puts the registered tables' rows on their owning shards (the same
    placement as before, none in the default group) and the unsharded tables in the
    default group; a load into sharded tables that already hold rows, of data lacking a
    registered table, or of a dump that does not create what it fills, is refused with a
    clear 400 and changes nothing. (A load used to put the rows in the default group's
    template, where no routed query sees them, and answer 200.)"""
    cl, plain, users, orders = loaded
    d, s1 = cl.addrs["default"], cl.addrs["shard1"]
    want_u = _rows(plain, "users", "id")
    placed = (count(d, "users", "shard1"), count(d, "users", "shard2"))
    st, binary = _get_bytes(d, "/db/backup")
    assert st == 200
    st, dump = _get_bytes(d, "/db/backup?fmt=sql")
    assert st == 200

    def routed_users():
        st, body = query(d, [["SELECT * FROM users ORDER BY id"]])
        assert st == 200, body
        return [tuple(r) for r in body["results"][0].get("values", [])]

    st, reg = http("GET", d, "/tables")
    names = sorted(t["table_name"] for t in reg["tables"] if t["ranges"])
    # children first: orders is colocated with users (other tests registered more)
    names.sort(key=lambda n: n == "users")

    def everything():
        out = {}
        for n in names:
            st, body = query(d, [[f"SELECT * FROM {n}"]])
            assert st == 200, body
            out[n] = sorted(map(repr, body["results"][0].get("values", [])))
        return out

    def empty_all():
        execute(d, [[f"DELETE FROM {n}"] for n in names])
    before = everything()
    assert before["users"] and before["orders"]

    st, body = _post_bytes(d, "/db/load", binary)
    assert st == 400 and b"already has rows" in body, body
    assert routed_users() == want_u

    f = tmp_path / "no_orders.sqlite"
    f.write_bytes(binary)
    c = sqlite3.connect(str(f))
    c.execute("DROP TABLE orders")
    c.commit()
    c.close()
    bad_dump = b"INSERT INTO users (id, name) VALUES (100000, 'x');\n"
    for data in (f.read_bytes(), bad_dump):
        empty_all()
        st, body = _post_bytes(d, "/db/load", data)
        assert st == 400, body
        assert (b"no table orders" in body) or (b"fails on its own" in body), body
        assert routed_users() == [] and count(d, "users", "default") == 0

    for entry, data, ctype in ((s1, dump, "text/plain"), (d, binary, "application/octet-stream")):
        empty_all()
        st, body = _post_bytes(entry, "/db/load", data, ctype)
        assert st == 200, body
        assert routed_users() == want_u
        assert everything() == before
        assert (count(d, "users", "shard1"), count(d, "users", "shard2")) == placed
        assert count(d, "users", "default") == 0 and count(d, "orders", "default") == 0
        st, back = query(d, [["SELECT * FROM orders ORDER BY user_id, order_id"]])
        assert [tuple(r) for r in back["results"][0]["values"]] == \
            _rows(plain, "orders", "user_id, order_id")
        st, notes = query(d, [["SELECT v FROM notes"]])
        assert notes["results"][0]["values"] == [["unsharded"]]
