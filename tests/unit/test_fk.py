"""-fk in the FSM: foreign keys enforced the same way on every member, whatever the
batching of the log; the setting is the group's (recorded, checked at start and apply);
a statement cannot change it."""
import pytest

from raftsqlite.codec import encode_command
from raftsqlite.codec.model import (BulkStatements, Command, CommandType, Entry, EntryType,
                                    Request, Statement)
from raftsqlite.db import Database
from raftsqlite.errors import SettingsMismatch
from raftsqlite.fsm import FSM
from raftsqlite.group_settings import RECORD_OP, GroupSettings

SCHEMA = ("CREATE TABLE p (id INTEGER PRIMARY KEY)",
          "CREATE TABLE c (id INTEGER PRIMARY KEY, pid REFERENCES p(id) ON DELETE CASCADE)",
          "CREATE TABLE d (id INTEGER PRIMARY KEY, "
          "pid REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")


def ex(index, *requests):
    return Entry(1, index, EntryType.NORMAL,
                 encode_command(Command(CommandType.EXECUTE, list(requests))))


def req(*sqls, transaction=False):
    sts = [Statement(s) if isinstance(s, str) else Statement(*s) for s in sqls]
    return Request(sts, transaction=transaction)


def make(tmp_path, name, fk=True, **kw):
    db = Database(str(tmp_path / f"{name}.sqlite"), foreign_keys=fk)
    return FSM(db, **kw)


def clean(res):
    """Results without timings (they differ run to run)."""
    if isinstance(res, dict):
        return {k: clean(v) for k, v in res.items() if k != "time"}
    if isinstance(res, list):
        return [clean(v) for v in res]
    return res


def dump(fsm):
    return list(fsm.db.iterdump())


def rows(fsm, sql):
    return fsm.db.read([(sql, None)])[0]["values"]


def workload():
    """Entries mixing immediate and deferred violations, fixes inside a request,
    defer_foreign_keys, bulk rows and transaction requests."""
    e = [ex(1, *[req(s) for s in SCHEMA]), ex(2, req("INSERT INTO p VALUES (1)"))]
    e.append(ex(3, req("INSERT INTO c VALUES (1, 1)"), req("INSERT INTO c VALUES (2, 9)"),
                req("INSERT INTO d VALUES (1, 1)")))
    # a deferred violation outside a transaction fails its statement alone
    e.append(ex(4, req("INSERT INTO d VALUES (2, 9)", "INSERT INTO d VALUES (3, 1)")))
    # ... also in a run of one text (bulk rows)
    e.append(ex(5, Request(BulkStatements("INSERT INTO d VALUES (?, ?)",
                                          [[10, 1], [11, 8], [12, 1], [13, 7]]))))
    # a transaction may violate a deferred key and fix it before its end
    e.append(ex(6, req("INSERT INTO d VALUES (20, 5)", "INSERT INTO p VALUES (5)",
                       transaction=True)))
    # ... and fails whole when it does not
    e.append(ex(7, req("INSERT INTO p VALUES (6)", "INSERT INTO d VALUES (21, 99)",
                       transaction=True)))
    # defer_foreign_keys from one request must not change a later one's outcome
    e.append(ex(8, req("PRAGMA defer_foreign_keys=ON")))
    e.append(ex(9, req("INSERT INTO c VALUES (30, 77)", "INSERT INTO p VALUES (77)",
                       transaction=True), req("INSERT INTO c VALUES (31, 78)")))
    # a delete that would leave deferred children dangling fails; once they are gone,
    # ON DELETE CASCADE removes the immediate ones
    e.append(ex(10, req("DELETE FROM p WHERE id = 1")))
    e.append(ex(11, req("DELETE FROM d WHERE pid = 1", "DELETE FROM p WHERE id = 1")))
    return e


