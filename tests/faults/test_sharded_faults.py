"""A sharded cluster under faults (issue #8 item 4): the default group (catalog,
rebalance coordinator) and two shard groups, 3 real members each, every link through
the fault proxy; all three workloads through the routers of random members while the
nemesis hits members of every group and each workload's table is rebalanced onto the
second shard.

``RAFTSQLITE_FAULTS_SHARDED_DURATION`` seconds (45 by default: nine processes on two
cores); ``python -m raftsqlite.testing.nemesis --workload all --topology sharded
--duration 300`` is the long form. On failure the message names the folder holding the
histories, schedule, seed and every member's log.
"""
import asyncio
import os
import shutil
import time

import pytest

from raftsqlite.testing.nemesis import FAULTS, format_summary, run, snapshot_args

from .test_cluster_faults import ARTIFACTS, SEED

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

DURATION = float(os.environ.get("RAFTSQLITE_FAULTS_SHARDED_DURATION", "45"))


def test_sharded_workloads_under_faults_and_rebalance(node_available):
    """Across a default group and two shard groups under kills, pauses, partitions,
    delay, loss and group restarts, with a rebalance of every workload table moving
    rows between shards mid-run: no acknowledged write is lost; per-branch and total
    bank balances hold (transfers stay inside a branch's shard); every key is
    linearizable and every append present once in one order through the routers;
    within every group the members converge; every move ends (done or rolled back)."""
    seed = SEED if SEED is not None else 21
    out = ARTIFACTS / f"sharded-seed{seed}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    s = asyncio.run(run(("bank", "register", "append"), duration=DURATION, seed=seed,
                        members=3, clients=9, out=out, faults=FAULTS, hold=(1.5, 3.0),
                        quiet=(1.0, 2.0), extra_args=snapshot_args(300),
                        topology="sharded", rebalance_at=0.25, log=lambda m: None))
    report = format_summary(s)
    assert s["lost_acked_writes"] == 0, report
    assert s["violations"] == 0, report
    assert s["valid"], report
    assert s["acked_ops"] >= 100, f"too little work to mean anything\n{report}"
    assert sum(s["faults"].values()) >= 3, f"too few faults injected\n{report}"
    moved = [m for m in s["rebalance"]["moves"] if m["phase"] == "done"]
    requests = s["rebalance"]["requests"]
    assert len(requests) == 3 and all("error" not in r for r in requests), report
    assert s["rebalance"]["moves"], f"no move was started\n{report}"
    # Rows really crossed shards (a move may roll back under faults; not all of them).
    assert moved and sum(m["rows_copied"] or 0 for m in moved) > 0, report
    shutil.rmtree(out, ignore_errors=True)          # kept only when something failed
