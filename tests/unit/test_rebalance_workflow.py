"""The move workflow (#7) on in-process groups (sharding.fake): real SQLite per group,
the real router with guards, the real catalog and ownership checks; no Raft/HTTP.
Crashes are injected at every step boundary and a fresh coordinator resumes."""
import asyncio
import random
import sqlite3

import pytest

from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.fake import FakeCluster
from raftsqlite.sharding.rebalance import RebalanceConfig
from raftsqlite.sharding.rebalance_service import FakeMoveBackend, Rebalancer
from raftsqlite.sharding.router import Router

pytestmark = pytest.mark.timeout(120)

DDL = "CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)"
DDL2 = "CREATE TABLE kv_log (kid INTEGER, seq INTEGER, note TEXT)"


def make(n_rows=3000, colocated=False):
    cl = FakeCluster(("s1", "s2"))
    cl.op("register_table", table="kv", shard_key="id", shard_func="hash", key_affinity="integer")
    if colocated:
        cl.op("register_table", table="kv_log", shard_key="kid", shard_func="hash",
              key_affinity="integer", colocate_with="kv")
    cl.op("add_to_shard", table="kv", shard="s1")
    router = Router(cl.executor, cl.source)
    ref = sqlite3.connect(":memory:", isolation_level=None)
    ref.execute(DDL)
    asyncio.run(router.execute([DDL]))
    if colocated:
        ref.execute(DDL2)
        asyncio.run(router.execute([DDL2]))
    rows = [(i, f"v{i}", i % 97) for i in range(1, n_rows + 1)]
    for b in range(0, n_rows, 500):
        part = rows[b:b + 500]
        sql = "INSERT INTO kv(id, v, n) VALUES " + ",".join("(?,?,?)" for _ in part)
        asyncio.run(router.execute([(sql, [x for r in part for x in r])]))
    ref.executemany("INSERT INTO kv VALUES (?,?,?)", rows)
    if colocated:
        logs = [(i, j, f"n{i}-{j}") for i in range(1, n_rows + 1, 3) for j in range(2)]
        for b in range(0, len(logs), 300):
            part = logs[b:b + 300]
            asyncio.run(router.execute([("INSERT INTO kv_log(kid, seq, note) VALUES " + ",".join("(?,?,?)" for _ in part),
                                         [x for r in part for x in r])]))
        ref.executemany("INSERT INTO kv_log VALUES (?,?,?)", logs)
    cl.op("add_to_shard", table="kv", shard="s2")
    return cl, router, ref


async def writer(router, ref, stop, seed, acked, n_max=3000):
    """Random inserts/updates/deletes through the router; the reference gets each one
    only once the router acknowledged it."""
    rnd = random.Random(seed)
    for i in range(n_max):
        if stop.is_set():
            break
        op = rnd.random()
        k = rnd.randint(1, 6000)
        if op < 0.4:
            sql, args = "INSERT OR REPLACE INTO kv(id, v, n) VALUES (?, ?, ?)", [k, f"w{seed}-{i}", i]
        elif op < 0.75:
            sql, args = "UPDATE kv SET v = ?, n = n + 1 WHERE id = ?", [f"u{seed}-{i}", k]
        else:
            sql, args = "DELETE FROM kv WHERE id = ?", [k]
        res = await router.execute([(sql, args)])
        assert "error" not in res[0], res
        ref.execute(sql, args)
        acked.append((sql, args))
        await asyncio.sleep(0)


def shard_rows(cl, group, table="kv"):
    if not cl.sql(group, "SELECT 1 FROM sqlite_master WHERE name = ?", (table,)):
        return None   # a shard added after the table's DDL has no copy until a move
    return cl.sql(group, f"SELECT * FROM {table} ORDER BY 1")


