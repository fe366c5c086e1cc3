"""The sweep behind docs/design/forwarding.md's audit table: every route sent to the
default group's leader, a follower and a shard member, then (two default members
killed) to the follower and the shard member with no default leader. Prints one line
per route with each node's status (and the error for >= 300). Not a test (no asserts);
run from the repository root: ``python -m tests.cluster.forwarding_sweep`` (~1 min)."""
import asyncio
import tempfile
import threading
import time

from raftsqlite.testing.sharded import ShardedCluster
from tests.cluster.node_harness import call

J = {"Content-Type": "application/json"}
sc = ShardedCluster(size=3, workdir=tempfile.mkdtemp(prefix="fwd-sweep-"), shard_size=1,
                    shards=("shard1",), start_timeout=60)
loop = asyncio.new_event_loop()   # the cluster's proxies run here, beside the blocking calls
threading.Thread(target=loop.run_forever, daemon=True).start()


def run(coro):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(120)


run(sc.start())
try:
    lead = run(sc.default.wait_for_leader(30))
    fol = next(m for m in sc.default.members.values() if m.id != lead.id)
    sh = next(iter(sc.groups["shard1"].members.values()))
    L = lead.http_addr

    def p(a, path, body=None, m="POST"):
        st, b = call(a, m, path, body, headers=J, timeout=20)
        return st, (str(b)[:90])
    for i in range(20):
        st, _ = p(L, "/db/execute", [["CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, v TEXT)"]])
        if st == 200: break
        time.sleep(0.3)
        L = run(sc.default.wait_for_leader(30)).http_addr
    p(L, "/table/register", {"table_name": "kv", "shard_key": "id", "shard_func": "hash"})
    p(L, "/table/add-to-shard", {"table_name": "kv", "shard_id": "shard1"})
    routes = [("GET", "/nodes", None), ("GET", "/leader", None), ("GET", "/status?key=store.raft.state", None),
              ("GET", "/readyz", None), ("POST", "/snapshot", None), ("GET", "/db/backup", None),
              ("POST", "/db/execute", [["INSERT OR REPLACE INTO kv VALUES (1, 'a')"]]),
              ("GET", "/db/query?q=SELECT+count(*)+FROM+kv&level=strong", None),
              ("POST", "/db/request", [["SELECT count(*) FROM kv"]]),
              ("POST", "/execute", {"query": "INSERT OR REPLACE INTO kv VALUES (2, 'b')"}),
              ("GET", "/query?q=SELECT+count(*)+FROM+kv", None),
              ("POST", "/db/execute?queue", [["INSERT OR REPLACE INTO kv VALUES (3, 'q')"]]),
              ("GET", "/tables", None), ("GET", "/shards", None),
              ("GET", "/table/explain?q=SELECT+*+FROM+kv+WHERE+id=1", None),
              ("GET", "/shard/catalog?after=-1", None),
              ("POST", "/shard/system", {"ops": []}),
              ("GET", "/table/rebalance/status", None),
              ("POST", "/table/rebalance", {"table_name": "kv", "dry_run": True}),
              ("POST", "/table/split", {"table_name": "kv", "at": 12345}),
              ("POST", "/leader", {"id": "nosuch"}),
              ("DELETE", "/remove", {"id": "nosuch"}),
              ("POST", "/join", {"id": "x9", "addr": "127.0.0.1:1", "voter": False})]

    def sweep(tag, nodes):
        for m, path, body in routes:
            row = [f"{m} {path}"]
            for name, a in nodes:
                st, b = p(a, path, body, m)
                row.append(f"{name}={st}" + (f" {b}" if st >= 300 else ""))
            print(tag, " | ".join(row), flush=True)
    sweep("UP", [("leader", L), ("follower", fol.http_addr), ("shard", sh.http_addr)])
    # no leader in the default group: stop two default members
    others = [m for m in sc.default.members.values() if m.id != fol.id]
    for m in others:
        m.proc.kill()
        m.proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and call(fol.http_addr, "GET", "/leader")[0] == 200:
        time.sleep(0.3)
    sweep("NOLEADER", [("follower", fol.http_addr), ("shard", sh.http_addr)])
finally:
    run(sc.stop())
    loop.call_soon_threadsafe(loop.stop)
