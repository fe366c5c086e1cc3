"""fsm.py: entries applied once, in order, with per-request isolation and dedup."""
import pytest

from raftsqlite.codec import encode_command
from raftsqlite.codec.model import (Command, CommandType, Entry, EntryType, Request,
                                    SnapshotMeta, Statement)
from raftsqlite.db import Database
from raftsqlite.fsm import FSM


@pytest.fixture
def fsm(tmp_path):
    db = Database(str(tmp_path / "db.sqlite"))
    f = FSM(db, dedup_keep=5)
    yield f
    db.close()


def ex(index, *requests, term=1):
    return Entry(term, index, EntryType.NORMAL, encode_command(Command(CommandType.EXECUTE, requests)))


def req(*sqls, transaction=False, request_id=None):
    sts = [Statement(s) if isinstance(s, str) else Statement(*s) for s in sqls]
    return Request(sts, transaction=transaction, request_id=request_id)


def count(fsm, table="t"):
    return fsm.db.read([(f"SELECT count(*) FROM {table}", None)])[0]["values"][0][0]


def test_apply_returns_one_result_per_entry_and_stores_index(fsm):
    """Results line up with entries; the applied index/term are stored with the data."""
    entries = [Entry(1, 1), ex(2, req("CREATE TABLE t (a)")),
               ex(3, req(("INSERT INTO t VALUES (?)", [1])), req(("INSERT INTO t VALUES (?)", [2])))]
    res = fsm.apply(entries)
    assert res[0] is None
    assert res[1]["index"] == 2
    assert [r[0]["last_insert_id"] for r in res[2]["results"]] == [1, 2]
    assert fsm.applied_index() == 3
    assert FSM(fsm.db).applied_index() == 3   # durable: read back from SQLite


def test_replay_never_applies_twice(fsm):
    """Entries at or below the applied index are skipped (row counts stay exact)."""
    entries = [ex(1, req("CREATE TABLE t (a)")), ex(2, req("INSERT INTO t VALUES (1)"))]
    fsm.apply(entries)
    assert fsm.apply(entries) == [None, None]
    fsm.apply(entries + [ex(3, req("INSERT INTO t VALUES (2)"))])
    assert count(fsm) == 2 and fsm.applied_index() == 3


def test_transaction_request_rolls_back_alone(fsm):
    """A failing transaction request is rolled back; other requests in the same entry
    (group commit) are untouched."""
    fsm.apply([ex(1, req("CREATE TABLE t (a UNIQUE)"))])
    res = fsm.apply([ex(2,
                        req("INSERT INTO t VALUES (1)"),
                        req("INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (1)",
                            "INSERT INTO t VALUES (3)", transaction=True),
                        req("INSERT INTO t VALUES (4)"))])[0]["results"]
    assert res[0][0]["rows_affected"] == 1
    assert len(res[1]) == 2 and "UNIQUE" in res[1][1]["error"]
    assert res[2][0]["rows_affected"] == 1
    vals = fsm.db.read([("SELECT a FROM t ORDER BY a", None)])[0]["values"]
    assert vals == [[1], [4]]


def test_non_transaction_statements_are_independent(fsm):
    """Without the transaction flag, a failing statement does not stop the others."""
    fsm.apply([ex(1, req("CREATE TABLE t (a UNIQUE)"))])
    res = fsm.apply([ex(2, req("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)",
                               "INSERT INTO t VALUES (2)"))])[0]["results"][0]
    assert "error" in res[1] and res[2]["rows_affected"] == 1
    assert count(fsm) == 2


def test_statement_that_rolls_back_everything_only_fails_its_request(fsm):
    """INSERT OR ROLLBACK ends SQLite's whole transaction; the batch is re-run and only
    that request fails, deterministically."""
    fsm.apply([ex(1, req("CREATE TABLE t (a UNIQUE)"))])
    res = fsm.apply([ex(2, req("INSERT INTO t VALUES (1)")),
                     ex(3, req("INSERT OR ROLLBACK INTO t VALUES (1)"), req("INSERT INTO t VALUES (2)"))])
    assert "rolled back" in res[1]["results"][0][0]["error"]
    assert res[1]["results"][1][0]["rows_affected"] == 1
    assert count(fsm) == 2 and fsm.applied_index() == 3


