"""Rowids, the load budget and other ways one log could be applied differently
(docs/design/store.md, "Determinism").

Once a rowid table holds rowid 9223372036854775807, SQLite gives a new row without a
rowid a random one from its own process-wide generator, which no member controls: the
same log would leave different rowids on different members. A request that leaves that
rowid in a table it wrote is refused, the same way on every member."""
import pytest

from raftsqlite.db import Database
from raftsqlite.fsm import FSM
from tests.unit.test_apply_budget import ex, make, req, rows

MAX = (1 << 63) - 1


def _both(tmp_path, entries, split=True):
    """Apply ``entries`` on two members with different histories: a applies them one per
    call after consuming SQLite's generator; b in one call after a restart."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    a.apply([ex(2, req("SELECT randomblob(64)"))])
    b.apply([ex(2, req("SELECT 1"))])
    b.db.close()
    b = FSM(Database(b.db.path))
    for e in entries:
        a.apply([e])
    b.apply(entries)
    return a, b


def _dump(f):
    return list(f.db.iterdump())


def test_random_rowids_never_make_members_differ(tmp_path):
    """Invariant: the same log gives the same rows and rowids on every member, also when a
    table reaches the largest rowid (requests alone, group-committed runs, bulk rows,
    inserts made by a trigger)."""
    entries = [
        ex(3, req("CREATE TABLE k (id INTEGER PRIMARY KEY, v)"),
           req("CREATE TABLE plain (v)"), req("CREATE TABLE side (v)"),
           req("CREATE TRIGGER tr AFTER INSERT ON k BEGIN INSERT INTO side VALUES "
               "(new.v); END")),
        ex(4, req(("INSERT INTO k VALUES (?, 'top')", [MAX]))),
        ex(5, *[req(("INSERT INTO k(v) VALUES (?)", [f"s{i}"])) for i in range(4)]),
        ex(6, req(*[("INSERT INTO k(v) VALUES (?)", [f"b{i}"]) for i in range(4)])),
        ex(7, req(f"INSERT INTO plain(rowid, v) VALUES ({MAX - 1}, 'x')"),
           req("INSERT INTO plain(v) VALUES ('reaches-max')"),
           req("INSERT INTO plain(v) VALUES ('random')")),
        ex(8, req(f"INSERT INTO side(rowid, v) VALUES ({MAX}, 'top')"),
           req("INSERT INTO k(id, v) VALUES (5, 'fires-trigger')")),
    ]
    a, b = _both(tmp_path, entries)
    q = "SELECT rowid, * FROM {} ORDER BY rowid"
    for t in ("k", "plain", "side"):
        assert rows(a, q.format(t)) == rows(b, q.format(t)), t
    assert _dump(a) == _dump(b)


def _errors(res):
    return [r.get("error") for rs in res["results"] for r in rs]


def test_the_request_that_writes_the_largest_rowid_is_refused_alone(tmp_path):
    """Invariant: only the request that would leave rowid 2^63-1 is refused (with a clear
    error, nothing of it kept); its neighbours in a group-committed run, and in the same
    entry, are applied; a later insert into the table works as usual."""
    f = make(tmp_path, "one")
    f.apply([ex(2, req("CREATE TABLE k (id INTEGER PRIMARY KEY, v)"))])
    text = "INSERT INTO k(id, v) VALUES (?, ?)"
    res = f.apply([ex(3, *[req((text, p)) for p in
                           ([None, "s0"], [MAX, "s1"], [None, "s2"], [None, "s3"])])])[0]
    errs = _errors(res)
    assert errs[0] is None and errs[2] is None and errs[3] is None
    assert errs[1].startswith("request not applied") and "9223372036854775807" in errs[1]
    assert rows(f, "SELECT id, v FROM k ORDER BY id") == [[1, "s0"], [2, "s2"], [3, "s3"]]
    # MAX - 1 is allowed; the next row without a rowid would take MAX: refused too
    res = f.apply([ex(4, req((text, [MAX - 1, "near"])), req((text, [None, "next"])),
                      req((text, [10, "ten"]), "SELECT 1"))])[0]
    assert [e is None for e in _errors(res)] == [True, False, True, True]
    assert rows(f, "SELECT v FROM k ORDER BY id") == [["s0"], ["s2"], ["s3"], ["ten"],
                                                      ["near"]]
    assert f.counters["rowid_refused"] == 2
    f.db.close()


def test_writes_through_triggers_and_updates_are_checked(tmp_path):
    """Invariant: a table already holding the largest rowid (data from before this check
    existed, or loaded) refuses new rows without a rowid whoever inserts them, a trigger
    included; an UPDATE moving a row to that rowid is refused; so are an AUTOINCREMENT
    row or counter at it (every later insert into that table would fail with SQLITE_FULL,
    which a member cannot tell from a full disk)."""
    entries = [
        ex(3, req("CREATE TABLE k (id INTEGER PRIMARY KEY, v)"), req("CREATE TABLE side (v)"),
           req("CREATE TABLE inc (id INTEGER PRIMARY KEY AUTOINCREMENT, v)"),
           req("CREATE TRIGGER tr AFTER INSERT ON k BEGIN INSERT INTO side VALUES "
               "(new.v); END")),
    ]
    a, b = _both(tmp_path, entries)
    for f in (a, b):        # as if written before the check existed
        f.db.internal(f"INSERT INTO side(rowid, v) VALUES ({MAX}, 'old')")
    more = [ex(4, req("INSERT INTO k(v) VALUES ('fires')"), req("INSERT INTO side VALUES (1)"),
               req("INSERT INTO k(id, v) VALUES (7, 'plain')"),
               req(f"INSERT INTO inc(id, v) VALUES ({MAX}, 'top')"),
               req("INSERT INTO inc(v) VALUES ('one')"),
               req(f"UPDATE sqlite_sequence SET seq = {MAX} WHERE name = 'inc'"),
               req(f"UPDATE sqlite_sequence SET seq = {MAX - 5} WHERE name = 'inc'"),
               req("INSERT INTO inc(v) VALUES ('two')")),
            ex(5, req("DROP TRIGGER tr"), req("INSERT INTO k(id, v) VALUES (7, 'plain')"),
               req(f"UPDATE k SET id = {MAX} WHERE id = 7"))]
    ra = [a.apply([e])[0] for e in more]
    rb = b.apply(more)
    assert ra == rb or [_errors(r) for r in ra] == [_errors(r) for r in rb]
    e4, e5 = _errors(ra[0]), _errors(ra[1])
    assert e4[0].startswith("request not applied") and "side" in e4[0]
    assert e4[1].startswith("request not applied")
    assert e4[2].startswith("request not applied")   # its trigger writes side
    assert e4[3].startswith("request not applied") and "inc" in e4[3]
    assert e4[4] is None
    assert e4[5].startswith("request not applied") and "AUTOINCREMENT counter" in e4[5]
    assert e4[6] is None and e4[7] is None
    assert rows(a, "SELECT id, v FROM inc ORDER BY id") == [[1, "one"], [MAX - 4, "two"]]
    assert e5[:2] == [None, None] and e5[2].startswith("request not applied")
    assert _dump(a) == _dump(b)
    assert rows(a, "SELECT id, v FROM k") == [[7, "plain"]]


# ---- /db/load's budget -----------------------------------------------------------------

def _load_entries(start, stmts, steps, load_id="l1", chunk=3):
    import orjson
    from raftsqlite import fsm_load
    from raftsqlite.codec import encode_command
    from raftsqlite.codec.model import Command, CommandType, Entry, EntryType, Request, \
        Statement
    from raftsqlite.fsm import clock_op, load_steps_op

    def sys_entry(index, ops):
        return Entry(1, index, EntryType.NORMAL,
                     encode_command(Command(CommandType.SYSTEM, ops=ops)))
    out, idx = [], start
    parts = [stmts[i:i + chunk] for i in range(0, len(stmts), chunk)]
    for seq, part in enumerate(parts):
        data = encode_command(Command(CommandType.EXECUTE,
                                      [Request([Statement(s) for s in part])]))
        out.append(sys_entry(idx, [("load.stage", fsm_load.stage_args(load_id, seq, data))]))
        idx += 1
    args = orjson.dumps({"id": load_id, "chunks": len(parts), "drop": False})
    ops = [clock_op(Database.clock_now_ms()), ("load.commit", args), ("load.discard", args)]
    if steps is not None:
        ops.append(load_steps_op(steps))
    out.append(sys_entry(idx, ops))
    return out


RUNAWAY_LOAD = ("INSERT INTO big WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 "
                "FROM c) SELECT x FROM c;")


@pytest.mark.timeout(60)      # without the budget the load never ends
def test_load_statement_past_the_budget_undoes_the_whole_load(tmp_path):
    """Invariant: a load statement that never ends stops at the entry's budget on every
    member alike (members with different histories), the load is undone whole, and its
    result says why with code over_budget. Without the op (older entries) nothing
    changes for loads that end."""
    dump = ["CREATE TABLE big (x);", "INSERT INTO big VALUES (1);", "CREATE TABLE other (y);",
            RUNAWAY_LOAD, "INSERT INTO other VALUES (2);"]
    entries = _load_entries(3, dump, steps=20_000)
    a, b = _both(tmp_path, entries)
    for f in (a, b):
        res = rows(f, "SELECT name FROM sqlite_schema WHERE name IN ('big', 'other')")
        assert res == []
    assert _dump(a) == _dump(b)
    # the commit's result, replayed on a fresh member
    c = make(tmp_path, "c")
    out = c.apply(entries)[-1]["results"][0]
    assert out["code"] == "over_budget" and "statement 4" in out["error"]
    assert "whole load was undone" in out["error"]
    assert c.counters["over_budget"] == 1
    # a plain dump of many rows loads within the same budget (per statement; the whole
    # load runs several times the budget's steps)
    ok = ["CREATE TABLE big (x);"] + [f"INSERT INTO big VALUES ({i});" for i in range(3000)]
    out = c.apply(_load_entries(30, ok, steps=20_000, load_id="l2", chunk=500))[-1]
    assert out["results"][0] == {"statements": 3001}
    assert rows(c, "SELECT count(*) FROM big") == [[3000]]


# ---- the audit: other values that could differ between members ------------------------

def test_time_and_random_values_in_the_schema_are_the_entrys(tmp_path):
    """Invariant: column defaults and trigger bodies that read the clock (every form:
    CURRENT_TIMESTAMP, julianday('now'), strftime('%f','now'), unixepoch('now','subsec'))
    or call random()/randomblob() store the same values on members that apply the entry
    at different real times, with different histories of SQLite's own generator."""
    import time
    ddl = [req("CREATE TABLE ev (k, ts DEFAULT CURRENT_TIMESTAMP, "
               "jd DEFAULT (julianday('now')), f DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')), "
               "ue DEFAULT (unixepoch('now','subsec')), rb DEFAULT (randomblob(8)), "
               "ri DEFAULT (random()))"),
           req("CREATE TABLE log (k, at, r)"),
           req("CREATE TRIGGER evlog AFTER INSERT ON ev BEGIN INSERT INTO log VALUES "
               "(new.k, strftime('%f','now') || julianday('now'), hex(randomblob(4)) || "
               "random()); END")]
    first = [ex(3, *ddl)]
    writes = [ex(4, *[req(("INSERT INTO ev(k) VALUES (?)", [i])) for i in range(3)]),
              ex(5, req("INSERT INTO ev(k) VALUES ('x'), ('y')"))]
    a, b = _both(tmp_path, first)
    for e in writes:
        a.apply([e])
    time.sleep(0.02)        # b applies later by the wall clock
    b.apply(writes)
    q = "SELECT * FROM ev ORDER BY rowid"
    assert rows(a, q) == rows(b, q)
    assert rows(a, "SELECT * FROM log ORDER BY rowid") == rows(b, "SELECT * FROM log ORDER BY rowid")
    # and they are real values: distinct random blobs, a timestamp with milliseconds
    got = rows(a, q)
    assert len({r[5] for r in got}) == len(got) and "." in got[0][3]