def check_placement(cl, ref, tables=("kv",)):
    """Every row of the reference is on exactly the shard owning its key, once."""
    cat = cl.catalog
    for t in tables:
        key = cat.tables[t]["shard_key"]
        union = []
        for g in ("s1", "s2"):
            rows = cl.sql(g, f"SELECT * FROM {t}")
            ci = [d[0] for d in cl.groups[g].conn.execute(f"SELECT * FROM {t} LIMIT 0").description].index(key)
            for r in rows:
                assert cat.owner_of(t, ks.key_id(r[ci], "hash", "integer")) == g, (t, r, g)
            union.extend(rows)
        want = sorted(ref.execute(f"SELECT * FROM {t}").fetchall())
        assert sorted(union) == want, f"{t}: shards {len(union)} rows, reference {len(want)}"
    for g in ("s1", "s2"):
        own = cl.groups[g].own.cols["kv"]
        assert own["ranges"] == ks.owned_spans(cat.colocations["kv"]["starts"],
                                               cat.colocations["kv"]["owners"], g)
        assert own["fenced"] == []
        assert not cl.sql(g, "SELECT name FROM sqlite_master WHERE type = 'trigger'")


def test_dry_run_changes_nothing():
    """Invariant: a dry run returns the plan (moves, rows and bytes estimated) and leaves
    the catalog and every shard byte-identical."""
    cl, router, ref = make(1000)
    before = cl.catalog.to_bytes()
    data = {g: shard_rows(cl, g) for g in ("s1", "s2")}
    rb = Rebalancer(FakeMoveBackend(cl))
    plan = asyncio.run(rb.plan("kv", dry_run=True))
    assert plan["dry_run"] and len(plan["moves"]) == 1
    mv = plan["moves"][0]
    assert (mv["source"], mv["target"]) == ("s1", "s2")
    assert 350 < mv["rows_estimate"] < 650 and mv["bytes_estimate"] > mv["rows_estimate"]
    assert cl.catalog.to_bytes() == before
    assert {g: shard_rows(cl, g) for g in ("s1", "s2")} == data


@pytest.mark.parametrize("colocated", [False, True])
def test_move_with_concurrent_writes(colocated):
    """Invariant: moving half the keyspace while clients insert, update and delete keys
    in it and elsewhere loses and duplicates nothing: the union over shards equals a
    reference that got every acknowledged write, each row sits on the shard owning its
    key, each shard's own view equals the catalog, and a colocation group moves whole."""
    cl, router, ref = make(3000, colocated)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=200))

    async def main():
        stop = asyncio.Event()
        acked = []
        ws = [asyncio.create_task(writer(router, ref, stop, s, acked)) for s in range(3)]
        await asyncio.sleep(0.05)
        plan = await rb.plan("kv")
        res = await rb.wait([m["move_id"] for m in plan["moves"]], timeout=60)
        stop.set()
        await asyncio.gather(*ws)
        return plan, res, acked
    plan, res, acked = asyncio.run(main())
    assert list(res.values()) == ["done"], res
    assert len(acked) > 100
    st = asyncio.run(rb.status())["moves"][0]
    assert st["phase"] == "done" and st["rows_copied"] > 0 and st["checksum"]["rows"] > 0
    tables = ("kv", "kv_log") if colocated else ("kv",)
    check_placement(cl, ref, tables)
    assert set(cl.catalog.colocations["kv"]["owners"]) == {"s1", "s2"}


STEPS = ["capture_installed", "copy_batch", "copied", "catchup_round", "verified", "fenced",
         "drained", "switched_catalog", "pushed_target", "pushed_source", "cleaned"]


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", STEPS)
def test_coordinator_crash_at_each_step_resumes(step):
    """Invariant: the coordinator dying at any step (its task destroyed mid-move) leaves
    a state a fresh coordinator resumes to done, with the data check holding and no
    key owned twice or by nobody at any point."""
    cl, router, ref = make(1500)
    be = FakeMoveBackend(cl)
    rb = Rebalancer(be, RebalanceConfig(batch_rows=100))
    hits = []

    def hook(name):
        # ownership invariant at every step: the catalog partitions the keyspace
        col = cl.catalog.colocations["kv"]
        ks.check_starts(col["starts"])
        if name == step and not hits:
            hits.append(name)
            raise Crash(name)
    rb.hook = hook

    async def main():
        stop = asyncio.Event()
        acked = []
        ws = [asyncio.create_task(writer(router, ref, stop, s, acked, 400)) for s in range(2)]
        plan = await rb.plan("kv")
        mid = plan["moves"][0]["move_id"]
        with pytest.raises(Crash):
            await rb.wait([mid], timeout=60)
        rb2 = Rebalancer(be, RebalanceConfig(batch_rows=100))   # a new coordinator
        assert await rb2.resume_all() == 1
        res = await rb2.wait([mid], timeout=60)
        stop.set()
        await asyncio.gather(*ws)
        return res
    res = asyncio.run(main())
    assert hits == [step]
    assert list(res.values()) == ["done"]
    check_placement(cl, ref)


