"""store.py against a fake single-member Raft: group commit, levels, errors, load."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from raftsqlite.codec.model import Entry, EntryType, Member, Statement
from raftsqlite.config import StoreConfig
from raftsqlite.db import Database
from raftsqlite.errors import (BadRequest, LeaderNotFound, NotLeader, StatementRefused,
                               StaleRead)
from raftsqlite.fsm import FSM
from raftsqlite.store import Store


class FakeRaft:
    """One member that commits each proposal after ``delay`` and applies it on an
    executor thread, like the driver does."""

    def __init__(self, fsm, delay=0.002):
        self.fsm = fsm
        self.delay = delay
        self.is_leader = True
        self.leader_id = "n1"
        self.members = [Member("n1", "127.0.0.1:2", "127.0.0.1:1"),
                        Member("n2", "127.0.0.1:4", "127.0.0.1:3")]
        self.term = 1
        self.index = fsm.applied_index()
        self.proposals = []
        self.read_index_calls = 0
        self.last_leader_contact = None
        self._exec = ThreadPoolExecutor(1)
        self._lock = asyncio.Lock()

    commit_index = property(lambda s: s.index)
    applied_index = property(lambda s: s.fsm.applied_index())
    last_log_index = property(lambda s: s.index)
    last_snapshot_index = 0

    async def propose(self, data, timeout):
        if not self.is_leader:
            raise NotLeader(leader_id=self.leader_id)
        self.proposals.append(data)
        await asyncio.sleep(self.delay)
        async with self._lock:
            self.index += 1
            e = Entry(self.term, self.index, EntryType.NORMAL, data)
            return (await asyncio.get_running_loop().run_in_executor(
                self._exec, self.fsm.apply, [e]))[0]

    async def read_index(self, timeout):
        self.read_index_calls += 1

    async def add_member(self, node_id, raft_addr, http_addr, voter=True, timeout=None):
        self.members.append(Member(node_id, raft_addr, http_addr, voter))

    async def remove_member(self, node_id, timeout=None):
        self.members = [m for m in self.members if m.node_id != node_id]

    async def transfer_leadership(self, to=None, timeout=None):
        self.leader_id = to or "n2"
        self.is_leader = False


@pytest.fixture
def env(tmp_path):
    db = Database(str(tmp_path / "db.sqlite"))
    fsm = FSM(db)
    raft = FakeRaft(fsm)
    store = Store(raft, fsm, db, StoreConfig(max_inflight=1), node_id="n1")
    yield store, raft
    store.close()
    db.close()


def run(coro):
    return asyncio.run(coro)


def test_execute_and_query_seed_shapes(env):
    """execute returns per-statement write results and the raft index; query reads back."""
    store, raft = env

    async def go():
        await store.execute([Statement("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")])
        r = await store.execute([Statement("INSERT INTO users(name) VALUES (?)", ["John"])])
        q = await store.query([Statement("SELECT * FROM users")])
        return r, q
    r, q = run(go())
    assert r["results"][0]["last_insert_id"] == 1 and r["raft_index"] == 2
    assert q["results"][0]["values"] == [[1, "John"]]


def test_concurrent_writes_are_group_committed(env):
    """Writes arriving while a proposal is in flight share one log entry, and each
    caller gets its own result."""
    store, raft = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (a)")])
        before = len(raft.proposals)
        res = await asyncio.gather(*(store.execute([Statement("INSERT INTO t VALUES (?)", [i])])
                                     for i in range(50)))
        return res, len(raft.proposals) - before
    res, proposals = run(go())
    assert proposals < 10
    ids = sorted(r["results"][0]["last_insert_id"] for r in res)
    assert ids == list(range(1, 51))


def test_one_failing_request_does_not_touch_batch_neighbours(env):
    """In one group-committed entry, a failing transaction rolls back only itself."""
    store, raft = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (a UNIQUE)")])
        jobs = [store.execute([Statement("INSERT INTO t VALUES (?)", [i])]) for i in range(5)]
        jobs.append(store.execute([Statement("INSERT INTO t VALUES (100)"),
                                   Statement("INSERT INTO t VALUES (1)")], transaction=True))
        res = await asyncio.gather(*jobs)
        q = await store.query([Statement("SELECT count(*) FROM t")])
        return res, q
    res, q = run(go())
    assert "error" in res[-1]["results"][-1]
    assert q["results"][0]["values"] == [[5]]


def test_request_id_retry_is_idempotent(env):
    """The same request id applied twice changes the database once."""
    store, _ = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (a)")])
        a = await store.execute([Statement("INSERT INTO t VALUES (1)")], request_id="r-1")
        b = await store.execute([Statement("INSERT INTO t VALUES (1)")], request_id="r-1")
        q = await store.query([Statement("SELECT count(*) FROM t")])
        return a, b, q
    a, b, q = run(go())
    strip = [{k: v for k, v in r.items() if k != "time"} for r in a["results"]]
    assert b["results"] == strip and q["results"][0]["values"] == [[1]]


def test_non_leader_write_names_leader_http_address(env):
    """A follower refuses writes with NotLeader carrying the leader's HTTP address."""
    store, raft = env
    raft.is_leader, raft.leader_id = False, "n2"
    with pytest.raises(NotLeader) as ei:
        run(store.execute([Statement("CREATE TABLE t (a)")]))
    assert ei.value.leader_id == "n2" and ei.value.leader_addr == "127.0.0.1:3"
    raft.leader_id = None
    with pytest.raises(LeaderNotFound):
        run(store.execute([Statement("CREATE TABLE t (a)")]))