def test_analyze_goes_through_the_log_with_the_same_statistics(tmp_path):
    """Invariant: a plain ANALYZE applied from the log leaves identical sqlite_stat1 and
    sqlite_stat4 rows on every member (the query planner, which picks rows for an
    INSERT ... SELECT ... LIMIT without a total order, reads only those and the schema),
    so such a statement picks the same rows everywhere."""
    entries = [
        ex(3, req("CREATE TABLE s (a, b, c)"), req("CREATE INDEX sa ON s(a)"),
           req("CREATE INDEX sb ON s(b, c)"), req("CREATE TABLE pick (a, b, c)")),
        ex(4, req(*[("INSERT INTO s VALUES (?, ?, ?)", [i % 7, i % 13, i])
                    for i in range(400)])),
        ex(5, req("ANALYZE")),
        ex(6, req("INSERT INTO pick SELECT * FROM s WHERE a = 3 OR b = 5 LIMIT 10")),
    ]
    a, b = _both(tmp_path, entries)
    for t in ("sqlite_stat1", "sqlite_stat4"):
        q = f"SELECT * FROM {t} ORDER BY 1, 2, 3"
        assert rows(a, q) == rows(b, q) and rows(a, q), t
    assert rows(a, "SELECT * FROM pick") == rows(b, "SELECT * FROM pick")
    # a plain ANALYZE works (it used to be refused: it visits the node's own tables,
    # which it now skips; their rowids differ between members)
    assert rows(a, "SELECT count(*) FROM sqlite_stat1 WHERE tbl LIKE '\\_raftsqlite%' "
                   "ESCAPE '\\'") == [[0]]
    assert rows(a, "SELECT count(*) FROM sqlite_stat1") == [[2]]


