"""1-client write latency (#9's ``p50_ms_1``) beside etcd's, same time window.

    python -m bench.lat_ab [--rounds 9] [--duration 2] [--clients 1]
    python -m bench.lat_ab --a /path/to/baseline [--b .]      # A/B of two checkouts
    python -m bench.lat_ab --a main --b . --also /tmp/variant   # more checkouts in the rotation

Starts a 3-member cluster (fsync on) per checkout and a 3-member etcd cluster, all up for
the whole run, then takes short runs of single-row INSERTs through ``POST /db/execute``
(etcd: PUT through its gateway) in turns, A, B, etcd, A, B, etcd, ... (the order rotates
each round), so background load hits every system alike. Each run prints p50 and the
server CPU microseconds per request (user+system of the members over the run / requests).
The last line is one JSON object: ``p50_ms_1`` (the candidate's median p50), ``etcd_p50_ms_1``
and, with ``--a``, ``a_p50_ms_1``; plus the per-run lists. The medians of many short,
interleaved runs are what compare on a shared machine, not one long run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from contextlib import ExitStack

from .cluster import RaftsqliteCluster
from .driver import EtcdPut, RqliteInsert, run_load
from .peers import etcd as etcd_peer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default=None, help="baseline checkout (built in place)")
    ap.add_argument("--b", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="candidate checkout (default: this one)")
    ap.add_argument("--also", action="append", default=[],
                    help="another checkout in the rotation (repeatable): c1, c2, ...")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--no-etcd", action="store_true")
    ap.add_argument("--driver", choices=["auto", "wrk", "asyncio"], default="auto")
    a = ap.parse_args(argv)
    systems = []   # (key, url, workload factory, pids)
    with ExitStack() as stack:
        roots = [("a", a.a), ("b", a.b)] + [(f"c{i + 1}", r) for i, r in enumerate(a.also)]
        for key, root in roots:
            if root is None:
                continue
            c = stack.enter_context(RaftsqliteCluster(3, root=os.path.abspath(root)))
            c.execute([["CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT)"]])
            systems.append((key, c.leader_url(), RqliteInsert, c.pids))
            print(f"{key}: {os.path.abspath(root)} leader {c.leader_url()}", flush=True)
        if not a.no_etcd:
            ok, why = etcd_peer.available()
            if ok:
                e = stack.enter_context(etcd_peer.EtcdCluster(3))
                systems.append(("etcd", e.leader_url(), EtcdPut, e.pids))
            else:
                print(f"NOTE: etcd not measured: {why}", flush=True)
        for _, url, wl, pids in systems:   # warm up: connections, caches, first segments
            run_load(url, wl(), 4, 1.0, driver=a.driver, watch_pids=pids)
        runs = {k: [] for k, *_ in systems}
        for r in range(a.rounds):
            k0 = r % len(systems)
            for key, url, wl, pids in systems[k0:] + systems[:k0]:
                res = run_load(url, wl(), a.clients, a.duration, driver=a.driver,
                               watch_pids=pids).to_dict()
                cpu_us = (res.get("server_cpu_frac") or 0) / max(res["rps"], 1e-9) * 1e6
                runs[key].append({"p50_ms": res["p50_ms"], "p99_ms": res.get("p99_ms"),
                                  "rps": round(res["rps"], 1), "cpu_us_per_req": round(cpu_us)})
                print(f"round {r} {key:<5} p50={res['p50_ms']:.3f} ms p99={res.get('p99_ms', 0):.3f}"
                      f" rps={res['rps']:.0f} cpu_us/req={cpu_us:.0f}", flush=True)
    names = {"b": "p50_ms_%d", "a": "a_p50_ms_%d", "etcd": "etcd_p50_ms_%d"}
    out = {"clients": a.clients, "rounds": a.rounds, "duration_s": a.duration}
    for key, rs in runs.items():
        name = names.get(key, key + "_p50_ms_%d") % a.clients
        out[name] = round(statistics.median(x["p50_ms"] for x in rs), 3)
        out[name + "_runs"] = [x["p50_ms"] for x in rs]
        out[name.replace("p50", "p99")] = round(statistics.median(x["p99_ms"] or 0 for x in rs), 3)
        out[name.replace("p50_ms", "cpu_us_per_req")] = statistics.median(
            x["cpu_us_per_req"] for x in rs)
    if "b" in runs and "etcd" in runs:
        out["target_met"] = out[f"p50_ms_{a.clients}"] <= out[f"etcd_p50_ms_{a.clients}"]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