def test_levels(env):
    """weak/linearizable need the leader; linearizable does a ReadIndex; strong goes
    through the log; none reads locally and honours freshness."""
    store, raft = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (a)")])
        n = len(raft.proposals)
        await store.query([Statement("SELECT * FROM t")], level="linearizable")
        assert raft.read_index_calls == 1
        s = await store.query([Statement("SELECT count(*) FROM t")], level="strong")
        assert len(raft.proposals) == n + 1 and s["results"][0]["values"] == [[0]]
        raft.is_leader, raft.leader_id = False, "n2"
        with pytest.raises(NotLeader):
            await store.query([Statement("SELECT 1")], level="weak")
        r = await store.query([Statement("SELECT 1")], level="none")
        assert r["results"][0]["values"] == [[1]]
        with pytest.raises(StaleRead):
            await store.query([Statement("SELECT 1")], level="none", freshness=0.5)
        import time
        raft.last_leader_contact = time.monotonic()
        await store.query([Statement("SELECT 1")], level="none", freshness=0.5)
        with pytest.raises(BadRequest):
            await store.query([Statement("SELECT 1")], level="bogus")
    run(go())


def test_query_refuses_writes_per_statement(env):
    """A write sent to query() is not run; it gets rqlite's error, others still run."""
    store, _ = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (a)")])
        r = await store.query([Statement("SELECT 1"), Statement("INSERT INTO t VALUES (1)")])
        q = await store.query([Statement("SELECT count(*) FROM t")])
        return r, q
    r, q = run(go())
    assert r["results"][0]["values"] == [[1]]
    assert "attempt to change database" in r["results"][1]["error"]
    assert q["results"][0]["values"] == [[0]]


def test_request_routes_mixed(env):
    """request(): reads only -> no log entry; any write -> through the log."""
    store, raft = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (a)")])
        n = len(raft.proposals)
        await store.request([Statement("SELECT 1")])
        assert len(raft.proposals) == n
        r = await store.request([Statement("INSERT INTO t VALUES (5)"), Statement("SELECT a FROM t")])
        assert len(raft.proposals) == n + 1
        return r
    r = run(go())
    assert r["results"][1]["values"] == [[5]]


@pytest.mark.parametrize("bad", [
    "not a list", [Statement("SELECT ?", [1 << 70])], [Statement("SELECT ?", [object()])],
    [Statement("SELECT ?", 5)], [123]])
def test_bad_input_is_bad_request(env, bad):
    """Malformed statements or parameters raise BadRequest; nothing is proposed."""
    store, raft = env
    with pytest.raises(BadRequest):
        run(store.execute(bad))
    assert raft.proposals == []


def test_refused_statement_is_not_proposed(env):
    store, raft = env
    with pytest.raises(StatementRefused):
        run(store.execute([Statement("ATTACH 'x' AS y")]))
    assert raft.proposals == []