def test_the_check_without_a_query_decides_as_the_exact_one(tmp_path):
    """Invariant: the shortcut of the check (an upper bound of a table's largest rowid,
    kept across plain inserts) never decides differently from querying every time: a
    member that keeps its bounds across entries, rollbacks, loads and refusals, one that
    restarts every few entries (no bounds), and one that always queries give the same
    results and databases, near the largest rowid."""
    import random
    rnd = random.Random(7)
    auto = "INSERT INTO u(v) VALUES (?)"
    entries = [ex(3, req("CREATE TABLE u (v UNIQUE)")), ex(4, req((auto, ["first"]))),
               ex(5, req((auto, ["second"])))]
    # a load writes near the top behind the bounds' back: the next inserts reach it
    entries += _load_entries(6, [f"INSERT INTO u(rowid, v) VALUES ({MAX - 2}, 'ld');"],
                             steps=None, load_id="l0")
    entries += [ex(8, req((auto, ["below-top"]))), ex(9, req((auto, ["at-top"])))]
    # an exact check inside a batch that is rolled back must not leave its bound behind
    entries += [ex(10, req("DELETE FROM u WHERE rowid > 100")),
                ex(11, req((auto, ["low"])), req(("INSERT INTO u(rowid, v) VALUES (?, ?)",
                                                  [MAX - 3, "hi"]))),
                ex(12, req("DELETE FROM u WHERE rowid > 100"), req("UPDATE u SET v = v"),
                   req("INSERT OR ROLLBACK INTO u(v) VALUES ('low')")),
                ex(13, *[req((auto, [f"after-rb{i}"])) for i in range(3)])]
    # AUTOINCREMENT: the next rowid follows the largest ever, not the largest left
    ai = "INSERT INTO ai(v) VALUES (?)"
    entries += [ex(14, req("CREATE TABLE ai (id INTEGER PRIMARY KEY AUTOINCREMENT, v)"),
                   req((ai, ["a0"]))),
                ex(15, req((ai, ["a1"])), req(f"INSERT INTO ai(id, v) VALUES ({MAX - 2}, 'x')"),
                   req(f"DELETE FROM ai WHERE id = {MAX - 2}")),
                # (not a third insert in the run: past the counter's end SQLite answers
                # SQLITE_FULL, which the apply takes for a full disk; see the report)
                ex(16, *[req((ai, [f"a{i}"])) for i in range(2, 4)]),
                ex(17, req((ai, ["a4"])))]
    # a run of one text naming the rowid: only its first row's rowid is reported
    named = "INSERT INTO u(rowid, v) VALUES (?, ?)"
    entries += [ex(18, req((auto, ["warm"]))),
                ex(19, *[req((named, p)) for p in ([5000, "p0"], [MAX, "p1"], [6000, "p2"],
                                                   [MAX - 1, "p3"])]),
                ex(20, req((auto, ["after-named-run"]))),
                ex(21, req("DELETE FROM u WHERE rowid > 100"))]
    idx, n = 22, 0
    for _ in range(70):
        kind = rnd.choice(["auto", "auto", "near", "delete", "rollback", "load", "run",
                           "nearrun"])
        n += 1
        if kind == "auto":
            e = [ex(idx, req((auto, [f"a{n}"])))]
        elif kind == "run":
            e = [ex(idx, *[req((auto, [f"r{n}.{i}"])) for i in range(3)])]
        elif kind == "near":
            e = [ex(idx, req(("INSERT INTO u(rowid, v) VALUES (?, ?)",
                              [MAX - rnd.choice([1, 1, 2, 3, 40]), f"n{n}"])))]
        elif kind == "nearrun":
            e = [ex(idx, *[req(("INSERT INTO u(rowid, v) VALUES (?, ?)",
                                [MAX - rnd.choice([1, 2, 3, 50]), f"m{n}.{i}"]))
                           for i in range(3)])]
        elif kind == "delete":
            e = [ex(idx, req("DELETE FROM u WHERE rowid = (SELECT max(rowid) FROM u)"))]
        elif kind == "rollback":
            e = [ex(idx, req((auto, [f"x{n}"])), req("DELETE FROM u WHERE rowid > 100"),
                    req("UPDATE u SET v = v"), req((auto, [f"y{n}"])),
                    req("INSERT OR ROLLBACK INTO u(v) VALUES ('dup'), ('dup')"),
                    req((auto, [f"z{n}"])))]
        else:
            e = _load_entries(idx, [f"INSERT INTO u(rowid, v) VALUES ({MAX - 2}, 'l{n}');"],
                              steps=None, load_id=f"l{n}")
        entries.extend(e)
        idx += len(e)
    keep, fresh, exact = make(tmp_path, "keep"), make(tmp_path, "fresh"), \
        make(tmp_path, "exact")
    exact.db._single_row_insert = lambda sql, key: None     # always the query
    out = {"keep": [], "fresh": [], "exact": []}
    for i in range(0, len(entries), 5):
        part = entries[i:i + 5]
        out["keep"].extend(keep.apply(part))
        out["exact"].extend(exact.apply(part))
        out["fresh"].extend(fresh.apply(part))
        fresh.db.close()
        fresh = FSM(Database(fresh.db.path))

    def strip(res):
        return [[{k: v for k, v in r.items() if k != "time"} for r in rs]
                for e in res if e for rs in e.get("results", [])
                if isinstance(rs, list)]
    assert strip(out["keep"]) == strip(out["exact"]) == strip(out["fresh"])
    assert _dump(keep) == _dump(exact) == _dump(fresh)
    assert keep.counters["rowid_refused"] > 3
    assert keep.db.stats_counters["rowid_bound_hits"] > 20, "the shortcut ran"
    assert exact.db.stats_counters["rowid_bound_hits"] == 0
    assert rows(keep, f"SELECT count(*) FROM u WHERE rowid = {MAX}") == [[0]]
    assert rows(keep, "SELECT max(id) FROM ai") == [[MAX - 1]]


