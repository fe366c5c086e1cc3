"""Online rebalancing benchmark (#7).

Starts a default group and two shard groups (one member each, fsync on) with the
stand-in node integration (tests/cluster/rebalance_node.py), loads a table of --rows
rows onto shard s1, adds s2, and moves half of the table to s2 while a client writes
at a steady rate through the router. Prints the copy rate, the fence, and the
foreground write latency before and during the move.

    python bench/rebalance_bench.py [--rows 1000000] [--rate 200] [--max-rows-per-s 0]

Last line: one JSON object with copy_rows_per_s, fence_max_ms, p99_ms_before,
p99_ms_during (and the details they come from).
"""
import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.cluster.rebalance_harness import ShardedCluster, setup_table, write_load  # noqa: E402


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=200.0, help="foreground writes/s (2 clients)")
    ap.add_argument("--before-s", type=float, default=5.0)
    ap.add_argument("--batch-rows", type=int, default=2000)
    ap.add_argument("--max-rows-per-s", type=int, default=0)
    a = ap.parse_args()
    print(f"# {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"# python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
          f"default + 2 shard groups, one member each, fsync on; {a.rows} rows, half moved")
    work = tempfile.mkdtemp(prefix="rs_rebalance_bench_")
    cl = ShardedCluster(work, env={"RAFTSQLITE_REBALANCE": json.dumps(
        {"batch_rows": a.batch_rows, "max_rows_per_s": a.max_rows_per_s})})
    try:
        cl.start()
        t0 = time.monotonic()
        setup_table(cl, a.rows)
        print(f"loaded {a.rows} rows in {time.monotonic() - t0:.1f}s")
        ref = sqlite3.connect(":memory:", isolation_level=None)
        ref.execute("CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")

        async def run():
            router, ex, src = cl.router()
            await src.refresh()
            stats = {}
            stop = asyncio.Event()
            ws = [asyncio.create_task(write_load(router, ref, stop, s, stats, key_max=a.rows,
                                                 rate=a.rate / 2)) for s in range(2)]
            await asyncio.sleep(a.before_s)
            t_move = time.monotonic()
            st, plan = await asyncio.to_thread(cl.rebalance, {"table_name": "kv"})
            assert st == 200, plan
            status = await asyncio.to_thread(cl.wait_moves_end, 3600)
            t_end = time.monotonic()
            stop.set()
            await asyncio.gather(*ws)
            fenced = router.stats().get("fenced_waits", 0)
            await ex.close()
            return stats, t_move, t_end, status, fenced
        stats, t_move, t_end, status, fenced = asyncio.run(run())
        lat = stats.get("lat", [])
        before = [d * 1000 for t, d in lat if t < t_move]
        during = [d * 1000 for t, d in lat if t_move <= t < t_end]
        m = status["moves"][0]
        out = {
            "rows": a.rows, "rows_moved": m["rows_copied"], "phase": m["phase"],
            "copy_rows_per_s": m["rows_per_s"],
            "move_seconds": round(t_end - t_move, 2),
            # the longest any foreground write took during the move: an upper bound on
            # the time a write waited across the fence (the router waits it out)
            "fence_max_ms": round(max(during), 1) if during else None,
            "fence_ms_coordinator": round(m["fence_ms"], 1) if m.get("fence_ms") is not None else None,
            "fenced_waits": fenced,
            "p99_ms_before": round(pct(before, 99), 2) if before else None,
            "p99_ms_during": round(pct(during, 99), 2) if during else None,
            "p50_ms_before": round(pct(before, 50), 2) if before else None,
            "p50_ms_during": round(pct(during, 50), 2) if during else None,
            "writes_before": len(before), "writes_during": len(during),
        }
        print(f"moved {out['rows_moved']} rows in {out['move_seconds']}s "
              f"(copy {out['copy_rows_per_s']} rows/s); fence held {out['fence_ms_coordinator']} ms by "
              f"the coordinator; longest foreground write during the move {out['fence_max_ms']} ms")
        print(f"foreground writes: p99 {out['p99_ms_before']} ms before, {out['p99_ms_during']} ms during "
              f"({out['writes_before']} / {out['writes_during']} writes)")
        print(json.dumps(out))
    finally:
        cl.stop()


if __name__ == "__main__":
    main()
