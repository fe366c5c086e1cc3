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