def test_request_id_dedup_returns_first_result(fsm):
    """A retried request id returns the first result and changes nothing; the table of
    ids stays bounded."""
    fsm.apply([ex(1, req("CREATE TABLE t (a)"))])
    r1 = fsm.apply([ex(2, req(("INSERT INTO t VALUES (?)", [b"\x00"]), "SELECT a FROM t",
                              request_id=b"abc"))])[0]
    r2 = fsm.apply([ex(3, req(("INSERT INTO t VALUES (?)", [b"\x00"]), "SELECT a FROM t",
                              request_id=b"abc"))])[0]
    strip = [[{k: v for k, v in x.items() if k != "time"} for x in rr] for rr in r1["results"]]
    assert r2["results"] == strip            # same answer (timings are not replicated)
    assert r2["results"][0][1]["values"] == [[b"\x00"]]
    assert count(fsm) == 1
    for i in range(10):
        fsm.apply([ex(4 + i, req("INSERT INTO t VALUES (9)", request_id=b"id%d" % i))])
    n = fsm.db.read_internal("SELECT count(*) FROM _raftsqlite_requests")[0][0]
    assert n == 5


def test_query_entries_cannot_change_anything(fsm):
    """A QUERY entry (strong read) returns rows and any write in it is rolled back."""
    fsm.apply([ex(1, req("CREATE TABLE t (a)"), req("INSERT INTO t VALUES (1)"))])
    cmd = Command(CommandType.QUERY, [req("SELECT a FROM t", "DELETE FROM t")])
    res = fsm.apply([Entry(1, 2, EntryType.NORMAL, encode_command(cmd))])[0]
    assert res["results"][0][0]["values"] == [[1]]
    assert count(fsm) == 1 and fsm.applied_index() == 2


def test_internal_tables_refused(fsm):
    """User statements in entries cannot touch _raftsqlite_* tables."""
    res = fsm.apply([ex(1, req("DELETE FROM _raftsqlite_meta"))])[0]["results"][0][0]
    assert "internal" in res["error"]
    assert fsm.applied_index() == 1


def test_system_ops_dispatch_and_isolate_failures(fsm):
    """SYSTEM ops go to registered handlers inside the apply transaction; a raising
    handler rolls back only its own op."""
    def put(ctx, args):
        ctx.execute("CREATE TABLE IF NOT EXISTS _raftsqlite_kv (k PRIMARY KEY, v)")
        ctx.execute("INSERT OR REPLACE INTO _raftsqlite_kv VALUES ('k', ?)", (args,))
        return {"ok": ctx.index}

    def boom(ctx, args):
        ctx.execute("DELETE FROM _raftsqlite_kv")
        raise ValueError("nope")

    fsm.register_system_handler("put", put)
    fsm.register_system_handler("boom", boom)
    cmd = Command(CommandType.SYSTEM, ops=[("put", b"v1"), ("boom", b""), ("missing", b"")])
    res = fsm.apply([Entry(1, 1, EntryType.NORMAL, encode_command(cmd))])[0]["results"]
    assert res[0] == {"ok": 1} and res[1] == {"error": "nope"} and "unknown" in res[2]["error"]
    assert fsm.db.read_internal("SELECT v FROM _raftsqlite_kv") == [(b"v1",)]


def test_bad_payload_is_an_error_result(fsm):
    """Undecodable entry data yields an error result, not an exception."""
    res = fsm.apply([Entry(1, 1, EntryType.NORMAL, b"\xff\x00garbage")])[0]
    assert "undecodable" in res["error"] and fsm.applied_index() == 1


def test_conf_change_only_moves_index(fsm):
    res = fsm.apply([Entry(2, 7, EntryType.CONF_CHANGE, b"x")])
    assert res == [None] and fsm.applied_index() == 7 and fsm.applied_term() == 2


def test_snapshot_and_restore(fsm, tmp_path):
    """snapshot() returns the index/term of the copy; restore() replaces the state and
    the applied index, and later entries apply on top."""
    fsm.apply([ex(1, req("CREATE TABLE t (a)")), ex(2, req("INSERT INTO t VALUES (1)"), term=3)])
    snap = str(tmp_path / "snap")
    assert fsm.snapshot(snap) == (2, 3)
    fsm.apply([ex(3, req("INSERT INTO t VALUES (2)"), term=3)])
    other_db = Database(str(tmp_path / "other.sqlite"))
    other = FSM(other_db)
    other.restore(snap, SnapshotMeta(2, 3))
    assert other.applied_index() == 2 and count(other) == 1
    other.apply([ex(3, req("INSERT INTO t VALUES (2)"), term=3)])
    assert other_db.checksum("t") == fsm.db.checksum("t")
    other_db.close()


