"""CPU per routed-request guard check on the apply thread (``ShardState.check``), one
check per log entry, as a shard applies coalesced calls between ownership changes.

    python bench/guard_check.py [TREE ...] [--checks 20000] [--rounds 3]

Each TREE (a source checkout; default: this one) runs in its own process, alternating
round by round so that A/B runs share the same machine noise. Prints one line per tree:
the median process-CPU microseconds per check over its rounds. Not part of the bench
suite (not ``*_bench.py``): the number it isolates is a small part of ``fsm_bench``'s
``shard1``.
"""
import argparse
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from raftsqlite.db import Database
from raftsqlite.fsm import FSM, SystemContext
from raftsqlite.sharding.glue import ShardState, op_args
from raftsqlite.sharding.ownership import GuardItem, encode_guard
n = int(sys.argv[2])
db = Database(os.path.join(tempfile.mkdtemp(), "x.db"))
fsm = FSM(db)
shard = ShardState("s1")
shard.register(fsm)
db.internal("BEGIN")
shard.handler("own.set_all")(SystemContext(db, 1, 1), op_args({"group": "s1", "cols": {
    "users": {"epoch": 1, "shard_func": "hash", "tables": ["users"],
              "ranges": [[0, 1 << 63]]}}}))
db.internal("COMMIT")
guard = encode_guard([GuardItem("users", 1, [5])])
db.internal("BEGIN")
t0 = time.process_time()
for index in range(2, n + 2):
    shard.check(db.internal, guard, index=index)
print((time.process_time() - t0) / n * 1e6)
db.internal("COMMIT")
db.close()
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="*",
                   default=[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))])
    p.add_argument("--checks", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    got = {t: [] for t in a.trees}
    for _ in range(a.rounds):
        for t in a.trees:
            out = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(t),
                                  str(a.checks)], capture_output=True, text=True,
                                 timeout=120, check=True)
            got[t].append(float(out.stdout.strip()))
    for t, v in got.items():
        print(f"{t}: check_us_per_entry {statistics.median(v):.3f} "
              f"(rounds {', '.join(f'{x:.3f}' for x in v)})")


if __name__ == "__main__":
    main()
