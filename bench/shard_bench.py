"""Sharding benchmark.

Now (before integration) it measures what exists in-process:
- the router's planning cost per statement, cold (parse + analyse + rewrite, empty plan
  cache) and warm (cache hit + resolving owners for the bound parameters), median of
  several runs, per statement shape;
- routed single-row inserts/s and point reads/s through planner + router + merge over
  in-process sqlite3 groups (1 and 2 shard groups), and scatter-gather latency of
  COUNT(*) and ORDER BY ... LIMIT 10. These run in ONE process, so they show router
  overhead, not cluster scaling; their keys are prefixed ``inproc_``.

The cluster figures the issue asks for (``insert_rps_1_group``, ``insert_rps_2_groups``,
``scale_ratio`` over real groups of one member each) need the integrated node; until then
they print as null. Usage: ``python bench/shard_bench.py [--quick]``.
Last line: one JSON object.
"""
import asyncio
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raftsqlite import codec  # noqa: E402
from raftsqlite.sharding.fake import FakeCluster  # noqa: E402
from raftsqlite.sharding.planner import Planner, build_plan  # noqa: E402
from raftsqlite.sharding.router import Router  # noqa: E402

SHAPES = {
    "point_select": ("SELECT id, name, age FROM users WHERE id = ?", [12345]),
    "in_select": ("SELECT id, name FROM users WHERE id IN (?, ?, ?, ?)", [1, 2, 3, 4]),
    "insert_1row": ("INSERT INTO users (id, name, age) VALUES (?, ?, ?)", [7, "x", 3]),
    "insert_4rows": ("INSERT INTO users (id, name, age) VALUES (?, ?, ?), (?, ?, ?), (?, ?, ?), (?, ?, ?)",
                     [1, "a", 1, 2, "b", 2, 3, "c", 3, 4, "d", 4]),
    "update_by_key": ("UPDATE users SET age = age + 1 WHERE id = ?", [99]),
    "scatter_order_limit": ("SELECT id, name FROM users WHERE age > ? ORDER BY age DESC, id LIMIT 10 OFFSET 5", [30]),
    "scatter_agg": ("SELECT city, COUNT(*), AVG(age) FROM users GROUP BY city HAVING COUNT(*) > ? ORDER BY 2 DESC", [1]),
    "colocated_join": ("SELECT u.name, o.amount FROM users u JOIN orders o ON u.id = o.user_id WHERE u.id = ?", [5]),
    "unsharded": ("SELECT * FROM settings WHERE k = ?", ["a"]),
}


def make_cluster(shards):
    cl = FakeCluster(shards, yield_each=False)
    cl.op("register_table", table="users", shard_key="id", key_affinity="integer")
    cl.op("register_table", table="orders", shard_key="user_id", key_affinity="integer",
          colocate_with="users")
    for s in shards:
        cl.op("add_to_shard", table="users", shard=s)
    for m in cl.catalog.plan_rebalance("users")["moves"]:
        cl.op("assign", table="users", start=m["start"], end=m["end"], owner=m["target"])
    return cl


def plan_costs(cat, runs, n):
    out = {}
    for name, (sql, params) in SHAPES.items():
        cold, warm = [], []
        for _ in range(runs):
            t = time.perf_counter()
            for _ in range(n):
                build_plan(sql, cat).route(cat, params)
            cold.append((time.perf_counter() - t) / n * 1e6)
            p = Planner()
            p.plan(sql, cat)
            t = time.perf_counter()
            for _ in range(n * 20):
                p.plan(sql, cat).route(cat, params)
            warm.append((time.perf_counter() - t) / (n * 20) * 1e6)
        # Median of the runs (the machine is shared, so the minimum is printed too).
        out[name] = {"cold_us": round(statistics.median(cold), 1), "warm_us": round(statistics.median(warm), 2),
                     "cold_us_min": round(min(cold), 1), "warm_us_min": round(min(warm), 2)}
    return out


async def inproc(shards, rows, reads):
    cl = make_cluster(shards)
    r = Router(cl.executor, cl.source)
    await r.execute(["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, city TEXT)"])
    t = time.perf_counter()
    for i in range(rows):
        await r.execute([("INSERT INTO users (id, name, age, city) VALUES (?, ?, ?, ?)",
                          [i, f"n{i}", i % 80, f"c{i % 7}"])])
    ins = rows / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(reads):
        await r.query([("SELECT * FROM users WHERE id = ?", [(i * 7919) % rows])])
    rd = reads / (time.perf_counter() - t)
    lat = {}
    for name, sql in (("count", "SELECT COUNT(*) FROM users"),
                      ("order_limit", "SELECT id, name FROM users ORDER BY age DESC, id LIMIT 10")):
        xs = []
        for _ in range(7):
            t = time.perf_counter()
            await r.query([sql])
            xs.append((time.perf_counter() - t) * 1e3)
        lat[name] = round(statistics.median(xs), 2)
    return ins, rd, lat


def main():
    quick = "--quick" in sys.argv
    runs, n = (3, 20) if quick else (7, 100)
    print(f"# shard_bench: python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} cpus, hash implementation {codec.IMPLEMENTATION}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    cat = make_cluster(("s1", "s2", "s3")).catalog
    costs = plan_costs(cat, runs, n)
    print(f"{'statement':24s} {'cold us':>10s} {'warm us':>10s}   (min of {runs} runs: cold, warm)")
    for k, v in costs.items():
        print(f"{k:24s} {v['cold_us']:10.1f} {v['warm_us']:10.2f}   ({v['cold_us_min']:.1f}, {v['warm_us_min']:.2f})")
    cold = statistics.median(v["cold_us"] for v in costs.values())
    warm = statistics.median(v["warm_us"] for v in costs.values())
    print(f"median over shapes: cold {cold:.1f} us, warm {warm:.2f} us per statement")
    rows, reads = (2000, 2000) if quick else (20000, 20000)
    res = {}
    for shards in (("s1",), ("s1", "s2")):
        ins, rd, lat = asyncio.run(inproc(shards, rows, reads))
        res[len(shards)] = (ins, rd, lat)
        print(f"in-process, {len(shards)} group(s), {rows} rows: routed inserts {ins:,.0f}/s, "
              f"point reads {rd:,.0f}/s, scatter COUNT(*) {lat['count']} ms, "
              f"ORDER BY LIMIT 10 {lat['order_limit']} ms")
    print("cluster figures (real groups over HTTP/Raft): not measured yet, need the integrated node")
    print(json.dumps({
        "plan_us_warm": round(warm, 2), "plan_us_cold": round(cold, 1),
        "plan_costs": costs,
        "inproc_insert_rps_1_group": round(res[1][0]), "inproc_insert_rps_2_groups": round(res[2][0]),
        "inproc_point_read_rps_1_group": round(res[1][1]), "inproc_point_read_rps_2_groups": round(res[2][1]),
        "inproc_rows": rows,
        "inproc_scatter_count_ms_2_groups": res[2][2]["count"],
        "inproc_scatter_order_limit_ms_2_groups": res[2][2]["order_limit"],
        "insert_rps_1_group": None, "insert_rps_2_groups": None, "scale_ratio": None,
        "hash_impl": codec.IMPLEMENTATION,
    }))


if __name__ == "__main__":
    main()
