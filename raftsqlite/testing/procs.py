"""Stopping processes that a test or benchmark started itself (by PID, never by name)."""
from __future__ import annotations

import signal
import subprocess
import time


def stop_procs(procs, timeout: float = 15.0, *, shared_deadline: bool = False) -> None:
    """SIGTERM every process in ``procs`` still running, then wait for each; one still
    alive when its wait ends is killed. The graceful signal goes to all first so members
    shut down in parallel. Each process waits up to ``timeout`` seconds, or with
    ``shared_deadline`` all of them share one ``timeout`` (at least 0.1 s each)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()) if shared_deadline else timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
