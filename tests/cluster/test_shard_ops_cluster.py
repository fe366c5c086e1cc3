"""Operational gaps of sharding on real processes (one module cluster: a default group
and two shard groups): VACUUM on every group, /table/remove while a move of the table
runs, and the catalog's member lists following removals, reaping and leaving on
shutdown (routers and GET /shards use them)."""
import json
import os
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

from raftsqlite.sharding.local import LocalCluster, http
from tests.cluster.node_harness import wait_for

pytestmark = pytest.mark.timeout(180)

REAP = 3.0      # -raft-reap-node-timeout of every node, seconds


def execute(addr, statements):
    st, body = http("POST", addr, "/db/execute", statements)
    assert st == 200, body
    return body["results"]


def count(addr, table, **flags):
    path = "/db/query" + ("?" + "&".join(f"{k}={v}" for k, v in flags.items()) if flags else "")
    st, body = http("POST", addr, path, [[f"SELECT count(*) FROM {table}"]])
    assert st == 200, body
    return body["results"][0]["values"][0][0]


def members(addr, group):
    st, body = http("GET", addr, "/shards", timeout=10)
    assert st == 200, body
    g = next(g for g in body["shards"] if g["group"] == group)
    return {m["node_id"] for m in g["members"]}, g


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The default node's coordinator copies slowly, so a move stays in progress long
    # enough to meet /table/remove (only default-group nodes run a coordinator).
    old = os.environ.get("RAFTSQLITE_REBALANCE")
    os.environ["RAFTSQLITE_REBALANCE"] = '{"batch_rows": 10, "max_rows_per_s": 40}'
    cl = LocalCluster(str(tmp_path_factory.mktemp("shardops")),
                      extra_args=["-raft-reap-node-timeout", f"{REAP:g}s"])
    try:
        cl.start()
        yield cl
    finally:
        cl.stop()
        if old is None:
            os.environ.pop("RAFTSQLITE_REBALANCE", None)
        else:
            os.environ["RAFTSQLITE_REBALANCE"] = old


