"""A/B of TLS's cost: one checkout, a plaintext 3-member cluster (A) and one with TLS on
the HTTP API and between nodes (B), side by side in the same time window.

    python -m bench.tls_ab [--rounds 3] [--duration 4] [--workloads insert,read]

B runs with ``-http-cert/-http-key`` and ``-node-cert/-node-key/-node-ca-cert
-node-verify-client`` (certificates made by openssl in a tmp dir; wrk does not check
the server's certificate, as a client with the CA would not pay more per request on a
kept-alive connection). Both clusters stay up for the whole run; short wrk runs alternate
A, B, B, A, ... Workloads as bench/hot_ab.py: single-row INSERTs at 64 connections and
point reads (``level=none``) at 32 connections on the leader; per run, requests/s and
CPU microseconds per request of wrk, the leader and the followers (from /proc). The last
line is one JSON object with the medians per side and workload.
"""
from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import tempfile
import urllib.request

from raftsqlite.testing.tlscerts import make_certs

from .cluster import REPO_ROOT, RaftsqliteCluster
from .driver import RqliteInsert, RqliteQuery
from .hot_ab import READ_ROWS, _one


class TLSCluster(RaftsqliteCluster):
    @property
    def urls(self):
        return [f"https://{a}" for a in self.http_addrs]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--workloads", default="insert,read")
    a = ap.parse_args(argv)
    certs = make_certs(tempfile.mkdtemp(prefix="bench-tls-certs-"))
    # the harness's own calls (readiness, /nodes, fill) go through urllib: trust our CA
    ctx = ssl.create_default_context(cafile=certs["ca"])
    urllib.request.install_opener(urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ctx)))
    tls = ["-http-cert", certs["cert"], "-http-key", certs["key"],
           "-node-cert", certs["cert"], "-node-key", certs["key"],
           "-node-ca-cert", certs["ca"], "-node-verify-client"]
    wls = {"insert": (RqliteInsert(), 64), "read": (RqliteQuery("reads", READ_ROWS, "none"), 32)}
    chosen = [w for w in a.workloads.split(",") if w]
    clusters = {}
    try:
        for k, cls, extra in (("plain", RaftsqliteCluster, ()), ("tls", TLSCluster, tls)):
            c = clusters[k] = cls(3, root=REPO_ROOT, extra_args=extra).start()
            c.execute([["CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT)"]])
            if "read" in chosen:
                c.fill("reads", READ_ROWS)
            print(f"{k}: leader {c.leader_url()}", flush=True)
        runs = {k: {w: [] for w in chosen} for k in clusters}
        for r in range(a.rounds):
            for w in chosen:
                order = ("plain", "tls") if r % 2 == 0 else ("tls", "plain")
                for k in order:
                    wl, conns = wls[w]
                    res = _one(clusters[k], wl, conns, a.duration)
                    runs[k][w].append(res)
                    print(f"round {r} {w:<6} {k:<5}: {json.dumps(res)}", flush=True)
        summary = {}
        for k in clusters:
            for w in chosen:
                rs = runs[k][w]
                med = lambda f: round(statistics.median(f(x) for x in rs), 1)  # noqa: E731
                summary[f"{k}_{w}"] = {
                    "rps": med(lambda x: x["rps"]), "wrk_us": med(lambda x: x["wrk_us"]),
                    "leader_us": med(lambda x: x["leader_us"]),
                    "follower_us": med(lambda x: sum(x["follower_us"]) / 2),
                    "total_us": med(lambda x: x["total_us"]),
                    "errors": sum(sum((x["errors"] or {}).values()) for x in rs)}
        print(json.dumps(summary), flush=True)
    finally:
        for c in clusters.values():
            c.stop()


if __name__ == "__main__":
    sys.exit(main())
