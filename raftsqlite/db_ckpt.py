"""When the writer's WAL is checkpointed (docs/design/store.md, "Tail latency").

SQLite's default is a PASSIVE checkpoint by the committing connection each time a commit
leaves the WAL at 1000 frames or more. Here the committing connection is the apply thread
(or the loop, for small inline applies), so every ~4 MB of writes one apply also copied
the WAL into the database file and waited for two fsyncs (WAL, then database): 20-100 ms
under the bulk workload, during which no entry was applied and no client answered
(``bench/tail_trace.py``: 121 checkpoints in 8 s over 3 members, p50 23 ms, max 105).

``Checkpointer`` moves that work to a thread with a connection of its own. The writer's
WAL hook (one Python call per commit) only signals the thread once ``pages`` frames are
waiting. A PASSIVE checkpoint from another connection never blocks the writer (it copies
frames up to the last commit it sees; the writer appends behind it), so applies go on.
It cannot *restart* the WAL, though: SQLite starts writing the WAL from its beginning
again only when a writer finds every frame copied, and under continuous writes some
frames always arrived during the last background pass. So once the WAL holds
``max_pages`` frames, the writer checkpoints once itself at the first commit that finds
little left to copy (at most ``pages // 4`` frames since the last background pass), and
its next commit restarts the WAL: the file stays bounded at about ``max_pages`` frames,
and the writer copies a few hundred frames instead of a thousand. At twice ``max_pages``
the writer catches up whatever is left, waiting for a running pass (a hard bound).

Durability is unchanged: a checkpoint only moves committed pages from the WAL into the
database file, with the same fsyncs (the thread's connection has the writer's
``synchronous`` setting), and every acknowledged write is in the Raft log first.
"""
import logging
import os
import threading
from time import monotonic_ns, perf_counter

log = logging.getLogger("raftsqlite.db")

# SQLite's own default (wal_autocheckpoint): a checkpoint once the WAL holds this many frames.
AUTOCHECKPOINT_PAGES = 1000
# The writer checkpoints itself (and so restarts the WAL) at this many frames: 64 MB at 4 KB.
MAX_WAL_PAGES = 16000


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


class Checkpointer:
    """Background checkpoints of one database (see the module docstring). ``open_conn``
    opens the thread's own read-write connection, on first need."""

    def __init__(self, open_conn, pages=AUTOCHECKPOINT_PAGES, max_pages=MAX_WAL_PAGES):
        if pages < 1 or max_pages < pages:
            raise ValueError("need 1 <= pages <= max_pages")
        self._open = open_conn
        self.pages, self.max_pages = pages, max_pages
        # Held by whoever checkpoints, and by the database while it copies or replaces
        # its files (``paused``): those assume nothing but the writer touches them.
        # Re-entrant: a restore (under ``paused``) commits, and its hook may checkpoint.
        self.lock = threading.RLock()
        self._want = threading.Event()
        self._thread = None
        self._conn = None
        self._closed = False
        self._busy = False
        self._done = 0        # WAL frames the last pass left copied (0 after a restart)
        self._next = 0        # the WAL's frame count at which the next pass may start
        self._trace = _trace()
        self._warned = 0
        self.counters = {"background": 0, "background_seconds": 0.0, "inline": 0,
                         "inline_seconds": 0.0, "inline_waited": 0, "catchup_max_frames": 0,
                         "max_wal_pages": 0,
                         "errors": 0}

    # ---- the writer's side ---------------------------------------------------------
    def hook(self, conn, name, npages):
        """The writer's WAL hook: called after each commit with the WAL's frame count."""
        c = self.counters
        if npages > c["max_wal_pages"]:
            c["max_wal_pages"] = npages
        if npages < self._done or npages < self._next - self.pages:
            self._done = 0          # the writer restarted the WAL
            self._next = 0
        if npages >= self.max_pages:
            # Catch up only when little is left to copy (a background pass just ran), so
            # the writer's own checkpoint is short; otherwise a pass first shrinks what
            # is left. At twice the bound the writer catches up whatever is left.
            hard = npages >= 2 * self.max_pages
            if (hard or npages - self._done <= self.pages // 4) \
                    and self.lock.acquire(blocking=hard):
                try:
                    self._inline(conn, name, npages)
                finally:
                    self.lock.release()
                return 0
        # At most one pass per ``pages`` new frames: a reader that pins an old snapshot
        # keeps a pass from copying anything, and must not make the thread spin.
        if npages - self._done >= self.pages and npages >= self._next and not self._busy \
                and not self._closed:
            self._busy = True
            self._next = npages + self.pages
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint",
                                                daemon=True)
                self._thread.start()
            self._want.set()
        return 0

    def _inline(self, conn, name, npages):
        c = self.counters
        if npages >= 2 * self.max_pages:
            c["inline_waited"] += 1
        elif npages - self._done > c["catchup_max_frames"]:
            c["catchup_max_frames"] = npages - self._done
        t0 = perf_counter()
        t0n = monotonic_ns()
        try:
            _, done = conn.wal_checkpoint(name)
        except Exception as e:  # noqa: BLE001 - a checkpoint that fails is retried later
            self._failed(e)
            return
        self._done = done
        c["inline"] += 1
        c["inline_seconds"] += perf_counter() - t0
        if self._trace is not None:
            self._trace.span(f"ckpt:{npages}:{done}", t0n)

    # ---- the thread ----------------------------------------------------------------
    def _run(self):
        c = self.counters
        while True:
            self._want.wait()
            self._want.clear()
            if self._closed:
                return
            try:
                with self.lock:
                    if self._closed:
                        return
                    if self._conn is None:
                        self._conn = self._open()
                    t0 = perf_counter()
                    t0n = monotonic_ns()
                    nlog, done = self._conn.wal_checkpoint()
                    self._done = done
                    c["background"] += 1
                    c["background_seconds"] += perf_counter() - t0
                    if self._trace is not None:
                        self._trace.span(f"ckpt_bg:{nlog}:{done}", t0n)
            except Exception as e:  # noqa: BLE001 - the writer's bound still holds
                self._failed(e)
            finally:
                self._busy = False

    def _failed(self, e):
        # e.g. a full disk: retried at later commits, so say it once a minute, not per commit
        self.counters["errors"] += 1
        now = monotonic_ns()
        if now - self._warned >= 60_000_000_000 or not self._warned:
            self._warned = now
            log.warning("WAL checkpoint failed (%d so far; retried later): %r",
                        self.counters["errors"], e)

    def paused(self):
        """``with checkpointer.paused():`` no background pass runs inside."""
        return self.lock

    def close(self, timeout=5.0):
        self._closed = True
        self._want.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
        with self.lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001
                    pass
                self._conn = None

    def stats(self):
        c = dict(self.counters)
        c["background_seconds"] = round(c["background_seconds"], 4)
        c["inline_seconds"] = round(c["inline_seconds"], 4)
        return c
