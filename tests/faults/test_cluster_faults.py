"""Real 3-member clusters under faults: the harness's faults are real, and the product
loses nothing it acknowledged.

Durations are short for CI (``RAFTSQLITE_FAULTS_DURATION`` seconds per workload, 40 by
default); the same code runs for hours via ``python -m raftsqlite.testing.nemesis``.
On failure the assertion message names the folder holding the history, the schedule,
the seed and every member's log.
"""
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from raftsqlite.testing.cluster import LocalCluster
from raftsqlite.testing.nemesis import FAULTS, format_summary, run, snapshot_args

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

DURATION = float(os.environ.get("RAFTSQLITE_FAULTS_DURATION", "40"))
SEED = int(os.environ.get("RAFTSQLITE_FAULTS_SEED", "0")) or None
ARTIFACTS = Path(os.environ.get("RAFTSQLITE_FAULTS_ARTIFACTS")
                 or Path(tempfile.gettempdir()) / "raftsqlite-faults")


def test_partition_through_the_proxy_forces_a_new_leader(node_available, tmp_path):
    """The fault proxy is really on the Raft path: isolating the leader makes the
    majority elect another one, and after the heal all members agree on one leader."""
    async def main():
        async with LocalCluster(3, tmp_path / "c", seed=1) as c:
            old = await c.wait_for_leader(20)
            c.net.isolate(old.id, list(c.members))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            new = None
            while loop.time() < deadline:
                new = await c.current_leader()
                if new is not None and new.id != old.id:
                    break
                await asyncio.sleep(0.1)
            assert new is not None and new.id != old.id, \
                f"no new leader while {old.id} was isolated (logs: {c.workdir / 'logs'})"
            counters = c.net.counters      # the proxy knew who dialled (via /proc)
            assert counters["unidentified"] * 2 < counters["connections"], counters
            c.net.heal()
            leader = await c.wait_for_leader(20, quorum=3)
            assert leader.id in c.members
    asyncio.run(main())


def test_member_killed_right_after_joining_restarts(node_available, tmp_path):
    """Every member comes back from its own data directory, even one killed (with all
    the others) the moment the leader lists it as a voter. (Regression: this suite found
    such a member refusing to start with 'cannot bootstrap, the log is not empty'.)"""
    async def main():
        async with LocalCluster(3, tmp_path / "c", seed=1) as c:
            for m in c.members.values():
                c.kill(m)
            for m in c.members.values():
                await c.start_member(m)
            for m in c.members.values():
                await c.wait_ready(m)
            await c.wait_for_leader(20)
    asyncio.run(main())


@pytest.mark.parametrize("workload", ["bank", "register", "append"])
def test_workload_under_mixed_faults(node_available, workload):
    """Under kills (leader included), pauses, partitions, bridges, delay, loss and
    whole-cluster restarts, with snapshots every 300 entries (so restarted members catch
    up by snapshot): no acknowledged write is lost, every checker passes (bank total and
    no negative balance; per-key linearizability; appends exactly once in one order),
    every member converges to the same database, and the system did real work."""
    seed = SEED if SEED is not None else {"bank": 11, "register": 12, "append": 13}[workload]
    # Not tmp_path: pytest keeps only its last few temp folders (shared by every run on
    # the machine), and a failure's history and logs must outlive them.
    out = ARTIFACTS / f"{workload}-seed{seed}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    s = asyncio.run(run((workload,), duration=DURATION, seed=seed, members=3, clients=6,
                        out=out, faults=FAULTS, hold=(1.5, 3.0), quiet=(1.0, 2.0),
                        extra_args=snapshot_args(300), log=lambda m: None))
    report = format_summary(s)
    assert s["lost_acked_writes"] == 0, report
    assert s["violations"] == 0, report
    assert s["valid"], report
    assert s["acked_ops"] >= 50, f"too little work to mean anything\n{report}"
    assert sum(s["faults"].values()) >= 3, f"too few faults injected\n{report}"
    shutil.rmtree(out, ignore_errors=True)          # kept only when something failed
