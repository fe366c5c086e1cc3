"""A default-group member that has just joined reads the catalog from its own state
machine, empty until it has caught up with its leader: it must not route statements on
sharded tables until then (they would plan as unsharded ones and run on the default
group's empty template table). Real processes: a default group and one shard group."""
import threading
import time

import pytest

from raftsqlite.sharding.local import LocalCluster, http

pytestmark = pytest.mark.timeout(180)


def _ok(st, body):
    assert st == 200, body
    return body


def test_joining_default_member_never_writes_sharded_rows_to_the_template(tmp_path):
    """Invariant: every write on a sharded table acknowledged by a default-group member
    that is still joining lands on the shard (none on the default group's template
    table), and every read it answers sees the shard's rows; until it has caught up it
    refuses (503) instead."""
    cl = LocalCluster(str(tmp_path), shards=("shard1",))
    cl.start()
    try:
        d = cl.addrs["default"]
        _ok(*http("POST", d, "/db/execute", [["CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)"]]))
        _ok(*http("POST", d, "/table/register", {"table_name": "kv", "shard_key": "id",
                                                   "shard_func": "hash"}))
        _ok(*http("POST", d, "/table/add-to-shard", {"table_name": "kv", "shard_id": "shard1"}))
        _ok(*http("POST", d, "/table/rebalance", {"table_name": "kv"}))
        body = _ok(*http("POST", d, "/db/execute", [["INSERT INTO kv VALUES (0, 'seed')"]]))
        assert body["results"][0].get("rows_affected") == 1, body

        new = cl.start_node("default2", "default", join=d)
        acked, answers, refused = [], [], []
        stop = time.monotonic() + 60

        def hammer():
            i = 1
            while time.monotonic() < stop:
                try:
                    st, b = http("POST", new, "/db/execute",
                                 [[f"INSERT INTO kv VALUES ({i}, 'x')"]], timeout=5)
                except OSError:
                    time.sleep(0.01)       # not listening yet
                    continue
                if st == 200 and not b["results"][0].get("error"):
                    acked.append(i)
                    i += 1
                    st, b = http("POST", new, "/db/query?level=weak",
                                 [["SELECT v FROM kv WHERE id = 0"]], timeout=5)
                    if st == 200:
                        answers.append(b["results"][0].get("values"))
                    if len(acked) >= 20:
                        return
                else:
                    refused.append(st)
                    time.sleep(0.01)

        t = threading.Thread(target=hammer)
        t.start()
        t.join(90)
        assert not t.is_alive()
        cl.wait_ready(new, 60)
        assert acked, f"the new member never accepted a write (answers {refused[-5:]})"
        tmpl = _ok(*http("POST", d, "/db/query?shard_id=default&level=strong",
                         [["SELECT id FROM kv ORDER BY id"]]))["results"][0].get("values") or []
        assert tmpl == [], f"rows written to the default group's template table: {tmpl}"
        on_shard = _ok(*http("POST", d, "/db/query?shard_id=shard1&level=strong",
                             [["SELECT id FROM kv ORDER BY id"]]))["results"][0].get("values")
        assert {r[0] for r in on_shard} >= set(acked) | {0}
        assert all(a == [["seed"]] for a in answers), answers
    finally:
        cl.stop()