def test_cancel_before_fence_rolls_back():
    """Invariant: a move cancelled before its fence rolls back: ownership unchanged, the
    target holds none of the range, the source keeps every row, no trigger is left."""
    cl, router, ref = make(2000)
    be = FakeMoveBackend(cl)
    rb = Rebalancer(be, RebalanceConfig(batch_rows=100))
    before = (list(cl.catalog.colocations["kv"]["starts"]), list(cl.catalog.colocations["kv"]["owners"]))

    async def main():
        plan = await rb.plan("kv")
        mid = plan["moves"][0]["move_id"]
        for _ in range(2000):
            if cl.catalog.moves[mid]["rows_copied"] or shard_rows(cl, "s2"):
                break
            await asyncio.sleep(0.001)
        await rb.cancel(mid)
        return await rb.wait([mid], timeout=30)
    res = asyncio.run(main())
    assert list(res.values()) == ["cancelled"]
    col = cl.catalog.colocations["kv"]
    assert (col["starts"], col["owners"]) == before
    assert not shard_rows(cl, "s2")
    check_placement(cl, ref)
    m = list(cl.catalog.moves.values())[0]
    assert m["cleaned"] and m["phase"] == "cancelled"


def test_throttle_limits_copy_rate():
    """Invariant: with max_rows_per_s set, the copy phase is no faster than the limit."""
    import time
    cl, router, ref = make(600)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=50, max_rows_per_s=1000))

    async def main():
        t0 = time.monotonic()
        plan = await rb.plan("kv")
        await rb.wait([m["move_id"] for m in plan["moves"]], timeout=30)
        return time.monotonic() - t0, plan
    dt, plan = asyncio.run(main())
    copied = cl.catalog.moves[plan["moves"][0]["move_id"]]["rows_copied"]
    assert copied > 200
    assert dt >= (copied - 50) / 1000, (dt, copied)
    check_placement(cl, ref)


def test_stale_router_never_writes_to_old_owner():
    """Invariant: after the switch, a router still holding the pre-move catalog sends
    writes to the old owner; the old owner refuses them (Fenced, then Moved) and the
    write lands on the new owner; the old owner's copy receives nothing."""
    cl, router, ref = make(1000)
    stale = Router(cl.executor, type(cl.source)(cl.catalog))   # its own copy, never refreshed yet
    rb = Rebalancer(FakeMoveBackend(cl))

    async def main():
        plan = await rb.plan("kv")
        await rb.wait([m["move_id"] for m in plan["moves"]], timeout=30)
        mv = plan["moves"][0]
        assert stale.cat.current().owner_of("kv", mv["start"]) == "s1"
        keys = [k for k in range(10000, 12000)
                if mv["start"] <= ks.key_id(k, "hash", "integer") < ks.end_from_json(mv["end"])][:20]
        rej0 = cl.groups["s1"].rejected
        for k in keys:
            r = await stale.execute([("INSERT INTO kv(id, v, n) VALUES (?, 'late', 0)", [k])])
            assert "error" not in r[0]
        return keys, rej0
    keys, rej0 = asyncio.run(main())
    assert cl.groups["s1"].rejected > rej0
    marks = ",".join("?" * len(keys))
    assert cl.sql("s1", f"SELECT count(*) FROM kv WHERE id IN ({marks})", keys)[0][0] == 0
    assert cl.sql("s2", f"SELECT count(*) FROM kv WHERE id IN ({marks})", keys)[0][0] == len(keys)


