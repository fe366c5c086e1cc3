"""Peers measured beside raftsqlite in the same run, each started and stopped by the suite.

- ``apsw_peer``: raw SQLite through apsw in one process (the storage ceiling);
- ``etcd``: a 3-member etcd cluster (Debian's etcd-server), written through its HTTP/JSON
  gateway (the reference Raft store);
- ``pysyncobj_peer``: a 3-process pysyncobj 0.3.17 cluster with its file journal (the Raft
  ceiling of the library the design card named).

A peer that is not installed is skipped with a note (``available()`` says why); it is
never replaced by anything else.
"""
from __future__ import annotations

import shutil
import socket

from raftsqlite.testing.procs import stop_procs


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago; another process may still take
    one later. On 127.0.0.1 they come from below the ephemeral range, where outgoing
    connections cannot take them first (raftsqlite.testing.procs.free_port)."""
    if host == "127.0.0.1":
        from raftsqlite.testing.procs import free_port
        return [free_port() for _ in range(n)]
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class ProcessGroup:
    """A set of member processes with their log files and (maybe) a temporary working
    directory of its own. Subclasses set ``procs``, ``_logs``, ``workdir`` and ``_own_dir``
    and define ``start()``; stopping is the same for all."""

    stop_timeout = 15.0

    def stop(self, timeout: float | None = None):
        stop_procs(self.procs, self.stop_timeout if timeout is None else timeout,
                   shared_deadline=True)
        for log in self._logs:
            log.close()
        self.procs, self._logs = [], []
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
