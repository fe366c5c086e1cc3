"""A/B of the per-request hot path: two checkouts side by side, same time window.

    python -m bench.hot_ab --a /path/to/baseline --b . [--rounds 3] [--duration 4]
        [--workloads insert,read] [--a-args '-max-inflight 1'] [--b-args ...]

Starts one 3-member cluster per checkout (both stay up for the whole run), then
alternates short wrk runs A, B, A, B, ... so background noise hits both alike. For each
run it reports requests/s and the CPU microseconds per request of each process: wrk, the
leader and each follower (user+system CPU from /proc over the run / requests). Workloads:
single-row INSERT through ``POST /db/execute`` at 64 connections (#9's headline), and
point reads ``GET /db/query?q=...&level=none`` on the leader at 32 connections (#5, #9).
The last line is one JSON object with the medians per checkout and workload.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from .cluster import RaftsqliteCluster
from .driver import RqliteInsert, RqliteQuery, _proc_cpu_s, run_wrk

READ_ROWS = 10_000


def _one(c, wl, conns, duration):
    leader = c.leader_url()
    li = c.urls.index(leader)
    pids = c.pids
    before = [_proc_cpu_s([p]) for p in pids]
    res = run_wrk(leader, wl, conns, duration, max_requests=0).to_dict()
    after = [_proc_cpu_s([p]) for p in pids]
    n = max(1, res.get("ok", 0) or int(res["rps"] * res["duration_s"]))
    per = [(a - b) * 1e6 / n for a, b in zip(after, before)]
    out = {"rps": round(res["rps"], 1), "p50_ms": res.get("p50_ms"),
           "wrk_us": round(res["driver_cpu_s"] * 1e6 / n, 1),
           "leader_us": round(per[li], 1),
           "follower_us": [round(x, 1) for i, x in enumerate(per) if i != li],
           "errors": res.get("errors") or {}}
    out["total_us"] = round(out["wrk_us"] + out["leader_us"] + sum(out["follower_us"]), 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="baseline checkout (built in place)")
    ap.add_argument("--b", default=".", help="candidate checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--workloads", default="insert,read")
    ap.add_argument("--a-args", default="", help="extra node flags for A, e.g. '-max-inflight 1'")
    ap.add_argument("--b-args", default="", help="extra node flags for B")
    a = ap.parse_args(argv)
    roots = {"A": os.path.abspath(a.a), "B": os.path.abspath(a.b)}
    wls = {"insert": (RqliteInsert(), 64), "read": (RqliteQuery("reads", READ_ROWS, "none"), 32)}
    chosen = [w for w in a.workloads.split(",") if w]
    clusters = {}
    try:
        extra = {"A": a.a_args.split(), "B": a.b_args.split()}
        for k, root in roots.items():
            c = clusters[k] = RaftsqliteCluster(3, root=root, extra_args=extra[k]).start()
            c.execute([["CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT)"]])
            if "read" in chosen:
                c.fill("reads", READ_ROWS)
            print(f"{k}: {root} leader {c.leader_url()}", flush=True)
        runs = {k: {w: [] for w in chosen} for k in roots}
        for r in range(a.rounds):
            for w in chosen:
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for k in order:
                    wl, conns = wls[w]
                    res = _one(clusters[k], wl, conns, a.duration)
                    runs[k][w].append(res)
                    print(f"round {r} {w:<6} {k}: {json.dumps(res)}", flush=True)
        summary = {}
        for k in roots:
            for w in chosen:
                rs = runs[k][w]
                med = lambda f: round(statistics.median(f(x) for x in rs), 1)  # noqa: E731
                summary[f"{k}_{w}"] = {
                    "rps": med(lambda x: x["rps"]), "wrk_us": med(lambda x: x["wrk_us"]),
                    "leader_us": med(lambda x: x["leader_us"]),
                    "follower_us": med(lambda x: sum(x["follower_us"]) / 2),
                    "total_us": med(lambda x: x["total_us"])}
        print(json.dumps(summary), flush=True)
    finally:
        for c in clusters.values():
            c.stop()


if __name__ == "__main__":
    sys.exit(main())
