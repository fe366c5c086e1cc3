"""When the writer's WAL is checkpointed (docs/design/store.md, "Tail latency")."""
import os
from time import monotonic_ns

# SQLite's own default (wal_autocheckpoint): a checkpoint once the WAL holds this many frames.
AUTOCHECKPOINT_PAGES = 1000


def _trace():
    if not os.environ.get("RAFTSQLITE_TRACE"):
        return None
    from raftsqlite.raft import trace
    return trace


def install_traced(conn, pages=AUTOCHECKPOINT_PAGES):
    """With ``RAFTSQLITE_TRACE`` set: replace SQLite's automatic checkpoint by the same
    one (PASSIVE, by the committing connection, at ``pages`` frames) done from a WAL hook,
    so each checkpoint's duration is stamped (bench/tail_trace.py)."""
    trace = _trace()
    if trace is None:
        return False

    def hook(c, name, npages):
        if npages >= pages:
            t0 = monotonic_ns()
            _, done = c.wal_checkpoint(name)
            trace.span(f"ckpt:{npages}:{done}", t0)
        return 0
    conn.set_wal_hook(hook)
    return True
