"""VACUUM through the log (fsm_vacuum.py): applied alone, outside the apply transaction,
with the same outcome on every member however the log is cut into apply calls."""
from raftsqlite.codec import encode_command
from raftsqlite.codec.model import Command, CommandType, Entry, EntryType
from raftsqlite.db import Database
from raftsqlite.fsm import FSM, clock_op, steps_op
from raftsqlite.fsm_vacuum import is_vacuum_sql
from tests.unit.test_apply_budget import ex, make, req, rows


def test_vacuum_texts():
    """Only a bare VACUUM (optionally of a schema) is one."""
    for sql in ("VACUUM", "vacuum;", "  VACUUM main ", 'VACUUM "main"'):
        assert is_vacuum_sql(sql)
    for sql in ("VACUUM INTO 'x.db'", "SELECT 'VACUUM'", "VACUUM; DELETE FROM t"):
        assert not is_vacuum_sql(sql)


def test_vacuum_entry_applies_between_others_and_members_agree(tmp_path):
    """Entries before a VACUUM entry are committed first, VACUUM runs (it answers no
    error, the file gives pages back), the entries after it apply too, and the applied
    index is the last one. A member applying every entry in its own call and restarting
    in between ends with the same rows and rowids (VACUUM renumbers a table without an
    INTEGER PRIMARY KEY, identically on both)."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    entries = [ex(2, req("CREATE TABLE big (v)")),
               ex(3, req("INSERT INTO big SELECT zeroblob(2000) FROM (WITH RECURSIVE "
                         "c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 500) "
                         "SELECT x FROM c)")),
               ex(4, req("DELETE FROM big WHERE rowid % 5 != 0")),
               ex(5, req("VACUUM"), steps=1_000_000_000),
               ex(6, req("INSERT INTO big VALUES (1)"))]
    res = a.apply(entries[:3])
    pages = rows(a, "PRAGMA page_count")[0][0]
    res += a.apply(entries[3:])
    assert "error" not in res[3]["results"][0][0], res[3]
    assert rows(a, "PRAGMA page_count")[0][0] < pages / 2
    assert a.applied_index() == 6
    for e in entries:
        b.apply([e])
        b.db.close()
        b = FSM(Database(b.db.path))
    assert b.applied_index() == 6
    got = rows(a, "SELECT rowid, length(v) FROM big ORDER BY rowid")
    assert got == rows(b, "SELECT rowid, length(v) FROM big ORDER BY rowid")
    assert [r[0] for r in got] == list(range(1, 102))     # renumbered densely
    assert a.counters["vacuums"] == 1


def test_vacuum_with_a_request_id_is_answered_once(tmp_path):
    """A retried VACUUM with the same request id answers the recorded result."""
    f = make(tmp_path, "f")
    e = Entry(1, 2, EntryType.NORMAL, encode_command(Command(
        CommandType.EXECUTE, [req("VACUUM", request_id=b"vac-1")],
        [clock_op(Database.clock_now_ms()), steps_op(10 ** 9)])))
    f.apply([e])
    again = Entry(1, 3, EntryType.NORMAL, e.data)
    f.apply([again])
    assert f.counters["vacuums"] == 1 and f.counters["dedup_hits"] == 1
    assert f.applied_index() == 3


def test_vacuum_is_never_applied_inline(tmp_path):
    """apply_bounded (the event loop's apply) hands a batch holding a VACUUM to the apply
    thread untouched: a VACUUM commits on its own and could not be undone."""
    f = make(tmp_path, "f")
    assert f.apply_bounded([ex(2, req("INSERT INTO t VALUES (1)")), ex(3, req("VACUUM"))],
                           1.0) is None
    assert f.applied_index() == 1 and rows(f, "SELECT count(*) FROM t") == [[0]]


def test_vacuum_among_other_requests_fails_alike(tmp_path):
    """An entry holding VACUUM beside other requests (not proposed by this version) is
    applied as before: VACUUM fails inside the transaction, the others apply."""
    f = make(tmp_path, "f")
    out = f.apply([ex(2, req("VACUUM"), req("INSERT INTO t VALUES (1)"))])[0]["results"]
    assert "transaction" in out[0][0]["error"] and out[1][0]["rows_affected"] == 1
