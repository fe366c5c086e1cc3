"""fsm.py fast path for runs of identical SQL: results and database contents identical to
the statement-at-a-time reference path (a differential test)."""
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from raftsqlite.codec import encode_command
from raftsqlite.codec.model import (BulkStatements, Command, CommandType, Entry, EntryType,
                                    Request, Statement)
from raftsqlite.db import Database
from raftsqlite.fsm import FSM

SCHEMA = [
    "CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER UNIQUE, v TEXT NOT NULL)",
    "CREATE TABLE log (n INTEGER)",
    "CREATE TRIGGER tr AFTER INSERT ON t WHEN new.k % 7 = 0 BEGIN "
    "INSERT INTO log VALUES (new.k); END",
    "CREATE TABLE rb (k INTEGER PRIMARY KEY ON CONFLICT ROLLBACK)",
    "CREATE TABLE p (id INTEGER PRIMARY KEY, k INTEGER UNIQUE, v TEXT NOT NULL)",
    "CREATE TABLE w (k INTEGER PRIMARY KEY, v) WITHOUT ROWID",
    "CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
    # one multi-row INSERT would differ from one statement per row here (db_shapes.InsertShape)
    "CREATE TABLE c (id INTEGER PRIMARY KEY, k INTEGER, n DEFAULT (changes()))",
    "CREATE TABLE ck (id INTEGER PRIMARY KEY, k INTEGER CHECK (k < 25))",
]

# Statement texts: the same text repeats with different parameters, which is what the
# fast path groups. Some fail on some rows (UNIQUE, NOT NULL, bad bindings), one returns
# rows (RETURNING), one changes nothing, one fires a trigger, one ends the transaction.
TEXTS = [
    ("INSERT INTO t(k, v) VALUES (?, ?)", 2),
    ("INSERT OR IGNORE INTO t(k, v) VALUES (?, ?)", 2),
    ("UPDATE t SET v = ? WHERE k = ?", 2),
    ("DELETE FROM t WHERE k = ?", 1),
    ("INSERT INTO t(k, v) VALUES (?, ?) RETURNING id", 2),
    ("INSERT INTO t(k, v) VALUES (:k, :v)", "named"),
    ("SELECT count(*) FROM t WHERE k > ?", 1),
    ("INSERT INTO rb VALUES (?)", 1),
    ("INSERT INTO _raftsqlite_meta VALUES (?, ?)", 2),
    # plain inserts into tables without triggers: results proved wholesale when possible
    ("INSERT INTO p(k, v) VALUES (?, ?)", 2),
    ("insert into \"p\" ( v ) values ( ? )", 1),
    ("INSERT INTO p(id, v) VALUES (?, ?)", 2),
    ("INSERT INTO w(k, v) VALUES (?, ?)", 2),
    ("INSERT INTO a(v) VALUES (?)", 1),
    ("DELETE FROM a WHERE id > ?", 1),
    ("INSERT INTO c(k) VALUES (?)", 1),
    ("INSERT INTO ck(k) VALUES (?)", 1),
    # sees the connection's last rowid: where each request's dedup row is inserted shows
    ("INSERT INTO c(k, n) VALUES (?, last_insert_rowid())", 1),
]

values = hs.one_of(hs.none(), hs.integers(0, 30), hs.sampled_from(["a", "b", ""]))


@hs.composite
def statement(draw, text=None):
    sql, arity = TEXTS[draw(hs.integers(0, len(TEXTS) - 1))] if text is None else text
    if arity == "named":
        params = {"k": draw(values), "v": draw(values)}
        if draw(hs.integers(0, 9)) == 0:
            params.pop("v")        # a missing name: a binding error for this row only
    else:
        params = [draw(values) for _ in range(arity)]
        if draw(hs.integers(0, 19)) == 0:
            params.append(1)        # wrong count: a binding error for this row only
    return Statement(sql, params)


