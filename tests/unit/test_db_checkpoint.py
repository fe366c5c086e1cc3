"""WAL checkpoints beside the writer (db_checkpoint.py): they happen, off the writer's
thread, the WAL stays bounded without them, and copies and contents stay exact."""
import os
import time

import pytest

from raftsqlite import db_checkpoint
from raftsqlite.db import Database


def _wal_pages(db):
    p = db.path + "-wal"
    return os.path.getsize(p) // 4096 if os.path.exists(p) else 0


def _fill(db, batches, start=0):
    """``batches`` transactions of 200 rows of ~500 bytes, as the apply path commits."""
    for b in range(batches):
        db.internal("BEGIN IMMEDIATE")
        for i in range(200):
            db.run_user("INSERT INTO t(v) VALUES (?)", [f"{start + b}-{i}-" + "x" * 500])
        db.internal("COMMIT")
        db.checkpoint_if_due()


def _wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def db(tmp_path):
    d = Database(str(tmp_path / "db.sqlite"))
    d.internal("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    yield d
    d.close()


def test_background_thread_checkpoints_and_the_wal_restarts(db):
    """Past DUE_PAGES the background thread checkpoints (the writer does not): the WAL
    file then restarts from its beginning instead of growing with every commit."""
    _fill(db, 60)        # ~7,500 pages written: many times DUE_PAGES
    assert _wait(lambda: db.stats()["checkpoints"] >= 1)
    st = db.stats()
    assert st["checkpoints_inline"] == 0 and st["checkpoint_errors"] == 0
    assert _wal_pages(db) < 4 * db_checkpoint.DUE_PAGES
    r = db.read([("SELECT count(*), max(id) FROM t", None)])[0]["values"]
    assert r == [[12000, 12000]]


def test_wal_stays_bounded_when_the_thread_is_gone(db, monkeypatch):
    """With no background checkpoints at all, the writer checkpoints itself once the
    WAL passes INLINE_PAGES, so the WAL cannot grow without bound."""
    monkeypatch.setattr(db_checkpoint, "INLINE_PAGES", 300)
    db._ckpt.stop()            # as if the thread were stuck or dead
    _fill(db, 40)
    st = db.stats()
    assert st["checkpoints"] == 0 and st["checkpoints_inline"] >= 3
    assert _wal_pages(db) < 300 + 200


def test_snapshot_copy_is_exact_while_checkpoints_run(db, tmp_path):
    """copy_files_to (the apply thread's snapshot) copies the database file and WAL
    while the background thread may be checkpointing: the copy holds exactly the
    committed rows every time."""
    for k in range(6):
        _fill(db, 12, start=100 * k)
        dst = str(tmp_path / f"snap{k}.db")
        db.copy_files_to(dst)
        got = Database.read_file_internal(dst, "SELECT count(*), max(id) FROM t")
        assert got == [(2400 * (k + 1), 2400 * (k + 1))]


def test_contents_survive_close_and_reopen(tmp_path):
    """Closing stops the thread cleanly; every committed row is there on reopening."""
    path = str(tmp_path / "db.sqlite")
    d = Database(path)
    d.internal("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    _fill(d, 30)
    d.close()
    d = Database(path)
    try:
        assert d.read([("SELECT count(*) FROM t", None)])[0]["values"] == [[6000]]
    finally:
        d.close()
