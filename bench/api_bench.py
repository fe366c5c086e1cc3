"""HTTP API benchmark: wrk against a single node and a 3-node cluster, raw apsw beside it.

    python bench/api_bench.py [--duration 10] [--quick] [--skip-cluster]

Each workload runs ``--trials`` times and the median run is reported (the machine is
shared; every run's rate is printed too). Prints, for each setup: point reads (``GET /db/query?level=none``, 32 connections),
single-row inserts (``POST /db/execute``, 64 connections) and 1000-row parameterized
batches (rows/s), each with latency percentiles; then raw apsw doing the same batches in
one process (WAL, synchronous=NORMAL, one transaction per 1000 rows). The last line is
one JSON object with at least ``point_read_rps``, ``insert_rps``, ``bulk_rows_per_s``,
``apsw_bulk_rows_per_s``. Nodes are real ``raft-sqlite`` processes on 127.0.0.1 with fsync
on, started and stopped (by PID) here.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from raftsqlite.testing.procs import NodeCluster as LocalCluster, http  # noqa: E402


def wrk(url, conns, duration, script=None, threads=2):
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out, re.M)
        if m:
            v = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
            lat[f"p{pct}_ms"] = round(v, 3)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {"rps": round(rps, 1), **lat, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errs.group(1) if errs else ""}


def lua_post(path, body, workdir, name):
    p = os.path.join(workdir, name + ".lua")
    with open(p, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
        f.write(f"wrk.body = {json.dumps(json.dumps(body))}\n")
        f.write(f'wrk.path = "{path}"\n')
    return p


def apsw_bulk(workdir, seconds, batch=1000, name="apsw"):
    import apsw
    path = os.path.join(workdir, name + ".db")
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE bulk (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    rows = [("row-%d" % i, i) for i in range(batch)]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with conn:
            conn.executemany("INSERT INTO bulk(v, n) VALUES(?, ?)", rows)
        n += batch
    el = time.perf_counter() - start
    conn.close()
    return round(n / el, 1)


class Setup:
    """One cluster (1 or 3 nodes), seeded, with its wrk scripts; kept running so trials of
    every setup interleave and share the machine's noise evenly."""

    def __init__(self, n_nodes, workdir):
        self.n = n_nodes
        self.cl = LocalCluster(n_nodes, os.path.join(workdir, f"c{n_nodes}"))
        os.makedirs(self.cl.workdir)
        self.runs = {"point_read": [], "insert": [], "bulk": []}

    def start(self):
        self.cl.start()
        self.base = f"http://{self.cl.leader()}"
        st, body = http("POST", self.base + "/db/execute", [
            "CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)",
            "CREATE TABLE ins (id INTEGER PRIMARY KEY, v TEXT)",
            "CREATE TABLE bulk (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)"])
        assert st == 200, body
        st, body = http("POST", self.base + "/db/execute?transaction",
                        [["INSERT INTO kv(id, v) VALUES(?, ?)", i, f"value-{i}"]
                         for i in range(1000)])
        assert st == 200, body
        self.ins = lua_post("/db/execute", [["INSERT INTO ins(v) VALUES(?)", "some value"]],
                            self.cl.workdir, "ins")
        self.bulk = lua_post("/db/execute?transaction",
                             [["INSERT INTO bulk(v, n) VALUES(?, ?)", f"row-{i}", i]
                              for i in range(1000)], self.cl.workdir, "bulk")
        return self

    def trial(self, d, bulk_conns):
        self.runs["point_read"].append(wrk(
            self.base + "/db/query?level=none&q=SELECT%20v%20FROM%20kv%20WHERE%20id%3D500",
            32, d))
        self.runs["insert"].append(wrk(self.base, 64, d, self.ins))
        b = wrk(self.base, bulk_conns, d, self.bulk)
        b["rows_per_s"] = round(b["rps"] * 1000, 1)
        self.runs["bulk"].append(b)

    def median(self):
        """The machine is shared and noisy: the median run of each workload is reported
        (ours and raw apsw's alike), with every run's rate beside it."""
        out = {}
        for k, runs in self.runs.items():
            b = sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2]
            out[k] = dict(b, trials=[r["rps"] for r in runs])
        return out

    def stop(self):
        self.cl.stop()


def _codec_impl():
    try:
        import raftsqlite.codec as c
        return c.IMPLEMENTATION
    except Exception as e:  # the nodes import it themselves; this is only a label
        return f"unknown ({e})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--trials", type=int, default=3, help="runs per workload; the median "
                                                          "is reported, all are printed")
    ap.add_argument("--quick", action="store_true", help="2 s runs (CI smoke)")
    ap.add_argument("--skip-cluster", action="store_true", help="single node only")
    ap.add_argument("--bulk-conns", type=int, default=4,
                    help="connections sending 1000-row batches")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.trials = 2, 1
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian package 'wrk')")
    print(f"# api_bench: {' '.join(sys.argv)}")
    load0 = os.getloadavg()[0]
    print(f"# python {platform.python_version()} on {platform.platform()}, "
          f"{os.cpu_count()} cpus, load {load0:.2f}, codec {_codec_impl()}")
    workdir = tempfile.mkdtemp(prefix="api-bench-")
    results, setups, apsw_runs = {}, [], []
    try:
        for n in ([1] if args.skip_cluster else [1, 3]):
            setups.append(Setup(n, workdir).start())
        for t in range(args.trials):
            apsw_runs.append(apsw_bulk(workdir, min(args.duration, 3), name=f"apsw{t}"))
            for su in setups:
                su.trial(args.duration, args.bulk_conns)
            print(f"# trial {t + 1}/{args.trials} done, load {os.getloadavg()[0]:.2f}",
                  flush=True)
        results["apsw_bulk_rows_per_s"] = sorted(apsw_runs)[(len(apsw_runs) - 1) // 2]
        print(f"raw apsw 1000-row transactions: {results['apsw_bulk_rows_per_s']:.0f} rows/s"
              f"  runs {apsw_runs}")
        for su in setups:
            r = su.median()
            results[f"nodes_{su.n}"] = r
            for k, v in r.items():
                print(f"{su.n} node(s) {k:10s} {v['rps']:10.1f} req/s  p50 {v.get('p50_ms')} ms "
                      f"p99 {v.get('p99_ms')} ms  non-2xx {v['non_2xx']}"
                      + (f"  rows/s {v['rows_per_s']:.0f}" if "rows_per_s" in v else "")
                      + f"  runs {v['trials']}")
    finally:
        for su in setups:
            su.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    one = results["nodes_1"]
    many = results.get("nodes_3", one)
    summary = {
        "point_read_rps": one["point_read"]["rps"],
        "insert_rps": many["insert"]["rps"],
        "bulk_rows_per_s": many["bulk"]["rows_per_s"],
        "apsw_bulk_rows_per_s": results["apsw_bulk_rows_per_s"],
        "insert_rps_1_node": one["insert"]["rps"],
        "bulk_rows_per_s_1_node": one["bulk"]["rows_per_s"],
        "point_read_p99_ms": one["point_read"].get("p99_ms"),
        "insert_p50_ms": many["insert"].get("p50_ms"),
        "nodes": 3 if "nodes_3" in results else 1,
        "duration_s": args.duration,
        "trials": args.trials,
        "load_avg_start": round(load0, 2),
    }
    summary["bulk_fraction_of_apsw"] = round(
        summary["bulk_rows_per_s"] / summary["apsw_bulk_rows_per_s"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