@hs.composite
def request(draw):
    # mostly long runs of one text, sometimes mixed texts
    text = TEXTS[draw(hs.integers(0, len(TEXTS) - 1))]
    runs = draw(hs.lists(hs.tuples(hs.booleans(), hs.integers(1, 12)), min_size=1, max_size=4))
    stmts = []
    for same, n in runs:
        for _ in range(n):
            stmts.append(draw(statement(text if same else None)))
    return Request(stmts, transaction=draw(hs.booleans()))


@hs.composite
def bulk_request(draw):
    """The bulk form: one positional text, a matrix of rows of one width (sometimes the
    wrong width for the text, so every row fails to bind)."""
    sql, arity = draw(hs.sampled_from([t for t in TEXTS if t[1] != "named"]))
    width = arity + (1 if draw(hs.integers(0, 9)) == 0 else 0)
    rows = draw(hs.lists(hs.lists(values, min_size=width, max_size=width), min_size=1,
                         max_size=25))
    return Request(BulkStatements(sql, rows), transaction=draw(hs.booleans()))


def _entry(index, reqs):
    return Entry(1, index, EntryType.NORMAL,
                 encode_command(Command(CommandType.EXECUTE, reqs)))


def _strip(results):
    """Timings differ between runs; everything else must not."""
    out = []
    for r in results:
        if r is None:
            out.append(None)
            continue
        out.append({k: ([[{a: b for a, b in s.items() if a != "time"} for s in rq]
                          for rq in v] if k == "results" else v) for k, v in r.items()})
    return out


def _dump(db):
    rows = []
    for t in ("t", "log", "rb", "p", "w", "a", "c", "ck", "sqlite_sequence"):
        rows.append(db.read([(f"SELECT * FROM {t} ORDER BY 1", None)])[0]["values"])
    rows.append(db.read_internal("SELECT * FROM _raftsqlite_requests ORDER BY 1"))
    return rows


def _run(path, fast, batches, wanted=None):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    db = Database(path)
    try:
        fsm = FSM(db, fast_path=fast)
        fsm.results_wanted = wanted
        fsm.apply([_entry(1, [Request([Statement(s) for s in SCHEMA])])])
        out = []
        for i, reqs in enumerate(batches):
            out.append(_strip(fsm.apply([_entry(i + 2, reqs)])))
        return out, _dump(db), fsm.counters["txn_reruns"]
    finally:
        db.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(batches=hs.lists(hs.lists(request() | bulk_request(), min_size=1, max_size=3),
                       min_size=1, max_size=3))
def test_fast_path_matches_reference_path(tmp_path, batches, monkeypatch):
    """Invariant: for any mix of requests (runs of one SQL text, the bulk form, failing
    rows, binding errors, RETURNING, triggers, ON CONFLICT ROLLBACK, internal tables,
    transaction on or off) the fast path gives the same per-statement results and the
    same database as the statement-at-a-time path. Multi-row statements are cut at 4
    rows here, so a bulk request spans several of them."""
    import raftsqlite.db_shapes as dbmod
    monkeypatch.setattr(dbmod, "MULTI_ROWS", 4)
    slow = _run(str(tmp_path / "slow.db"), False, batches)
    fast = _run(str(tmp_path / "fast.db"), True, batches)
    assert fast == slow
    # a member whose results nobody reads (a follower) ends with the same database
    unread = _run(str(tmp_path / "unread.db"), True, batches, wanted=lambda index: False)
    assert unread[1] == slow[1] and unread[2] == slow[2]
    assert [len(r["results"]) for b in unread[0] for r in b if r] == \
        [len(r["results"]) for b in slow[0] for r in b if r]


