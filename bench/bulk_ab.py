"""1000-row batches on 3-node clusters, the CPU each process spends per batch, A/B.

    python bench/bulk_ab.py [TREE ...] [--rounds 5] [--duration 4] [--conns 4] [--value-size N]
                            [--node-arg ARG ...]

Starts one 3-node cluster (real ``raft-sqlite`` processes, fsync on) from each source
tree given (default: this checkout), then runs ``--rounds`` rounds; each round times raw
apsw doing 1000-row transactions in this process, then drives every cluster in turn with
``wrk`` sending ``POST /db/execute?transaction`` bodies of 1000
``["INSERT INTO bulk(v, n) VALUES(?, ?)", ...]`` statements (the api_bench workload).
With ``--value-size N`` the body is the headline's instead (``python -m bench --suite
headline``, bench/driver.py ``RqliteBulk``): 1000 ``["INSERT INTO bench(v) VALUES(?)",
"<i>-<N b's>"]`` into ``bench(id INTEGER PRIMARY KEY, v TEXT)`` (N=100: ~105 KB bodies), and
apsw runs that same work (bench/peers/apsw_peer.py ``bulk_rate``, synchronous=NORMAL).
Per cluster and round it prints rows/s and each member's CPU milliseconds per batch (from
/proc: the whole process, and its main thread beside its busiest other thread, which is
the apply thread), because on a shared machine CPU per batch is far steadier than
throughput. Trees alternate within every round, so they share the machine's noise. The
last line is one JSON object: per tree the median rows/s, CPU ms per batch (sum over
the members, leader, followers), and raw apsw's median rows/s.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.api_bench import apsw_bulk, lua_post, wrk  # noqa: E402
from bench.peers import apsw_peer  # noqa: E402
from raftsqlite.testing.procs import NodeCluster, http  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _ticks(path):
    with open(path) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def cpu_by_thread(pid):
    """{tid: CPU seconds} of every thread of ``pid`` (threads that ended are missing)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = _ticks(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            pass
    return out


def workload(value_size):
    """-> (DDL, rows of the body): api_bench's by default, the headline's with a size."""
    if value_size is None:
        return ("CREATE TABLE bulk (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)",
                [["INSERT INTO bulk(v, n) VALUES(?, ?)", f"row-{i}", i] for i in range(1000)])
    pad = "b" * value_size
    return ("CREATE TABLE bench(id INTEGER PRIMARY KEY, v TEXT)",
            [["INSERT INTO bench(v) VALUES(?)", f"{i}-{pad}"] for i in range(1000)])


def apsw_rate(workdir, seconds, value_size, name):
    if value_size is None:
        return apsw_bulk(workdir, seconds, name=name)
    d = os.path.join(workdir, name)
    os.makedirs(d)
    return apsw_peer.bulk_rate(d, seconds, synchronous="NORMAL",
                               value_size=value_size)["rows_per_s"]


def thread_names(pid):
    """{tid: Python thread name} of ``pid`` through ``py-spy dump`` (Python does not give
    its thread names to the OS), or {} without py-spy. Names group the threads a pool
    replaced during a run (raft-apply_0, raft-persist_0, ...)."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        return {}
    try:
        out = subprocess.run([spy, "dump", "--json", "--nonblocking", "-p", str(pid)],
                             capture_output=True, text=True, timeout=20).stdout
        return {t["os_thread_id"]: t["thread_name"] for t in json.loads(out)}
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return {}


def by_name(per, names):
    """CPU ms per thread name (threads without a name: "other")."""
    out = {}
    for tid, ms in per.items():
        k = names.get(tid, "other")
        k = k.split("_")[0] if k.startswith("raft-") else k
        out[k] = round(out.get(k, 0.0) + ms, 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class Cluster:
    def __init__(self, tree, workdir, value_size=None, node_args=()):
        self.tree = tree
        self.value_size = value_size
        self.by_thread = False
        self.cl = NodeCluster(3, workdir, cwd=tree, extra_args=node_args)
        os.makedirs(workdir)

    def start(self):
        self.cl.start()
        lead = self.cl.leader()
        self.base = f"http://{lead}"
        ddl, rows = workload(self.value_size)
        st, body = http("POST", self.base + "/db/execute", [ddl])
        assert st == 200, body
        self.script = lua_post("/db/execute?transaction", rows, self.cl.workdir, "bulk")
        self.roles = {p.pid: ("leader" if a == lead else "follower")
                      for p, a in zip(self.cl.procs, self.cl.http)}
        return self

    def round(self, conns, duration):
        before = {pid: (_ticks(f"/proc/{pid}/stat"), cpu_by_thread(pid)) for pid in self.roles}
        w = wrk(self.base, conns, duration, self.script)
        batches = max(w["rps"] * duration, 1.0)
        members = []
        for pid, role in self.roles.items():
            total0, th0 = before[pid]
            th1 = cpu_by_thread(pid)
            per = {tid: (th1[tid] - th0.get(tid, 0.0)) / batches * 1e3 for tid in th1}
            threads = by_name(per, thread_names(pid)) if self.by_thread else {}
            main = per.pop(pid, 0.0)
            members.append({
                "role": role,
                "cpu_ms": round((_ticks(f"/proc/{pid}/stat") - total0) / batches * 1e3, 3),
                "main_thread_ms": round(main, 3),
                "busiest_other_thread_ms": round(max(per.values(), default=0.0), 3),
                "threads_ms": threads})
        return {"rows_per_s": w["rps"] * 1000, "non_2xx": w["non_2xx"], "p50_ms": w.get("p50_ms"),
                "cpu_ms_per_batch": round(sum(m["cpu_ms"] for m in members), 3),
                "members": members}

    def stop(self):
        self.cl.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*", default=[ROOT], help="source trees (default: this one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    ap.add_argument("--conns", type=int, default=4, help="connections sending batches")
    ap.add_argument("--value-size", type=int, default=None,
                    help="the headline's body: one TEXT value of '<i>-' + N b's per row")
    ap.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                    help="append ARG to every member's command line (repeatable), e.g. "
                         "--node-arg=-snapshot-threshold --node-arg=1000 to measure a log "
                         "that compacts (and recycles its segments) during the run")
    ap.add_argument("--threads", action="store_true",
                    help="also print CPU ms per batch of every thread by name (py-spy)")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian package 'wrk')")
    print(f"# bulk_ab: {' '.join(sys.argv)}; load {os.getloadavg()[0]:.2f}", flush=True)
    workdir = tempfile.mkdtemp(prefix="bulk-ab-")
    clusters, runs, apsw_runs = [], {}, []
    try:
        for i, tree in enumerate(a.trees):
            clusters.append(Cluster(os.path.abspath(tree), os.path.join(workdir, f"t{i}"),
                                    a.value_size, a.node_arg).start())
            clusters[-1].by_thread = a.threads
            runs[clusters[-1].tree] = []
        for r in range(a.rounds):
            apsw_runs.append(apsw_rate(workdir, min(a.duration, 3), a.value_size, f"apsw{r}"))
            for c in clusters:
                res = c.round(a.conns, a.duration)
                runs[c.tree].append(res)
                print(f"round {r + 1} {c.tree}: {res['rows_per_s']:.0f} rows/s, "
                      f"{res['cpu_ms_per_batch']} CPU ms/batch "
                      + " ".join(f"[{m['role']} {m['cpu_ms']} = main {m['main_thread_ms']}"
                                 f" + apply {m['busiest_other_thread_ms']} + ...]"
                                 for m in res["members"]), flush=True)
                for m in res["members"]:
                    if m["threads_ms"]:
                        print(f"    {m['role']}: {m['threads_ms']}", flush=True)
    finally:
        for c in clusters:
            c.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    med = statistics.median
    summary = {"apsw_bulk_rows_per_s": med(apsw_runs), "load_avg_end": os.getloadavg()[0]}
    for tree, rs in runs.items():
        summary[tree] = {
            "bulk_rows_per_s": med(x["rows_per_s"] for x in rs),
            "cpu_ms_per_batch": med(x["cpu_ms_per_batch"] for x in rs),
            "leader_cpu_ms": med(m["cpu_ms"] for x in rs for m in x["members"]
                                 if m["role"] == "leader"),
            "follower_cpu_ms": med(m["cpu_ms"] for x in rs for m in x["members"]
                                   if m["role"] == "follower"),
            "fraction_of_apsw": round(med(x["rows_per_s"] for x in rs) / med(apsw_runs), 3),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
