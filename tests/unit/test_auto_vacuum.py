"""auto_vacuum.AutoVacuum's decisions: when a VACUUM is due, and when the leader's disk
cannot take one."""
from types import SimpleNamespace

from raftsqlite.auto_vacuum import AutoVacuum
from raftsqlite.db import Database
from raftsqlite.fsm import FSM
from raftsqlite.fsm_vacuum import LAST_VACUUM_KEY


def _node(tmp_path, min_free=0):
    db = Database(str(tmp_path / "db.sqlite"))
    FSM(db)
    return SimpleNamespace(db=db, config=SimpleNamespace(db_path=db.path),
                           raft=SimpleNamespace(config=SimpleNamespace(min_free_disk=min_free)))


def test_due_counts_from_the_replicated_last_vacuum_or_from_first_look(tmp_path):
    """Invariant: with no VACUUM on record the first look starts the clock (a start never
    VACUUMs at once); with one on record, the interval counts from it."""
    node = _node(tmp_path)
    av = AutoVacuum(node, 10)
    assert not av.due(1_000_000) and not av.due(1_009_999) and av.due(1_010_000)
    node.db.internal("INSERT OR REPLACE INTO _raftsqlite_meta(k, v) VALUES (?, ?)",
                     (LAST_VACUUM_KEY, 2_000_000))
    assert not av.due(2_009_999) and av.due(2_010_000)
    node.db.close()


def test_a_disk_without_room_for_the_copy_skips_it(tmp_path, monkeypatch):
    """Invariant: the leader does not propose a VACUUM its disk cannot hold (about the
    database's size beyond -min-free-disk): every member would stop at it until it had room."""
    import raftsqlite.raft.diskerr as de
    node = _node(tmp_path, min_free=1000)
    av = AutoVacuum(node, 1)
    size = (tmp_path / "db.sqlite").stat().st_size
    monkeypatch.setattr(de, "free_bytes", lambda p: size + 999)
    assert "needs about" in av._space_short()
    monkeypatch.setattr(de, "free_bytes", lambda p: size + 1000)
    assert av._space_short() == ""
    node.db.close()
