"""A move's coordinator across leadership changes of the default group, on in-process
groups (sharding.fake): the same node losing and regaining the leadership, and a
coordinator replaced while its copy waits out the throttle.

Found by the sharded nemesis (a 300 s run, artifacts of 2026-11-26): move m3 stayed in
``copying`` for good. Its Raft log showed three progress records in 256 s: every node
that had once been deposed while coordinating could never coordinate the move again
(each resumed chain awaited the cancelled one and died of its CancelledError), and a
coordinator's only batch before a 35 s throttle wait was never saved."""
import asyncio
import logging
import time

import pytest

from raftsqlite.sharding.catalog import MOVE_END
from raftsqlite.sharding.fake import FakeCluster
from raftsqlite.sharding.rebalance import RebalanceConfig
from raftsqlite.sharding.rebalance_service import FakeMoveBackend, Rebalancer
from raftsqlite.sharding.router import Router

pytestmark = pytest.mark.timeout(60)

DDL = "CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT)"


def make(keys=40, per_key=30):
    """``items`` sharded by ``k`` with ``per_key`` rows per key (like the append
    workload's lists), all on s1; s2 placed and owning nothing."""
    cl = FakeCluster(("s1", "s2"))
    cl.op("register_table", table="items", shard_key="k", shard_func="hash",
          key_affinity="integer")
    cl.op("add_to_shard", table="items", shard="s1")
    router = Router(cl.executor, cl.source)
    asyncio.run(router.execute([DDL]))
    rows = [(k, f"{k}:{j}") for k in range(keys) for j in range(per_key)]
    for b in range(0, len(rows), 300):
        part = rows[b:b + 300]
        asyncio.run(router.execute([("INSERT INTO items(k, v) VALUES " + ",".join("(?,?)" for _ in part),
                                     [x for r in part for x in r])]))
    cl.op("add_to_shard", table="items", shard="s2")
    return cl


async def until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def two_shard_catalog():
    """A catalog with groups s1 and s2 and table t (hash on k) on both."""
    from raftsqlite.sharding.catalog import Catalog
    cat = Catalog()
    for g in ("s1", "s2"):
        cat.apply("catalog.add_group", {"group": g})
    cat.apply("catalog.register_table", {"table": "t", "shard_key": "k", "shard_func": "hash"})
    cat.apply("catalog.add_to_shard", {"table": "t", "shard": "s1"})
    cat.apply("catalog.add_to_shard", {"table": "t", "shard": "s2"})
    return cat


def placed_once(cl):
    """Every row is on the shard owning its key, exactly once, nothing lost."""
    cat = cl.catalog
    from raftsqlite.sharding import keyspace as ks
    union = []
    for g in ("s1", "s2"):
        if not cl.sql(g, "SELECT 1 FROM sqlite_master WHERE name = 'items'"):
            continue                     # a target gets the table with its first move
        for k, v in cl.sql(g, "SELECT k, v FROM items"):
            assert cat.owner_of("items", ks.key_id(k, "hash", "integer")) == g, (k, g)
            union.append((k, v))
    return sorted(union)


def test_node_that_regains_leadership_resumes_the_move_it_was_stopped_in(caplog):
    """Invariant: a node whose coordinator was stopped mid-move (it lost the default
    group's leadership: ``run_forever`` cancels the move's task) resumes the move when
    it leads again, and the move finishes with every row placed once. Before the fix
    the node's every later chain for the colocation died at once (awaiting the
    cancelled one re-raised its CancelledError), silently, so the move stayed
    ``copying`` while this node led."""
    cl = make()
    rows0 = placed_once(cl)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=4, max_rows_per_s=2000))
    leader = {"ok": True}
    batches = []

    def hook(step):
        if step == "copy_batch":
            batches.append(1)
            if len(batches) == 2:
                leader["ok"] = False     # deposed mid-copy, while a throttle wait follows
    rb.hook = hook

    async def main():
        loop = asyncio.create_task(rb.run_forever(lambda: leader["ok"], every=0.01))
        try:
            plan = await rb.plan("items")
            mid = plan["moves"][0]["move_id"]
            await until(lambda: mid in rb.tasks and rb.tasks[mid].done(), 10,
                        "the deposed node to stop the move")
            assert cl.catalog.moves[mid]["phase"] == "copying"
            await asyncio.sleep(0.05)    # several run_forever rounds while deposed
            leader["ok"] = True          # the same node leads again
            await until(lambda: cl.catalog.moves[mid]["phase"] in MOVE_END, 20,
                        f"move {mid} to end after the node led again "
                        f"(phase {cl.catalog.moves[mid]['phase']})")
            return mid
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
    with caplog.at_level(logging.INFO, logger="raftsqlite.rebalance"):
        mid = asyncio.run(main())
    assert cl.catalog.moves[mid]["phase"] == "done"
    assert len(batches) > 2
    assert placed_once(cl) == rows0
    text = caplog.text
    # the operator sees the stop, the resumption and every phase change
    assert "no longer coordinates" in text
    assert "coordinating from phase copying" in text
    for ph in ("catching_up", "verifying", "fenced", "switched", "cleaning", "done"):
        assert f"-> {ph}" in text, (ph, text)


