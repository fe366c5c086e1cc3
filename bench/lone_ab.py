"""CPU per Raft round of a one-member group (a shard group of one), two checkouts side by side.

Each run starts a one-member ``RaftNode`` (uvloop, the demo KV state machine) in a fresh
process importing the given checkout, makes ``--proposals`` proposals (one at a time, or
``--concurrency`` at once) and reports the process CPU per proposal, the Readies per log
write and the wall time. Runs alternate between ``--a`` and ``--b``; the last line is one
JSON object with the medians. Without ``--fsync`` the log is not fdatasynced, so the
figure is the Python of the round (driver, core, log, state machine), which is what a
driver change moves; with it the fdatasync's own CPU and noise dominate.

    python -m bench.lone_ab --a /work/main --b . --pairs 4
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import asyncio, json, os, sys, tempfile, time
root, n, conc, fsync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
sys.path.insert(0, root)
import uvloop
from raftsqlite.codec.model import Member
from raftsqlite.raft.config import RaftConfig
from raftsqlite.raft.demo import KVStateMachine
from raftsqlite.raft.driver import RaftNode
from raftsqlite.testing.procs import free_port

async def main():
    d = tempfile.mkdtemp(prefix="lone_ab_")
    addr = f"127.0.0.1:{free_port()}"
    node = RaftNode(RaftConfig(node_id="n1", data_dir=d, tick_interval=0.05, raft_addr=addr,
                               fsync=fsync), KVStateMachine())
    await node.start()
    await node.bootstrap([Member("n1", addr)])
    for _ in range(500):
        if node.is_leader:
            break
        await asyncio.sleep(0.01)
    for i in range(200):   # warm-up: first segment, caches
        await node.propose(b"w%d=%d" % (i, i))
    s0 = dict(node.stats())
    c0, t0 = time.process_time(), time.perf_counter()

    async def worker(w):
        for i in range(n // conc):
            await node.propose(b"k%d=%d" % (i * conc + w, i))
    await asyncio.gather(*[worker(w) for w in range(conc)])
    c1, t1 = time.process_time(), time.perf_counter()
    s = node.stats()
    await node.stop()
    done = n // conc * conc
    print(json.dumps({"cpu_us_per_proposal": round((c1 - c0) / done * 1e6, 1),
                      "wall_us_per_proposal": round((t1 - t0) / done * 1e6, 1),
                      "ready_per_write": round((s["ready"] - s0["ready"])
                                               / max(1, s["persists"] - s0["persists"]), 2)}))
uvloop.install()
asyncio.run(main())
"""


def run_one(root, a):
    out = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(root), str(a.proposals),
                          str(a.concurrency), "1" if a.fsync else "0"],
                         capture_output=True, text=True, timeout=300, cwd=os.path.abspath(root))
    if out.returncode != 0:
        raise SystemExit(f"run in {root} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="checkout A (e.g. /work/main)")
    ap.add_argument("--b", default=".", help="checkout B (default: this one)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--proposals", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--fsync", action="store_true", help="fdatasync the log (default off)")
    a = ap.parse_args(argv)
    res = {"a": [], "b": []}
    for i in range(a.pairs):
        for side in (("a", "b") if i % 2 == 0 else ("b", "a")):
            r = run_one(getattr(a, side), a)
            res[side].append(r)
            print(f"{side} {getattr(a, side)}: {r}", flush=True)
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in res.items()}
    print(json.dumps({"a": a.a, "b": a.b, "pairs": a.pairs, "fsync": a.fsync,
                      "concurrency": a.concurrency, "median_a": med["a"], "median_b": med["b"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
