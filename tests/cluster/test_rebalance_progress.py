"""Rebalance visibility and throttling on real processes (#7): the status shows phase,
rows copied, rows to go, rate and ETA while a throttled copy runs, and the CLI
``raft-sqlite rebalance TABLE --wait`` shows progress and exits 0 when done."""
import os
import subprocess
import sys
import time

import pytest

from tests.cluster.node_harness import ROOT, wait_for
from tests.cluster.rebalance_harness import ShardedCluster, check_placement, setup_table

pytestmark = pytest.mark.timeout(120)

RATE = 4000


def test_throttled_copy_status_and_cli(tmp_path):
    """Invariants: the copy never runs faster than max_rows_per_s; while copying, the
    status reports rows to go > 0, a rate and an ETA; the CLI waits with a progress bar
    and exits 0 once the move is done; the data check holds afterwards."""
    cl = ShardedCluster(str(tmp_path), env={"RAFTSQLITE_REBALANCE": f'{{"batch_rows": 250, "max_rows_per_s": {RATE}}}'})
    try:
        cl.start()
        rows = setup_table(cl, 20_000)
        env = dict(os.environ, PYTHONPATH=ROOT)
        t0 = time.monotonic()
        cli = subprocess.Popen([sys.executable, "-m", "raftsqlite", "rebalance", "kv", "--host",
                                cl.addr("default"), "--wait", "--timeout", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        seen = wait_for(lambda: next((m for m in cl.status()["moves"]
                                      if m["phase"] == "copying" and m["rows_copied"] > 0), None),
                        30, "a copying move with progress", interval=0.1)
        assert seen["rows_to_go"] > 0 and seen["rows_per_s"] > 0 and seen["eta_s"] is not None
        assert seen["rows_per_s"] <= RATE * 1.25, seen
        out, _ = cli.communicate(timeout=90)
        dt = time.monotonic() - t0
        out = out.decode()
        assert cli.returncode == 0, out
        assert "m1" in out and "done" in out and "[" in out, out
        m = cl.status()["moves"][0]
        assert m["phase"] == "done"
        assert dt >= (m["rows_copied"] - 250) / RATE, (dt, m)
        check_placement(cl, rows)
    finally:
        cl.stop()


def test_cli_bad_table_is_a_clear_error(tmp_path):
    """Invariant: rebalancing an unregistered table fails with a clear message, exit 2."""
    cl = ShardedCluster(str(tmp_path), shards=("s1",))
    try:
        cl.start()
        r = subprocess.run([sys.executable, "-m", "raftsqlite", "rebalance", "nosuch", "--host",
                            cl.addr("default")], capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT),
                           timeout=60)
        assert r.returncode == 2
        assert b"nosuch" in r.stderr and b"not registered" in r.stderr, r.stderr
    finally:
        cl.stop()


def test_cancel_before_fence_rolls_back(tmp_path):
    """Invariant: a move cancelled while copying (before its fence) rolls back on real
    nodes: ownership unchanged (s1 owns everything), the target holds none of the rows,
    no trigger or fence is left, and every row is still on s1 exactly once."""
    cl = ShardedCluster(str(tmp_path), env={"RAFTSQLITE_REBALANCE": '{"batch_rows": 200, "max_rows_per_s": 2000}'})
    try:
        cl.start()
        rows = setup_table(cl, 10_000)
        st, plan = cl.rebalance({"table_name": "kv"})
        assert st == 200, plan
        mid = plan["moves"][0]["move_id"]
        wait_for(lambda: any(m["phase"] == "copying" and m["rows_copied"] > 0 for m in cl.status()["moves"]),
                 30, "copy progress")
        res = cl.api("/table/rebalance/cancel", {"move_id": mid})
        assert res["phase"] == "cancelled"
        m = wait_for(lambda: next((m for m in cl.status()["moves"]
                                   if m["move_id"] == mid and m["phase"] == "cancelled"), None), 30, "cancel")
        wait_for(lambda: cl.catalog().moves[mid].get("cleaned"), 30, "rollback cleanup")
        cat = check_placement(cl, rows)
        assert set(cat.colocations["kv"]["owners"]) == {"s1"}
        assert cl.rows("s2", "SELECT count(*) FROM kv")[0][0] == 0
        assert m["error"]
    finally:
        cl.stop()
