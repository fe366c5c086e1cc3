"""sqlrewrite: deterministic literals, untouched quotes, refusals, read/write classes."""
import random
import re

import pytest

from raftsqlite.db import Database
from raftsqlite.errors import StatementRefused
from raftsqlite import sqlrewrite
from raftsqlite.sqlrewrite import check, is_read_only, rewrite

NOW = 1764140985.25


def rw(sql, seed=1):
    return rewrite(sql, now=NOW, rng=random.Random(seed))


def test_fast_path_returns_same_object():
    """Statements without candidate keywords are returned untouched (same object)."""
    sql = "INSERT INTO users(name, email) VALUES (?, ?)"
    assert rw(sql) is sql


def test_random_and_now_become_literals():
    """random() and datetime('now') become literals; no non-deterministic call remains."""
    out = rw("INSERT INTO t VALUES (random(), datetime('now'), CURRENT_TIMESTAMP, date())")
    assert "random" not in out.lower() and "'now'" not in out.lower()
    assert "CURRENT_TIMESTAMP" not in out
    assert "2025-11-26 07:09:45.250" in out
    assert rw("SELECT random()", seed=5) == rw("SELECT random()", seed=5)


@pytest.mark.parametrize("expr", ["random()", "randomblob(4)", "date()", "time()",
                                  "datetime()", "julianday()", "unixepoch()",
                                  "strftime('%s')", "current_time", "DATETIME('now')"])
def test_every_non_deterministic_form_is_replaced(expr):
    """Each form is replaced (the output differs from the input and names no such call)."""
    out = rw(f"INSERT INTO t VALUES ({expr})")
    assert out != f"INSERT INTO t VALUES ({expr})"
    assert "'now'" not in out.lower() and "()" not in out


def test_quotes_and_comments_are_never_rewritten():
    """Text inside string literals, quoted identifiers and comments stays as written."""
    sql = "SELECT 'random()', \"random\", [now], `date`('x') -- random()\n"
    assert rw(sql) == sql
    sql2 = "SELECT 'it''s random()' , /* datetime('now') */ 1"
    assert rw(sql2) == sql2


def test_negative_random_cannot_become_a_comment():
    """1-random() must not become '1--123' (a comment)."""
    for seed in range(20):
        out = rw("SELECT 1-random()", seed)
        assert "--" not in out


@pytest.mark.parametrize("expr", [
    "random()", "randomblob(8)", "datetime('now')", "date('now','+1 day')", "time()",
    "julianday('NOW')", "unixepoch()", "strftime('%s')", "strftime('%Y', 'now')",
    "CURRENT_DATE", "CURRENT_TIME", "CURRENT_TIMESTAMP", "datetime(datetime('now'), '+1 hour')"])
def test_rewritten_sql_is_valid_and_stable(tmp_path, expr):
    """The rewritten statement runs in SQLite and gives the same value every time
    (the property that makes replicas identical)."""
    db = Database(str(tmp_path / "d.sqlite"))
    try:
        out = rw(f"SELECT {expr}")
        a = db.run_user(out)
        b = db.run_user(out)
        assert "error" not in a, (out, a)
        assert a["values"] == b["values"]
    finally:
        db.close()


def test_ddl_defaults_are_kept():
    """DEFAULT CURRENT_TIMESTAMP in DDL stays an expression (freezing it would be wrong)."""
    sql = "CREATE TABLE t (ts TEXT DEFAULT CURRENT_TIMESTAMP, r DEFAULT (random()))"
    assert rw(sql) == sql


def test_trigger_body_is_one_statement():
    """A trigger's BEGIN..END body (with CASE..END) is not split at inner semicolons."""
    sql = ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = CASE WHEN 1 THEN 2 END;"
           " INSERT INTO u VALUES (1); END")
    assert rw(sql) == sql