def test_rewrite_happens_before_logging(env):
    """What reaches the log has literals instead of random()/now."""
    from raftsqlite.codec import decode_command
    store, raft = env
    run(store.execute([Statement("CREATE TABLE t (a, b)")]))
    run(store.execute([Statement("INSERT INTO t VALUES (random(), datetime('now'))")]))
    sql = decode_command(raft.proposals[-1]).requests[0].statements[0].sql
    assert "random" not in sql and "'now'" not in sql


def test_membership_and_transfer(env):
    store, raft = env

    async def go():
        await store.join("n3", "127.0.0.1:6", "127.0.0.1:5")
        again = await store.join("n3", "127.0.0.1:6", "127.0.0.1:5")
        assert again["already_member"]
        assert [m.node_id for m in store.members()] == ["n1", "n2", "n3"]
        await store.remove("n2")
        assert [m.node_id for m in store.members()] == ["n1", "n3"]
        await store.transfer_leadership("n3")
        assert not store.is_leader()
    run(go())


def test_backup_and_load_round_trip(env, tmp_path):
    """A binary backup loaded through the log reproduces the tables (and replaces
    what was there); a SQL dump loads too."""
    store, _ = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (a, b)"),
                             Statement("INSERT INTO t VALUES (1, x'00ff'), (2, 'two')")])
        path = await store.backup()
        dump_path = await store.backup(fmt="sql")
        with open(dump_path, "rb") as f:
            dump = f.read()
        await store.execute([Statement("DROP TABLE t"), Statement("CREATE TABLE other (z)")])
        with open(path, "rb") as f:
            res = await store.load(f.read())
        assert "error" not in res
        q = await store.query([Statement("SELECT * FROM t ORDER BY a")])
        gone = await store.query([Statement("SELECT * FROM other")])
        await store.execute([Statement("DROP TABLE t")])
        res2 = await store.load(dump)
        q2 = await store.query([Statement("SELECT * FROM t ORDER BY a")])
        return q, gone, q2, res2
    q, gone, q2, res2 = run(go())
    assert q["results"][0]["values"] == [[1, b"\x00\xff"], [2, "two"]]
    assert "no such table" in gone["results"][0]["error"]
    assert q2["results"][0]["values"] == q["results"][0]["values"], res2


def test_dropped_proposal_after_losing_leadership_becomes_not_leader(env):
    """A proposal definitely not committed because leadership moved is reported as
    NotLeader (safe to forward), not as an unknown outcome."""
    from raftsqlite.errors import ProposalDropped
    store, raft = env

    async def dropping(data, timeout):
        raft.is_leader, raft.leader_id = False, "n2"
        raise ProposalDropped("entry was replaced by a new leader's entry")
    raft.propose = dropping
    with pytest.raises(NotLeader) as ei:
        run(store.execute([Statement("CREATE TABLE t (a)")]))
    assert ei.value.leader_addr == "127.0.0.1:3"


def test_write_timeout_is_reported_and_others_unaffected(env):
    """A caller whose deadline passes gets Timeout; the batch still completes."""
    from raftsqlite.errors import Timeout
    store, raft = env
    raft.delay = 0.3

    async def go():
        slow = store.execute([Statement("CREATE TABLE t (a)")], timeout=0.05)
        with pytest.raises(Timeout):
            await slow
        await asyncio.sleep(0.5)
        return await store.query([Statement("SELECT count(*) FROM t")])
    assert run(go())["results"][0]["values"] == [[0]]


def test_write_timeouts_of_different_lengths_each_fire_on_time(env):
    """Invariant: with one expiry timer for all writes, each write still times out at
    its own deadline: a short timeout queued after a long one fires first, the long one
    fires after its own time, and a write that completes is never failed."""
    import time
    from raftsqlite.errors import Timeout
    store, raft = env
    raft.delay = 0.6

    async def timed(coro):
        t0 = time.monotonic()
        try:
            await coro
            return "ok", time.monotonic() - t0
        except Timeout:
            return "timeout", time.monotonic() - t0

    async def go():
        long_ = asyncio.ensure_future(timed(store.execute(
            [Statement("CREATE TABLE t1 (a)")], timeout=0.4)))
        await asyncio.sleep(0.01)
        short = asyncio.ensure_future(timed(store.execute(
            [Statement("CREATE TABLE t2 (a)")], timeout=0.1)))
        done = asyncio.ensure_future(timed(store.execute(
            [Statement("CREATE TABLE t3 (a)")], timeout=5.0)))
        return await long_, await short, await done
    (lk, lt), (sk, st_), (dk, dt) = run(go())
    assert (lk, sk, dk) == ("timeout", "timeout", "ok")
    assert 0.08 <= st_ < 0.35 and 0.38 <= lt < 0.58, (st_, lt)