def test_snapshot_on_apply_thread_and_elsewhere_agree(fsm, tmp_path):
    """Both snapshot paths (raw files on the apply thread, backup API on another thread)
    give a file holding exactly the state at the index they return, including rows
    still only in the WAL."""
    import threading
    fsm.apply([ex(1, req("CREATE TABLE t (a)"))] +
              [ex(i, req(("INSERT INTO t VALUES (?)", [i]))) for i in range(2, 40)])
    a = str(tmp_path / "a.snap")
    b = str(tmp_path / "b.snap")
    assert fsm.snapshot(a) == (39, 1)                  # same thread as apply
    out = []
    th = threading.Thread(target=lambda: out.append(fsm.snapshot(b)))
    th.start()
    th.join(10)
    assert out == [(39, 1)]
    for p in (a, b):
        assert Database.read_file_internal(p, "SELECT count(*), sum(a) FROM t") == \
            [(38, sum(range(2, 40)))]
        with open(p, "rb") as f:
            assert f.read(20)[18:20] == b"\x01\x01"   # rollback-journal file, no WAL needed


def test_request_hook_refuses_one_request(fsm):
    """A request hook raising a RaftSQLiteError fails that request alone, before its
    statements run; neighbours in the batch apply."""
    from raftsqlite.errors import Moved

    def hook(ctx, request):
        if request.request_id == b"stale":
            raise Moved("key range moved; refresh the catalog")
    fsm.register_system_handler("noop", lambda ctx, a: None)
    fsm.add_request_hook(hook)
    fsm.apply([ex(1, req("CREATE TABLE t (a)"))])
    res = fsm.apply([ex(2, req("INSERT INTO t VALUES (1)", request_id=b"stale"),
                        req("INSERT INTO t VALUES (2)"))])[0]["results"]
    assert res[0][0]["code"] == "moved" and "moved" in res[0][0]["error"]
    assert res[1][0]["rows_affected"] == 1
    assert fsm.db.read([("SELECT a FROM t", None)])[0]["values"] == [[2]]


def test_create_function_on_writer_and_readers(fsm):
    """A function registered once is usable by applies and by reads on any thread."""
    import threading
    fsm.db.create_function("twice", 1, lambda x: 2 * x)
    fsm.apply([ex(1, req("CREATE TABLE t (a)", "INSERT INTO t VALUES (twice(21))"))])
    out = []
    th = threading.Thread(target=lambda: out.append(
        fsm.db.read([("SELECT twice(a) FROM t", None)])[0]["values"]))
    th.start()
    th.join(10)
    assert out == [[[84]]]


def test_replicas_end_byte_identical(tmp_path):
    """Two replicas applying the same entries hold identical rows in every table, the
    internal ones included (no per-replica timings or ids leak into stored state)."""
    entries = [ex(1, req("CREATE TABLE t (a UNIQUE, b)")),
               ex(2, req(("INSERT INTO t VALUES (?, ?)", [1, b"\x00"]), request_id=b"r1"),
                  req("INSERT OR ROLLBACK INTO t VALUES (1, 2)"),
                  req("INSERT INTO t VALUES (2, 2)", "INSERT INTO t VALUES (1, 1)",
                      transaction=True, request_id=b"r2")),
               ex(3, req(("INSERT INTO t VALUES (?, ?)", [1, b"\x00"]), request_id=b"r1"))]
    dumps = []
    for name in ("a", "b"):
        db = Database(str(tmp_path / f"{name}.sqlite"))
        f = FSM(db)
        f.apply(entries[:1])
        f.apply(entries[1:])
        dumps.append([db.read_internal(f"SELECT * FROM {t} ORDER BY 1") for t in
                      ("t", "_raftsqlite_requests", "_raftsqlite_meta")])
        db.close()
    assert dumps[0] == dumps[1]
    assert len(dumps[0][1]) == 2


