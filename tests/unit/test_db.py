"""db.py: writer/readers, neutral results, refusals by the authorizer, backup/restore."""
import threading

import pytest

from raftsqlite.db import Database, split_sql, sql_literal


@pytest.fixture
def db(tmp_path):
    d = Database(str(tmp_path / "db.sqlite"))
    yield d
    d.close()


def test_write_and_read_results_are_neutral_dicts(db):
    """Writes report last_insert_id/rows_affected; reads report columns/types/values
    with declared types lowercased and BLOBs as bytes."""
    assert db.run_user("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, b BLOB, x)")[
        "rows_affected"] == 0
    r = db.run_user("INSERT INTO t(name, b, x) VALUES (?, ?, ?)", ["a", b"\x00\x01", 1.5])
    assert (r["last_insert_id"], r["rows_affected"]) == (1, 1)
    r = db.run_user("UPDATE t SET name = :n", {"n": "z"})
    assert r["rows_affected"] == 1
    r = db.read([("SELECT id, name, b, x, 7 AS seven FROM t", None)])[0]
    assert r["columns"] == ["id", "name", "b", "x", "seven"]
    assert r["types"] == ["integer", "text", "blob", "real", "integer"]
    assert r["values"] == [[1, "z", b"\x00\x01", 1.5, 7]]
    assert r["time"] >= 0


def test_empty_read_keeps_columns(db):
    """A read with no rows still reports its columns (declared types only)."""
    db.run_user("CREATE TABLE t (a INTEGER, b)")
    r = db.read([("SELECT * FROM t", None)])[0]
    assert r["columns"] == ["a", "b"] and r["types"] == ["integer", ""] and r["values"] == []


def test_sql_errors_are_data(db):
    """A failing statement yields an error result, never an exception."""
    assert "no such table" in db.run_user("SELECT * FROM nope")["error"]
    assert "syntax error" in db.run_user("SELEC 1")["error"]
    assert "bindings" in db.run_user("SELECT ?", [1, 2])["error"].lower()


@pytest.mark.parametrize("sql", [
    "SELECT * FROM _raftsqlite_meta", "ATTACH 'x.db' AS x", "PRAGMA journal_mode=DELETE",
    "PRAGMA synchronous=OFF", "BEGIN", "SAVEPOINT a"])
def test_authorizer_refuses_unsafe_user_statements(db, sql):
    """User SQL cannot touch internal tables, attach files, control transactions or
    change durability pragmas, even if it got past sqlrewrite."""
    db.internal("CREATE TABLE IF NOT EXISTS _raftsqlite_meta (k, v)")
    r = db.run_user(sql)
    assert "error" in r
    assert not db.in_transaction()


def test_readers_are_read_only_and_per_thread(db):
    """Reads cannot write, and each thread has its own connection."""
    db.run_user("CREATE TABLE t (a)")
    assert "readonly" in db.read([("INSERT INTO t VALUES (1)", None)])[0]["error"]
    conns = []
    ts = [threading.Thread(target=lambda: conns.append(id(db.reader()))) for _ in range(3)]
    [t.start() for t in ts]
    [t.join(5) for t in ts]
    assert len(set(conns)) == 3


def test_db_timeout_interrupts_long_read(db):
    """A read past its db_timeout is interrupted with a clear error."""
    q = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"
    r = db.read([(q, None)], db_timeout=0.1)[0]
    assert "interrupted" in r["error"]
    assert db.read([("SELECT 1", None)])[0]["values"] == [[1]]


def test_backup_is_consistent_while_writer_has_open_transaction(db, tmp_path):
    """A snapshot copy contains only committed data, even mid-transaction."""
    db.run_user("CREATE TABLE t (a)")
    db.run_user("INSERT INTO t VALUES (1)")
    db.internal("BEGIN")
    db.run_user("INSERT INTO t VALUES (2)")
    snap = str(tmp_path / "snap.sqlite")
    db.backup_to(snap)
    db.internal("COMMIT")
    assert Database.read_file_internal(snap, "SELECT a FROM t") == [(1,)]
    assert Database.is_sqlite_file(snap)


def test_backup_in_pieces_is_one_state_while_writer_commits(db, tmp_path):
    """A snapshot copied in many small pieces (each flushed) is still one committed state,
    although the writer commits changes to every page between the pieces: all rows carry
    the same generation as the meta row, and the copy passes integrity_check."""
    db.run_user("CREATE TABLE big (k INTEGER PRIMARY KEY, gen INTEGER, pad BLOB)")
    db.run_user("CREATE TABLE gen (g INTEGER)")
    db.run_user("INSERT INTO gen VALUES (0)")
    db.run_user("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 400) "
                "INSERT INTO big SELECT x, 0, randomblob(8000) FROM c")   # ~3.3 MB
    done = threading.Event()
    gens = []

    def writer():
        g = 0
        while not done.is_set() and g < 100_000:
            g += 1
            db.internal("BEGIN")
            db.run_user("UPDATE big SET gen = ?", [g])
            db.run_user("UPDATE gen SET g = ?", [g])
            db.internal("COMMIT")
            gens.append(g)
    snap = str(tmp_path / "snap.sqlite")
    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(gens) < 2:
            threading.Event().wait(0.001)
        before = gens[-1]
        db.backup_to(snap, flush_bytes=64 << 10)    # ~50 pieces
        after = gens[-1]
    finally:
        done.set()
        t.join(30)
    assert after > before, "the writer committed nothing during the copy: test is vacuous"
    g = Database.read_file_internal(snap, "SELECT g FROM gen")[0][0]
    assert before <= g <= after
    assert Database.read_file_internal(snap, "SELECT DISTINCT gen FROM big") == [(g,)]
    assert Database.read_file_internal(snap, "PRAGMA integrity_check") == [("ok",)]
    assert Database.read_file_internal(snap, "PRAGMA journal_mode") == [("delete",)]


