"""raft-sqlite shell's pure parts: when a statement is complete, and the table layout."""
import pytest

from raftsqlite.commands.shell import complete, table


@pytest.mark.parametrize("text,whole", [
    ("SELECT 1", True),
    ("CREATE TABLE t (a,", False),
    ("CREATE TABLE t (a,\n b);", True),
    ("SELECT 'a(b'", True),
    ("SELECT 'it''s", False),
    ("SELECT 'a''b'", True),
    ('SELECT "x(" FROM t', True),
    ("SELECT [x(] FROM t", True),
    ("SELECT 1 -- (", True),
    ("SELECT /* (", False),
    ("SELECT /* ( */ 1", True),
    ("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1;", False),
    ("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END;", True),
])
def test_complete(text, whole):
    """Invariant: a line continues exactly when a parenthesis, quote, comment or trigger
    body is still open (sqlite3's check alone misses parentheses)."""
    assert complete(text) is whole


def test_table_layout():
    """rqlite's box: header between two rules, a rule after the rows, NULL blank."""
    assert table(["id", "name"], [[1, "fiona"], [22, None]]) == "\n".join([
        "+----+-------+", "| id | name  |", "+----+-------+",
        "| 1  | fiona |", "| 22 |       |", "+----+-------+"])
    assert table(["n"], []) == "+---+\n| n |\n+---+"