def test_remove_from_shard_drains_then_removes():
    """Invariant: removing a shard from a table moves every range it owns to the others,
    then takes it out of the placement; the data check holds."""
    cl, router, ref = make(1500)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=200))

    async def main():
        plan = await rb.plan("kv")
        await rb.wait([m["move_id"] for m in plan["moves"]], timeout=30)
        assert set(cl.catalog.colocations["kv"]["owners"]) == {"s1", "s2"}
        plan2 = await rb.remove_from_shard("kv", "s1", wait=True)
        return plan2
    plan2 = asyncio.run(main())
    assert [(m["source"], m["target"]) for m in plan2["moves"]] == [("s1", "s2")]
    col = cl.catalog.colocations["kv"]
    assert set(col["owners"]) == {"s2"} and col["shards"] == ["s2"]
    assert cl.sql("s1", "SELECT count(*) FROM kv")[0][0] == 0
    assert sorted(cl.sql("s2", "SELECT * FROM kv")) == sorted(ref.execute("SELECT * FROM kv").fetchall())


def test_split_at_key_and_move_range():
    """Invariant: splitting at a key changes no ownership (epoch unchanged); moving the
    range that starts at that key puts exactly those rows on the named shard."""
    cl, router, ref = make(1500)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=200))
    epoch = cl.catalog.epoch

    async def main():
        res = await rb.split("kv", key=777)
        assert cl.catalog.epoch == epoch
        at = res["at"]
        col = cl.catalog.colocations["kv"]
        assert at in col["starts"]
        i = col["starts"].index(at)
        end = col["starts"][i + 1] if i + 1 < len(col["starts"]) else None
        await rb.move_range("kv", at, end, "s2", wait=True)
        return at, end
    at, end = asyncio.run(main())
    e = ks.end_from_json(end)
    want = [r for r in ref.execute("SELECT * FROM kv").fetchall()
            if at <= ks.key_id(r[0], "hash", "integer") < e]
    assert sorted(cl.sql("s2", "SELECT * FROM kv")) == sorted(want)
    assert cl.catalog.owner_of("kv", ks.key_id(777, "hash", "integer")) == "s2"
    check_placement(cl, ref)


def test_move_of_unknown_table_is_a_clear_error():
    """Invariant: planning an unregistered table raises NotFound naming it; nothing changes."""
    from raftsqlite.errors import NotFound
    cl, router, ref = make(100)
    before = cl.catalog.to_bytes()
    rb = Rebalancer(FakeMoveBackend(cl))
    with pytest.raises(NotFound, match="nosuch"):
        asyncio.run(rb.plan("nosuch", dry_run=True))
    assert cl.catalog.to_bytes() == before


def test_deposed_coordinator_stops_without_rollback_and_successor_finishes():
    """Invariant: a coordinator that loses the default group's leadership stops at once
    (no further shard writes, no rollback: the catalog keeps the move's phase), and the
    next coordinator resumes the move to done with the data check holding."""
    from raftsqlite.sharding.rebalance import NotCoordinator
    cl, router, ref = make(1500)
    be = FakeMoveBackend(cl)
    leader = {"ok": True}
    inner = be.executor

    class Ex:
        async def execute(self, *a, **kw):
            if not leader["ok"]:
                raise NotCoordinator("deposed")
            return await inner.execute(*a, **kw)

        async def query(self, *a, **kw):
            return await inner.query(*a, **kw)

    class Deposable(FakeMoveBackend):
        def __init__(self):
            super().__init__(cl)
            self.executor = Ex()
    rb = Rebalancer(Deposable(), RebalanceConfig(batch_rows=100))
    batches = []

    def hook(step):
        if step == "copy_batch":
            batches.append(1)
            if len(batches) == 3:
                leader["ok"] = False
    rb.hook = hook

    async def main():
        plan = await rb.plan("kv")
        mid = plan["moves"][0]["move_id"]
        with pytest.raises(NotCoordinator):
            await rb.wait([mid], timeout=30)
        assert cl.catalog.moves[mid]["phase"] == "copying"
        n_target = cl.sql("s2", "SELECT count(*) FROM kv")[0][0]
        rb2 = Rebalancer(be, RebalanceConfig(batch_rows=100))
        await rb2.resume_all()
        return n_target, await rb2.wait([mid], timeout=30)
    n_target, res = asyncio.run(main())
    assert n_target > 0 and list(res.values()) == ["done"]
    check_placement(cl, ref)