def test_fast_path_bulk_results_exact(tmp_path):
    """Invariant: a 1000-row parameterized insert reports each row's own rowid and
    rows_affected, and a failing row in a transaction rolls the request back at it."""
    db = Database(str(tmp_path / "db.sqlite"))
    try:
        fsm = FSM(db)
        fsm.apply([_entry(1, [Request([Statement(SCHEMA[0])])])])
        rows = [Statement("INSERT INTO t(k, v) VALUES (?, ?)", [i, f"r{i}"]) for i in range(1000)]
        res = fsm.apply([_entry(2, [Request(rows, transaction=True)])])[0]["results"][0]
        assert [r["last_insert_id"] for r in res] == list(range(1, 1001))
        assert all(r["rows_affected"] == 1 for r in res)
        bad = rows[:10] + [Statement("INSERT INTO t(k, v) VALUES (?, ?)", [5, None])] + rows[:5]
        bad = [Statement(s.sql, [s.params[0] + 2000, s.params[1]]) for s in bad[:10]] + bad[10:]
        res = fsm.apply([_entry(3, [Request(bad, transaction=True)])])[0]["results"][0]
        assert len(res) == 11 and "NOT NULL" in res[-1]["error"]
        assert db.read([("SELECT count(*) FROM t", None)])[0]["values"] == [[1000]]
    finally:
        db.close()


def test_bulk_form_results_exact(tmp_path):
    """Invariant: the bulk form (one text, a parameter matrix) reports each row's own
    rowid and rows_affected, skips a failing row without the transaction flag, and stops
    and rolls back at it with the flag."""
    db = Database(str(tmp_path / "db.sqlite"))
    try:
        fsm = FSM(db)
        fsm.apply([_entry(1, [Request([Statement(SCHEMA[0])])])])
        sql = "INSERT INTO t(k, v) VALUES (?, ?)"
        rows = [[i, f"r{i}"] for i in range(1000)]
        res = fsm.apply([_entry(2, [Request(BulkStatements(sql, rows), True)])])
        res = res[0]["results"][0]
        assert [r["last_insert_id"] for r in res] == list(range(1, 1001))
        assert all(r["rows_affected"] == 1 for r in res)
        bad = [[2000 + i, "x"] for i in range(5)] + [[5, "dup"]] + [[3000 + i, "y"] for i in range(3)]
        res = fsm.apply([_entry(3, [Request(BulkStatements(sql, bad), False)])])
        res = res[0]["results"][0]
        assert len(res) == 9 and "UNIQUE" in res[5]["error"]
        assert [r.get("last_insert_id") for r in res[6:]] == [1006, 1007, 1008]
        res = fsm.apply([_entry(4, [Request(BulkStatements(sql, [[4000, "a"], [6, "b"], [4001, "c"]]),
                                            True)])])[0]["results"][0]
        assert len(res) == 2 and "UNIQUE" in res[1]["error"]
        assert db.read([("SELECT count(*) FROM t", None)])[0]["values"] == [[1008]]
    finally:
        db.close()


