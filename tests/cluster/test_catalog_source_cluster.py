"""A shard node learns the catalog from the default group's members. One of them cut off
from its leader keeps answering with its old copy; when it was the member the shard node
asked first, the shard node's long-poll waited on it for good (its answer was always "no
change") and each refresh took its copy again, so a table registered meanwhile stayed
unknown to that node's router. A default member with no leader now refuses to serve the
catalog (503), and the shard node asks the next one. Real processes: 3 default members
and a 1-member shard group on one fault network."""
import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

from raftsqlite.testing.sharded import ShardedCluster

pytestmark = pytest.mark.timeout(180)


def _req(method, addr, path, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _ok(res):
    st, body = res
    assert st == 200, body
    return body


async def _until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(cond)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)


async def _run(tmp_path):
    sc = ShardedCluster(size=3, workdir=tmp_path, shards=("shard1",), shard_size=1,
                        start_timeout=60)
    await sc.start()
    try:
        call = asyncio.to_thread
        default = sc.default.members
        (shard_node,) = sc.groups["shard1"].members.values()
        N = shard_node.http_addr
        # The member the shard node asks first (its catalog lists members by id) is the
        # one to cut off; not the leader, so the others go on without it.
        stale = default[sorted(default)[0]]
        lead = await sc.default.wait_for_leader(30)
        if lead.id == stale.id:
            other = sorted(default)[1]
            _ok(await call(_req, "POST", lead.http_addr, "/leader", {"id": other}))
            await _until(lambda: _req("GET", stale.http_addr, "/leader")[0] == 200
                         and _req("GET", stale.http_addr, "/leader")[1]["id"] == other,
                         20, f"leadership to move to {other}")
        for o in default.values():
            if o.id != stale.id:
                sc.net.block(o.id, stale.id, both=False)   # it hears nothing; it can send
        # cut off: it has lost its leader (and answers HTTP all the same)
        await _until(lambda: _req("GET", stale.http_addr, "/leader")[0] == 503, 30,
                     f"{stale.id} to lose its leader")
        lead = await sc.default.wait_for_leader(30)
        L = lead.http_addr
        _ok(await call(_req, "POST", L, "/db/execute",
                       [["CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)"]]))
        _ok(await call(_req, "POST", L, "/table/register",
                       {"table_name": "kv", "shard_key": "id", "shard_func": "hash"}))
        _ok(await call(_req, "POST", L, "/table/add-to-shard",
                       {"table_name": "kv", "shard_id": "shard1"}))

        def knows_kv():
            st, cat = _req("GET", N, "/shard/catalog?after=-1&poll=0")
            return st == 200 and "kv" in cat["tables"]
        await _until(knows_kv, 15, "the shard node's catalog to list kv (registered while "
                     f"{stale.id}, the member it asks first, was cut off)")
        body = _ok(await call(_req, "POST", N, "/db/execute",
                              [["INSERT INTO kv (id, v) VALUES (7, 'x')"]], 30))
        assert body["results"][0].get("rows_affected") == 1, body
        on_shard = _ok(await call(_req, "POST", L, "/db/query?shard_id=shard1&level=strong",
                                  [["SELECT id, v FROM kv"]]))["results"][0].get("values")
        assert on_shard == [[7, "x"]], on_shard
        # (why: the cut-off member refuses to serve its copy)
        st, body = await call(_req, "GET", stale.http_addr, "/shard/catalog?after=-1&poll=0")
        assert st == 503 and "no leader" in body, (st, body)
    finally:
        await sc.stop()


def test_shard_node_skips_a_default_member_cut_off_from_its_leader(tmp_path):
    """Invariant: a shard node follows the catalog while the default-group member it asks
    first is cut off from its leader (that member refuses to serve its stale copy): a
    table registered meanwhile reaches the shard node's router within seconds, and a
    write through that node lands on the shard."""
    asyncio.run(_run(tmp_path))
