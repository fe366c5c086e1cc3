"""Liveness messages while the event loop thread is stuck in an inline log write.

A small log append is written and fdatasynced by the loop thread itself (RaftNode,
docs/design/raft-io.md "Inline writes"): handing it to a persist thread and back costs
two thread wake-ups per write on each member, the largest cost left on the 1-client write
path after the disk. But while the loop thread sits in that fdatasync it cannot send
heartbeats (leader) or answer them (follower), and a disk that stalls for longer than an
election timeout would then look like a dead member.

``StallGuard`` is the safety net: a thread that wakes every ``interval`` seconds (a
heartbeat interval: ~10 wake-ups a second, nothing per write) and, when the loop thread
has been inside one inline write for at least ``interval``, calls ``on_stall()``, which
sends the member's liveness messages straight to the peers' sockets. That is safe
because the loop thread is parked in the write's system calls: nothing on it touches
the Raft core, the transport or the sockets until it calls ``leave()``, and ``leave()``
waits for a send in progress (both hold ``_lock``). After one slow inline write the
driver goes back to the persist thread until writes are quick again, so a long stall
costs the loop at most one blocked write.
"""
import _thread
import logging
import threading
import time

log = logging.getLogger(__name__)


class StallGuard:
    def __init__(self, interval, on_stall, name="raft-guard"):
        self.interval = interval
        self._on_stall = on_stall       # guard thread, _lock held -> leftovers for leave()
        self._lock = _thread.allocate_lock()
        self._since = 0.0               # monotonic time the loop entered a write; 0: not in one
        self._rest = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stalls = 0                 # on_stall calls made

    def start(self):
        self._thread.start()

    def stop(self):
        self._stopped.set()

    def enter(self):
        """Loop thread, right before an inline write."""
        with self._lock:
            self._since = time.monotonic()

    def leave(self):
        """Loop thread, right after the write (also when it raised). Waits for a send in
        progress. -> what ``on_stall`` left for the loop (e.g. bytes a socket did not take)."""
        with self._lock:
            self._since = 0.0
            rest, self._rest = self._rest, []
        return rest

    def _run(self):
        while not self._stopped.wait(self.interval):
            if not self._since:
                continue
            with self._lock:
                since = self._since
                if not since or time.monotonic() - since < self.interval or self._stopped.is_set():
                    continue
                self.stalls += 1
                try:
                    self._rest.extend(self._on_stall())
                except Exception:  # noqa: BLE001 - the net must not take the member down
                    log.exception("sending liveness messages during a slow write failed")
