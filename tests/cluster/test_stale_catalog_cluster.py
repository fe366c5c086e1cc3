"""A default-group member cut off from the log while a table is registered still plans
that table as unsharded (its catalog is its own state machine's, which is behind). The
default group must refuse such a plan at apply time (``StaleCatalog``), so the member's
router refreshes, plans again and writes the row to the shard: never into the default
group's template table. Real processes: 3 default members and a 1-member shard group on
one fault network (the member's incoming links are stalled while the table is
registered)."""
import asyncio
import json
import urllib.request

import pytest

from raftsqlite.testing.sharded import ShardedCluster

pytestmark = pytest.mark.timeout(180)


def _post(addr, path, body, timeout=30):
    req = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _get(addr, path, timeout=10):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def _ok(res):
    st, body = res
    assert st == 200, body
    return body


async def _run(tmp_path):
    sc = ShardedCluster(size=3, workdir=tmp_path, shards=("shard1",), shard_size=1,
                        start_timeout=60)
    await sc.start()
    try:
        lead = await sc.default.wait_for_leader(30)
        stale = next(m for m in sc.default.members.values() if m.id != lead.id)
        others = [m for m in sc.default.members.values() if m.id != stale.id]
        L, S = lead.http_addr, stale.http_addr
        call = asyncio.to_thread
        _ok(await call(_post, L, "/db/execute",
                       [["CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)"]]))
        # the stale member has the table (its schema is current), then it is cut off
        for _ in range(100):
            r = _ok(await call(_post, S, "/db/query?level=none",
                               [["SELECT count(*) FROM sqlite_master WHERE name = 'kv'"]]))
            if r["results"][0]["values"] == [[1]]:
                break
            await asyncio.sleep(0.1)
        for o in others:
            sc.net.block(o.id, stale.id, both=False)   # it hears nothing; it can still send
        _ok(await call(_post, L, "/table/register",
                       {"table_name": "kv", "shard_key": "id", "shard_func": "hash"}))
        _ok(await call(_post, L, "/table/add-to-shard", {"table_name": "kv", "shard_id": "shard1"}))
        # The member's catalog has not seen the registration: the scenario is real.
        assert "kv" not in (await call(_get, S, "/shard/catalog?after=-1&poll=0"))["tables"]
        # The write through the cut-off member: planned with its old catalog (unsharded),
        # sent to the leader, which answers on a stalled link until the heal.
        w = asyncio.ensure_future(call(_post, S, "/db/execute",
                                       [["INSERT INTO kv (id, v) VALUES (1, 'x')"]], 60))
        await asyncio.sleep(2.0)
        assert not w.done(), await w
        await sc.heal()
        body = _ok(await asyncio.wait_for(w, 60))
        assert body["results"][0].get("rows_affected") == 1, body
        tmpl = _ok(await call(_post, L, "/db/query?shard_id=default&level=strong",
                              [["SELECT id FROM kv"]]))["results"][0].get("values")
        assert not tmpl, f"an acknowledged write landed in the default group's template: {tmpl}"
        shard = _ok(await call(_post, L, "/db/query?shard_id=shard1&level=strong",
                               [["SELECT id, v FROM kv"]]))["results"][0].get("values")
        assert shard == [[1, "x"]], shard
        # (this member's router met StaleCatalog and planned again; a build whose
        # unsharded path skips the router gets the same from its leader re-planning the
        # forwarded request: either way the row is on the shard)
        st = await call(_get, S, "/status")
        assert "stale_catalog_retries" in st["sharding"]["router"], st["sharding"]["router"]
    finally:
        await sc.stop()


def test_member_cut_off_during_registration_writes_to_the_shard(tmp_path):
    """Invariant: every write acknowledged through a default-group member whose catalog
    missed a table's registration lands on the shard that owns its key, none in the
    default group's template table."""
    asyncio.run(_run(tmp_path))