def test_expiry_queue_stays_short_under_steady_writes(env):
    """Invariant: completed writes leave the expiry queue as new ones arrive (it holds
    about the writes in flight, not every write of the last timeout period)."""
    store, raft = env
    raft.delay = 0.0

    async def go():
        await store.execute([Statement("CREATE TABLE t (a)")])
        for i in range(300):
            await store.execute([Statement("INSERT INTO t VALUES (?)", [i])])
        return sum(len(q) for q in store._expiry.values())
    assert run(go()) <= 2


def test_long_read_falls_back_from_the_loop_to_a_thread(env):
    """A read past the inline budget is interrupted on the loop and re-run on a reader
    thread, giving the full answer."""
    store, _ = env
    q = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 3000000) "
         "SELECT count(*) FROM c")

    async def go():
        r = await store.query([Statement(q)], level="none")
        p = await store.query([Statement("SELECT 1")], level="none")
        return r, p
    r, p = run(go())
    assert r["results"][0]["values"] == [[3000000]]
    assert p["results"][0]["values"] == [[1]]
    st = store.db.stats()
    assert st["inline_fallbacks"] >= 1 and st["inline_reads"] >= 1


def test_system_ops_through_the_store(env):
    """Store.system proposes SYSTEM ops and returns one result per op."""
    store, _ = env
    store.fsm.register_system_handler("echo", lambda ctx, args: {"got": args.decode(),
                                                                 "index": ctx.index})

    async def go():
        r = await store.system([("echo", b"hi"), ("missing", b"")])
        i = await store.barrier()
        return r, i
    r, i = run(go())
    assert r["results"][0] == {"got": "hi", "index": r["raft_index"]}
    assert "unknown" in r["results"][1]["error"] and i == r["raft_index"] + 1


def test_load_refused_statement_changes_nothing(env, tmp_path):
    """A dump containing a refused statement is rejected before anything is proposed."""
    store, raft = env
    dump = tmp_path / "d.sql"
    dump.write_text("CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\nATTACH 'x' AS y;\n")
    with pytest.raises(StatementRefused):
        run(store.load(str(dump)))
    assert raft.proposals == []


def test_load_streams_in_chunks(env, tmp_path):
    """A dump larger than one entry is applied in several entries, all rows arriving."""
    store, raft = env
    store.config = StoreConfig(batch_max_bytes=2000)
    dump = tmp_path / "d.sql"
    with open(dump, "w") as f:
        f.write("CREATE TABLE a (x, pad);\n")
        for i in range(500):
            f.write(f"INSERT INTO a VALUES ({i}, 'padding-padding');\n")
    res = run(store.load(str(dump)))
    assert res["statements"] == 501 and "error" not in res
    assert len(raft.proposals) > 5
    q = run(store.query([Statement("SELECT count(*), sum(x) FROM a")]))
    assert q["results"][0]["values"] == [[500, sum(range(500))]]


