"""Tail latency of two or more checkouts side by side: p50 / p99 / p99.9, throughput and
server CPU per request, alternating.

    python -m bench.tail_ab TREE [TREE ...] [--rounds 5] [--duration 6]
                            [--workloads bulk,insert1,insert64] [--node-arg ARG ...]

Starts one 3-member cluster (fsync on) per checkout, all up for the whole run, then per
round drives each workload on each cluster in turn (the order rotates every round, so the
machine's background load hits every checkout alike): ``bulk`` is the headline's 1000-row
``?transaction`` batches over 4 connections, ``insertN`` single-row INSERTs from N clients
(bench/driver.py workloads, wrk when installed). The clusters keep their data across
rounds, as the headline's does. Prints every run, and as the last line one JSON object with
the medians per checkout and workload: req/s, rows/s, p50/p99/p99.9 ms and the members'
CPU ms per request (user+system over the run / requests), so a change that buys tail
latency with throughput or CPU shows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from contextlib import ExitStack

from .cluster import RaftsqliteCluster
from .driver import RqliteBulk, RqliteInsert, run_load


def workload(name):
    if name == "bulk":
        return RqliteBulk(), 4
    if name.startswith("insert"):
        return RqliteInsert(), int(name[len("insert"):] or 1)
    raise SystemExit(f"unknown workload {name!r} (bulk, insertN)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--workloads", default="bulk")
    ap.add_argument("--driver", choices=["auto", "wrk", "asyncio"], default="auto")
    ap.add_argument("--node-arg", action="append", default=[],
                    help="extra raft-sqlite argument for every member (repeatable)")
    a = ap.parse_args(argv)
    wls = [w.strip() for w in a.workloads.split(",") if w.strip()]
    print(f"# tail_ab {' '.join(sys.argv[1:])}; load {os.getloadavg()[0]:.1f}", flush=True)
    systems = []
    with ExitStack() as stack:
        for i, root in enumerate(a.trees):
            c = stack.enter_context(RaftsqliteCluster(3, root=os.path.abspath(root),
                                                      extra_args=a.node_arg))
            c.execute([["CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT)"]])
            systems.append((f"t{i}", os.path.abspath(root), c.leader_url(), c.pids))
            print(f"t{i}: {os.path.abspath(root)} leader {c.leader_url()}", flush=True)
        for _, _, url, pids in systems:     # warm-up: connections, first segments
            run_load(url, RqliteInsert(), 4, 1.0, driver=a.driver, watch_pids=pids)
        runs = {(k, w): [] for k, *_ in systems for w in wls}
        for r in range(a.rounds):
            k0 = r % len(systems)
            for w in wls:
                wl, conns = workload(w)
                for key, root, url, pids in systems[k0:] + systems[:k0]:
                    res = run_load(url, wl, conns, a.duration, driver=a.driver,
                                   watch_pids=pids).to_dict()
                    cpu_ms = (res.get("server_cpu_frac") or 0) * res["duration_s"] \
                        / max(res["requests"], 1) * 1e3
                    x = {"rps": res["rps"], "rows_per_s": res["rows_per_s"],
                         "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
                         "p999_ms": res["p999_ms"], "max_ms": res["max_ms"],
                         "cpu_ms_per_req": round(cpu_ms, 4), "errors": res["error_count"]}
                    runs[(key, w)].append(x)
                    print(f"round {r + 1} {w:<9} {key} rps={x['rps']:.0f} p50={x['p50_ms']:.2f}"
                          f" p99={x['p99_ms']:.2f} p99.9={x['p999_ms']:.2f} max={x['max_ms']:.1f}"
                          f" cpu_ms/req={x['cpu_ms_per_req']:.3f} errors={x['errors']}"
                          f" (load {os.getloadavg()[0]:.1f})", flush=True)
    out = {"rounds": a.rounds, "duration_s": a.duration, "trees": {k: t for k, t, *_ in systems}}
    med = statistics.median
    for (key, w), xs in runs.items():
        out.setdefault(key, {})[w] = {f: round(med(x[f] for x in xs), 4)
                                      for f in ("rps", "rows_per_s", "p50_ms", "p99_ms",
                                                "p999_ms", "max_ms", "cpu_ms_per_req")}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
