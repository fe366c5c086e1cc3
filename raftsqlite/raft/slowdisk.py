"""TEST-ONLY slow-disk hook for the Raft log (the fault campaigns' "slow_fsync" fault).

Enabled only when the environment variable ``RAFTSQLITE_TEST_SLOW_FSYNC`` names a control
file when the log is opened; there is no flag or config field for it, so a production
node cannot turn it on by accident. A relative path is taken inside the log's data
directory (``<-data>/raft`` for a node), so one value serves every member of a test cluster and the harness slows one
member by writing its file. The file holds a delay in milliseconds, ``"MS"`` or
``"LO HI"`` (uniform between the two); missing, empty or ``0`` means no delay. The
persist thread sleeps that long before each entries fdatasync, which is what a slow
disk does to the member: its acknowledgements (and, on a leader, its commits) lag.

The file is stat'ed at most every ``CHECK_INTERVAL`` seconds. Unset, the log holds
``None`` and its write path pays one attribute test per batch.
"""
from __future__ import annotations

import os
import random
import time

ENV = "RAFTSQLITE_TEST_SLOW_FSYNC"
CHECK_INTERVAL = 0.1


def from_env(data_dir: str):
    """A :class:`SlowFsync` if the test-only env var is set, else None."""
    path = os.environ.get(ENV)
    if not path:
        return None
    return SlowFsync(path if os.path.isabs(path) else os.path.join(data_dir, path))


def parse(text: str) -> tuple[float, float]:
    """``"MS"`` or ``"LO HI"`` (milliseconds) -> (lo, hi) in seconds; bad text -> no delay
    (a test hook must never stop the log)."""
    try:
        parts = [float(x) for x in text.split()[:2]]
    except ValueError:
        return 0.0, 0.0
    if not parts:
        return 0.0, 0.0
    lo, hi = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    lo, hi = max(0.0, min(lo, 10_000.0)), max(0.0, min(hi, 10_000.0))
    return min(lo, hi) / 1000, max(lo, hi) / 1000


class SlowFsync:
    def __init__(self, path: str):
        self.path = path
        self._next_check = 0.0
        self._sig = None
        self._range = (0.0, 0.0)
        self.delays = 0
        self.seconds = 0.0
        self.max_s = 0.0

    def _refresh(self, now: float) -> None:
        self._next_check = now + CHECK_INTERVAL
        try:
            st = os.stat(self.path)
        except OSError:
            self._sig, self._range = None, (0.0, 0.0)
            return
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig != self._sig:
            self._sig = sig
            try:
                with open(self.path) as fh:
                    self._range = parse(fh.read(64))
            except OSError:
                self._range = (0.0, 0.0)

    def delay(self) -> None:
        """Executor side, just before the fdatasync: sleep the configured delay."""
        now = time.monotonic()
        if now >= self._next_check:
            self._refresh(now)
        lo, hi = self._range
        if hi <= 0:
            return
        d = lo if lo == hi else random.uniform(lo, hi)
        time.sleep(d)
        self.delays += 1
        self.seconds += d
        self.max_s = max(self.max_s, d)

    def stats(self) -> dict:
        return {"test_slow_fsync_delays": self.delays,
                "test_slow_fsync_seconds": round(self.seconds, 3),
                "test_slow_fsync_max_ms": round(self.max_s * 1000, 1),
                "test_slow_fsync_now_ms": [round(x * 1000, 1) for x in self._range]}
