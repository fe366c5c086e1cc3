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
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=4, max_rows_per_s=300))

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
