"""A/B of the HTTP lane's CPU per request, in-process: two checkouts, alternating runs.

    python -m bench.lane_ab --a /path/to/baseline [--b .] [--rounds 12] [--n 20000]
    python -m bench.lane_ab --a . --b . --b-origin https://x.example   # CORS off vs on

Each run is a fresh process started in one checkout (its ``raftsqlite`` on
``PYTHONPATH``): the app with the in-memory fake store of tests/api, served on 127.0.0.1,
and one keep-alive client on the same uvloop sending ``--n`` requests one at a time
(point read ``GET /db/query?q=SELECT+1``, and ``POST /db/execute``): both take the fast
lane. It prints the process CPU microseconds per request (client and server together).
No Raft, SQLite file or other process is involved, so per-request costs of the HTTP path
(such as the /metrics bookkeeping) show above the noise a cluster run has; the order of
A and B alternates each round and the last line gives the paired medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import asyncio, json, os, sys, time
import uvloop
from raftsqlite.http import create_app, start_server, stop_server
from raftsqlite.testing.procs import free_port
from tests.api.fakes import Cluster, FakeNode, FakeStore

n, method, path, body = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode(), \
    sys.argv[4].encode()

async def main():
    cl = Cluster(); st = FakeStore(cl, "node1"); cl.leader_id = "node1"
    origin = os.environ.get("LANE_AB_ALLOW_ORIGIN")
    if origin:      # -http-allow-origin on (B of --b-origin)
        from raftsqlite.http.backend import HTTPConfig
        app = create_app(FakeNode(st), settings=HTTPConfig(allow_origin=origin))
    else:
        app = create_app(FakeNode(st))
    port = free_port()
    srv = await start_server(app, "127.0.0.1", port)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    req = (b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (method, path, len(body), body))

    async def one():
        w.write(req)
        head = await r.readuntil(b"\r\n\r\n")
        i = head.index(b"content-length: ") + 16
        await r.readexactly(int(head[i:head.index(b"\r\n", i)]))
        return head
    assert (await one()).startswith(b"HTTP/1.1 200")
    for _ in range(2000):
        await one()
    t0 = time.process_time()
    for _ in range(n):
        await one()
    cpu = time.process_time() - t0
    w.close()
    await stop_server(srv)
    print(json.dumps({"us_per_req": cpu / n * 1e6,
                      "fast_lane": app.ctx.counters.get("fast_lane", 0)}))

uvloop.run(main())
"""

WORKLOADS = {"read": ("GET", "/db/query?q=SELECT+1", ""),
             "write": ("POST", "/db/execute", '[["SELECT 1"]]')}


def run_one(root, wl, n, origin=""):
    method, path, body = WORKLOADS[wl]
    env = dict(os.environ, PYTHONPATH=root, LANE_AB_ALLOW_ORIGIN=origin)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n), method, path, body],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{root}: {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["fast_lane"] < n:
        raise RuntimeError(f"{root}: only {res['fast_lane']} of {n} requests took the fast lane")
    return res["us_per_req"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="baseline checkout (built in place)")
    ap.add_argument("--b", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--b-origin", default="", help="run B with -http-allow-origin set")
    a = ap.parse_args(argv)
    roots = {"A": os.path.abspath(a.a), "B": os.path.abspath(a.b)}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; A={roots['A']} "
          f"B={roots['B']}{' with allow_origin ' + a.b_origin if a.b_origin else ''}; "
          f"{a.rounds} rounds x {a.n} requests", flush=True)
    res = {k: {w: [] for w in WORKLOADS} for k in roots}
    for r in range(a.rounds):
        for wl in WORKLOADS:
            for k in (("A", "B") if r % 2 == 0 else ("B", "A")):
                res[k][wl].append(run_one(roots[k], wl, a.n,
                                          a.b_origin if k == "B" else ""))
            print(f"round {r} {wl:<5} A {res['A'][wl][-1]:.2f} B {res['B'][wl][-1]:.2f} "
                  f"us/request", flush=True)
    summary = {}
    for wl in WORKLOADS:
        d = [b - x for b, x in zip(res["B"][wl], res["A"][wl])]
        summary[wl] = {"A_median_us": round(statistics.median(res["A"][wl]), 2),
                       "B_median_us": round(statistics.median(res["B"][wl]), 2),
                       "B_minus_A_paired_median_us": round(statistics.median(d), 2),
                       "B_slower_rounds": sum(1 for x in d if x > 0)}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
