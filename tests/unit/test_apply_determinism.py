"""SQL functions that read the connection's history (changes(), total_changes(),
last_insert_rowid()) give the same values on every member: a member's writer has its own
past (what ran before, where its apply calls began, how long it has been open), so a
request that reads them starts from a reset connection (store.md)."""
import pytest

from raftsqlite.db_shapes import uses_connection_state
from raftsqlite.db import Database
from raftsqlite.fsm import FSM
from tests.unit.test_apply_budget import ex, make, req, rows


@pytest.mark.parametrize("sql,uses", [
    ("INSERT INTO t VALUES (last_insert_rowid())", True),
    ("select CHANGES ( )", True),
    ("SELECT total_changes()", True),
    ("INSERT INTO changes_log VALUES (1)", False),
    ("SELECT my_changes FROM t", False),
])
def test_uses_connection_state(sql, uses):
    """Only calls of the three functions count, in any case and spacing."""
    assert uses_connection_state(sql) is uses


def test_members_with_different_histories_compute_the_same_values(tmp_path):
    """Member a applies entries one per call after a quiet start; member b has a long
    history of other writes and applies everything in one call. Both store the same rows,
    for requests alone, with a request id, in group-committed runs, with parameters, and
    the values follow the request's own statements."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    history = [ex(2, req("CREATE TABLE u (z)"), req("CREATE TABLE log (k, v)")),
               ex(3, *[req(("INSERT INTO w VALUES (?)", [i])) for i in range(50)]),
               ex(4, req("CREATE TABLE w (z)")),
               ex(5, *[req(("INSERT INTO w VALUES (?)", [i])) for i in range(50)])]
    a.apply(history)            # one call, then goes on with the same connection
    for e in history:           # one call each, then restarts (a new connection)
        b.apply([e])
    b.db.close()
    b = FSM(Database(b.db.path))
    probe = ("INSERT INTO log VALUES (?, changes() * 1000000 + last_insert_rowid() * 1000 "
             "+ total_changes())")
    entries = [
        ex(6, req(("INSERT INTO log VALUES (?, last_insert_rowid())", ["first"]))),
        ex(7, req("INSERT INTO u VALUES (1), (2), (3)", (probe, ["after3"]))),
        ex(8, *[req((probe, [f"run{i}"])) for i in range(4)]),
        ex(9, req((probe, ["with-id"]), request_id=b"r-1"),
           req("UPDATE u SET z = z + 1 WHERE z < 3", (probe, ["after-update"]),
               transaction=True)),
    ]
    for e in entries:
        a.apply([e])
    b.apply(entries)
    got_a = rows(a, "SELECT k, v FROM log ORDER BY rowid")
    got_b = rows(b, "SELECT k, v FROM log ORDER BY rowid")
    assert got_a == got_b
    vals = dict(got_a)
    assert vals["first"] == 0
    # 3 rows by the previous statement, its last rowid, 3 changes so far in the request
    assert vals["after3"] == 3 * 1000000 + rows(a, "SELECT max(rowid) FROM u")[0][0] * 1000 + 3
    assert {vals[f"run{i}"] for i in range(4)} == {0}
    assert vals["with-id"] == 0


def test_fast_and_reference_paths_agree(tmp_path):
    """The fast paths (runs, bulk) and the statement-at-a-time reference path give the
    same values for these functions."""
    a, b = make(tmp_path, "fast"), make(tmp_path, "ref")
    b.fast_path = False
    entries = [ex(2, req("CREATE TABLE log (k, v)")),
               ex(3, *[req(("INSERT INTO log VALUES (?, last_insert_rowid() + changes())",
                            [i])) for i in range(5)]),
               ex(4, req(*[("INSERT INTO log VALUES (?, total_changes())", [f"m{i}"])
                           for i in range(5)]))]
    a.apply(entries)
    b.apply(entries)
    assert rows(a, "SELECT k, v FROM log ORDER BY rowid") == \
        rows(b, "SELECT k, v FROM log ORDER BY rowid")
    assert [v for _, v in rows(a, "SELECT k, v FROM log ORDER BY rowid")][5:] == \
        [0, 1, 2, 3, 4]


def test_temp_objects_do_not_outlive_their_request(tmp_path):
    """TEMP tables and triggers work inside the request that makes them and are gone
    after it, on every member alike: a later request cannot see them (as a restarted
    member could not), and a TEMP trigger fires for nothing after its request."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    entries = [
        ex(2, req("CREATE TABLE m (x)", "CREATE TABLE audit (x)")),
        ex(3, req("CREATE TEMP TABLE stage (x)", "INSERT INTO stage VALUES (1), (2)",
                  "CREATE TEMPORARY TRIGGER tr AFTER INSERT ON m BEGIN "
                  "INSERT INTO audit VALUES (new.x); END",
                  "INSERT INTO m SELECT x FROM stage")),
        ex(4, req("INSERT INTO m SELECT x FROM stage"), req("INSERT INTO m VALUES (3)")),
    ]
    a.apply(entries)
    for e in entries:
        b.apply([e])
        b.db.close()
        b = FSM(Database(b.db.path))      # a restart after every entry
    for f in (a, b):
        assert rows(f, "SELECT x FROM m ORDER BY x") == [[1], [2], [3]]
        assert rows(f, "SELECT x FROM audit ORDER BY x") == [[1], [2]]
    out = a.apply([ex(5, req("SELECT * FROM stage"))])[0]["results"][0][0]
    assert "no such table" in out["error"]


def test_schema_that_calls_them_is_reset_at_every_entry(tmp_path):
    """A column DEFAULT (changes()) (or a trigger calling them) is not in the request's
    text: when the schema calls them, every entry starts from a reset connection, so
    members that split the log into apply calls differently, or restarted, agree."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    entries = [ex(2, req("CREATE TABLE c (k, n DEFAULT (changes() * 100 + last_insert_rowid()))")),
               ex(3, req("INSERT INTO t VALUES (1), (2)")),
               ex(4, req(("INSERT INTO c(k) VALUES (?)", [1]))),
               ex(5, req("INSERT INTO t VALUES (3)"), req(("INSERT INTO c(k) VALUES (?)", [2]))),
               ex(6, req(("INSERT INTO c(k) VALUES (?)", [3])))]
    a.apply(entries)
    for e in entries:
        b.apply([e])
        b.db.close()
        b = FSM(Database(b.db.path))
    got = rows(a, "SELECT k, n FROM c ORDER BY k")
    assert got == rows(b, "SELECT k, n FROM c ORDER BY k")
    # entry 5: changes() is the previous request's of its own entry (one row);
    # last_insert_rowid() starts at 0 in every request (Database.budget_begin)
    assert got == [[1, 0], [2, 100], [3, 0]]


def test_last_insert_id_of_a_delete_is_the_same_on_every_member(tmp_path):
    """A DELETE inserts nothing: its result's last_insert_id (stored with its request id
    in the replicated dedup table) is 0, not whatever the member's writer ran before."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    entries = [ex(2, req("INSERT INTO t VALUES (1), (2), (3)")),
               ex(3, req("DELETE FROM t WHERE a = 2", request_id=b"del-1"))]
    out_a = a.apply(entries)
    b.apply(entries[:1])
    b.db.close()
    b = FSM(Database(b.db.path))
    out_b = b.apply(entries[1:])
    assert out_a[1]["results"][0][0]["last_insert_id"] == 0
    assert out_b[0]["results"][0][0]["last_insert_id"] == 0
    assert rows(a, "SELECT request_id, result FROM _raftsqlite_requests") == \
        rows(b, "SELECT request_id, result FROM _raftsqlite_requests")
