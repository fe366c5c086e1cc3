"""The pieces of a sharded database's backup (sharding/backup.py, db_files.merge_owned_rows)."""
import asyncio
import sqlite3
import types

import pytest

from raftsqlite import errors
from raftsqlite import db_files
from raftsqlite.sharding import backup
from raftsqlite.sharding import keyspace as ks


def _cat(starts, owners):
    return types.SimpleNamespace(
        tables={"t": {"shard_key": "k", "shard_func": "hash", "colocation": "t",
                      "key_affinity": "integer"}},
        colocations={"t": {"starts": starts, "owners": owners}},
        groups={"default": {}, "g1": {}, "g2": {}})


def _file(path, ddl, rows=()):
    c = sqlite3.connect(str(path))
    c.execute(ddl)
    c.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    c.commit()
    c.close()


def test_merge_copies_only_owned_rows_by_column_name(tmp_path):
    """Invariant: only rows whose key the group owns are copied (a row held but not
    owned, as on a move's target, is left out); a NULL key stays with its holder; columns
    match by name when the source declared them in another order."""
    cat = _cat([0, 1 << 63], ["g1", "g2"])
    owner = {k: cat.colocations["t"]["owners"][ks.index_of([0, 1 << 63], ks.key_id(k, "hash", "integer"))]
             for k in range(40)}
    dest, src = tmp_path / "d.sqlite", tmp_path / "s.sqlite"
    _file(dest, "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT)")
    rows = [(f"v{k}", k, k + 100) for k in range(40)] + [("null", None, 999)]
    _file(src, "CREATE TABLE t (v TEXT, k INTEGER, id INTEGER PRIMARY KEY)", rows)
    got = db_files.merge_owned_rows(str(dest), str(src), {"t": "k"}, backup._owns_fn(cat, "g1"))
    want = sorted([(k + 100, k, f"v{k}") for k in range(40) if owner[k] == "g1"] + [(999, None, "null")])
    have = sqlite3.connect(str(dest)).execute("SELECT id, k, v FROM t ORDER BY id").fetchall()
    assert have == want and got == {"t": len(want)}
    assert 0 < len(want) - 1 < 40


def test_merge_refuses_a_key_another_group_took(tmp_path):
    """Invariant: the same primary key from two groups raises BadRequest naming the table
    and leaves the destination as it was."""
    cat = _cat([0], ["g1"])
    dest, src = tmp_path / "d.sqlite", tmp_path / "s.sqlite"
    _file(dest, "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT)", [(1, 5, "first")])
    _file(src, "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT)", [(1, 6, "second"), (2, 7, "x")])
    with pytest.raises(errors.BadRequest, match="table t: two shards hold rows with the same primary key"):
        db_files.merge_owned_rows(str(dest), str(src), {"t": "k"}, backup._owns_fn(cat, "g1"))
    assert sqlite3.connect(str(dest)).execute("SELECT * FROM t").fetchall() == [(1, 5, "first")]


def test_a_source_without_the_table_copies_nothing(tmp_path):
    dest, src = tmp_path / "d.sqlite", tmp_path / "s.sqlite"
    _file(dest, "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT)")
    sqlite3.connect(str(src)).execute("CREATE TABLE other (x)").connection.commit()
    assert db_files.merge_owned_rows(str(dest), str(src), {"t": "k"}, lambda t, k: True) == {}


class _Svc:
    """Just enough of ShardingService: a catalog that changes while a backup runs."""

    def __init__(self, cats):
        self.cats = list(cats)
        self.reads = 0
        self.cache = types.SimpleNamespace(current=self._current)

    def _current(self):
        self.reads += 1
        return self.cats[min(self.reads - 1, len(self.cats) - 1)]


def _run(svc, tmp_path, monkeypatch, copies):
    async def group_copy(self, group, path):
        copies.append(group)
        _file(path, "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT)")
    monkeypatch.setattr(backup.ClusterBackup, "group_copy", group_copy)
    return asyncio.run(backup.ClusterBackup(svc, str(tmp_path)).run())


def test_ranges_changing_meanwhile_start_the_backup_again(tmp_path, monkeypatch):
    """Invariant: a backup during which a move switched ownership is not returned (it
    could miss or double the moved rows); it starts again, and after ATTEMPTS such runs
    it fails with 503 and what to do."""
    a, b = _cat([0], ["g1"]), _cat([0, 1 << 63], ["g1", "g2"])
    copies = []
    path = _run(_Svc([a, b, b, b]), tmp_path, monkeypatch, copies)
    assert path is not None and copies == ["default", "g1", "default", "g1", "g2"]
    import os
    os.unlink(path)
    flip = [a, b] * 10
    with pytest.raises(errors.Unavailable, match="kept changing"):
        _run(_Svc(flip), tmp_path, monkeypatch, [])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".backup-")]


def test_nothing_sharded_means_the_plain_backup(tmp_path, monkeypatch):
    copies = []
    assert _run(_Svc([_cat([], [])]), tmp_path, monkeypatch, copies) is None and copies == []