def test_sequential_inserts_proved_or_not_used(tmp_path):
    """Invariant: a plain bulk INSERT into a table without triggers gets its per-row
    rowids without a Python step per row (db.run_user_sequential), and they are exactly
    the rowids SQLite gave; where the proof cannot hold (explicit ids, a trigger, rows
    deleted below an AUTOINCREMENT counter) the results are still exact."""
    db = Database(str(tmp_path / "db.sqlite"))
    try:
        fsm = FSM(db)
        fsm.apply([_entry(1, [Request([Statement(s) for s in SCHEMA])])])
        seq = lambda: db.stats_counters["sequential_runs"]  # noqa: E731
        cases = [("INSERT INTO p(k, v) VALUES (?, ?)", [[i, f"v{i}"] for i in range(300)], 1),
                 ("INSERT INTO p(id, v) VALUES (?, ?)", [[10_000 - i, "x"] for i in range(5)], 0),
                 ("INSERT INTO t(k, v) VALUES (?, ?)", [[i, "x"] for i in range(20)], 0),
                 ("INSERT INTO a(v) VALUES (?)", [[i] for i in range(30)], 1)]
        idx = 2
        for sql, rows, proved in cases:
            before = seq()
            res = fsm.apply([_entry(idx, [Request(BulkStatements(sql, rows), True)])])
            idx += 1
            res = res[0]["results"][0]
            table = sql.split()[2].split("(")[0]
            got = db.read([(f"SELECT rowid FROM {table} ORDER BY rowid DESC LIMIT ?",
                            [len(rows)])])[0]["values"]
            assert [r["last_insert_id"] for r in res] == sorted(v[0] for v in got) \
                or sql.startswith("INSERT INTO p(id")
            assert all(r["rows_affected"] == 1 for r in res)
            assert seq() - before == proved, sql
        # rows deleted under an AUTOINCREMENT counter: rowids continue above them, exact
        fsm.apply([_entry(idx, [Request([Statement("DELETE FROM a WHERE id > 10")])])])
        res = fsm.apply([_entry(idx + 1, [Request(BulkStatements(
            "INSERT INTO a(v) VALUES (?)", [[i] for i in range(5)]))])])[0]["results"][0]
        assert [r["last_insert_id"] for r in res] == [31, 32, 33, 34, 35]
    finally:
        db.close()


@hs.composite
def single_requests(draw):
    """What group commit packs into one entry: many one-statement requests, mostly runs
    of one text, now and then one with a transaction or a request id, a refused one
    (guarded: see _refusing_hook) or another text. Routed calls carry ids (the
    router's), so many do here, some repeating within an entry."""
    text = TEXTS[draw(hs.integers(0, len(TEXTS) - 1))]
    out = []
    for _ in range(draw(hs.integers(1, 30))):
        st = draw(statement(text if draw(hs.integers(0, 4)) else None))
        kind = draw(hs.integers(0, 19))
        out.append(Request([st], transaction=kind == 0,
                           request_id=(b"r%d" % draw(hs.integers(0, 9))
                                       if kind == 1 or kind >= 13 else None),
                           guard=b"no" if kind == 2 else None))
    return out


def _refusing_hook(ctx, req, write=True):
    from raftsqlite.errors import Moved
    if req.guard == b"no":
        raise Moved("refused by the test hook")