def test_fk_results_and_database_do_not_depend_on_batching(tmp_path):
    """Members cut the log into apply batches differently (and only the leader reads
    results): the results and the database must be identical either way."""
    entries = workload()
    whole = make(tmp_path, "whole")
    res_whole = whole.apply(entries)
    single = make(tmp_path, "single")
    res_single = [single.apply([e])[0] for e in entries]
    follower = make(tmp_path, "follower")
    follower.results_wanted = lambda index: False     # a follower's bulk shortcuts
    follower.apply(entries[:5])
    follower.apply(entries[5:])
    # (a DELETE's last_insert_id is the connection's last rowid, which our own meta
    # write after each apply batch sets: batching shows there with or without -fk)
    for res in (res_whole, res_single):
        for r in res[9:]:
            for x in r["results"][0]:
                x.pop("last_insert_id", None)
    assert clean(res_whole) == clean(res_single)
    assert dump(whole) == dump(single) == dump(follower)
    r = clean(res_whole)
    assert r[2]["results"][1] == [{"error": "FOREIGN KEY constraint failed"}]
    assert r[3]["results"][0][0] == {"error": "FOREIGN KEY constraint failed"}
    assert "error" not in r[3]["results"][0][1]
    assert [("error" in x) for x in r[4]["results"][0]] == [False, True, False, True]
    assert "error" not in str(r[5])
    assert r[6]["results"][0][-1] == {"error": "FOREIGN KEY constraint failed"}
    # the deferred pragma changed nothing: the immediate key still failed at once
    assert r[8]["results"][0][0] == {"error": "FOREIGN KEY constraint failed"}
    assert r[8]["results"][1][0] == {"error": "FOREIGN KEY constraint failed"}
    assert r[9]["results"][0] == [{"error": "FOREIGN KEY constraint failed"}]
    assert "error" not in str(r[10])
    assert rows(whole, "SELECT id FROM p ORDER BY id") == [[5]]
    assert rows(whole, "SELECT count(*) FROM c") == [[0]]       # cascaded
    assert rows(whole, "PRAGMA foreign_key_check") == []
    for f in (whole, single, follower):
        f.db.close()


def test_fk_off_is_unchanged(tmp_path):
    """Without -fk a dangling reference is accepted, as before."""
    f = make(tmp_path, "off", fk=False)
    res = f.apply([ex(1, *[req(s) for s in SCHEMA]), ex(2, req("INSERT INTO c VALUES (1, 9)"))])
    assert "error" not in str(res[1])
    assert rows(f, "SELECT count(*) FROM c") == [[1]]
    f.db.close()


def test_pragma_foreign_keys_cannot_change_the_group_setting(tmp_path):
    """A statement may restate the group's foreign_keys value, never change it, on the
    apply path or on a read connection."""
    on = make(tmp_path, "on")
    res = on.apply([ex(1, req("PRAGMA foreign_keys=OFF"), req("PRAGMA foreign_keys=ON"),
                       req("PRAGMA foreign_keys(0)"))])[0]["results"]
    assert "foreign_keys" in res[0][0]["error"] and "error" not in res[1][0]
    assert "error" in res[2][0]
    assert on.db.read([("PRAGMA foreign_keys", None)])[0]["values"] == [[1]]
    assert "error" in on.db.read([("PRAGMA foreign_keys(0)", None)])[0]
    off = make(tmp_path, "off", fk=False)
    res = off.apply([ex(1, req("PRAGMA foreign_keys=ON"))])[0]["results"]
    assert "error" in res[0][0]
    assert off.db.read([("PRAGMA foreign_keys", None)])[0]["values"] == [[0]]
    on.db.close()
    off.db.close()


def sysentry(index, ops):
    return Entry(1, index, EntryType.NORMAL, encode_command(Command(CommandType.SYSTEM,
                                                                    ops=ops)))


def test_settings_record_checked_at_apply_and_start(tmp_path):
    """The group's settings are recorded by the log; a member with other settings
    fail-stops applying the record, and refuses to start over a database holding it."""
    a = make(tmp_path, "a", settings=GroupSettings(True))
    rec = (RECORD_OP, GroupSettings(True).encode())
    res = a.apply([sysentry(1, [rec])])
    assert res[0]["results"][0]["group_settings"]["foreign_keys"] is True
    assert a.recorded_settings() == GroupSettings(True)
    b = make(tmp_path, "b", fk=False)
    with pytest.raises(SettingsMismatch) as e:
        b.apply([sysentry(1, [rec])])
    assert "-fk" in str(e.value) and "not enforced" in str(e.value)
    assert b.applied_index() == 0
    path = a.db.path
    a.db.close()
    db = Database(path)
    with pytest.raises(SettingsMismatch):
        FSM(db)
    db.close()
    db = Database(path, foreign_keys=True)
    assert FSM(db).applied_index() == 1
    db.close()
    b.db.close()


