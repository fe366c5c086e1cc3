"""The cost of TLS: the same 3-node group plaintext and with TLS everywhere, A/B.

    python bench/tls_ab.py [--reps 3] [--seconds 5] [--conns 64] [--plain-vs DIR]

Two 3-node groups run side by side (fsync on): A plaintext, B with HTTPS on the API and
TLS between nodes (mutual TLS on the Raft port; the API does not ask for a client
certificate because wrk cannot present one). Windows alternate A, B, A, B, ... for
single-row inserts on the leader (``POST /db/execute``, ``--conns`` connections) and point
reads (``GET /db/query?level=none``, 32 connections); wrk opens its connections once per
window, so handshakes are a small part. Printed per window: requests/s, p50/p99, and CPU
time (user+sys of the three node processes, /proc) per request. The last line is one JSON
object with the medians. Certificates are made with openssl in a temp dir; every process
started here is stopped here, by PID.

``--plain-vs DIR`` instead compares two plaintext groups: this checkout (B, named "tls"
in the output keys) against another built checkout at DIR (A, "plain"), e.g. /work/main,
to show that without TLS flags the cost is unchanged.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.api_bench import lua_post, wrk  # noqa: E402
from raftsqlite.testing.certs import TLSFiles  # noqa: E402
from raftsqlite.testing.procs import die_with_parent, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pids):
    t = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        t += int(parts[11]) + int(parts[12])
    return t / TICK


class Group:
    def __init__(self, workdir, name, flags, ctx, root=ROOT):
        self.name, self.ctx = name, ctx
        self.scheme = "https" if ctx else "http"
        self.procs, self.addrs = [], []
        first = None
        for i in range(3):
            hp, rp = free_port(), free_port()
            addr = f"127.0.0.1:{hp}"
            argv = [sys.executable, "-m", "raftsqlite", "-id", f"{name}{i}", "-data",
                    os.path.join(workdir, f"{name}{i}"), "-http", addr,
                    "-raft", f"127.0.0.1:{rp}", *flags]
            if first:
                argv += ["-join", first]
            log = open(os.path.join(workdir, f"{name}{i}.log"), "ab")
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               cwd=root, preexec_fn=die_with_parent()))
            self.addrs.append(addr)
            first = first or addr
            self._wait(lambda: self.get(addr, "/readyz")[0] == 200, f"{name}{i} ready")
        self._wait(lambda: len(json.loads(self.get(first, "/nodes")[1])) == 3, "3 members")

    def get(self, addr, path, body=None):
        req = urllib.request.Request(f"{self.scheme}://{addr}{path}", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5, context=self.ctx) as r:
                return r.status, r.read()
        except Exception as e:  # noqa: BLE001 - polled until ready
            return 0, str(e).encode()

    @staticmethod
    def _wait(cond, what, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def leader(self):
        for a in self.addrs:
            st, body = self.get(a, "/status")
            if st == 200 and json.loads(body)["store"].get("is_leader"):
                return a
        raise RuntimeError("no leader")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--plain-vs", default="", metavar="DIR")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tls_ab-")
    files = TLSFiles(work)
    groups = []
    try:
        if a.plain_vs:
            groups.append(Group(work, "plain", [], None, root=os.path.abspath(a.plain_vs)))
            groups.append(Group(work, "tls", [], None))
        else:
            groups.append(Group(work, "plain", [], None))
            groups.append(Group(work, "tls", files.node_flags(verify_client=False)
                                + ["-node-verify-client"], files.client_context(False)))
        ins = lua_post("/db/execute", [["INSERT INTO ins(v) VALUES(?)", "some value"]],
                       work, "ins")
        for g in groups:
            lead = g.leader()
            g.get(lead, "/db/execute", json.dumps(
                [["CREATE TABLE ins (id INTEGER PRIMARY KEY, v TEXT)"],
                 ["INSERT INTO ins(v) VALUES('x')"]]).encode())
        res = {g.name: {"insert": [], "read": []} for g in groups}
        secs = int(a.seconds)
        for rep in range(a.reps):
            for kind in ("insert", "read"):
                for g in (groups if rep % 2 == 0 else groups[::-1]):
                    lead = g.leader()
                    base = f"{g.scheme}://{lead}"
                    pids = [p.pid for p in g.procs]
                    c0 = cpu_s(pids)
                    if kind == "insert":
                        r = wrk(base + "/db/execute", a.conns, secs, ins)
                    else:
                        r = wrk(base + "/db/query?level=none&q=SELECT%20v%20FROM%20ins%20WHERE"
                                "%20id%3D1", 32, secs)
                    c1 = cpu_s(pids)
                    n = r["rps"] * secs
                    r["cpu_us_per_req"] = round((c1 - c0) / n * 1e6, 1) if n else None
                    res[g.name][kind].append(r)
                    print(f"rep {rep} {kind:6s} {g.name:5s} {r['rps']:9.1f} req/s "
                          f"p50 {r.get('p50_ms')} ms p99 {r.get('p99_ms')} ms "
                          f"cpu {r['cpu_us_per_req']} us/req non2xx {r['non_2xx']} "
                          f"{r['socket_errors']}", flush=True)
        out = {}
        for name, kinds in res.items():
            for kind, runs in kinds.items():
                out[f"{name}_{kind}_rps"] = statistics.median(r["rps"] for r in runs)
                out[f"{name}_{kind}_p50_ms"] = statistics.median(r.get("p50_ms", 0) for r in runs)
                out[f"{name}_{kind}_cpu_us_per_req"] = statistics.median(
                    r["cpu_us_per_req"] for r in runs)
        for kind in ("insert", "read"):
            out[f"tls_over_plain_{kind}_rps"] = round(
                out[f"tls_{kind}_rps"] / out[f"plain_{kind}_rps"], 3)
            out[f"tls_over_plain_{kind}_cpu"] = round(
                out[f"tls_{kind}_cpu_us_per_req"] / out[f"plain_{kind}_cpu_us_per_req"], 3)
        print(json.dumps(out))
    finally:
        for g in groups:
            g.stop()


if __name__ == "__main__":
    main()