def test_defaults_and_triggers_are_deterministic(tmp_path):
    """'now' and random() evaluated during apply (column defaults, triggers) give the
    same values on every replica, whenever each replica applies: the instant travels in
    the entry (clock op) and the random generator is seeded by the entry's position."""
    import time as _time
    from raftsqlite.fsm import clock_op
    ddl = ex(1, req("CREATE TABLE t (a, ts DEFAULT CURRENT_TIMESTAMP, r DEFAULT (random()), "
                    "b DEFAULT (randomblob(4)))",
                    "CREATE TABLE log (x, at)",
                    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN "
                    "INSERT INTO log VALUES (new.a, strftime('%Y-%m-%d %H:%M:%f', 'now')); END"))
    clock_ms = Database.clock_now_ms() - 86_400_000        # yesterday, to be sure
    ins = Entry(1, 2, EntryType.NORMAL, encode_command(Command(
        CommandType.EXECUTE, [req("INSERT INTO t(a) VALUES (1)", "INSERT INTO t(a) VALUES (2)")],
        [clock_op(clock_ms)])))
    rows = []
    for name in ("a", "b"):
        db = Database(str(tmp_path / f"{name}.sqlite"))
        f = FSM(db)
        f.apply([ddl, ins])
        rows.append((db.read_internal("SELECT * FROM t ORDER BY a"),
                     db.read_internal("SELECT * FROM log ORDER BY x")))
        db.close()
        _time.sleep(1.1)      # the second replica applies a second later
    assert rows[0] == rows[1]
    t_rows, log_rows = rows[0]
    assert t_rows[0][2] != t_rows[1][2]           # two random() values, not one
    unix_s = (clock_ms - 210866760000000) // 1000
    assert t_rows[0][1] == _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(unix_s))
    assert log_rows[0][1][:19] == t_rows[0][1]


def test_b64json_round_trip_is_shared_by_fsm_and_sharding():
    """Invariant: BLOBs nested anywhere in a result survive the JSON tagging used by the
    FSM's dedup table and by routed shard answers (one implementation for both)."""
    import orjson
    from raftsqlite import fsm as fsm_mod
    from raftsqlite.b64json import b64_default, unb64
    from raftsqlite.sharding import service
    res = [{"values": [[b"\x00\xff", "x", 1, None]], "columns": ["a"]}, {"error": "e"}]
    assert unb64(orjson.loads(orjson.dumps(res, default=b64_default))) == res
    assert service.load_results(service.dump_results(res)) == res
    assert fsm_mod._load_result(fsm_mod._dump_result(res)) == res
    assert service.unb64 is unb64


@pytest.mark.parametrize("keep", [2, 5, 40])
def test_dedup_trim_does_not_depend_on_batch_boundaries(tmp_path, keep):
    """Invariant: whether a retried request id is found (and so whether the retry runs
    again) is a function of the log alone: replicas applying the same entries in
    different batches end with the same rows, the same dedup table and the same results.
    (A trim once per apply call made a replica that applied in smaller batches forget an
    id that a replica applying one large batch still found.) The table keeps at least
    the last ``keep`` ids and stays bounded."""
    import random
    rnd = random.Random(keep)
    sql = "INSERT INTO t VALUES (?)"
    entries = [ex(1, req("CREATE TABLE t (a)"))]
    for i, rid in enumerate([b"a", b"b", b"c", b"a", b"d", b"b", b"c"]):
        entries.append(ex(len(entries) + 1, req((sql, [i]), request_id=rid)))
    for i in range(150):        # entries of one or many requests (runs), ids recurring
        n = rnd.choice([1, 1, 3, 8])
        entries.append(ex(len(entries) + 1, *[
            req((sql, [1000 + i * 10 + k]), request_id=b"id%d" % rnd.randrange(keep * 3))
            for k in range(n)]))
    splits = {"one": [len(entries)], "small": [1, 4, 5, 8],
              "each": list(range(1, len(entries) + 1)),
              "random": sorted(rnd.sample(range(1, len(entries)), 40))}
    states = []
    for name, cuts in splits.items():
        db = Database(str(tmp_path / f"{name}.sqlite"))
        f = FSM(db, dedup_keep=keep)
        res, prev = [], 0
        for cut in cuts + [len(entries)]:
            if cut > prev:
                res.extend(f.apply(entries[prev:cut]))
                prev = cut
        rows = db.read([("SELECT a FROM t ORDER BY rowid", None)])[0]["values"]
        dedup = db.read_internal("SELECT seq, request_id, result FROM _raftsqlite_requests "
                                 "ORDER BY seq")
        out = [[[{k: v for k, v in x.items() if k != "time"} for x in rr]
                for rr in r["results"]] for r in res if r is not None]
        states.append((rows, dedup, out, f.counters["dedup_hits"]))
        db.close()
    assert all(st == states[0] for st in states[1:])
    n = len(states[0][1])
    assert keep <= n < keep + max(1, keep // 16) + 8
    assert states[0][3] > 0, "no retry was answered from the table: dedup not exercised"
