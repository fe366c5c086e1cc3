"""A/B of -auth on point reads: the same checkout, auth off (A) vs on (B), same window.

    python -m bench.auth_ab [--rounds 5] [--duration 4] [--conns 32]

Starts two 3-member clusters of this checkout, A without -auth and B with an auth file
(user ``bench`` holds ``query``, the members use ``-join-as node``; ``*`` holds
execute/status/ready so the setup and the harness need no credentials), fills a 10 000-row table in each, then alternates short
wrk runs of ``GET /db/query?q=SELECT v FROM reads WHERE id=?&level=none`` on the leader,
A, B, B, A, ... Every wrk request carries the same ``Authorization`` header on both sides
(A ignores it), so the difference is the check itself: in B each request is checked
against the verified-header cache (the first one pays the password check). Reports
requests/s and the leader's CPU microseconds per request; the last line is one JSON
object with the medians and B - A.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile

from .cluster import RaftsqliteCluster
from .driver import RqliteQuery, _lua_str, _proc_cpu_s, run_wrk

READ_ROWS = 10_000
USER, PASSWORD = "bench", "bench-pw"
HEADER = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class AuthQuery(RqliteQuery):
    """RqliteQuery with an Authorization header on every request."""

    def lua_req(self) -> str:
        return f"""
local PREFIX = {_lua_str(self.prefix)}
local H = {{["Authorization"] = {_lua_str(HEADER)}}}
function req(tid, n)
  return wrk.format("GET", PREFIX .. math.random({self.nrows}) .. "&level={self.level}", H)
end
"""


def _check_cost(path, n=200_000):
    """ns per ``Credentials.check`` of a cached header (what B adds per request, besides
    one coroutine frame of the fast lane's guard)."""
    import asyncio
    import time
    from raftsqlite.http.auth import Credentials
    creds = Credentials.load(path)
    need = ("query",)
    asyncio.run(creds.verify(HEADER, need, "GET /db/query"))
    check = creds.check
    t = time.perf_counter()
    for _ in range(n):
        check(HEADER, need, "GET /db/query")
    return round((time.perf_counter() - t) * 1e9 / n)


def _one(c, wl, conns, duration):
    leader = c.leader_url()
    pid = c.pids[c.urls.index(leader)]
    before = _proc_cpu_s([pid])
    res = run_wrk(leader, wl, conns, duration, max_requests=0).to_dict()
    n = max(1, res.get("ok", 0) or int(res["rps"] * res["duration_s"]))
    return {"rps": round(res["rps"], 1), "p50_ms": res.get("p50_ms"),
            "leader_us": round((_proc_cpu_s([pid]) - before) * 1e6 / n, 1),
            "errors": res.get("errors") or {}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--conns", type=int, default=32)
    a = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench-auth-")
    path = os.path.join(tmp, "auth.json")
    with open(path, "w") as f:
        json.dump([{"username": USER, "password": PASSWORD, "perms": ["query"]},
                   {"username": "node", "password": "node-pw", "perms": ["all"]},
                   {"username": "*", "perms": ["execute", "status", "ready"]}], f)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    check_ns = _check_cost(path)
    print(f"in-process: one cached-credential check {check_ns} ns", flush=True)
    wl = AuthQuery("reads", READ_ROWS, "none")
    clusters = {}
    try:
        for k, extra in (("A", ()), ("B", ("-auth", path, "-join-as", "node"))):
            c = clusters[k] = RaftsqliteCluster(3, root=root, extra_args=extra).start()
            c.fill("reads", READ_ROWS)
            print(f"{k}: auth {'on' if extra else 'off'}, leader {c.leader_url()}", flush=True)
        runs = {"A": [], "B": []}
        for r in range(a.rounds):
            for k in (("A", "B") if r % 2 == 0 else ("B", "A")):
                res = _one(clusters[k], wl, a.conns, a.duration)
                if res["errors"]:
                    raise RuntimeError(f"{k} answered errors: {res['errors']}")
                runs[k].append(res)
                print(f"round {r} {k}: {json.dumps(res)}", flush=True)
        med = {k: {f: round(statistics.median(x[f] for x in v), 1) for f in ("rps", "leader_us")}
               for k, v in runs.items()}
        out = {"A_auth_off": med["A"], "B_auth_on": med["B"],
               "leader_us_delta": round(med["B"]["leader_us"] - med["A"]["leader_us"], 1),
               "rps_ratio": round(med["B"]["rps"] / med["A"]["rps"], 3) if med["A"]["rps"] else None,
               "check_ns": check_ns, "rounds": a.rounds, "duration_s": a.duration, "conns": a.conns}
        print(json.dumps(out), flush=True)
    finally:
        for c in clusters.values():
            c.stop()


if __name__ == "__main__":
    sys.exit(main())