def test_load_bringing_the_largest_rowid_is_refused(tmp_path):
    """Invariant: a load that would leave rowid 2^63-1 in a table (or an AUTOINCREMENT
    counter at it) is undone with a clear error, like a request that would."""
    f = make(tmp_path, "ld")
    for i, stmts in enumerate((["CREATE TABLE big (x);",
                                f"INSERT INTO big(rowid, x) VALUES ({MAX}, 1);"],
                               ["CREATE TABLE ai (id INTEGER PRIMARY KEY AUTOINCREMENT, v);",
                                "INSERT INTO ai(v) VALUES (1);",
                                f"UPDATE sqlite_sequence SET seq = {MAX} WHERE name = 'ai';"])):
        out = f.apply(_load_entries(3 + 10 * i, stmts, steps=None, load_id=f"m{i}"))[-1]
        err = out["results"][0]["error"]
        assert "9223372036854775807" in err and "nothing was changed" in err, err
    assert rows(f, "SELECT name FROM sqlite_schema WHERE name IN ('big', 'ai')") == []
    f.db.close()


def test_virtual_tables_are_checked_through_their_shadow_tables(tmp_path):
    """Invariant: FTS5 and R-Tree keep rows in rowid tables of their own (shadow tables)
    that pick rowids the same way: a write leaving 2^63-1 there is refused, on members
    with different histories alike, and later rows get the same rowids everywhere."""
    entries = [
        ex(3, req("CREATE VIRTUAL TABLE ft USING fts5(x)"),
           req("CREATE VIRTUAL TABLE rt USING rtree(id, a, b)")),
        ex(4, req(("INSERT INTO ft(rowid, x) VALUES (?, 'top')", [MAX])),
           req(("INSERT INTO rt(id, a, b) VALUES (?, 1, 2)", [MAX])),
           req("INSERT INTO ft(x) VALUES ('one')"), req("INSERT INTO rt(a, b) VALUES (3, 4)")),
        ex(5, *[req(("INSERT INTO ft(x) VALUES (?)", [f"w{i}"])) for i in range(3)],
           *[req(("INSERT INTO rt(a, b) VALUES (?, ?)", [i, i + 1])) for i in range(3)]),
    ]
    a, b = _both(tmp_path, entries)
    for q in ("SELECT rowid, x FROM ft ORDER BY rowid", "SELECT * FROM rt ORDER BY id"):
        assert rows(a, q) == rows(b, q)
    assert rows(a, "SELECT rowid FROM ft ORDER BY rowid") == [[1], [2], [3], [4]]
    assert rows(a, "SELECT max(id) FROM rt") == [[4]]
    assert a.counters["rowid_refused"] == 2


def test_autoincrement_past_its_end_inside_one_request_is_an_answer(tmp_path):
    """Invariant (wanted): a request that drives an AUTOINCREMENT table past 2^63-1 within
    itself gets an error result, the same on every member, and the group goes on."""
    f = make(tmp_path, "ai")
    f.apply([ex(2, req("CREATE TABLE ai (id INTEGER PRIMARY KEY AUTOINCREMENT, v)"))])
    res = f.apply([ex(3, req(("INSERT INTO ai(id, v) VALUES (?, 'a')", [MAX - 1]),
                             "INSERT INTO ai(v) VALUES ('b')", "INSERT INTO ai(v) VALUES ('c')"))])
    assert "error" in res[0]["results"][0][-1]
    assert f.apply([ex(4, req("INSERT INTO t VALUES (1)"))])[0]["results"][0][0].get("error") \
        is None
