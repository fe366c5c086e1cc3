"""bench/shard_bench.py --cluster's own bookkeeping: what bounded a window, the load
generator's calibrated cost, and the machine-wide CPU reading (the cluster mode is not
run in CI, so these pieces are checked here)."""
import asyncio
import os

from bench import shard_bench as sb


def test_verdict_names_what_bounded_the_window():
    """Invariant: a saturated load process is flagged as load-generator bound; a busy
    machine as CPU bound; a shard at a full core as shard bound; otherwise the closed
    loop's latency, with the per-insert latency it implies; other processes' share is
    reported whenever it matters."""
    ncpu = os.cpu_count() or 1
    v = sb._verdict({"shard1-1": 0.5, "router1": 0.95, "router2": 0.4}, 10000, 64, 0.1, 0.0)
    assert "LOAD-GENERATOR BOUND" in v and "10%" in v
    v = sb._verdict({"shard1-1": 0.3, "router1": 0.1}, 5000, 64, 0.1, float(ncpu))
    assert "CPU bound" in v and "other processes took" in v
    if ncpu >= 2:
        v = sb._verdict({"shard1-1": 0.95, "router1": 0.2}, 12000, 64, 0.1, 0.0)
        assert "shard bound" in v and "CPU bound" not in v
    v = sb._verdict({"shard1-1": 0.4, "router1": 0.1}, 12800, 64, 0.1, 0.0)
    assert "latency bound" in v and "5.00 ms per insert" in v
    assert "other processes" not in v


def test_generator_cost_is_measured_and_bounded():
    """Invariant: the calibration runs the given client loop a bounded number of times
    against a null router and returns a positive CPU cost per insert."""
    calls = []

    async def one(c, router=None, ids=None, stop=None, start=None):
        k = 0
        while True:
            i = next(ids)
            calls.append(i)
            await router.execute([("INSERT", [i])])
            k += 1
    us = asyncio.run(sb._generator_cost(one, 8, n=800))
    assert us > 0
    assert 800 <= len(calls) <= 800 + 8


def test_machine_busy_seconds_grow():
    """Invariant: the machine-wide busy CPU reading never goes backwards."""
    a = sb._machine_busy_s()
    sum(i * i for i in range(200000))
    assert sb._machine_busy_s() >= a


def test_log_write_summary_is_the_mean_write_and_the_busy_share():
    """Per shard: (seconds writing, writes) deltas over the window give the mean write in
    µs and the share of the window; a shard missing at either end is left out."""
    w0 = {"shard1": (1.0, 100), "shard2": (0.0, 0)}
    w1 = {"shard1": (1.3, 1100), "shard2": (0.6, 1500), "shard3": (5.0, 9)}
    out = sb._log_write_summary(w0, w1, 3.0)
    assert out == {"shard1": {"us": 300, "busy": 0.1}, "shard2": {"us": 400, "busy": 0.2}}


def test_core_wait_summary_is_run_delay_per_raft_round():
    """Per shard group: the run-queue wait its member process gained over the window,
    divided by the Raft rounds (log writes) it made, in µs; a group whose process or
    write counts are missing at either end is left out."""
    r0 = {"shard1-1": 1.0, "shard2-1": 2.0}
    r1 = {"shard1-1": 1.5, "shard2-1": 2.3}
    w0 = {"shard1": (1.0, 100), "shard2": (0.0, 0), "shard3": (0.0, 0)}
    w1 = {"shard1": (1.3, 1100), "shard2": (0.6, 1500), "shard3": (1.0, 10)}
    out = sb._core_wait_summary(r0, r1, w0, w1)
    assert out == {"shard1": 500, "shard2": 200}


def test_run_delay_reads_every_thread_and_never_goes_backwards():
    """Invariant: the run-queue wait of a live process is a non-negative sum over its
    threads that never decreases; a process that does not exist reads as 0."""
    import threading
    me = {"me": os.getpid()}
    a = sb._run_delay_s(me)["me"]
    ts = [threading.Thread(target=lambda: sum(i * i for i in range(100000))) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    b = sb._run_delay_s(me)["me"]
    assert 0 <= a <= b
    assert sb._run_delay_s({"gone": 2 ** 22 + 12345})["gone"] == 0


def test_fsync_trace_splits_a_call_into_cpu_io_and_core_wait():
    """Invariant: one traced fdatasync of a shard's log is split exactly into on-CPU,
    sleeping and waiting for a core from the scheduler's events; the wait is charged to
    the process that held the core; a wake-up on an idle target CPU costs no wait; a
    metadata write inside the call is counted; syncs of a file made fewer than 20 times
    (not the log) are left out."""
    from bench import fsync_trace as ft
    tidmap = {100: "shard1-1", 200: "shard2-1", 300: "router1"}
    proc, mach = [], []

    def ev(out, tid, cpu, ts, name, det):
        out.append(f"  python-{tid} [{cpu:03d}] ..... {ts:.6f}: {name}: {det}")

    t = 10.0
    for i in range(20):
        ev(proc, 100, 0, t, "ext4_sync_file_enter", "dev 254,0 ino 7 parent 6 datasync 1 ")
        ev(mach, 100, 0, t + 10e-6, "sched_switch",
           "prev_comm=python prev_pid=100 prev_prio=120 prev_state=D ==> next_comm=python next_pid=200 next_prio=120")
        ev(mach, 0, 1, t + 50e-6, "sched_wakeup", "comm=python pid=100 prio=120 target_cpu=000")
        ev(mach, 200, 0, t + 80e-6, "sched_switch",
           "prev_comm=python prev_pid=200 prev_prio=120 prev_state=S ==> next_comm=python next_pid=100 next_prio=120")
        if i % 2:
            ev(mach, 100, 0, t + 85e-6, "block_rq_insert", "254,0 WSM 4096 () 1 + 8 be,0,4 [python]")
        ev(mach, 100, 0, t + 90e-6, "sched_switch",
           "prev_comm=python prev_pid=100 prev_prio=120 prev_state=D ==> next_comm=swapper/0 next_pid=0 next_prio=120")
        # woken by the idle task of its own target CPU: runs at once (switch not recorded)
        ev(mach, 0, 0, t + 120e-6, "sched_wakeup", "comm=python pid=100 prio=120 target_cpu=000")
        ev(proc, 100, 0, t + 130e-6, "ext4_sync_file_exit", "dev 254,0 ino 7 ret 0")
        t += 0.001
    ev(proc, 100, 0, t, "ext4_sync_file_enter", "dev 254,0 ino 9 parent 6 datasync 1 ")
    ev(proc, 100, 0, t + 1e-3, "ext4_sync_file_exit", "dev 254,0 ino 9 ret 0")
    out = ft.analyze("\n".join(proc), "\n".join(mach), tidmap)
    s = out["shard1-1"]
    assert s["calls"] == 20 and s["mean_us"] == 130
    assert (s["cpu_us"], s["io_sleep_us"], s["core_wait_us"]) == (30, 70, 30)
    assert s["core_held_by_us"] == {"other shard": 30}
    assert s["waits_per_call"] == 2.0
    assert s["metadata_write_share"] == 0.5
    assert "shard2-1" not in out
