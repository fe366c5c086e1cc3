"""Online rebalancing on real processes (#7): a default group and two shard groups of one
member each, the stand-in node integration (tests/cluster/rebalance_node.py), writes
routed with guards by the real router over HTTP, checked against a reference."""
import asyncio
import sqlite3

import pytest

from raftsqlite.sharding import keyspace as ks

from tests.cluster.node_harness import call
from tests.cluster.rebalance_harness import NodeSQL, ShardedCluster, check_placement, setup_table, write_load

pytestmark = pytest.mark.timeout(180)

N_ROWS = 100_000


@pytest.fixture()
def cluster(tmp_path):
    cl = ShardedCluster(str(tmp_path), env={"RAFTSQLITE_REBALANCE": '{"batch_rows": 2000}'})
    try:
        cl.start()
        yield cl
    finally:
        cl.stop()


def reference(rows):
    ref = sqlite3.connect(":memory:", isolation_level=None)
    ref.execute("CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    ref.executemany("INSERT INTO kv VALUES (?,?,?)", rows)
    return ref


def test_dry_run_then_move_with_concurrent_writes(cluster):
    """Invariants: (1) a dry run returns the plan and changes nothing (catalog bytes, row
    counts); (2) moving half of a 100k-row table while clients insert, update and delete
    keys inside and outside the moving range leaves every acknowledged write present
    exactly once, on the shard owning its key, with ownership equal on catalog and shards."""
    cl = cluster
    rows = setup_table(cl, N_ROWS)
    ref = reference(rows)
    before = cl.catalog().to_bytes()
    counts = {g: cl.rows(g, "SELECT count(*) FROM sqlite_master")[0][0] for g in cl.shards}
    st, plan = cl.rebalance({"table_name": "kv", "dry_run": True})
    assert st == 200, plan
    assert plan["dry_run"] and [(m["source"], m["target"]) for m in plan["moves"]] == [("s1", "s2")]
    assert 0.4 * N_ROWS < plan["moves"][0]["rows_estimate"] < 0.6 * N_ROWS
    assert plan["moves"][0]["bytes_estimate"] > 0
    assert cl.catalog().to_bytes() == before
    assert {g: cl.rows(g, "SELECT count(*) FROM sqlite_master")[0][0] for g in cl.shards} == counts
    assert cl.rows("s1", "SELECT count(*) FROM kv")[0][0] == N_ROWS

    async def main():
        router, ex, src = cl.router()
        await src.refresh()
        stop = asyncio.Event()
        stats = {"old_catalog": src.current()}
        # clients write through the default node's router (the product's path) and
        # through a router in this process (guards over /shard/call)
        node_sql = NodeSQL(cl.addr("default"))
        ws = [asyncio.create_task(write_load(w, ref, stop, s, stats, key_max=N_ROWS + 5000,
                                                 writers=3))
              for s, w in enumerate((node_sql, node_sql, router))]
        await asyncio.sleep(0.5)
        st, plan = await asyncio.to_thread(cl.rebalance, {"table_name": "kv"})
        assert st == 200, plan
        status = await asyncio.to_thread(cl.wait_moves_end, 120)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*ws)
        await ex.close()
        await node_sql.close()
        return status, stats
    status, stats = asyncio.run(main())
    m = status["moves"][0]
    assert m["phase"] == "done", m
    for g in ("s1", "s2"):    # the ended move's fencing token left both shards' state
        st, doc = call(cl.addr(g), "GET", "/status?key=sharding.ownership", timeout=10)
        assert st == 200 and doc["moves_claimed"] == 0 and doc["token_floor"] > 0, (g, doc)
    assert m["rows_copied"] >= 0.4 * N_ROWS and m["checksum"]["rows"] > 0
    assert stats["acked"] > 50
    cat = check_placement(cl, ref.execute("SELECT id, v, n FROM kv").fetchall())
    assert sorted(set(cat.colocations["kv"]["owners"])) == ["s1", "s2"]

    # A router that still holds the catalog from before the move writes keys of the moved
    # range: the old owner must refuse every one (nothing applied there).
    old = stats["old_catalog"]

    async def stale_writes():
        router, ex, src = cl.router()
        src.cat = old
        ex.cat = old
        mv = cl.catalog().moves["m1"]
        keys = [k for k in range(N_ROWS + 10_000, N_ROWS + 12_000)
                if mv["start"] <= ks.key_id(k, "hash", "integer") < ks.end_from_json(mv["end"])][:30]
        assert old.owner_of("kv", ks.key_id(keys[0], "hash", "integer")) == "s1"
        for k in keys:
            r = await router.execute([("INSERT INTO kv(id, v, n) VALUES (?, 'late', 0)", [k])])
            assert "error" not in r[0], r
            ref.execute("INSERT INTO kv(id, v, n) VALUES (?, 'late', 0)", [k])
        st = router.stats()
        await ex.close()
        return keys, st
    keys, rstats = asyncio.run(stale_writes())
    assert rstats["moved_retries"] >= 1, rstats
    marks = ",".join("?" * len(keys))
    assert cl.rows("s1", f"SELECT count(*) FROM kv WHERE id IN ({marks})", keys)[0][0] == 0
    assert cl.rows("s2", f"SELECT count(*) FROM kv WHERE id IN ({marks})", keys)[0][0] == len(keys)
    check_placement(cl, ref.execute("SELECT id, v, n FROM kv").fetchall())
