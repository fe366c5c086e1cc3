"""Every sharding admin endpoint works when sent to any member (docs/design/forwarding.md).

The rebalance coordinator runs on the default group's leader. A default-group follower
answered ``/table/split``, ``/table/move-range`` and ``/table/rebalance/{status,cancel}``
with 503 ``not_leader``, and a shard-group member did not have those routes at all (404);
``/table/rebalance`` was forwarded by a path of its own that ignored ``redirect``. Now
each goes to the coordinator through ``http/forward.py``. One cluster for the module:
3 default members and two 1-member shard groups (real processes)."""
import asyncio
import http.client
import threading
import time

import pytest

from raftsqlite.testing.sharded import ShardedCluster
from tests.cluster.node_harness import call

pytestmark = pytest.mark.timeout(120)

N_ROWS = 60
JSON = {"Content-Type": "application/json"}


def _ok(res):
    st, body = res
    assert st == 200, body
    return body


def _post(addr, path, body):
    return call(addr, "POST", path, body, headers=JSON, timeout=20)


def _setup(sc, path, body):
    """An idempotent set-up call, to whichever member leads, retried while the new
    cluster settles (its first leader may step down once)."""
    deadline = time.monotonic() + 30
    while True:
        st, res = _post(_leader(sc).http_addr, path, body)
        if st == 200 or (st == 400 and "already" in str(res)):
            return
        assert st == 503 and time.monotonic() < deadline, res
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    # A slow copy (batch of 1 row, 4 rows/s) keeps a move cancellable for seconds.
    sc = ShardedCluster(size=3, workdir=tmp_path_factory.mktemp("fwd"), shard_size=1,
                        env={"RAFTSQLITE_REBALANCE": '{"batch_rows": 1, "max_rows_per_s": 4}'},
                        start_timeout=60)
    # The cluster's network proxies run on this loop: it must keep running while the
    # tests block on their HTTP calls, so it runs in a thread of its own.
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    sc.run = lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(90)
    sc.run(sc.start())
    try:
        _setup(sc, "/db/execute",
               [["CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, v TEXT)"]])
        _setup(sc, "/table/register", {"table_name": "kv", "shard_key": "id", "shard_func": "hash"})
        for s in ("shard1", "shard2"):    # shard1 owns the keyspace, shard2 nothing yet
            _setup(sc, "/table/add-to-shard", {"table_name": "kv", "shard_id": s})
        _setup(sc, "/db/execute", [[f"INSERT OR REPLACE INTO kv VALUES ({i}, 'v{i}')"]
                                   for i in range(N_ROWS)])
        yield sc
    finally:
        try:
            sc.run(sc.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            th.join(10)


def _leader(sc):
    return sc.run(sc.default.wait_for_leader(30))


def _follower(sc):
    lead = _leader(sc)
    return lead, next(m for m in sc.default.members.values() if m.id != lead.id)


def _shard_node(sc, g="shard2"):
    return next(iter(sc.groups[g].members.values()))


def _range_starts(addr):
    (t,) = [t for t in _ok(call(addr, "GET", "/tables"))["tables"] if t["table_name"] == "kv"]
    return {r["start"]: r["owner"] for r in t["ranges"]}


def _move(addr, move_id):
    moves = _ok(call(addr, "GET", "/table/rebalance/status?table_name=kv"))["moves"]
    return next((m for m in moves if m["move_id"] == move_id), None)


def _until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_split_from_follower_and_shard_member(cl):
    """Invariant: /table/split sent to a default-group follower or to a shard-group
    member splits the catalog's range exactly as on the leader (the leader's /tables
    shows the new boundary, owner unchanged)."""
    lead, fol = _follower(cl)
    for i, node in enumerate((fol, _shard_node(cl))):
        at = (1 << 62) + (i + 1) * 1000
        assert at not in _range_starts(lead.http_addr)
        res = _ok(_post(node.http_addr, "/table/split", {"table_name": "kv", "at": at}))
        assert res["at"] == at, res
        starts = _range_starts(lead.http_addr)
        assert starts.get(at) == "shard1", starts


def test_redirect_answers_301_to_the_leader_and_changes_nothing(cl):
    """Invariant: with ``redirect`` a follower answers 301 with Location = the leader's
    URL of the same request, and nothing changes until the client follows it; following
    it has the request's effect. Holds for /table/split and /table/rebalance (whose own
    forwarding path ignored ``redirect``)."""
    lead, fol = _follower(cl)
    at = (1 << 62) + 7777
    before = _range_starts(lead.http_addr)
    host, port = fol.http_addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = b'{"table_name": "kv", "at": %d, "dry_run": true}' % at
    locations = {}
    try:
        for path in ("/table/split?redirect", "/table/rebalance?redirect"):
            conn.request("POST", path, body=body, headers=JSON)
            r = conn.getresponse()
            r.read()
            assert r.status == 301, path
            locations[path] = loc = r.getheader("Location")
            # the address the leader advertises (the harness puts a proxy in front of it)
            assert loc == f"http://{lead.http_adv}{path}", loc
    finally:
        conn.close()
    assert _range_starts(lead.http_addr) == before
    loc = locations["/table/split?redirect"].removeprefix("http://")
    addr, path = loc.split("/", 1)
    _ok(_post(addr, "/" + path, {"table_name": "kv", "at": at}))
    assert _range_starts(lead.http_addr).get(at) == "shard1"


@pytest.mark.parametrize("via", ["follower", "shard_member"])
def test_move_range_status_cancel_from_any_member(cl, via):
    """Invariant: /table/move-range, /table/rebalance/status and /table/rebalance/cancel
    sent to a non-coordinator act on the coordinator: the move it creates is the one the
    leader reports, the status it answers is the leader's, and the cancel it relays ends
    the move cancelled (ownership unchanged, the rows stay on the source)."""
    lead, fol = _follower(cl)
    node = fol if via == "follower" else _shard_node(cl)
    L, A = lead.http_addr, node.http_addr
    _until(lambda: _ok(call(L, "GET", "/table/rebalance/status"))["active"] == 0, 30,
           "earlier moves to end")
    owners = _range_starts(L)
    start = max(owners)     # the last range: all on shard1, about a quarter of the rows
    rec = _ok(_post(A, "/table/move-range", {"table_name": "kv", "start": start, "end": None,
                                             "shard_id": "shard2"}))
    mid = rec["id"]
    on_leader = _move(L, mid)
    assert on_leader is not None and on_leader["phase"] not in ("done", "cancelled", "failed")
    seen = _move(A, mid)
    assert seen is not None and seen["target"] == on_leader["target"] == "shard2", seen
    res = _ok(_post(A, "/table/rebalance/cancel", {"move_id": mid}))
    assert res["move_id"] == mid and res["phase"] == "cancelled", res
    _until(lambda: (_move(L, mid) or {}).get("phase") == "cancelled", 30, "the cancel")
    assert _range_starts(L) == owners
    n = _ok(call(L, "GET", "/db/query?shard_id=shard1&q=SELECT+count(*)+FROM+kv"))
    assert n["results"][0]["values"][0][0] == N_ROWS


def test_catalog_admin_from_any_member(cl):
    """Invariant: /table/register, /table/add-to-shard and /table/remove run on the
    default group's leader whichever member receives them: with ``redirect`` a follower
    answers 301 to the leader and changes nothing; without, a follower and a shard
    member forward, and the leader's catalog shows each change."""
    lead, fol = _follower(cl)
    L = lead.http_addr
    _ok(_post(L, "/db/execute", [["CREATE TABLE IF NOT EXISTS kv2 (id INTEGER PRIMARY KEY)"]]))

    def tables():
        return {t["table_name"]: t for t in _ok(call(L, "GET", "/tables"))["tables"]}
    reg = {"table_name": "kv2", "shard_key": "id", "shard_func": "hash"}
    st, _ = call(fol.http_addr, "POST", "/table/register?redirect", reg, headers=JSON)
    assert st == 301 and "kv2" not in tables()
    _ok(_post(fol.http_addr, "/table/register", reg))
    assert tables()["kv2"]["shard_key"] == "id"
    _ok(_post(_shard_node(cl).http_addr, "/table/add-to-shard",
              {"table_name": "kv2", "shard_id": "shard2"}))
    assert tables()["kv2"]["shards"] == ["shard2"]
    _ok(_post(_shard_node(cl, "shard1").http_addr, "/table/remove", {"table_name": "kv2"}))
    assert "kv2" not in tables()


def test_redirect_from_a_shard_member_names_the_current_leader(cl):
    """Invariant: ``redirect`` on a shard member answers one 301 whose Location is the
    default group's leader now, even when the member this node last reached has lost the
    leadership since (it used to name that member, a follower, which answered a second
    301). Nothing runs on the redirected request."""
    sh = _shard_node(cl, "shard1").http_addr
    _ok(_post(sh, "/table/register", {"table_name": "kv", "shard_key": "id", "shard_func": "hash"}))
    old = _leader(cl)                     # the shard member just reached it
    other = next(m for m in cl.default.members.values() if m.id != old.id)
    _ok(_post(old.http_addr, "/leader", {"id": other.id}))
    new = _until(lambda: (lambda n: n if n.id != old.id else None)(_leader(cl)), 20,
                 "the leadership to move")
    want = _ok(call(new.http_addr, "GET", "/leader"))["api_addr"]
    host, port = sh.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        c.request("POST", "/table/register?redirect",
                  body='{"table_name": "kv_r", "shard_key": "id"}', headers=JSON)
        r = c.getresponse()
        r.read()
    finally:
        c.close()
    assert r.status == 301 and r.getheader("Location") == want + "/table/register?redirect", \
        (r.status, r.getheader("Location"), want)
    tables = _ok(call(new.http_addr, "GET", "/tables"))["tables"]
    assert "kv_r" not in {t["table_name"] for t in tables}


def test_shard_member_shows_its_cached_catalog_when_the_default_group_is_down(cl):
    """Invariant: with no default-group leader, a shard member still answers ``/tables``
    and ``/shards`` from its cached catalog, marked ``stale`` with the reason; with the
    default group up the same answers carry no ``stale`` key. And a queued write
    (``?queue``) meant for the default group answers 503 leader_not_found on a default
    member and on a shard member (rqlite's check; nothing is queued to be lost), while a
    shard member still queues writes for its shards. Runs last in the module: it stops
    two of the three default members."""
    sh = _shard_node(cl, "shard1").http_addr
    up_tables = _ok(call(sh, "GET", "/tables", timeout=20))
    up_shards = _ok(call(sh, "GET", "/shards", timeout=20))
    assert "stale" not in up_tables and "stale" not in up_shards
    assert any(t["table_name"] == "kv" for t in up_tables["tables"])
    lead = _leader(cl)
    keep = next(m for m in cl.default.members.values() if m.id != lead.id)
    for m in list(cl.default.members.values()):
        if m.id != keep.id:
            m.proc.kill()
            m.proc.wait()
    _until(lambda: call(keep.http_addr, "GET", "/leader", timeout=5)[0] != 200, 20,
           "the default group to lose its leader")
    t0 = time.monotonic()
    st, tables = call(sh, "GET", "/tables", timeout=30)
    assert st == 200, tables
    assert tables["stale"] is True and "default group" in tables["stale_reason"]
    assert tables["tables"] == up_tables["tables"] and tables["epoch"] == up_tables["epoch"]
    st, shards = call(sh, "GET", "/shards", timeout=30)
    assert st == 200, shards
    assert shards["stale"] is True
    assert [g["group"] for g in shards["shards"]] == [g["group"] for g in up_shards["shards"]]
    assert "shard1" in [g["group"] for g in shards["shards"]]
    assert time.monotonic() - t0 < 25
    # rqlite answers a queued write 503 when no leader can write it; a shard member
    # queued writes for the default group (unsharded tables, DDL) and lost them
    for addr in (keep.http_addr, sh):
        for stmts in ([["INSERT INTO plain_q VALUES (1)"]], [["CREATE TABLE q2 (id INTEGER)"]]):
            st, body = call(addr, "POST", "/db/execute?queue", stmts, headers=JSON, timeout=20)
            assert st == 503 and body["code"] == "leader_not_found", (addr, stmts, body)
    # a sharded table's write from the shard member goes to the shards, which have leaders
    st, body = call(sh, "POST", "/db/execute?queue&wait&timeout=10s",
                    [["INSERT OR REPLACE INTO kv VALUES (5, 'queued')"]], headers=JSON, timeout=20)
    assert st == 200 and "sequence_number" in body, body