def test_copy_progress_is_saved_before_a_long_throttle_wait():
    """Invariant: a batch that the throttle makes the copy wait for (keys with many
    rows: a batch buys rows/rate seconds) is recorded in the catalog before the wait,
    so a coordinator replaced during the wait neither loses it nor copies it again.
    Before the fix the cursor was saved only when 0.5 s had passed since the last save,
    so a coordinator whose first batch was quick recorded nothing, waited 35 s, and was
    deposed first; successive coordinators repeated the same batch."""
    cl = make(keys=40, per_key=30)
    # 5 keys x 30 rows = 150 rows per batch at 100 rows/s: the second batch cannot
    # start before 1.5 s after the first one, whatever the machine's load
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=5, max_rows_per_s=100,
                                                         progress_every_s=0.5))
    batches = []
    rb.hook = lambda step: batches.append(step) if step == "copy_batch" else None

    async def main():
        plan = await rb.plan("items")
        mid = plan["moves"][0]["move_id"]
        try:
            await until(lambda: batches, 10, "the first batch")
            await until(lambda: (cl.catalog.moves[mid].get("rows_copied") or 0) > 0, 1.0,
                        "the first batch to be saved before the throttle wait")
        finally:
            rb.stop_all()                # the coordinator goes away during the wait
            await asyncio.wait(set(rb.tasks.values()))
        return mid
    mid = asyncio.run(main())
    m = cl.catalog.moves[mid]
    assert len(batches) == 1 and m["phase"] == "copying"
    on_target = cl.sql("s2", "SELECT count(*) FROM items")[0][0]
    assert on_target > 0
    assert m["rows_copied"] == on_target, (m, on_target)
    assert m["resume"]["after"] is not None, m


def test_wait_on_a_deposed_coordinator_says_so():
    """Invariant: ``Rebalancer.wait()`` on a node that lost the default group's
    leadership mid-move raises ``NotCoordinator`` naming the move and saying it goes on
    under the new leader, never a bare ``CancelledError`` (which reads as if the waiter
    itself had been cancelled and escapes every ``except Exception``); the move's state
    stays in the catalog for the next coordinator."""
    from raftsqlite.sharding.rebalance import NotCoordinator
    cl = make(keys=40, per_key=30)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=4, max_rows_per_s=200))
    batches = []
    rb.hook = lambda step: batches.append(step) if step == "copy_batch" else None

    async def main():
        plan = await rb.plan("items")
        mid = plan["moves"][0]["move_id"]
        waiter = asyncio.create_task(rb.wait([mid]))
        await until(lambda: batches, 10, "the first batch")
        rb.stop_all()                    # deposed: run_forever cancels the move's task
        try:
            await asyncio.wait_for(waiter, 5)
        except NotCoordinator as e:
            return mid, str(e)
        raise AssertionError("wait() returned on a deposed coordinator")
    mid, msg = asyncio.run(main())
    assert mid in msg and "new leader" in msg and "leadership" in msg, msg
    assert cl.catalog.moves[mid]["phase"] == "copying"


def test_wait_timeout_leaves_the_move_running():
    """Invariant: a ``wait()`` that times out raises ``asyncio.TimeoutError`` and leaves
    the move running (it used to cancel the move's task with the wait)."""
    cl = make(keys=40, per_key=30)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=4, max_rows_per_s=1500))

    async def main():
        plan = await rb.plan("items")
        mid = plan["moves"][0]["move_id"]
        with pytest.raises(asyncio.TimeoutError):
            await rb.wait([mid], timeout=0.05)
        assert not rb.tasks[mid].done()
        phases = await rb.wait([mid], timeout=30)
        return mid, phases
    mid, phases = asyncio.run(main())
    assert phases == {mid: "done"}


def test_deposed_coordinator_in_flight_is_fenced_by_token():
    """Invariant: once a new coordinator has taken a move over (``move_claim``: a higher
    fencing token, announced to both shards), every request of the old coordinator that
    is still in flight is refused where it is applied (here: the target shard's state
    machine refuses its next copy batch): the old one stops with ``NotCoordinator``, and
    the new one finishes the move with every row placed once. Before the token, both
    coordinators wrote the same range at once."""
    from raftsqlite.sharding.rebalance import NotCoordinator
    cl = make(keys=40, per_key=30)
    rows0 = placed_once(cl)
    be = FakeMoveBackend(cl)
    # the old one saves no progress in between: its next request is a copy batch's
    # write to the target (the shard must refuse it, not only the catalog)
    old = Rebalancer(be, RebalanceConfig(batch_rows=4, progress_every_s=1000))
    new = Rebalancer(be, RebalanceConfig(batch_rows=4))

    async def main():
        gates = {"old": asyncio.Event(), "new": asyncio.Event()}
        seen = {"old": 0, "new": 0}

        def pauser(who, at):
            def hook(step):
                if step == "copy_batch":
                    seen[who] += 1
                    if seen[who] == at:
                        return gates[who].wait()     # this coordinator stalls here
            return hook
        old.hook = pauser("old", 2)
        new.hook = pauser("new", 1)
        plan = await old.plan("items")
        mid = plan["moves"][0]["move_id"]
        await until(lambda: seen["old"] >= 2, 10, "the old coordinator's second batch")
        assert await new.resume_all() == 1            # the new leader takes over
        await until(lambda: seen["new"] >= 1, 10, "the new coordinator's first batch")
        assert cl.catalog.moves[mid]["token"] == 2, cl.catalog.moves[mid]
        assert cl.groups["s1"].own.tokens[mid] == cl.groups["s2"].own.tokens[mid] == 2
        rejected = cl.groups["s2"].rejected
        gates["old"].set()                             # the deposed one goes on...
        with pytest.raises(NotCoordinator) as ei:
            await old.wait([mid], timeout=10)
        assert "older than token 2" in str(ei.value.__cause__), ei.value.__cause__
        assert cl.groups["s2"].rejected == rejected + 1   # ...refused by the target
        gates["new"].set()
        assert await new.wait([mid], timeout=30) == {mid: "done"}
        return mid
    mid = asyncio.run(main())
    assert placed_once(cl) == rows0
    assert cl.catalog.moves[mid]["phase"] == "done"


