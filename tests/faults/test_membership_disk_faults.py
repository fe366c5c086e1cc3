"""The nemesis's membership and slow-disk faults, and kill -9 during a SQLite-file
``/db/load``, in short CI-sized runs (the long campaigns use the same code through
``python -m raftsqlite.testing.nemesis --faults all`` and ``loadkill --format sqlite``).

Each test first asserts that its fault really happened (the member set changed, the
leadership moved, fsyncs were delayed, a load was killed), then runs the checkers.
"""
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from raftsqlite.raft import slowdisk
from raftsqlite.raft.log import RaftLog
from raftsqlite.testing.loadkill import campaign
from raftsqlite.testing.nemesis import DISK_FAULTS, MEMBERSHIP_FAULTS, format_summary, run

SEED = int(os.environ.get("RAFTSQLITE_FAULTS_SEED", "0")) or None
ARTIFACTS = Path(os.environ.get("RAFTSQLITE_FAULTS_ARTIFACTS")
                 or Path(tempfile.gettempdir()) / "raftsqlite-faults")


def test_slow_fsync_hook_is_off_unless_the_test_env_var_is_set(tmp_path, monkeypatch):
    """Production safety: without RAFTSQLITE_TEST_SLOW_FSYNC the log holds no hook at all
    (even with a control file present); with it, a control file delays each entries
    fdatasync by the configured milliseconds, and the log's stats count the delays."""
    from raftsqlite.codec.model import Entry
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "slow").write_text("30")
    monkeypatch.delenv(slowdisk.ENV, raising=False)
    log = RaftLog(str(tmp_path / "a"))
    assert log._slow is None and "test_slow_fsync_delays" not in log.stats()

    monkeypatch.setenv(slowdisk.ENV, "slow")            # relative: in the log's data dir
    (tmp_path / "b").mkdir()
    log = RaftLog(str(tmp_path / "b"))
    log.open()
    assert log._slow is not None
    assert slowdisk.parse("20 80") == (0.02, 0.08) and slowdisk.parse("junk") == (0.0, 0.0)
    monkeypatch.setattr(slowdisk, "CHECK_INTERVAL", 0.0)
    log.persist(None, [Entry(1, 1, data=b"x")])
    assert log.stats()["test_slow_fsync_delays"] == 0        # no control file yet
    (tmp_path / "b" / "slow").write_text("30")
    t0 = time.monotonic()
    log.persist(None, [Entry(1, 2, data=b"y")])
    took = time.monotonic() - t0
    s = log.stats()
    assert s["test_slow_fsync_delays"] == 1 and s["test_slow_fsync_max_ms"] >= 29, s
    assert took >= 0.029, took
    (tmp_path / "b" / "slow").unlink()                       # healed: no more delays
    log.persist(None, [Entry(1, 3, data=b"z")])
    assert log.stats()["test_slow_fsync_delays"] == 1
    log.close()


def _check(s, min_acked=50):
    report = format_summary(s)
    assert s["lost_acked_writes"] == 0, report
    assert s["violations"] == 0, report
    assert s["valid"], report
    assert s["acked_ops"] >= min_acked, f"too little work to mean anything\n{report}"
    return report


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_membership_and_slow_disk_faults_under_load(node_available):
    """Under load, a follower is removed and a fresh member joins (once with the leader
    killed -9 just after it got the removal), the leader is removed and re-added with a
    wiped data directory, leadership is transferred, and one member's
    (then the leader's) log fdatasync is slowed by tens to hundreds of ms: every fault
    took effect, no acknowledged write is lost, every key is linearizable, writes kept
    being acknowledged while a follower was slow, and every member, the new ones
    included, converges to the same database."""
    seed = SEED if SEED is not None else 31
    out = ARTIFACTS / f"membership-seed{seed}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    # Quick faults first: joins (a new process) take seconds; the last may outlast the load.
    kinds = ("slow_fsync", "slow_fsync_leader", "transfer_leader", "replace_member",
             "readd_leader", "crash_during_remove")
    assert set(kinds) == set(MEMBERSHIP_FAULTS + DISK_FAULTS)
    s = asyncio.run(run(("register",), duration=10, seed=seed, members=3, clients=6,
                        out=out, faults=kinds, hold=(0.8, 1.0), quiet=(0.2, 0.3),
                        fault_order="cycle", warmup=1.0, log=lambda m: None))
    report = _check(s)
    fx = s["fault_effects"]
    assert set(s["faults"]) == set(kinds), report
    assert fx["members_replaced"] >= 2 and fx["leaders_readded"] >= 1, report
    assert fx["transfers_moved"] >= 1, report
    assert s["cluster"]["members_added"] == fx["members_replaced"], report
    assert s["cluster"]["members_removed"] == fx["members_replaced"] + fx["leaders_readded"], \
        report
    new = set(s["members_final"]) - {"n1", "n2", "n3"}
    assert new and s["convergence"]["valid"], f"the new member is not in the end state\n{report}"
    assert all(w["delays"] for w in fx["slow"]), f"no fsync was slowed\n{report}"
    follower = [w for w in fx["slow"] if not w["was_leader"]]
    assert follower and all(w["acked_writes"] > 0 for w in follower), \
        f"the group stopped acknowledging writes while a follower's disk was slow\n{report}"
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_kill_during_sqlite_file_load(node_available, tmp_path):
    """kill -9 (leader, target or random member) during SQLite-file /db/load rounds:
    every member holds exactly one generation's database, complete (the one before the
    round, or the round's own, which it must be when the load was acknowledged), and
    the members converge."""
    s = asyncio.run(campaign(SEED or 3, 2, 5000, tmp_path / "c", [], log=lambda m: None,
                             fmt="sqlite"))
    assert s["violations"] == [], s["violations"][:5]
    killed = [o for o in s["outcomes"] if o["killed"]]
    assert killed, f"no member was killed: {s['outcomes']}"
    assert s["acked_loads"] >= 1, s["outcomes"]