def test_bulk_form_through_the_store(env):
    """Invariant: a BulkStatements write is logged in the bulk form (one text, format
    version 2) and answers exactly what the same statements as a list answer; a text
    needing rewriting is rewritten per row (each row draws its own random literal); a
    refused text is refused before anything is proposed; a read path gets it as plain
    statements."""
    from raftsqlite.codec import decode_command
    from raftsqlite.codec.model import BulkStatements
    store, raft = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (id INTEGER PRIMARY KEY, k UNIQUE, v)")])
        sql = "INSERT INTO t(k, v) VALUES (?, ?)"
        rows = [[i, f"v{i}"] for i in range(50)] + [[3, "dup"]] + [[100, "x"]]
        bulk = await store.execute(BulkStatements(sql, [list(r) for r in rows]))
        logged = raft.proposals[-1]
        await store.execute([Statement("DELETE FROM t")])
        plain = await store.execute([Statement(sql, list(r)) for r in rows])
        rnd = await store.execute(BulkStatements("INSERT INTO t(k, v) VALUES (?, random())",
                                                 [[1000 + i] for i in range(5)]))
        rnd_logged = decode_command(raft.proposals[-1])
        q = await store.query(BulkStatements("SELECT v FROM t WHERE k = ?", [[1], [2]]))
        return bulk, logged, plain, rnd, rnd_logged, q
    bulk, logged, plain, rnd, rnd_logged, q = run(go())
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert logged[0] == 2       # the bulk write: format version 2
    assert type(decode_command(logged).requests[0].statements) is BulkStatements
    assert [r.get("rows_affected") for r in strip(bulk["results"])] == \
        [r.get("rows_affected") for r in strip(plain["results"])]
    assert "UNIQUE" in bulk["results"][50]["error"] and len(bulk["results"]) == 52
    sqls = [s.sql for s in rnd_logged.requests[0].statements]
    assert all("random" not in s for s in sqls) and len(set(sqls)) == 5
    assert all(r["rows_affected"] == 1 for r in rnd["results"])
    assert [r["values"] for r in q["results"]] == [[["v1"]], [["v2"]]]
    with pytest.raises(StatementRefused):
        run(store.execute(BulkStatements("ATTACH ? AS y", [["x"], ["z"]])))


def _keep_rows(store):
    return run(store.query([Statement("SELECT a FROM keep ORDER BY a")], level="none"))[
        "results"][0].get("values")


def _staged(store):
    return store.db.read_internal("SELECT count(*) FROM _raftsqlite_load")[0][0]


def _seed_keep(store):
    run(store.execute([Statement("CREATE TABLE keep (a)"),
                       Statement("INSERT INTO keep VALUES (1), (2)")]))