@pytest.mark.parametrize("sql,word", [
    ("ATTACH DATABASE 'x.db' AS x", "ATTACH"), ("detach x", "DETACH"),
    ("SELECT load_extension('evil.so')", "load_extension"),
    ("VACUUM INTO '/tmp/copy.db'", "VACUUM INTO"),
    ("PRAGMA journal_mode=DELETE", "journal_mode"), ("pragma main.synchronous = 0", "synchronous"),
    ("PRAGMA wal_checkpoint(TRUNCATE)", "wal_checkpoint"),
    ("PRAGMA wal_autocheckpoint=0", "wal_autocheckpoint"),
    ("INSERT INTO t VALUES (1); ATTACH 'y' AS y", "ATTACH"),
    ("BEGIN", "BEGIN"), ("COMMIT", "COMMIT"),
    ("SELECT * FROM _raftsqlite_meta", "internal"),
    ("SELECT randomblob(?)", "randomblob")])
def test_refusals_name_the_statement(sql, word):
    """Unsafe statements are refused with a StatementRefused naming what was refused."""
    with pytest.raises(StatementRefused) as ei:
        rw(sql)
    assert word.lower() in str(ei.value).lower()
    if word != "randomblob":  # a read may use randomblob(?) freely: it is never logged
        with pytest.raises(StatementRefused):
            check(sql)


def test_refusal_keywords_inside_strings_are_fine():
    """'attach' inside a string literal is data, not a statement."""
    assert rw("INSERT INTO t VALUES ('ATTACH x; PRAGMA journal_mode=off')") \
        == "INSERT INTO t VALUES ('ATTACH x; PRAGMA journal_mode=off')"


@pytest.mark.parametrize("sql,ro", [
    ("SELECT 1", True), ("  select * from t where a = 'x;y'", True),
    ("SELECT replace(a, 'x', 'y') FROM t", True),
    ("WITH c AS (SELECT 1) SELECT * FROM c", True),
    ("WITH c AS (SELECT 1) INSERT INTO t SELECT * FROM c", False),
    ("INSERT INTO t VALUES (1)", False), ("REPLACE INTO t VALUES (1)", False),
    ("UPDATE t SET a=1", False), ("DELETE FROM t", False), ("CREATE TABLE x (a)", False),
    ("PRAGMA table_info(t)", True), ("PRAGMA foreign_keys=ON", False),
    ("EXPLAIN QUERY PLAN SELECT 1", True), ("SELECT 1; SELECT 2", True),
    ("SELECT 1; DELETE FROM t", False), ("", False), ("VALUES (1)", True)])
def test_is_read_only(sql, ro):
    """Reads are classified as reads; anything that may write is a write."""
    assert is_read_only(sql) is ro


def test_random_literal_is_int64():
    for seed in range(50):
        v = int(re.search(r"-?\d+", rw("SELECT random()", seed)).group())
        assert -(1 << 63) <= v < (1 << 63)


def test_repeated_texts_in_one_request():
    """Invariant: skipping the work for a repeated unchanged text never skips a rewrite
    or a refusal: each random() of a repeated text gets its own literal, and a refused
    text is refused even after an accepted one."""
    from raftsqlite.codec.model import Statement
    plain = [Statement("INSERT INTO t VALUES (?)", [i]) for i in range(5)]
    assert all(a is b for a, b in zip(sqlrewrite.rewrite_statements(plain), plain))
    rnd = [Statement("INSERT INTO t VALUES (random())") for _ in range(5)]
    out = sqlrewrite.rewrite_statements(rnd, rng=random.Random(1))
    assert len({s.sql for s in out}) == 5 and all("random" not in s.sql for s in out)
    with pytest.raises(StatementRefused):
        sqlrewrite.rewrite_statements(plain + [Statement("ATTACH 'x' AS y")])


@pytest.mark.parametrize("name", sorted(sqlrewrite.STATE_PRAGMAS))
def test_connection_state_pragmas_cannot_be_set(name, tmp_path):
    """Invariant: a pragma whose setting lives on the connection (not in the file) cannot
    be set by a statement, before logging (sqlrewrite) nor on any connection (the
    authorizer), in any spelling; reading it is allowed."""
    for sql in (f"PRAGMA {name}=1", f"pragma main.{name} = 1", f"PRAGMA {name}(1)",
                f'PRAGMA "{name}"=0'):
        with pytest.raises(StatementRefused, match="cannot be set by a statement"):
            check(sql)
    check(f"PRAGMA {name}")
    db = Database(str(tmp_path / "db.sqlite"))
    try:
        r = db.run_user(f"PRAGMA {name}=1")
        assert "not authorized" in r["error"], r
        assert "error" not in db.read([(f"PRAGMA {name}", None)])[0]
        assert "not authorized" in db.read([(f"PRAGMA {name}=1", None)])[0]["error"]
    finally:
        db.close()


