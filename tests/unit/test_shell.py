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


def test_client_flags_refuse_bad_combinations_before_any_call(tmp_path):
    """Invariant: the commands' client flags (rqlite shell's -u -c -d -k -i) refuse a
    certificate without its key, a missing file and credentials without a colon with a
    message naming the flag; good ones give a context and a Basic header."""
    import argparse

    import pytest

    from raftsqlite.commands import clientargs
    ap = argparse.ArgumentParser()
    clientargs.add_flags(ap)
    for argv, flag in ((["-d", "x.crt"], "--client-key"), (["-c", str(tmp_path / "nope.pem")], "--ca-cert")):
        with pytest.raises(clientargs.ClientArgsError, match=flag):
            clientargs.ssl_context(ap.parse_args(argv))
    with pytest.raises(clientargs.ClientArgsError, match="USER:PASSWORD"):
        clientargs.auth_header("alice")
    a = ap.parse_args(["-i", "-u", "alice:pw"])
    assert clientargs.wants_tls(a) and clientargs.ssl_context(a).check_hostname is False
    assert clientargs.auth_header(a.user) == "Basic YWxpY2U6cHc="
