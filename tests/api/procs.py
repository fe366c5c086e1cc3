"""Real raft-sqlite processes on 127.0.0.1 for the end-to-end client tests. Everything
started here is stopped here, by PID (the cluster itself lives in raftsqlite.testing.procs,
shared with bench/api_bench.py)."""
from raftsqlite.testing.procs import NodeCluster as LocalCluster, free_port, http

__all__ = ["LocalCluster", "free_port", "http", "node_available"]


def node_available():
    try:
        import raftsqlite.node  # noqa: F401
        import raftsqlite.raft.driver  # noqa: F401
        return True
    except ImportError:
        return False