def test_load_failing_after_many_entries_changes_nothing(env):
    """Invariant: a load is all-or-nothing: a SQL dump whose last statement fails, after
    several log entries of it were proposed, leaves the database as it was (no table of
    the dump, old rows intact) and no staged chunk behind; the answer names the failing
    statement. A file load replaces the database only when it fully succeeds."""
    store, raft = env
    store.config = StoreConfig(batch_max_bytes=2000)
    _seed_keep(store)
    before = len(raft.proposals)
    dump = "CREATE TABLE x (a, pad);\n" + "".join(
        f"INSERT INTO x VALUES ({i}, 'padding-padding');\n" for i in range(300)) + \
        "INSERT INTO nosuch VALUES (1);\n"
    res = run(store.load(dump.encode()))
    assert "nosuch" in res["error"] and "statement 302" in res["error"]
    assert len(raft.proposals) - before > 3
    assert _keep_rows(store) == [[1], [2]]
    q = run(store.query([Statement("SELECT * FROM x")], level="none"))["results"][0]
    assert "no such table" in q["error"]
    assert _staged(store) == 0
    # and a good load of the same size works, in one step
    res = run(store.load(dump.rsplit("INSERT INTO nosuch", 1)[0].encode()))
    assert "error" not in res and res["statements"] == 301
    q = run(store.query([Statement("SELECT count(*) FROM x")], level="none"))["results"][0]
    assert q["values"] == [[300]] and _keep_rows(store) == [[1], [2]]


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_load_of_corrupt_sqlite_file_is_refused_and_changes_nothing(env, damage):
    """Invariant: a truncated or corrupt SQLite file gets a clear BadRequest before
    anything is proposed; the old database stays intact."""
    store, raft = env
    _seed_keep(store)
    run(store.execute([Statement("CREATE TABLE big (a, pad)")] + [
        Statement("INSERT INTO big VALUES (?, ?)", [i, "p" * 500]) for i in range(300)]))
    with open(run(store.backup()), "rb") as f:
        data = f.read()
    run(store.execute([Statement("DROP TABLE big")]))
    bad = data[:len(data) // 2] if damage == "truncated" else \
        data[:4096] + bytes(len(data) - 4096)
    before = len(raft.proposals)
    with pytest.raises(BadRequest, match="corrupt"):
        run(store.load(bad))
    assert len(raft.proposals) == before
    assert _keep_rows(store) == [[1], [2]]
    q = run(store.query([Statement("SELECT * FROM big")], level="none"))["results"][0]
    assert "no such table" in q["error"]


def test_load_whose_leader_is_lost_midway_changes_nothing(env, tmp_path):
    """Invariant: a file load cut off midway (leadership lost after some chunks were
    staged) leaves the old database intact; the next load sweeps the orphaned chunks and
    applies completely."""
    store, raft = env
    store.config = StoreConfig(batch_max_bytes=2000)
    _seed_keep(store)
    run(store.execute([Statement("CREATE TABLE big (a, pad)")] + [
        Statement("INSERT INTO big VALUES (?, ?)", [i, "p" * 100]) for i in range(200)]))
    with open(run(store.backup()), "rb") as f:
        data = f.read()
    run(store.execute([Statement("DROP TABLE big")]))
    real = raft.propose
    calls = []

    async def failing(data_, timeout):
        calls.append(1)
        if len(calls) > 3:
            raise NotLeader(leader_id="n2")
        return await real(data_, timeout)
    raft.propose = failing
    with pytest.raises(NotLeader):
        run(store.load(data))
    raft.propose = real
    assert _staged(store) == 3
    assert _keep_rows(store) == [[1], [2]]
    res = run(store.load(data))
    assert "error" not in res, res
    assert _staged(store) == 0
    q = run(store.query([Statement("SELECT count(*) FROM big")], level="none"))["results"][0]
    assert q["values"] == [[200]] and _keep_rows(store) == [[1], [2]]


def test_load_statement_that_ends_the_transaction_changes_nothing(env):
    """Invariant: a dump statement that makes SQLite roll the apply transaction back
    (INSERT OR ROLLBACK on a conflict) fails the load cleanly: nothing of it stays, the
    FSM keeps applying, and writes before and after it are intact."""
    store, raft = env
    _seed_keep(store)
    dump = ("CREATE TABLE u (a UNIQUE);\nINSERT INTO u VALUES (1);\n"
            "INSERT OR ROLLBACK INTO u VALUES (1);\n")
    res = run(store.load(dump.encode()))
    assert "transaction" in res["error"], res
    q = run(store.query([Statement("SELECT * FROM u")], level="none"))["results"][0]
    assert "no such table" in q["error"]
    run(store.execute([Statement("INSERT INTO keep VALUES (3)")]))
    assert _keep_rows(store) == [[1], [2], [3]]
    assert _staged(store) == 0


def test_strong_read_carries_its_guard_through_the_log(env):
    """Invariant: a strong read's ownership guard travels in the QUERY entry and is
    checked where it is applied; a refusal there raises Moved even though the check
    before proposing passed."""
    from raftsqlite.errors import Moved
    store, raft = env
    seen = []

    def hook(ctx, req, write=True):
        seen.append((req.guard, write))
        if req.guard == b"stale":
            raise Moved("moved at apply")
    store.fsm.add_request_hook(hook)
    store.guard_check = lambda g: None          # the early check passes
    run(store.execute([Statement("CREATE TABLE t (a)")]))
    with pytest.raises(Moved):
        run(store.query([Statement("SELECT * FROM t")], level="strong", guard=b"stale"))
    ok = run(store.query([Statement("SELECT count(*) FROM t")], level="strong", guard=b"fine"))
    assert ok["results"][0]["values"] == [[0]]
    assert (b"stale", False) in seen and (b"fine", False) in seen


def test_join_of_a_wiped_voter_re_adds_it(env):
    """Invariant: a voter joining again with an empty data dir (``fresh``) is removed
    and added back (the leader's record of what it held is void); without ``fresh`` a
    repeated join changes nothing."""
    store, raft = env
    calls = []
    real_remove, real_add = raft.remove_member, raft.add_member

    async def remove(node_id, timeout=None):
        calls.append(("remove", node_id))
        await real_remove(node_id, timeout)

    async def add(node_id, raft_addr, http_addr, voter=True, timeout=None):
        calls.append(("add", node_id))
        await real_add(node_id, raft_addr, http_addr, voter, timeout)
    raft.remove_member, raft.add_member = remove, add
    store._nudge_once = lambda: asyncio.sleep(0)
    r = run(store.join("n2", "127.0.0.1:4", "127.0.0.1:3"))
    assert r["already_member"] and calls == []
    r = run(store.join("n2", "127.0.0.1:4", "127.0.0.1:3", fresh=True))
    assert not r["already_member"] and calls == [("remove", "n2"), ("add", "n2")]
    assert [m.node_id for m in store.members()] == ["n1", "n2"]
