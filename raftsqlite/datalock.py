"""One process per data directory.

Two processes on one data directory (a service manager starting a node before the old one has
exited, a second node given the same ``-data`` by mistake, ``raft-sqlite recover`` run against a
live node) would both append to the Raft log and write the database: the log's records would
interleave and the member's state would be lost. So every process that writes a data directory
holds an exclusive ``flock`` on ``<data>/LOCK`` for as long as it runs. The kernel releases it
when the process dies, however it dies, so a crash never leaves a stale lock behind.

The file holds the holder's pid, for the error message only; the lock itself is what counts.
"""
import fcntl
import os

from raftsqlite.errors import ConfigError

LOCK_NAME = "LOCK"


class DataDirLock:
    def __init__(self, data_dir):
        self.path = os.path.join(data_dir, LOCK_NAME)
        self._fd = None

    def acquire(self, what="raft-sqlite"):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise ConfigError(
                f"data directory {os.path.dirname(os.path.abspath(self.path))} is in use by "
                f"another raft-sqlite process{who}; stop it first, or give this {what} its own "
                f"-data directory") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self):
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)   # closing the only descriptor drops the flock

    @property
    def held(self):
        return self._fd is not None


def _read_pid(fd):
    try:
        txt = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(txt) if txt.isdigit() else None
    except OSError:
        return None