def test_load_defers_checks_to_its_end(tmp_path):
    """A load runs a dump whose tables come in name order (child first): with -fk it
    succeeds when the data is consistent at its end, and fails whole otherwise."""
    from raftsqlite import fsm_load
    import orjson
    f = make(tmp_path, "load")

    def load(index, stmts):
        data = encode_command(Command(CommandType.EXECUTE, [req(*stmts)]))
        return [sysentry(index, [("load.stage", fsm_load.stage_args("L", 0, data))]),
                sysentry(index + 1, [("load.commit", orjson.dumps(
                    {"id": "L", "chunks": 1, "drop": True})), ("load.discard",
                                                               orjson.dumps({"id": "L"}))])]
    good = ["CREATE TABLE c (id INTEGER PRIMARY KEY, pid REFERENCES p(id))",
            "CREATE TABLE p (id INTEGER PRIMARY KEY)", "INSERT INTO c VALUES (1, 1)",
            "INSERT INTO p VALUES (1)"]
    res = f.apply(load(1, good))
    assert "error" not in str(res), res
    assert rows(f, "SELECT count(*) FROM c") == [[1]]
    bad = good[:3]
    res = f.apply(load(3, bad))
    assert "FOREIGN KEY" in str(res[1])
    assert rows(f, "SELECT count(*) FROM p") == [[1]]      # the old data stayed
    # our own dump of an -fk database creates every table before any row, so it loads
    f.apply([ex(5, req("INSERT INTO p VALUES (2)"), req("INSERT INTO c VALUES (2, 2)"))])
    res = f.apply(load(6, [s for s in f.db.iterdump() if not s.startswith(
        ("PRAGMA", "BEGIN", "COMMIT"))]))
    assert "error" not in str(res), res
    assert rows(f, "SELECT count(*) FROM c") == [[2]]
    f.db.close()


def test_flags_parse_into_the_config():
    """-fk, -extensions-path (comma list) and -http-allow-origin reach NodeConfig and the
    HTTP settings; an origin with a line break is refused (header injection)."""
    from raftsqlite.cli import config_from_args
    from raftsqlite.errors import ConfigError
    from raftsqlite.http.backend import HTTPConfig
    cfg, _ = config_from_args(["-fk", "-extensions-path", "a, b.zip", "-http-allow-origin",
                               "https://x.example"])
    assert cfg.foreign_keys is True and cfg.extensions_path == ("a", "b.zip")
    assert HTTPConfig.from_node_config(cfg).allow_origin == "https://x.example"
    cfg, _ = config_from_args([])
    assert (cfg.foreign_keys, cfg.extensions_path, cfg.http_allow_origin) == (False, (), "")
    with pytest.raises(ConfigError):
        config_from_args(["-http-allow-origin", "x\r\nSet-Cookie: a=b"])


def test_collect_extensions_from_dir_zip_and_targz(tmp_path):
    """Each form of -extensions-path gives the same (name, sha256) set; subdirectories in
    an archive, duplicate names and missing paths are clear errors."""
    import hashlib
    import tarfile
    import zipfile
    from raftsqlite.errors import ConfigError
    from raftsqlite.group_settings import collect_extensions
    d = tmp_path / "d"
    d.mkdir()
    (d / "one.so").write_bytes(b"ONE")
    (d / "two.so").write_bytes(b"TWO")
    z = tmp_path / "e.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("one.so", b"ONE")
        zf.writestr("two.so", b"TWO")
    t = tmp_path / "e.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        tf.add(d / "one.so", arcname="one.so")
        tf.add(d / "two.so", arcname="two.so")
    want = [("one.so", hashlib.sha256(b"ONE").hexdigest()),
            ("two.so", hashlib.sha256(b"TWO").hexdigest())]
    for src in (d, z, t):
        got = collect_extensions([str(src)], str(tmp_path / "dest"))
        assert [(n, h) for n, h, _ in got] == want
        assert all(open(p, "rb").read() in (b"ONE", b"TWO") for _, _, p in got)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("sub/one.so", b"ONE")
    for paths, what in (([str(bad)], "subdirectories"), ([str(d), str(z)], "two extension"),
                        ([str(tmp_path / "nope")], "does not exist"),
                        ([str(tmp_path / "dest")], "empties at start")):
        with pytest.raises(ConfigError) as e:
            collect_extensions(paths, str(tmp_path / "dest"))
        assert what in str(e.value)


def test_join_check_names_both_settings():
    """A joiner's settings that differ from the group's give a SettingsMismatch naming
    both; equal ones (or none sent) pass."""
    from raftsqlite.group_settings import check_joiner
    group = GroupSettings(True, (("x.so", "ab" * 32),))
    check_joiner(group, group.encode())
    check_joiner(group, None)
    with pytest.raises(SettingsMismatch) as e:
        check_joiner(group, GroupSettings(False).encode())
    msg = str(e.value)
    assert "foreign keys enforced (-fk)" in msg and "x.so" in msg and "no extensions" in msg
