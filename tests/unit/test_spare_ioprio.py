"""segfiles: a spare segment's zero-fill runs in the idle I/O class, in small steps."""
import ctypes
import os
import platform
import threading

import pytest

from raftsqlite.raft import segfiles

_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}


def _ioprio_of_this_thread():
    return ctypes.CDLL(None, use_errno=True).syscall(_IOPRIO_GET[platform.machine()], 1, 0)


@pytest.mark.skipif(platform.machine() not in _IOPRIO_GET or not hasattr(os, "sched_getaffinity"),
                    reason="Linux x86_64/aarch64 only")
def test_lower_io_priority_is_per_thread():
    """Invariant: the calling thread, and only it, moves to the idle I/O class, so the
    loop and the persist thread keep their priority."""
    before = _ioprio_of_this_thread()
    got = {}

    def run():
        got["set"] = segfiles.lower_io_priority()
        got["prio"] = _ioprio_of_this_thread()
    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert got["set"] is True
    assert got["prio"] >> 13 == 3                  # IOPRIO_CLASS_IDLE
    assert _ioprio_of_this_thread() == before


def test_spare_thread_lowers_its_io_priority_and_fills_in_small_steps(tmp_path, monkeypatch):
    """Invariant: the spare is prepared on its own thread in the idle I/O class, and its
    zeros are written and synced in FILL_STEP pieces (bounded bursts of writeback)."""
    called, syncs = [], []
    monkeypatch.setattr(segfiles, "lower_io_priority",
                        lambda: called.append(threading.current_thread().name))
    real = os.fdatasync
    monkeypatch.setattr(segfiles.os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    sp = segfiles.Spare(str(tmp_path / "next-segment"), fsync=True)
    sp.ensure(4 * segfiles.FILL_STEP)
    assert sp.wait(20)
    sp.stop()
    assert called == ["raft-prealloc"]
    assert len(syncs) == 4
    assert os.path.getsize(tmp_path / "next-segment") == 4 * segfiles.FILL_STEP