def test_fencing_token_rules_on_shard_and_catalog():
    """Invariant: a shard and the catalog accept a move's requests carrying the newest
    token seen (or a newer one, which becomes the newest) and refuse older ones without
    changing anything; requests without a token (an operator's cancel, ownership pushes)
    are not a coordinator's and pass; the newest token is kept in the replicated state."""
    import sqlite3

    from raftsqlite.errors import CoordinatorFenced
    from raftsqlite.sharding.glue import ShardState
    from raftsqlite.sharding.ownership import (ShardOwnership, decode_token_guard,
                                              token_guard)
    assert decode_token_guard(token_guard("m7", 3)) == ("m7", 3)
    own = ShardOwnership("s1")
    own.apply("own.set", {"colocation": "c", "epoch": 1, "tables": ["t"],
                          "ranges": [[0, None]]})
    own.apply("own.claim", {"move": "m1", "token": 2})
    before = own.to_bytes()
    with pytest.raises(CoordinatorFenced):
        own.apply("own.fence", {"colocation": "c", "start": 0, "end": None, "move": "m1",
                                "token": 1})
    with pytest.raises(CoordinatorFenced):
        own.take_token("m1", 1)
    assert own.to_bytes() == before
    own.apply("own.fence", {"colocation": "c", "start": 0, "end": None, "move": "m1", "token": 2})
    own.apply("own.unfence", {"colocation": "c", "start": 0, "end": None})   # no token: passes
    assert ShardOwnership.from_bytes(own.to_bytes()).tokens == {"m1": 2}

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE _raftsqlite_meta (k TEXT PRIMARY KEY, v)")
    ex = lambda sql, p=(): conn.execute(sql, p).fetchall()     # noqa: E731
    st = ShardState("s2")
    st.take_token(ex, token_guard("m1", 1))
    st.take_token(ex, token_guard("m1", 3))
    st._bytes = None                     # forget the cache: the stored state decides
    assert st.load(ex).tokens == {"m1": 3}
    with pytest.raises(CoordinatorFenced):
        st.take_token(ex, token_guard("m1", 2))
    st.take_token(ex, token_guard("m2", 1))

    cat = two_shard_catalog()
    mid = cat.apply("catalog.move_create", {"table": "t", "start": 0, "end": None,
                                            "target": "s2"})["id"]
    assert cat.apply("catalog.move_claim", {"move_id": mid})["token"] == 1
    assert cat.apply("catalog.move_claim", {"move_id": mid})["token"] == 2
    b = cat.to_bytes()
    with pytest.raises(CoordinatorFenced):
        cat.apply("catalog.move_update", {"move_id": mid, "token": 1, "phase": "copying"})
    with pytest.raises(CoordinatorFenced):
        cat.apply("catalog.fence", {"table": "t", "start": 0, "end": None, "move_id": mid,
                                    "token": 1})
    assert cat.to_bytes() == b
    cat.apply("catalog.move_update", {"move_id": mid, "token": 2, "phase": "copying"})
    cat.apply("catalog.move_update", {"move_id": mid, "phase": "cancelled"})   # operator


def test_rebalance_request_repeated_while_moving_answers_the_moves():
    """Invariant: ``POST /table/rebalance`` repeated while its moves run (the client's
    retry after the coordinator that created them died before answering) answers those
    same moves and creates none, instead of a "range overlaps a move in progress" error
    for a request that succeeded (the sharded fault suite met it: kill of the default
    group's leader 0.2 s after the request)."""
    cl = make(keys=40, per_key=30)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=40))

    async def main():
        first = await rb.plan("items")
        again = await rb.plan("items")
        ids = [m["move_id"] for m in first["moves"]]
        assert [m["move_id"] for m in again["moves"]] == ids and again["already_moving"]
        assert len(cl.catalog.moves) == len(ids)
        assert (await rb.plan("items", dry_run=True))["dry_run"]
        return await rb.wait(ids, timeout=30)
    assert set(asyncio.run(main()).values()) == {"done"}