def test_restore_replaces_contents_and_readers_see_it(db, tmp_path):
    """restore_from replaces the whole database; open readers see the new state."""
    db.run_user("CREATE TABLE t (a)")
    db.run_user("INSERT INTO t VALUES (1)")
    snap = str(tmp_path / "snap.sqlite")
    db.backup_to(snap)
    db.run_user("INSERT INTO t VALUES (2)")
    db.run_user("CREATE TABLE u (b)")
    assert db.read([("SELECT count(*) FROM t", None)])[0]["values"] == [[2]]
    db.restore_from(snap)
    assert db.read([("SELECT count(*) FROM t", None)])[0]["values"] == [[1]]
    assert "no such table" in db.read([("SELECT * FROM u", None)])[0]["error"]
    db.run_user("INSERT INTO t VALUES (3)")
    assert db.read([("SELECT count(*) FROM t", None)])[0]["values"] == [[2]]


def test_dump_round_trips(db, tmp_path):
    """iterdump() recreates identical tables in a fresh database."""
    db.run_user("CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d REAL)")
    db.run_user("CREATE INDEX ti ON t(b)")
    rows = [(1, "it's", b"\x00\xff", 1.25), (None, "", b"", -0.5), (2 ** 62, "x\ny", None, 1e300)]
    for r in rows:
        db.run_user("INSERT INTO t VALUES (?,?,?,?)", list(r))
    text = "\n".join(db.iterdump())
    other = Database(str(tmp_path / "other.sqlite"))
    try:
        for st in split_sql(text):
            if st.upper().startswith(("BEGIN", "COMMIT", "PRAGMA")):
                continue
            assert "error" not in other.run_user(st), st
        assert other.checksum("t") == db.checksum("t")
        assert other.read([("SELECT name FROM sqlite_schema WHERE type='index'", None)])[0][
            "values"] == [["ti"]]
    finally:
        other.close()


def test_sql_literal_quotes():
    assert sql_literal("a'b") == "'a''b'"
    assert sql_literal(b"\x01") == "X'01'"
    assert sql_literal(None) == "NULL"


def test_restore_with_a_reader_mid_transaction(db, tmp_path):
    """A reader holding an old snapshot neither blocks nor breaks a restore."""
    db.busy_timeout_ms = 50
    db.writer.set_busy_timeout(50)
    db.run_user("CREATE TABLE t (a)")
    db.run_user("INSERT INTO t VALUES (1)")
    snap = str(tmp_path / "s")
    db.backup_to(snap)
    db.run_user("INSERT INTO t VALUES (2)")
    import apsw
    other = apsw.Connection(db.path, flags=apsw.SQLITE_OPEN_READONLY)
    other.execute("BEGIN")
    assert other.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
    db.restore_from(snap)
    assert db.read([("SELECT count(*) FROM t", None)])[0]["values"] == [[1]]
    other.execute("COMMIT")
    other.close()


def test_only_the_db_layer_imports_apsw():
    """Invariant (DESIGN.md layering): apsw is imported by db.py, db_exec.py and db_files.py and by no
    other module of the package, so every SQLite connection goes through Database."""
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[2] / "raftsqlite"
    pattern = re.compile(r"^\s*(import apsw\b|from apsw\b)", re.M)
    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if pattern.search(p.read_text()))
    assert importers == ["db.py", "db_exec.py", "db_files.py"]


def test_results_past_max_result_bytes_are_an_error_not_a_full_memory(tmp_path):
    """Invariant: a read (or a SELECT in a write) whose rows would pass the bound answers
    a clear "result too large" error, having fetched only about the bound; smaller
    results, results under the bound spread over many chunks, and a single row (even a
    big one) are returned whole and exact; 0 means no bound."""
    d = Database(str(tmp_path / "db.sqlite"), max_result_bytes=200_000)
    try:
        d.run_user("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
        d.internal("BEGIN")
        for i in range(20_000):
            d.run_user("INSERT INTO t(v) VALUES (?)", ["x" * 30])
        d.run_user("INSERT INTO t(id, b) VALUES (-1, ?)", [b"\x01" * 500_000])
        d.internal("COMMIT")
        r = d.read([("SELECT id, v FROM t WHERE id > 0", None)])[0]
        assert "result too large" in r["error"] and "LIMIT" in r["error"], r
        # the writer (apply) uses the bound carried in the entry, not the node's own
        assert "values" in d.run_user("SELECT id, v FROM t WHERE id > 0")
        d.set_result_bound(200_000)
        d.budget_begin()
        assert "result too large" in d.run_user("SELECT id, v FROM t WHERE id > 0")["error"]
        assert "200,000 bytes" in d.result_refused
        d.set_result_bound(0)
        r = d.read([("SELECT id, v FROM t WHERE id > 0 AND id <= 4000", None)])[0]
        assert len(r["values"]) == 4000 and r["values"][-1] == [4000, "x" * 30]
        r = d.read([("SELECT id FROM t WHERE id > 0", None)])[0]     # 20,000 x 8 bytes
        assert [v[0] for v in r["values"]] == list(range(1, 20_001))
        r = d.read([("SELECT b FROM t WHERE id = -1", None)])[0]
        assert r["values"] == [[b"\x01" * 500_000]]
        assert "error" in d.read([("SELECT b FROM t WHERE id = -1 UNION ALL "
                                   "SELECT b FROM t WHERE id = -1", None)])[0]
        d.max_result_bytes = 0
        assert len(d.read([("SELECT id, v FROM t", None)])[0]["values"]) == 20_001
    finally:
        d.close()
