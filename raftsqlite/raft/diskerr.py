"""Which failures are the disk's (full, or an I/O error), and the state a member keeps
about them. See docs/operations.md, "Disk full and I/O errors".

A disk error is never a result of what was being written: another member with room on
its disk writes the same bytes fine. So a member never turns one into a per-statement
error or skips the write; it retries the same write with backoff (the Raft log's batch,
the state machine's apply of the same entries) until it succeeds, and says so in
/readyz, /status, /metrics and its log meanwhile."""
import errno
import logging
import os
import threading
import time

from raftsqlite import errors

log = logging.getLogger("raftsqlite.raft.disk")

# No room: the operator frees space and the retried write goes through.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# The device failed (EIO), or the file system turned read-only after errors (EROFS).
IO_ERRNOS = frozenset({errno.EIO, errno.EROFS})

# apsw's classes for SQLITE_FULL and SQLITE_IOERR (by name: the Raft layer does not
# import apsw). A user statement cannot set max_page_count (db_exec refuses it), so
# SQLITE_FULL always means the disk (or the temp directory) is full.
_APSW_FULL = "FullError"
_APSW_IO = "IOError"

RETRY_MIN = 0.05
RETRY_MAX = 2.0
# A disk error still present is logged again this often (not on every retry).
LOG_EVERY = 30.0


def classify(exc):
    """``exc`` as a ``DiskFull`` / ``DiskError`` when it is one, else None."""
    if isinstance(exc, errors.DiskError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        if exc.errno in FULL_ERRNOS:
            return errors.DiskFull(f"disk full: {exc.strerror} ({name})")
        if exc.errno in IO_ERRNOS:
            return errors.DiskError(f"disk I/O error: {exc.strerror} ({name})")
        return None
    t = type(exc)
    if t.__module__ == "apsw":
        if t.__name__ == _APSW_FULL:
            return errors.DiskFull(f"disk full: SQLite: {exc} (SQLITE_FULL)")
        if t.__name__ == _APSW_IO:
            return errors.DiskError(f"disk I/O error: SQLite: {exc} (SQLITE_IOERR)")
    return None


def free_bytes(path):
    """Bytes an unprivileged writer may still use on the file system of ``path``, or None
    when the file system does not say (it reports no size)."""
    st = os.statvfs(path)
    if st.f_blocks == 0:
        return None
    return st.f_bavail * st.f_frsize


class DiskState:
    """The disk errors a member has right now, by operation ("log", "apply", "snapshot"),
    and counters. Set and cleared from the loop and from worker threads (a lock)."""

    def __init__(self, data_dir):
        self.data_dir = os.path.abspath(data_dir)
        self._lock = threading.Lock()
        self._now = {}          # op -> {"error", "since", "retries", "logged"}
        self.errors_total = 0   # failed attempts (each retry that failed counts)
        self.recoveries = 0     # errors that went away (a retry succeeded)
        self.last_error = None

    def failed(self, op, exc, what):
        """Note a failed attempt of ``op``; the message for the log and for callers."""
        d = classify(exc) or exc
        msg = f"{d} {what}"
        if self.data_dir not in what:
            msg += f" (data dir {self.data_dir})"
        now = time.monotonic()
        with self._lock:
            self.errors_total += 1
            self.last_error = msg
            cur = self._now.get(op)
            if cur is None:
                self._now[op] = {"error": msg, "since": time.time(), "retries": 0,
                                 "logged": now}
                first = True
            else:
                cur["error"] = msg
                cur["retries"] += 1
                first = False
                if now - cur["logged"] >= LOG_EVERY:
                    cur["logged"] = now
                    log.warning("%s: still failing after %d retries since %s", msg,
                                cur["retries"], time.strftime(
                                    "%H:%M:%S", time.gmtime(cur["since"])))
        if first:
            log.error("%s; retrying with backoff until it succeeds (free space on that "
                      "disk, or replace it)", msg)
        return msg

    def ok(self, op):
        """``op`` succeeded: a disk error it had is over."""
        if op not in self._now:
            return
        with self._lock:
            cur = self._now.pop(op, None)
        if cur is not None:
            self.recoveries += 1
            log.warning("disk: %s works again after %d retries (%s)", op, cur["retries"],
                        cur["error"])

    def error(self, ops=None):
        """The current error message (of one of ``ops``, or any), or None."""
        cur = self._now
        if not cur:
            return None
        for op, v in list(cur.items()):
            if ops is None or op in ops:
                return f"{op}: {v['error']}"
        return None

    def stats(self):
        with self._lock:
            now = {op: {"error": v["error"], "since": v["since"], "retries": v["retries"]}
                   for op, v in self._now.items()}
        return {"disk_error": self.error(("log", "apply")), "disk_errors_now": now,
                "disk_errors_total": self.errors_total, "disk_recoveries": self.recoveries,
                "disk_last_error": self.last_error}


def backoff(delay):
    return min(RETRY_MAX, max(RETRY_MIN, delay * 2))
