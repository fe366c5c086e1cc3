"""db_ckpt.py: WAL checkpoints off the apply path, with a bound on the WAL."""
import os
import threading
import time

import pytest

from raftsqlite.db import Database

ROW = "x" * 3000          # about one page per row


def _write(db, rows, batch=20):
    w = db.writer
    db._write_access.internal = True     # our own transactions, as the state machine's
    for i in range(0, rows, batch):
        with w:
            w.executemany("INSERT INTO t(v) VALUES(?)", [(ROW,)] * min(batch, rows - i))


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def db(tmp_path):
    d = Database(str(tmp_path / "db.sqlite"))
    d._ckpt.pages, d._ckpt.max_pages = 50, 400
    d.writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    yield d
    d.close()


def test_checkpoints_run_on_their_own_thread(db):
    """Invariant: below the WAL bound the committing connection (the apply path) never
    checkpoints; the background thread does, once ``pages`` frames wait."""
    _write(db, 120)
    assert _wait(lambda: db._ckpt.counters["background"] >= 1)
    assert db._ckpt.counters["inline"] == 0
    assert db._ckpt._thread.name == "sqlite-checkpoint"
    st = db.stats()["checkpoints"]
    assert st["background"] >= 1 and st["errors"] == 0


def test_wal_stays_bounded_under_continuous_writes(db):
    """Invariant: however long writes go on, the WAL is restarted by the writer's own
    catch-up checkpoint at ``max_pages``: its frame count never passes twice the bound
    (plus one transaction), and the file stays that size."""
    _write(db, 3000)
    c = db._ckpt.counters
    assert c["inline"] >= 1, c                      # the writer caught up and restarted
    assert c["max_wal_pages"] <= 2 * db._ckpt.max_pages + 40, c
    # below the hard bound the writer only copies what is left after a background pass
    assert c["catchup_max_frames"] <= db._ckpt.pages // 4, c
    wal = os.path.getsize(db.path + "-wal")
    assert wal <= (2 * db._ckpt.max_pages + 40) * 4200, wal


def test_results_unchanged_and_file_intact(tmp_path):
    """Invariant: background checkpoints move pages, never change contents: every row
    reads back, on a reopened file too, and SQLite's integrity check passes."""
    path = str(tmp_path / "db.sqlite")
    d = Database(path)
    d._ckpt.pages, d._ckpt.max_pages = 30, 200
    d.writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    _write(d, 1500, batch=7)
    n = d.read([("SELECT count(*), sum(length(v)) FROM t", None)])[0]["values"][0]
    assert n == [1500, 1500 * len(ROW)]
    d.close()
    d = Database(path)
    try:
        assert d.read([("SELECT count(*) FROM t", None)])[0]["values"][0] == [1500]
        assert d.read([("PRAGMA integrity_check", None)], internal=True)[0]["values"] == [["ok"]]
    finally:
        d.close()


def test_writer_does_not_wait_for_a_running_pass_below_the_hard_bound(db):
    """Invariant: while a background pass runs, a commit that finds the WAL at
    ``max_pages`` goes on without checkpointing; only at twice the bound does the writer
    wait for the pass (and then catch up itself)."""
    ck = db._ckpt
    held, release = threading.Event(), threading.Event()

    def hold():
        with ck.lock:
            held.set()
            release.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(5)
    before = ck.counters["inline"]
    _write(db, ck.max_pages + 50)                   # past the bound, below twice it
    assert ck.counters["inline"] == before
    done = threading.Event()

    def more():
        _write(db, ck.max_pages)                    # reaches twice the bound
        done.set()
    w = threading.Thread(target=more)
    w.start()
    assert not done.wait(0.5), "the writer went past twice the bound without a checkpoint"
    release.set()
    assert done.wait(10)
    w.join(5)
    t.join(5)
    assert ck.counters["inline_waited"] >= 1 and ck.counters["inline"] > before