def test_file_pragmas_and_read_pragmas_stay_allowed(tmp_path):
    """Pragmas that act on the database file (replicated like any write) and pragmas
    with an argument that only read are not refused; PRAGMA optimize is."""
    for sql in ("PRAGMA user_version=7", "PRAGMA application_id=5", "PRAGMA table_info(t)",
                "PRAGMA index_list(t)", "PRAGMA integrity_check", "PRAGMA page_count"):
        check(sql)
    with pytest.raises(StatementRefused, match="ANALYZE"):
        check("PRAGMA optimize")
    db = Database(str(tmp_path / "db.sqlite"))
    try:
        db.run_user("CREATE TABLE t (a)")
        assert "error" not in db.run_user("PRAGMA user_version=7")
        assert db.read([("PRAGMA user_version", None)])[0]["values"] == [[7]]
        assert db.read([("PRAGMA table_info(t)", None)])[0]["values"][0][1] == "a"
        assert "not authorized" in db.run_user("PRAGMA optimize")["error"]
    finally:
        db.close()


@pytest.mark.parametrize("sql,hidden", [
    ("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name", True),
    ("SELECT name FROM main.sqlite_master WHERE type = 'table'", True),
    ("select m.name from sqlite_schema m where m.type = 'table'", True),
    ('SELECT x.name FROM "sqlite_master" AS x', True),
    ("SELECT sqlite_master.name FROM sqlite_master", True),
    ("SELECT u.name FROM sqlite_master u, sqlite_schema WHERE u.name = sqlite_schema.name",
     True),
    ("PRAGMA table_list", True),
    ("pragma main.table_list;", True),
    ("SELECT * FROM temp.sqlite_master", False),
    ("SELECT 'sqlite_master'", False),
])
def test_schema_reads_leave_the_node_tables_out(tmp_path, sql, hidden):
    """Invariant: a read of sqlite_master / sqlite_schema / PRAGMA table_list through the
    user path lists every user object and none of the node's _raftsqlite_ tables (ORMs
    reflect from them); the node's own internal reads still see everything."""
    from raftsqlite.fsm import FSM
    db = Database(str(tmp_path / "db.sqlite"))
    FSM(db)                                   # creates the node's tables
    db.writer.execute("CREATE TABLE _mine (x); CREATE TABLE users (id INTEGER PRIMARY KEY, "
                      "v TEXT UNIQUE); CREATE INDEX users_v ON users(v)")
    r = db.read([(sql, None)])[0]
    flat = " ".join(str(c) for row in r.get("values", []) for c in row)
    assert "error" not in r, r
    if hidden:
        assert "_raftsqlite_" not in flat and "users" in flat and "_mine" in flat, flat
    internal = [n for (n,) in db.read_internal("SELECT name FROM sqlite_master")]
    assert any(n.startswith("_raftsqlite_") for n in internal)
    db.close()


def test_schema_rewrite_keeps_other_text_and_is_cached():
    """Invariant: statements not naming the schema table come back as the same object;
    a rewrite changes only the table reference."""
    s = "SELECT * FROM t WHERE a = 'sqlite_master'"
    assert sqlrewrite.hide_internal(s) is s
    q = "SELECT name FROM sqlite_master WHERE type = 'table' -- sqlite_master"
    out = sqlrewrite.hide_internal(q)
    assert out.startswith("SELECT name FROM (SELECT * FROM main.sqlite_master WHERE tbl_name")
    assert out.endswith(") AS sqlite_master WHERE type = 'table' -- sqlite_master")
    assert sqlrewrite.hide_internal(q) is out
