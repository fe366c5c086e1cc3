"""-auto-backup / -auto-restore (auto_backup.py) without a node: config parsing and
validation, the backup directory's atomic writes and METADATA.json, the content digest."""
import gzip
import json
import os

import apsw
import pytest

from raftsqlite import auto_backup as ab
from raftsqlite import db_files
from raftsqlite.cli import config_from_args
from raftsqlite.errors import BadRequest, ConfigError


def _backup_doc(**over):
    doc = {"version": 1, "type": "file", "interval": "30s", "timestamp": False,
           "no_compress": False, "vacuum": False,
           "sub": {"dir": "/tmp/raftsqlite-bk", "file": "backup.sqlite"}}
    doc.update(over)
    return doc


def test_backup_config_rqlite_format():
    """rqlite's example file parses into the settings it names."""
    c = ab.BackupConfig.from_dict(_backup_doc(interval="1m30s", vacuum=True, timestamp=True))
    assert (c.interval, c.dir, c.file, c.vacuum, c.timestamp, c.no_compress) == \
        (90.0, "/tmp/raftsqlite-bk", "backup.sqlite", True, True, False)


@pytest.mark.parametrize("over,needle", [
    ({"version": 2}, "version 2 is not supported"),
    ({"type": "s3"}, "not supported in this build; only \"file\""),
    ({"type": "gcs"}, "not supported in this build; only \"file\""),
    ({"type": "ftp"}, "unknown storage type 'ftp'"),
    ({"interval": "often"}, "duration"),
    ({"interval": 30}, "duration string"),
    ({"interval": "0s"}, "more than zero"),
    ({"interval": "-5s"}, "duration"),
    ({"sub": {"dir": "relative/dir", "file": "b.sqlite"}}, "absolute"),
    ({"sub": {"dir": "/tmp/x", "file": "../b.sqlite"}}, "plain file name"),
    ({"sub": {"dir": "/tmp/x", "file": "a/b.sqlite"}}, "plain file name"),
    ({"sub": {"dir": "/tmp/x", "file": ""}}, "plain file name"),
    ({"sub": {"dir": "/tmp/x", "file": "METADATA.json"}}, "plain file name"),
    ({"sub": "nope"}, "\"sub\" must be an object"),
    ({"no_compress": "yes"}, "true or false"),
])
def test_backup_config_refusals(over, needle):
    """Every bad setting is a ConfigError naming the problem (the node refuses to start)."""
    with pytest.raises(ConfigError) as ei:
        ab.BackupConfig.from_dict(_backup_doc(**over))
    assert needle in str(ei.value)


def test_missing_interval_refused():
    """An interval is required: without one there is no schedule."""
    doc = _backup_doc()
    del doc["interval"]
    with pytest.raises(ConfigError, match="interval"):
        ab.BackupConfig.from_dict(doc)


def test_env_expansion_like_go(tmp_path, monkeypatch):
    """$NAME and ${NAME} expand; an unset variable expands to nothing (Go's ExpandEnv)."""
    monkeypatch.setenv("RSBK_DIR", str(tmp_path))
    monkeypatch.delenv("RSBK_UNSET", raising=False)
    p = tmp_path / "ab.json"
    p.write_text(json.dumps(_backup_doc(sub={"dir": "${RSBK_DIR}/b$RSBK_UNSET",
                                             "file": "x.sqlite"})))
    c = ab.BackupConfig.load(str(p))
    assert c.dir == os.path.join(str(tmp_path), "b")
    assert ab.expand_env("a$RSBK_UNSET-b") == "a-b"


def test_unreadable_and_bad_json(tmp_path):
    """A missing file or bad JSON is a ConfigError naming the flag and the file."""
    with pytest.raises(ConfigError, match="-auto-backup: cannot read"):
        ab.BackupConfig.load(str(tmp_path / "none.json"))
    p = tmp_path / "bad.json"
    p.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ab.RestoreConfig.load(str(p))