class Flaky:
    """An executor whose shard calls fail the way faults make them fail: a write that
    applied but whose answer was lost (``OutcomeUnknown``), a member that dropped the
    connection (``Unavailable``), a leader change (``NotLeader``)."""

    def __init__(self, inner, failures):
        self.inner = inner
        self.failures = list(failures)
        self.raised = []

    async def execute(self, group, statements, **kw):
        res = await self.inner.execute(group, statements, **kw)     # applied...
        if self.failures and self.failures[0][0] == "execute":
            err = self.failures.pop(0)[1]
            self.raised.append(err.__name__)
            raise err("fault: the answer was lost")                  # ...but unknown
        return res

    async def query(self, group, statements, **kw):
        if self.failures and self.failures[0][0] == "query":
            err = self.failures.pop(0)[1]
            self.raised.append(err.__name__)
            raise err("fault: connection dropped")
        return await self.inner.query(group, statements, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_move_survives_lost_outcomes_and_leader_changes():
    """Invariant: a move's shard reads and writes are idempotent, so an ambiguous
    outcome (applied, answer lost), a dropped connection or a leader change during the
    copy is retried and the move completes with every row in place, instead of failing
    the whole move (found by the sharded fault suite: moves under faults failed with
    'OutcomeUnknown: leadership lost before commit')."""
    from raftsqlite.errors import NotLeader, OutcomeUnknown, Unavailable
    cl, router, ref = make(1500)
    be = FakeMoveBackend(cl)
    flaky = Flaky(cl.executor, [("execute", OutcomeUnknown), ("query", Unavailable),
                                ("execute", OutcomeUnknown), ("query", NotLeader),
                                ("execute", Unavailable)])
    be.executor = flaky
    rb = Rebalancer(be, RebalanceConfig(batch_rows=200, retry_s=10))

    async def main():
        plan = await rb.plan("kv")
        return await rb.wait([m["move_id"] for m in plan["moves"]], timeout=60)
    res = asyncio.run(main())
    assert flaky.raised == ["OutcomeUnknown", "Unavailable", "OutcomeUnknown", "NotLeader",
                            "Unavailable"], flaky.raised
    assert list(res.values()) == ["done"], (res, asyncio.run(rb.status()))
    check_placement(cl, ref, ("kv",))


def test_change_capture_logs_an_update_once_unless_its_key_changes():
    """Invariant: during a move, the source's change capture logs an UPDATE that keeps
    its key as one change (not two), one that changes the key as both keys, and inserts
    and deletes as one each; the move still ends with every row in place."""
    cl, router, ref = make(2000)
    be = FakeMoveBackend(cl)
    rb = Rebalancer(be, RebalanceConfig(batch_rows=50, max_rows_per_s=2000))

    def logged(k):
        return cl.sql("s1", "SELECT count(*) FROM _rs_changes WHERE k = ?", (k,))[0][0]

    async def main():
        plan = await rb.plan("kv")
        mid = plan["moves"][0]["move_id"]
        for _ in range(5000):
            if cl.sql("s1", "SELECT 1 FROM sqlite_master WHERE type = 'trigger'"):
                break
            await asyncio.sleep(0.001)
        conn = cl.groups["s1"].conn
        k = cl.sql("s1", "SELECT id FROM kv ORDER BY id LIMIT 1")[0][0]
        conn.execute("UPDATE kv SET n = n + 1 WHERE id = ?", (k,))
        ref.execute("UPDATE kv SET n = n + 1 WHERE id = ?", (k,))
        same = logged(k)
        conn.execute("UPDATE kv SET id = 900001 WHERE id = ?", (k,))
        moved = (logged(k) - same, logged(900001))
        conn.execute("UPDATE kv SET id = ? WHERE id = 900001", (k,))   # put it back
        await rb.cancel(mid)
        return same, moved, await rb.wait([mid], timeout=30)
    same, moved, res = asyncio.run(main())
    assert same == 1 and moved == (1, 1), (same, moved)
    assert list(res.values()) == ["cancelled"]
    check_placement(cl, ref)