@settings(max_examples=int(os.environ.get("FSM_EXAMPLES", "80")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batches=hs.lists(single_requests(), min_size=1, max_size=3))
def test_runs_of_single_statement_requests_match_reference_path(tmp_path, batches):
    """Invariant: an entry of many one-statement requests (group commit of single-row
    writes) applied with runs of one text through one cursor gives the same results per
    request, the same database and the same number of re-runs (ON CONFLICT ROLLBACK
    marks the same request) as applying each request alone on the reference path, with
    a request hook refusing some requests and request ids deduplicating others."""
    import raftsqlite.fsm as fsm_mod
    orig = fsm_mod.FSM.__init__

    def with_hook(self, *a, **kw):
        orig(self, *a, **kw)
        self.add_request_hook(_refusing_hook)
    fsm_mod.FSM.__init__ = with_hook
    try:
        slow = _run(str(tmp_path / "slow.db"), False, batches)
        fast = _run(str(tmp_path / "fast.db"), True, batches)
        unread = _run(str(tmp_path / "unread.db"), True, batches, wanted=lambda index: False)
    finally:
        fsm_mod.FSM.__init__ = orig
    assert fast == slow
    assert unread == slow


def test_runs_of_single_statement_requests_are_used(tmp_path):
    """Invariant: the one-cursor path is taken for a run of one text (so the test above
    exercises it): fewer traced statements than requests."""
    from raftsqlite import db as db_mod
    calls = []
    real = db_mod.Database.run_user

    def counting(self, sql, params=None, *rest):
        calls.append(sql)
        return real(self, sql, params, *rest)
    db_mod.Database.run_user = counting
    try:
        reqs = [Request([Statement("INSERT INTO p(k, v) VALUES (?, ?)", [i, "x"])])
                for i in range(20)]
        out = _run(str(tmp_path / "f.db"), True, [reqs])
    finally:
        db_mod.Database.run_user = real
    assert len([c for c in calls if c.startswith("INSERT INTO p")]) == 1
    assert [r[0]["last_insert_id"] for r in out[0][0][0]["results"]] == list(range(1, 21))


def test_multirow_inserts_exact_and_only_where_safe(tmp_path, monkeypatch):
    """Invariant: a plain bulk INSERT runs as multi-row statements (db_shapes.InsertShape) on the
    leader's proved path and on a follower's unreported path, with the same results and
    rows as one statement per row, also when a row fails mid-run; a table where one
    statement of many rows differs from many statements (a default calling changes(), a
    CHECK) never takes that form."""
    import raftsqlite.db_shapes as dbmod
    monkeypatch.setattr(dbmod, "MULTI_ROWS", 3)
    def ok_rows(o):
        return [[o + i, f"v{i}"] for i in range(10)]

    def bad_rows(o):    # the 5th row repeats a key of the first request
        return [[o + 100 + i, "x"] for i in range(4)] + [[3, "dup"]] + \
            [[o + 200 + i, "y"] for i in range(4)]

    cases = [("INSERT INTO p(k, v) VALUES (?, ?)", ok_rows, True),
             ("INSERT INTO p(k, v) VALUES (?, ?)", bad_rows, True),
             ("INSERT INTO c(k) VALUES (?)", lambda o: [[i] for i in range(10)], False),
             ("INSERT INTO ck(k) VALUES (?)", lambda o: [[i] for i in range(10)], False)]
    outs = {}
    for mode in ("slow", "leader", "follower"):
        db = Database(str(tmp_path / f"{mode}.db"))
        try:
            fsm = FSM(db, fast_path=mode != "slow")
            fsm.results_wanted = (lambda index: False) if mode == "follower" else None
            fsm.apply([_entry(1, [Request([Statement(s) for s in SCHEMA])])])
            res = []
            for k, (sql, rows, multi) in enumerate(cases):
                for txn in (False, True):
                    before = db.stats_counters["multirow_runs"]
                    r = fsm.apply([_entry(2 * k + txn + 2,
                                          [Request(BulkStatements(sql, rows(1000 * txn)),
                                                   txn)])])
                    res.append(_strip(r))
                    used = db.stats_counters["multirow_runs"] > before
                    if mode == "slow" or not multi:
                        assert not used, (mode, sql)
                    elif rows is ok_rows:
                        assert used, (mode, sql)
                    if rows is bad_rows and mode != "follower":   # a follower reports nothing
                        assert "UNIQUE" in str(r), (mode, r)
            outs[mode] = (res, _dump(db))
        finally:
            db.close()
    assert outs["leader"] == outs["slow"]
    assert outs["follower"][1] == outs["slow"][1]
    # table c's default saw one change before each row but the first (one per statement)
    assert [r[2] for r in outs["slow"][1][6]][1:10] == [1] * 9


def test_primed_apply_equals_decoded_apply(tmp_path):
    """Invariant: the leader applying its own bulk proposal from the Command it encoded
    (FSM.prime) ends with the same results and rows as decoding the entry; a command that
    would not round-trip exactly (not all bulk, a bytearray value) or another bytes object
    with the same content is decoded as usual."""
    sql = "INSERT INTO p(k, v) VALUES (?, ?)"
    cmds = [Command(CommandType.EXECUTE, [Request(BulkStatements(sql, [[i, f"v{i}"] for i in
                                                                       range(o, o + 50)]), t)])
            for o, t in ((0, True), (100, False), (5, True))]      # the third one fails
    cmds.append(Command(CommandType.EXECUTE, [Request([Statement(sql, [900, "s"])])]))
    cmds.append(Command(CommandType.EXECUTE, [Request(BulkStatements(
        sql, [[901, bytearray(b"b")], [902, "c"]]))]))
    cmds.append(Command(CommandType.NOOP))
    cmds.append(Command(CommandType.EXECUTE, [Request(BulkStatements(sql, [[903, "d"]]))],
                        [("clock", bytearray(8))]))
    outs = []
    for primed in (False, True):
        db = Database(str(tmp_path / f"{primed}.db"))
        try:
            fsm = FSM(db)
            fsm.apply([_entry(1, [Request([Statement(s) for s in SCHEMA])])])
            res = []
            for i, cmd in enumerate(cmds):
                data = encode_command(cmd)
                if primed:
                    fsm.prime(data, cmd)
                    fsm.prime(bytes(bytearray(data)), cmd)   # equal bytes, another object
                res.append(_strip(fsm.apply([Entry(1, i + 2, EntryType.NORMAL, data)])))
            outs.append((res, _dump(db), fsm.counters["primed_applies"]))
        finally:
            db.close()
    assert outs[0][:2] == outs[1][:2]
    assert "UNIQUE" in str(outs[1][0][2])
    assert (outs[0][2], outs[1][2]) == (0, 3)


def test_changes_after_a_multi_row_run_is_that_of_one_row(tmp_path, monkeypatch):
    """Invariant: after a bulk run done through multi-row statements, SQLite's
    ``changes()`` is 1, as after one statement per row, so a later statement reading it
    (here a ``DEFAULT (changes())`` column) stores the same value on both paths. Found by
    the differential test above (a failing row first, then a 3-row bulk insert)."""
    import raftsqlite.db_shapes as dbmod
    monkeypatch.setattr(dbmod, "MULTI_ROWS", 4)
    batches = [[Request([Statement("INSERT INTO t(k, v) VALUES (?, ?)", [None, None, 1])]),
                Request(BulkStatements('insert into "p" ( v ) values ( ? )', [[0], [0], [0]])),
                Request(BulkStatements("INSERT INTO c(k) VALUES (?)", [[None]]))],
               [Request(BulkStatements('insert into "p" ( v ) values ( ? )',
                                       [[str(i)] for i in range(11)])),
                Request([Statement("SELECT changes()")])]]
    slow = _run(str(tmp_path / "slow.db"), False, batches)
    fast = _run(str(tmp_path / "fast.db"), True, batches)
    assert fast == slow
    assert slow[1][6] == [[1, None, 1]]       # table c: n = changes() after one row
    # SELECT changes() alone: a request calling it starts from a reset connection (what
    # ran before it differs between members), so 0
    assert slow[0][1][0]["results"][1][0]["values"] == [[0]]


def test_runs_of_requests_with_ids_are_used(tmp_path):
    """Invariant: a coalesced routed call (one-statement requests of one text, each with
    its own id) runs through one cursor too, and records every id with its result: a
    later entry retrying them gets the first results and changes nothing."""
    from raftsqlite import db as db_mod
    calls = []
    real = db_mod.Database.run_user

    def counting(self, sql, params=None, *rest):
        calls.append(sql)
        return real(self, sql, params, *rest)
    reqs = [Request([Statement("INSERT INTO p(k, v) VALUES (?, ?)", [i, "x"])],
                    request_id=b"id%d" % i) for i in range(20)]
    db_mod.Database.run_user = counting
    try:
        out = _run(str(tmp_path / "f.db"), True, [reqs, reqs[5:9]])
    finally:
        db_mod.Database.run_user = real
    assert len([c for c in calls if c.startswith("INSERT INTO p")]) == 1
    first = [r[0] for r in out[0][0][0]["results"]]
    assert [r["last_insert_id"] for r in first] == list(range(1, 21))
    assert out[0][1][0]["results"] == out[0][0][0]["results"][5:9]
    assert len(out[1][3]) == 20 and len(out[1][-1]) == 20