def test_restore_config_defaults_and_checks():
    """timeout defaults to 30 s; file may be omitted (METADATA.json names the backup)."""
    c = ab.RestoreConfig.from_dict({"version": 1, "type": "file",
                                    "sub": {"dir": "/tmp/b"}})
    assert (c.timeout, c.continue_on_failure, c.file) == (30.0, False, "")
    c = ab.RestoreConfig.from_dict({"version": 1, "type": "file", "timeout": "2s",
                                    "continue_on_failure": True,
                                    "sub": {"dir": "/tmp/b", "file": "b.sqlite"}})
    assert (c.timeout, c.continue_on_failure, c.file) == (2.0, True, "b.sqlite")
    with pytest.raises(ConfigError, match="only \"file\""):
        ab.RestoreConfig.from_dict({"version": 1, "type": "s3", "sub": {}})


def test_cli_flags_and_shard_restore_refused():
    """The flags reach NodeConfig; -auto-restore on a shard group is refused (the catalog
    places a shard's rows)."""
    cfg, _ = config_from_args(["-auto-backup", "/x/ab.json", "-auto-restore", "/x/ar.json"])
    assert (cfg.auto_backup, cfg.auto_restore) == ("/x/ab.json", "/x/ar.json")
    with pytest.raises(ConfigError, match="default group"):
        config_from_args(["-shard", "s1", "-join", "127.0.0.1:4001",
                          "-auto-restore", "/x/ar.json"])


def _make_db(path, rows, extra_meta=0):
    c = apsw.Connection(path)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("CREATE TABLE _raftsqlite_meta(k TEXT PRIMARY KEY, v)")
    c.execute("INSERT INTO _raftsqlite_meta VALUES ('applied_index', ?)", (extra_meta,))
    for i, v in rows:
        c.execute("INSERT INTO t VALUES (?, ?)", (i, v))
    c.close()


def test_digest_ignores_internal_tables_and_sees_user_changes(tmp_path):
    """The digest is the same for the same user rows whatever our internal tables hold,
    and differs when one user value, one rowid or the schema differs."""
    rows = [(i, f"v{i}") for i in range(50)]
    paths = {}
    for name, r, meta in (("a", rows, 1), ("b", rows, 99), ("c", rows[:-1] + [(49, "x")], 1),
                          ("d", rows[:-1] + [(77, "v49")], 1)):
        paths[name] = str(tmp_path / f"{name}.sqlite")
        _make_db(paths[name], r, meta)
    d = {k: db_files.content_digest(p) for k, p in paths.items()}
    assert d["a"] == d["b"]
    assert d["c"] != d["a"] and d["d"] != d["a"]
    c = apsw.Connection(paths["b"])
    c.execute("CREATE INDEX t_v ON t(v)")
    c.close()
    assert db_files.content_digest(paths["b"]) != d["a"]


def test_upload_atomic_and_metadata(tmp_path):
    """upload writes the (gzipped) file under its final name and METADATA.json with id,
    timestamp and name; no temp file is left; a timestamped name is prefixed."""
    src = str(tmp_path / "src.sqlite")
    _make_db(src, [(1, "a")])
    d = str(tmp_path / "bk")
    t = ab.FileTarget(d, "backup.sqlite", prefix="s1_")
    t.check_writable()
    name, size = t.upload(src, "abc", compress=True)
    assert name == os.path.join(d, "s1_backup.sqlite") and size == os.path.getsize(name)
    with gzip.open(name, "rb") as f:
        assert f.read() == open(src, "rb").read()
    md = json.load(open(os.path.join(d, "s1_METADATA.json")))
    assert md["id"] == "abc" and md["name"] == name and md["timestamp"] > 0
    assert t.current("abc") and not t.current("other")
    assert sorted(os.listdir(d)) == ["s1_METADATA.json", "s1_backup.sqlite"]
    ts = ab.FileTarget(d, "b.sqlite", timestamp=True)
    name2, _ = ts.upload(src, "def", compress=False)
    base = os.path.basename(name2)
    assert base.endswith("_b.sqlite") and base[:14].isdigit()
    assert open(name2, "rb").read() == open(src, "rb").read()
    assert ts.latest() == name2     # b.sqlite itself does not exist: METADATA.json's name
    os.unlink(name2)
    assert not ts.current("def")    # the file METADATA names is gone: not current


