"""raftsqlite.raft.lane.Lane: the persist path's single worker thread. Jobs run one at a
time in submission order whichever way they were submitted; a waiter is woken when its
job is done (or times out); failures reach the waiter; callbacks fire exactly once."""
import asyncio
import threading
import time

import pytest

from raftsqlite.raft.lane import Lane


def test_jobs_run_in_order_on_one_thread():
    """call() and submit() share one FIFO and one thread."""
    lane = Lane("t-lane")
    seen = []
    try:
        jobs = []
        for i in range(50):
            if i % 2:
                jobs.append(lane.call(lambda i=i: seen.append((i, threading.get_ident()))))
            else:
                f = lane.submit(lambda i=i: seen.append((i, threading.get_ident())))
                jobs.append(f)
        for j in jobs:
            (j.wait if hasattr(j, "wait") else j.result)(5)
        assert [i for i, _ in seen] == list(range(50))
        assert len({t for _, t in seen}) == 1 and seen[0][1] != threading.get_ident()
    finally:
        lane.shutdown()


def test_wait_times_out_then_completes_and_errors_reach_the_waiter():
    """A slow job: wait(timeout) says False, then True once done; an exception raised by
    the job is re-raised by value(); a callback added before or after completion runs
    exactly once."""
    lane = Lane("t-lane")
    try:
        gate = threading.Event()
        slow = lane.call(gate.wait, 5)
        assert slow.wait(0.02) is False and not slow.done
        calls = []
        slow.add_done_callback(lambda j: calls.append("before"))
        gate.set()
        assert slow.wait(5) is True and slow.value() is True
        slow.add_done_callback(lambda j: calls.append("after"))
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert sorted(calls) == ["after", "before"]

        def boom():
            raise OSError("disk gone")
        bad = lane.call(boom)
        assert bad.wait(5)
        with pytest.raises(OSError, match="disk gone"):
            bad.value()
        assert lane.call(lambda: 7).wait(5)     # the worker survived
    finally:
        lane.shutdown()


def test_run_in_executor_works():
    """The cold paths await lane work through loop.run_in_executor."""
    lane = Lane("t-lane")

    async def main():
        return await asyncio.get_running_loop().run_in_executor(lane, lambda a, b: a + b, 2, 3)
    try:
        assert asyncio.run(main()) == 5
    finally:
        lane.shutdown()
    with pytest.raises(RuntimeError):
        lane.call(lambda: None)
