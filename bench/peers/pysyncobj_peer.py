"""pysyncobj 0.3.17 as a peer: 3 member processes on loopback, file journal (its fastest
durable-looking setting; note that pysyncobj never fsyncs the journal).

The load runs inside the leader process, as pysyncobj's own clients do: a replicated
``put(key, 100-byte value)`` with a fixed number of proposals in flight, latency measured
from submit to the commit callback. So these figures are the Raft library's ceiling with
no HTTP or SQL in front of it.

Parent side:  ``run_cluster([{"inflight": 1, "duration": 5}, ...])`` -> list of results.
Member side:  ``python -m bench.peers.pysyncobj_peer member ...`` (started by the parent).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from raftsqlite.testing.procs import die_with_parent

from . import free_ports

REQUIRED_VERSION = "0.3.17"


def available() -> tuple[bool, str]:
    try:
        from pysyncobj.version import VERSION
    except ImportError:
        return False, "pysyncobj is not installed (pip install pysyncobj==0.3.17); peer skipped"
    if VERSION != REQUIRED_VERSION:
        return False, f"pysyncobj {VERSION} installed, the suite measures {REQUIRED_VERSION}"
    return True, ""


def version() -> str | None:
    try:
        from pysyncobj.version import VERSION
        return VERSION
    except ImportError:
        return None


# --------------------------------------------------------------------------- member side

def _make_store(self_addr, others, journal, batch):
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KV(SyncObj):
        def __init__(self):
            conf = SyncObjConf(journalFile=journal, fullDumpFile=journal + ".dump",
                               appendEntriesUseBatch=batch, dynamicMembershipChange=False,
                               logCompactionMinEntries=1_000_000, logCompactionMinTime=3600)
            super().__init__(self_addr, others, conf)
            self._data = {}

        @replicated
        def put(self, k, v):
            self._data[k] = v
            return len(self._data)

    return KV()


def _load(obj, inflight: int, duration: float, max_ops: int, value_size: int) -> dict:
    from pysyncobj import FAIL_REASON
    from ..driver import percentiles_ms
    sem = threading.Semaphore(inflight)
    lat, errors = [], {}
    lock = threading.Lock()
    value = b"v" * value_size
    done_all = threading.Condition(lock)
    pending = [0]

    def make_cb(t0):
        def cb(result, err):
            dt = time.perf_counter_ns() - t0
            with lock:
                if err == FAIL_REASON.SUCCESS:
                    lat.append(dt)
                else:
                    errors[str(err)] = errors.get(str(err), 0) + 1
                pending[0] -= 1
                done_all.notify_all()
            sem.release()
        return cb

    n = 0
    t0 = time.perf_counter()
    end = t0 + duration
    while n < max_ops and time.perf_counter() < end:
        if not sem.acquire(timeout=max(0.0, end - time.perf_counter())):
            break
        with lock:
            pending[0] += 1
        obj.put(f"k{n}", value, callback=make_cb(time.perf_counter_ns()))
        n += 1
    with lock:  # let what is in flight finish, within a bound
        done_all.wait_for(lambda: pending[0] == 0, timeout=10)
    wall = time.perf_counter() - t0
    pct = percentiles_ms(lat)
    return {"system": "pysyncobj", "inflight": inflight, "ops": len(lat), "submitted": n,
            "errors": errors, "rps": round(len(lat) / wall, 1),
            "rows_per_s": round(len(lat) / wall, 1), "duration_s": round(wall, 3),
            "p50_ms": pct["p50"], "p90_ms": pct["p90"], "p99_ms": pct["p99"],
            "p999_ms": pct["p999"], "max_ms": pct["max"], "mean_ms": pct["mean"]}


def member_main(a):
    obj = _make_store(a.self_addr, a.others, a.journal, a.batch)
    loads = json.loads(a.loads)
    deadline = time.monotonic() + a.timeout
    stable_since = None
    # Only the member that is leader (and has stayed leader for a moment) runs the load;
    # the others serve until the parent stops them.
    while time.monotonic() < deadline:
        leader = obj._getLeader()
        is_leader = leader is not None and str(leader) == a.self_addr and obj.isReady()
        if is_leader:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since > 0.5:
                break
        else:
            stable_since = None
        time.sleep(0.05)
    else:
        return
    for spec in loads:
        res = _load(obj, int(spec["inflight"]), float(spec["duration"]),
                    int(spec.get("max_ops", 2_000_000)), int(spec.get("value_size", 100)))
        res["append_entries_batch"] = a.batch
        print("RESULT " + json.dumps(res), flush=True)
    print("DONE", flush=True)
    # keep serving until stopped, so that the followers stay healthy for the parent
    time.sleep(a.timeout)


# --------------------------------------------------------------------------- parent side

def run_cluster(loads: list[dict], size: int = 3, timeout: float = 120.0,
                workdir: str | None = None, batch: bool = False) -> list[dict]:
    """Start ``size`` member processes, run ``loads`` on the leader, stop them all.
    ``batch`` picks pysyncobj's batching mode (``appendEntriesUseBatch``)."""
    ok, why = available()
    if not ok:
        raise FileNotFoundError(why)
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="bench-pysyncobj-")
    addrs = [f"127.0.0.1:{p}" for p in free_ports(size)]
    procs, outs = [], []
    budget = timeout
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        for i, addr in enumerate(addrs):
            out_path = os.path.join(workdir, f"m{i}.out")
            out = open(out_path, "wb")
            outs.append(out_path)
            cmd = [sys.executable, "-m", "bench.peers.pysyncobj_peer", "member",
                   "--self-addr", addr, "--journal", os.path.join(workdir, f"m{i}.journal"),
                   "--loads", json.dumps(loads), "--timeout", str(budget),
                   *(["--batch"] if batch else []),
                   "--others", *[x for x in addrs if x != addr]]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True,
                                          preexec_fn=die_with_parent()))
            out.close()
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            for path in outs:
                with open(path) as f:
                    text = f.read()
                if "\nDONE" in "\n" + text:
                    return [json.loads(l[7:]) for l in text.splitlines()
                            if l.startswith("RESULT ")]
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        tails = []
        for path in outs:
            with open(path) as f:
                tails.append(f.read()[-500:])
        raise RuntimeError(f"pysyncobj cluster produced no result: {tails}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("member")
    m.add_argument("--self-addr", required=True)
    m.add_argument("--others", nargs="+", required=True)
    m.add_argument("--journal", required=True)
    m.add_argument("--loads", required=True)
    m.add_argument("--timeout", type=float, default=120.0)
    m.add_argument("--batch", action="store_true",
                   help="appendEntriesUseBatch: send every appendEntriesPeriod (throughput) "
                        "instead of at once (latency)")
    r = sub.add_parser("run", help="run a cluster and print results")
    r.add_argument("--inflight", type=int, nargs="+", default=[1, 16, 64])
    r.add_argument("--duration", type=float, default=5.0)
    r.add_argument("--batch", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "member":
        member_main(a)
        os._exit(0)  # pysyncobj's threads do not all stop on their own
    for res in run_cluster([{"inflight": n, "duration": a.duration} for n in a.inflight],
                           batch=a.batch):
        print(json.dumps(res))


if __name__ == "__main__":
    main()
