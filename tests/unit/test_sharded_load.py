"""The pieces of a load into a sharded database (sharding/load.py, db_files.py)."""
import sqlite3

import pytest

from raftsqlite import db_files, errors
from raftsqlite.sharding.load import dump_touches


def _dump(tmp_path, text):
    p = tmp_path / "d.sql"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text,touches", [
    ('CREATE TABLE notes (a);\nINSERT INTO notes VALUES(1);\n', False),
    ('INSERT INTO "Users" VALUES(1,\'a\');\n', True),
    ("INSERT OR REPLACE INTO [users] (id) VALUES (1);\n", True),
    ("CREATE TABLE IF NOT EXISTS `users` (id);\n", True),
    ("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCOMMIT;\n", False),
    ("INSERT INTO notes SELECT id FROM users;\n", True),        # not VALUES: the planner
    ("CREATE INDEX ix ON users (id);\n", True),                 # the planner
    ("UPDATE notes SET a = 2;\n", False),
])
def test_dump_touches_registered_tables(tmp_path, text, touches):
    """Invariant: a dump counts as writing sharded tables exactly when one of its
    statements inserts into or creates a registered table, whatever the quoting and
    case; statements the cheap scan cannot judge are asked of the planner."""
    def plan_kind(sql):
        return "read" if "users" in sql.lower() else "default"
    assert dump_touches(_dump(tmp_path, text), {"users"}, plan_kind) is touches


def test_a_statement_the_planner_refuses_counts_as_touching(tmp_path):
    def plan_kind(sql):
        raise errors.RoutingRefused("no")
    assert dump_touches(_dump(tmp_path, "DELETE FROM x WHERE a IN (SELECT 1);\n"), set(), plan_kind)


def test_run_script_names_the_failing_statement(tmp_path):
    """Invariant: a dump that does not stand on its own fails with its statement number
    and text, and says what a sharded load needs."""
    with pytest.raises(errors.BadRequest, match=r"statement 2 .*no such table: t.*must create"):
        db_files.run_script(str(tmp_path / "s.sqlite"),
                            ["BEGIN TRANSACTION;", "INSERT INTO t VALUES(1);"])


def test_copy_without_rows_and_row_batches(tmp_path):
    """Invariant: the copy keeps every table's schema and the other tables' rows, and
    empties the named ones; row batches cover every row once, within both limits."""
    src = tmp_path / "a.sqlite"
    c = sqlite3.connect(str(src))
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b, c)")
    c.execute("CREATE TABLE keep (x)")
    c.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [(i, i, str(i), None) for i in range(1234)])
    c.execute("INSERT INTO keep VALUES (7)")
    c.commit()
    c.close()
    dst = tmp_path / "b.sqlite"
    db_files.copy_without_rows(str(src), str(dst), ["t"])
    info = db_files.tables_of(str(dst))
    assert info["t"][2] is False and info["keep"][2] is True
    assert "CREATE TABLE t" in info["t"][1]
    cols, batches = db_files.row_batches(str(src), "t", max_rows=500, max_params=1000)
    got = [len(b) for b in batches]
    assert cols == ["id", "a", "b", "c"] and got == [250] * 4 + [234]
