"""WAL checkpoints off the apply thread (no apsw here: ``db.py`` passes the calls).

SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past 1000 pages,
on the connection that committed: for us the apply thread. Copying ~4 MB back into the
database file and syncing it held that thread for milliseconds every few dozen 1000-row
batches (on the leader about 40% of the apply thread's busy time under bulk load), and
every client waits for the leader's apply. Here the writer only notes the WAL's size (a
WAL hook, which replaces SQLite's automatic checkpoint) and a background thread runs a
PASSIVE checkpoint from its own connection, beside the writer: WAL mode lets one
connection checkpoint while another appends, and PASSIVE never waits for, nor disturbs,
readers or the writer. Durability is unchanged: a checkpoint copies only committed frames
and syncs as the writer's own would (same ``synchronous``), and the Raft log stays the
record of what was acknowledged.

If the thread falls behind (a reader pins old frames, a slow disk), the WAL keeps
growing; past ``INLINE_PAGES`` the writer checkpoints itself after its commit, as SQLite
would have done, so the WAL stays bounded whatever happens to the thread.
"""
import threading

# WAL pages after which a checkpoint is due: SQLite's own autocheckpoint default.
DUE_PAGES = 1000
# WAL pages after which the writer checkpoints inline (the background one fell behind).
INLINE_PAGES = 16 * DUE_PAGES


class Checkpointer:
    """``connect()`` -> a new read-write connection to the database (made on the thread);
    ``checkpoint(conn)`` runs one PASSIVE checkpoint on it, raising on failure.

    ``lock`` is held while a checkpoint runs: whoever needs the database file still
    (``Database.copy_files_to``) or runs its own checkpoint takes it."""

    def __init__(self, connect, checkpoint, close):
        self._connect = connect
        self._checkpoint = checkpoint
        self._close = close
        self.lock = threading.Lock()
        self._due = threading.Event()
        self._stopped = False
        self._thread = None
        self._start_lock = threading.Lock()
        self.pages = 0          # WAL pages after the writer's last commit
        self.runs = 0
        self.inline_runs = 0
        self.errors = 0
        self.last_error = None

    def note(self, pages):
        """The writer's WAL hook (any thread, cheap): ``pages`` frames are in the WAL."""
        self.pages = pages
        if pages >= DUE_PAGES and not self._stopped:
            if self._thread is None:
                self._start()
            self._due.set()

    def inline_due(self):
        """True when the writer should checkpoint itself now (see module doc)."""
        return self.pages >= INLINE_PAGES

    def _start(self):
        with self._start_lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint",
                                                daemon=True)
                self._thread.start()

    def _run(self):
        conn = None
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopped:
                    return
                with self.lock:
                    if self._stopped:
                        return
                    try:
                        if conn is None:
                            conn = self._connect()
                        self._checkpoint(conn)
                        self.runs += 1
                    except Exception as e:  # noqa: BLE001 - retried at the next commit; the
                        self.errors += 1    # writer's inline fallback bounds the WAL
                        self.last_error = f"{type(e).__name__}: {e}"
        finally:
            if conn is not None:
                self._close(conn)

    def stop(self, timeout=10.0):
        self._stopped = True
        self._due.set()
        t = self._thread
        if t is not None:
            t.join(timeout)

    def stats(self) -> dict:
        return {"wal_pages": self.pages, "checkpoints": self.runs,
                "checkpoints_inline": self.inline_runs, "checkpoint_errors": self.errors}