def test_vacuum_compacts_every_group_and_says_so(cluster):
    """Invariant: a lone VACUUM without shard_id on a sharded cluster runs on every group
    (it used to compact the default group only), also while routed writes to the shards
    are in flight (it travels alone, never coalesced with them: a shard refuses a VACUUM
    in a batch), and the answer names the groups; every acknowledged write is kept;
    shard_id=NAME still compacts that group alone."""
    d = cluster.addrs["default"]
    execute(d, [["CREATE TABLE vw (id INTEGER PRIMARY KEY, v TEXT)"]])
    assert http("POST", d, "/table/register", {"table_name": "vw", "shard_key": "id"})[0] == 200
    for g in ("shard1", "shard2"):
        assert http("POST", d, "/table/add-to-shard", {"table_name": "vw", "shard_id": g})[0] == 200
    st, plan = http("POST", d, "/table/rebalance", {"table_name": "vw"})
    assert st == 200 and plan["status"] == "applied", plan
    acked = []
    stop = threading.Event()

    def writer(k):
        deadline = time.monotonic() + 20
        for i in range(2000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            st, body = http("POST", d, "/db/execute",
                            [[f"INSERT INTO vw (id, v) VALUES ({k * 100000 + i}, 'x')"]])
            if st == 200 and "error" not in body["results"][0]:
                acked.append(k * 100000 + i)
    ws = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for w in ws:
        w.start()
    try:
        wait_for(lambda: len(acked) > 20, 20, "writes flowing")
        for _ in range(3):
            st, body = http("POST", d, "/db/execute", [["VACUUM"]])
            assert st == 200 and "error" not in body["results"][0], body
            assert body["vacuumed"] == ["default", "shard1", "shard2"], body
    finally:
        stop.set()
        for w in ws:
            w.join(30)
    assert count(d, "vw") == len(acked)
    st, body = http("POST", d, "/db/execute?shard_id=shard2", [["VACUUM"]])
    assert st == 200 and "error" not in body["results"][0] and "vacuumed" not in body, body
    st, body = http("POST", d, "/table/remove", {"table_name": "vw", "drop_rows": True})
    assert st == 200 and body["rows_on_shards"] == len(acked), body


def test_remove_during_a_move_is_refused_and_leaves_no_fence(cluster):
    """Invariant: /table/remove while a move of the table copies answers 409 naming the
    move and changes nothing: the move finishes, every row is still routed, no fence is
    left on the catalog or the shards; after the move the removal goes through."""
    d = cluster.addrs["default"]
    execute(d, [["CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)"]])
    assert http("POST", d, "/table/register", {"table_name": "items", "shard_key": "id"})[0] == 200
    assert http("POST", d, "/table/add-to-shard",
                {"table_name": "items", "shard_id": "shard1"})[0] == 200
    n = 160
    execute(d, [["INSERT INTO items (id, v) VALUES " + ",".join(f"({i}, 'v{i}')" for i in range(n))]])
    assert http("POST", d, "/table/add-to-shard",
                {"table_name": "items", "shard_id": "shard2"})[0] == 200
    st, plan = http("POST", d, "/table/rebalance", {"table_name": "items"})
    assert st == 200 and plan["status"] == "moving", plan
    mids = [m["move_id"] for m in plan["moves"]]
    st, body = http("POST", d, "/table/remove", {"table_name": "items", "drop_rows": True})
    assert st == 409 and body["code"] == "conflict", body
    assert any(m in body["error"] for m in mids) and "cancel" in body["error"], body

    def finished():
        st, s = http("GET", d, "/table/rebalance/status?table_name=items")
        return st == 200 and s["active"] == 0 and s
    s = wait_for(finished, 60, "the move finished")
    assert {m["phase"] for m in s["moves"]} == {"done"}, s
    assert count(d, "items") == n
    assert count(d, "items", shard_id="shard1") + count(d, "items", shard_id="shard2") == n
    st, tabs = http("GET", d, "/tables")
    t = next(t for t in tabs["tables"] if t["table_name"] == "items")
    assert t["fenced"] == [] and "removing" not in t, t
    for g in ("shard1", "shard2"):
        own = _find(http("GET", cluster.addrs[g], "/status")[1], "ownership")
        assert own["colocations"]["items"]["fenced"] == [], own
    res = execute(d, [["UPDATE items SET v = 'x'"]])[0]     # every range takes writes
    assert res.get("rows_affected") == n, res
    st, body = http("POST", d, "/table/remove", {"table_name": "items", "drop_rows": True})
    assert st == 200 and body["rows_on_shards"] == n, body


def _raw(method, addr, path, data=None):
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_a_load_failing_on_one_group_says_what_each_group_kept(cluster, tmp_path):
    """Invariant: /db/load is not atomic across groups, and says so: when one group
    refuses its rows (here a unique index only shard2 has, drift an operator made with
    shard_id), the answer names, per table and per group, exactly the rows that stayed
    (checked against each group's count) and what to do; doing that (DELETE FROM, fix,
    load again) restores every row, and the success answer counts rows per group."""
    d = cluster.addrs["default"]
    execute(d, [["CREATE TABLE loadme (id INTEGER PRIMARY KEY, v TEXT)"]])
    assert http("POST", d, "/table/register", {"table_name": "loadme", "shard_key": "id"})[0] == 200
    for g in ("shard1", "shard2"):
        assert http("POST", d, "/table/add-to-shard", {"table_name": "loadme", "shard_id": g})[0] == 200
    st, plan = http("POST", d, "/table/rebalance", {"table_name": "loadme"})
    assert st == 200 and plan["status"] == "applied", plan
    st, body = http("POST", d, "/db/execute?shard_id=shard2",
                    [["CREATE UNIQUE INDEX loadme_v ON loadme (v)"]])
    assert st == 200 and "error" not in body["results"][0], body
    st, raw = _raw("GET", d, "/db/backup")
    assert st == 200
    f = tmp_path / "b.sqlite"
    f.write_bytes(raw)
    c = sqlite3.connect(str(f))
    c.executemany("INSERT INTO loadme VALUES (?, 'dup')", [(i,) for i in range(60)])
    c.commit()
    c.close()
    st, body = _raw("POST", d, "/db/load", f.read_bytes())
    assert st == 400, body
    msg = json.loads(body)["error"]
    c1, c2 = count(d, "loadme", shard_id="shard1"), count(d, "loadme", shard_id="shard2")
    assert c1 > 0 and c2 == 0, (c1, c2)
    assert "not atomic" in msg and f"loadme: {c1} rows" in msg and f"shard1: {c1}" in msg \
        and "shard2:" not in msg.split("; then:")[0] and "DELETE FROM" in msg, msg
    execute(d, [["DELETE FROM loadme"]])
    execute(d, [["DROP INDEX loadme_v"]])
    st, body = _raw("POST", d, "/db/load", f.read_bytes())
    assert st == 200, body
    doc = json.loads(body)
    c1, c2 = count(d, "loadme", shard_id="shard1"), count(d, "loadme", shard_id="shard2")
    assert doc["sharded_rows"] == {"loadme": 60} and c1 + c2 == 60, doc
    assert doc["rows_per_group"] == {"shard1": c1, "shard2": c2}, (doc, c1, c2)


def _find(doc, key):
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        for v in doc.values():
            f = _find(v, key)
            if f is not None:
                return f
    return None


def test_catalog_members_follow_removal_reaping_and_leaving(cluster):
    """Invariant: a shard group's member list in the catalog (GET /shards, what routers
    dial) is its Raft configuration: members added later appear, and a member removed
    with DELETE /remove, reaped after -raft-reap-node-timeout, or gone with
    -raft-cluster-remove-shutdown disappears (each used to stay listed for good)."""
    d = cluster.addrs["default"]
    lead = cluster.addrs["shard2"]
    cluster.start_node("shard2-2", "shard2", join=d)
    cluster.start_node("shard2-3", "shard2", join=d)
    extra = cluster.extra
    cluster.extra = extra + ["-raft-cluster-remove-shutdown"]
    try:
        cluster.start_node("shard2-4", "shard2", join=d)
    finally:
        cluster.extra = extra
    every = {"shard2-1", "shard2-2", "shard2-3", "shard2-4"}
    wait_for(lambda: members(d, "shard2")[0] == every and members(d, "shard2")[1]["health"] == "ok",
               60, "the added members listed")

    # reaped: killed, silent past the timeout
    p = cluster.procs.pop("shard2-3")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    t0 = time.monotonic()
    wait_for(lambda: members(d, "shard2")[0] == every - {"shard2-3"}, 30, "shard2-3 reaped")
    assert time.monotonic() - t0 >= REAP - 1.0

    # removed by the operator; sent to a node of another group, it says where to go
    st, body = http("DELETE", d, "/remove", {"id": "shard2-2"})
    assert st == 404 and "group 'shard2'" in body["error"] and lead in body["error"], body
    st, body = http("DELETE", lead, "/remove", {"id": "shard2-2"})
    assert st == 200, body
    wait_for(lambda: members(d, "shard2")[0] == {"shard2-1", "shard2-4"}, 15, "shard2-2 removed")
    p = cluster.procs.pop("shard2-2")
    p.terminate()
    p.wait(15)

    # left on shutdown
    p = cluster.procs.pop("shard2-4")
    p.send_signal(signal.SIGTERM)
    p.wait(20)
    ms, g = wait_for(lambda: (lambda r: r[0] == {"shard2-1"} and r)(members(d, "shard2")),
                       15, "shard2-4 gone")
    assert g["health"] == "ok" and g["leader"] == "shard2-1", g
    # a shard node's own view (its catalog copy) agrees, and routing to the group works
    assert members(cluster.addrs["shard1"], "shard2")[0] == {"shard2-1"}
    st, body = http("POST", d, "/db/execute?shard_id=shard2", [["CREATE TABLE IF NOT EXISTS z (a)"]])
    assert st == 200 and "error" not in body["results"][0], body