def test_restore_fetch_gzip_and_plain_and_corrupt(tmp_path):
    """The restore reads gzip (by magic bytes) or plain, and refuses a file that is not
    a sound SQLite database."""
    src = str(tmp_path / "src.sqlite")
    _make_db(src, [(1, "a"), (2, "b")])
    d = tmp_path / "bk"
    d.mkdir()
    with open(src, "rb") as f, gzip.open(d / "z.sqlite", "wb") as g:
        g.write(f.read())
    out = str(tmp_path / "out.sqlite")
    cfg = ab.RestoreConfig(dir=str(d), file="z.sqlite")
    assert ab._fetch(cfg, out) == str(d / "z.sqlite")
    assert db_files.content_digest(out) == db_files.content_digest(src)
    (d / "junk.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x01" * 5000)
    with pytest.raises(BadRequest):
        ab._fetch(ab.RestoreConfig(dir=str(d), file="junk.sqlite"), out)
    with pytest.raises(Exception, match="no backup found"):
        ab._fetch(ab.RestoreConfig(dir=str(d), file="missing.sqlite"), out)


class _FakeStore:
    def __init__(self):
        self.leader = True
        self.barriers = 0

    def is_leader(self):
        return self.leader

    async def barrier(self, timeout=None):
        self.barriers += 1


def _node(tmp_path, shard=""):
    from types import SimpleNamespace
    from raftsqlite.db import Database
    from raftsqlite.fsm import FSM
    (tmp_path / "data").mkdir()
    db = Database(str(tmp_path / "data" / "db.sqlite"))
    fsm = FSM(db)
    cfg = SimpleNamespace(shard=shard, data_dir=str(tmp_path / "data"), node_id="n1")
    return SimpleNamespace(config=cfg, db=db, fsm=fsm, store=_FakeStore(),
                           raft=SimpleNamespace(term=1))


def test_service_shard_prefix_skip_and_upload(tmp_path):
    """A shard group's leader writes <shard>_<file> and <shard>_METADATA.json; a second
    run with the same content (applied index moved or not) writes nothing; a follower
    writes nothing; a changed row is written again."""
    import asyncio
    node = _node(tmp_path, shard="s1")
    cfg = ab.BackupConfig(interval=1.0, dir=str(tmp_path / "bk"), file="b.sqlite")
    svc = ab.AutoBackup(node, cfg)

    async def run():
        svc.start()
        try:
            node.db.internal("CREATE TABLE t(x)")
            node.db.internal("INSERT INTO t VALUES (1)")
            assert await svc.tick() == "uploaded"
            assert await svc.tick() == "same_index"
            node.fsm._applied += 1          # a no-op entry: index moves, rows do not
            assert await svc.tick() == "same_content"
            node.store.leader = False
            assert await svc.tick() == "not_leader"
            node.store.leader = True
            node.db.internal("UPDATE t SET x = 2")
            node.fsm._applied += 1
            assert await svc.tick() == "uploaded"
        finally:
            await svc.stop()
    asyncio.run(run())
    assert sorted(os.listdir(tmp_path / "bk")) == ["s1_METADATA.json", "s1_b.sqlite"]
    s = svc.stats()
    assert (s["backups_ok"], s["skipped_unchanged"], s["skipped_not_leader"]) == (2, 2, 1)
    assert node.store.barriers == 2     # once per term led (leadership was lost between)
    node.db.close()
