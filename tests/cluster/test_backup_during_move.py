"""A backup of a sharded database taken while a rebalance moves a range holds every row
exactly once (sharding/backup.py: rows a group holds without owning them are left out, and
a backup across the ownership switch starts again)."""
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.cluster.rebalance_harness import ShardedCluster, setup_table

pytestmark = pytest.mark.timeout(180)

N_ROWS = 30_000


def test_backups_during_a_move_hold_each_row_once(tmp_path):
    """Invariant: every backup taken during an online move of a quarter of a table into
    a shard that already owns another range (copying, catching up, the switch, cleanup)
    holds exactly the table's rows: none missing, none twice, although both shards hold
    the moving range's rows for part of the time."""
    cl = ShardedCluster(str(tmp_path), env={"RAFTSQLITE_REBALANCE": '{"batch_rows": 500, "max_rows_per_s": 4000}'})
    try:
        cl.start()
        rows = setup_table(cl, N_ROWS)
        want = sorted(rows)
        results, phases = [], []
        stop = threading.Event()

        def phase():
            moves = [m for m in cl.status()["moves"] if m["move_id"] != "m1"]
            return moves[-1]["phase"] if moves else "none"

        def backups():
            k = 0
            while not stop.is_set() and k < 200:
                ph = phase()
                try:
                    with urllib.request.urlopen(f"http://{cl.addr('default')}/db/backup",
                                                timeout=120) as r:
                        blob = r.read()
                except urllib.error.HTTPError as e:
                    results.append(f"{e.code}: {e.read()[:200]!r}")
                else:
                    f = tmp_path / f"b{k}.sqlite"
                    f.write_bytes(blob)
                    c = sqlite3.connect(str(f))
                    got = c.execute("SELECT id, v, n FROM kv ORDER BY id").fetchall()
                    c.close()
                    f.unlink()
                    results.append(got == want or f"{len(got)} rows, {len(set(got))} distinct")
                phases.append(ph)
                k += 1
        # s1 -> s2 for the upper half; then s2 owns a range and receives a copy of part
        # of s1's: while that copy runs, s2 holds rows it does not own (the filter's case)
        st, plan = cl.rebalance({"table_name": "kv"})
        assert st == 200, plan
        assert cl.wait_moves_end(120)["moves"][0]["phase"] == "done"
        cl.api("/table/split", {"table_name": "kv", "at": 1 << 62})
        t = threading.Thread(target=backups)
        t.start()
        time.sleep(0.3)
        rec = cl.api("/table/move-range", {"table_name": "kv", "start": 1 << 62,
                                           "end": 1 << 63, "shard_id": "s2"})
        mid = rec["id"]

        def ended():
            m = next(m for m in cl.status()["moves"] if m["move_id"] == mid)
            return m if m["phase"] in ("done", "cancelled", "failed") else None
        from tests.cluster.node_harness import wait_for
        move = wait_for(ended, 120, "the move to end", interval=0.2)
        time.sleep(0.5)
        stop.set()
        t.join(130)
        assert move["phase"] == "done", move
        during = [p for p in phases if p not in ("none", "done")]
        assert len(during) >= 2, phases
        assert results and all(r is True for r in results), list(zip(phases, results))
        assert cl.rows("s2", "SELECT count(*) FROM kv")[0][0] > 0.6 * N_ROWS
    finally:
        cl.stop()