def test_raw_copy_waits_for_a_running_pass(db, tmp_path):
    """Invariant: the apply thread's raw file copy (copy_files_to, used for snapshots)
    never runs beside a background checkpoint, which writes the database file."""
    _write(db, 30)
    held, release = threading.Event(), threading.Event()

    def hold():
        with db._ckpt.lock:
            held.set()
            release.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(5)
    done = threading.Event()
    c = threading.Thread(target=lambda: (db.copy_files_to(str(tmp_path / "snap")), done.set()))
    c.start()
    assert not done.wait(0.3)
    release.set()
    assert done.wait(10)
    c.join(5)
    t.join(5)
    assert Database.read_file_internal(str(tmp_path / "snap"), "SELECT count(*) FROM t") \
        == [(30,)]


def test_inline_mode_keeps_sqlites_default(tmp_path):
    """Invariant: checkpoint='inline' leaves SQLite's automatic checkpoint (no thread)."""
    d = Database(str(tmp_path / "db.sqlite"), checkpoint="inline")
    try:
        d.writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        _write(d, 1200)
        assert d.stats()["checkpoints"] == "inline"
        assert os.path.getsize(d.path + "-wal") < 1300 * 4200
        with pytest.raises(ValueError):
            Database(str(tmp_path / "x.sqlite"), checkpoint="sometimes")
    finally:
        d.close()


def test_close_stops_the_thread(tmp_path):
    """Invariant: close() ends the checkpoint thread (no thread outlives its database)."""
    d = Database(str(tmp_path / "db.sqlite"))
    d._ckpt.pages = 10
    d.writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    _write(d, 40)
    assert _wait(lambda: d._ckpt._thread is not None)
    th = d._ckpt._thread
    d.close()
    assert not th.is_alive()


def test_a_pinned_reader_does_not_make_the_thread_spin(tmp_path):
    """Invariant: when passes copy nothing (a reader's open transaction pins an old
    snapshot), the writer's hook still starts at most one pass per ``pages`` new frames,
    not one per commit (no busy loop)."""
    from raftsqlite.db_ckpt import Checkpointer

    class Want:
        n = 0

        def set(self):
            self.n += 1
    ck = Checkpointer(lambda: None, pages=50, max_pages=10_000)
    ck._thread, ck._want = object(), Want()          # no real thread: count the signals
    for npages in range(1, 1001):                    # one frame per commit
        ck.hook(None, "main", npages)
        ck._busy = False                             # each pass ends at once, copying nothing
    assert 1000 // 50 - 1 <= ck._want.n <= 1000 // 50
    ck._thread = None


def test_a_pinned_reader_keeps_the_file_correct(db):
    """Invariant: with a reader holding an old snapshot, writes and checkpoints go on and
    the reader keeps seeing its snapshot."""
    _write(db, 10)
    r = db.reader()
    db._local.access.internal = True                     # our own BEGIN on the reader
    r.execute("BEGIN")
    assert r.execute("SELECT count(*) FROM t").fetchall() == [(10,)]
    try:
        _write(db, 300, batch=2)
        assert _wait(lambda: not db._ckpt._busy)
        assert r.execute("SELECT count(*) FROM t").fetchall() == [(10,)]
    finally:
        r.execute("COMMIT")
    assert r.execute("SELECT count(*) FROM t").fetchall() == [(310,)]


def test_a_failing_checkpoint_is_counted_and_retried_not_raised(caplog):
    """Invariant: a checkpoint that fails (a full disk, say) never fails the commit that
    triggered it: it is counted, said once (not per commit), and tried again later."""
    from raftsqlite.db_ckpt import Checkpointer

    class Conn:
        calls = 0

        def wal_checkpoint(self, *a):
            Conn.calls += 1
            raise OSError("disk full")
    ck = Checkpointer(lambda: Conn(), pages=10, max_pages=20)
    for npages in (45, 46, 47):                       # past twice the bound: writer's own
        assert ck.hook(Conn(), "main", npages) == 0
    assert Conn.calls == 3 and ck.counters["errors"] == 3
    assert sum("WAL checkpoint failed" in r.message for r in caplog.records) == 1
    ck.close()
