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

import socket


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (all held open until chosen,
    so they differ from each other; another process may still take one later)."""
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
