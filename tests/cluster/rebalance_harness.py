"""Real processes for the rebalance tests and bench: a default group and shard groups of
one member each (``raft-sqlite`` nodes; shards started with ``-shard NAME -join
<default>``), writes through a node's router (``/db/execute``) or through a router in
the calling process (the real ``Router`` over HTTP, with guards), and checks.
Everything started is stopped by PID.

Env passed to nodes: ``RAFTSQLITE_REBALANCE`` (settings JSON) and
``RAFTSQLITE_REBALANCE_FAULT`` (fault injection at a workflow step, tests only)."""
import base64
import asyncio
import os
import time

import orjson

from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import Catalog
from tests.cluster.rebalance_remote import HttpCatalogSource, HttpExecutor
from raftsqlite.sharding.router import Router

from tests.cluster.node_harness import NodeProc, call, free_port, wait_for

GROUPS = ("default", "s1", "s2")


class ShardedCluster:
    def __init__(self, workdir, shards=("s1", "s2"), env=None):
        self.workdir = workdir
        self.env = env or {}
        self.procs = {}
        for g in ("default",) + tuple(shards):
            p = NodeProc(workdir, f"{g}-n1", free_port(), free_port(),
                         extra=[] if g == "default" else ["-shard", g])
            self.procs[g] = p
        self.shards = tuple(shards)

    def argv(self, g):
        p = self.procs[g]
        a = p.argv()
        if g != "default":
            a += ["-join", self.addr("default")]
        return a

    def start(self, g=None, timeout=30):
        for name in ([g] if g else list(self.procs)):
            self._launch(name)
        for name in ([g] if g else list(self.procs)):
            p = self.procs[name]
            for attempt in range(3):
                if self._wait_ours(p, timeout, registered=g is None):
                    break
                if p.alive() or g is not None:
                    raise AssertionError(f"{name} did not become leader: {p.tail(10)}")
                # our process died: on this shared machine someone took the port we
                # picked; a first start may move to new ports
                p.http_port, p.raft_port = free_port(), free_port()
                p.http = f"127.0.0.1:{p.http_port}"
                self._launch(name)
            else:
                raise AssertionError(f"{name} could not start: {p.tail(10)}")

    def _launch(self, name):
        p = self.procs[name]
        old = os.environ.copy()
        os.environ.update(self.env)
        try:
            p.start(self.argv(name))
        finally:
            os.environ.clear()
            os.environ.update(old)

    def _wait_ours(self, p, timeout, registered=True):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not p.alive():
                return False
            try:
                s = p.status()
                if s and s["store"].get("is_leader") and s["node"]["node_id"] == p.node_id:
                    g = s["node"].get("shard") or "default"
                    if not registered or g == "default" or g in self.catalog().groups:
                        return True
            except Exception:
                pass
            time.sleep(0.05)
        return False

    def stop(self):
        for p in self.procs.values():
            p.kill()

    def addr(self, g):
        return self.procs[g].http

    # ---- catalog --------------------------------------------------------------------
    def system(self, g, ops, timeout=15):
        ops = [[n, base64.b64encode(orjson.dumps(a)).decode()] for n, a in ops]
        st, body = call(self.addr(g), "POST", "/shard/system",
                        orjson.dumps({"ops": ops}).decode(), timeout=timeout)
        assert st == 200, (g, ops, body)
        return body["results"]

    def catalog(self):
        st, body = call(self.addr("default"), "GET", "/shard/catalog?after=-1", raw=True)
        assert st == 200, body
        return Catalog.from_bytes(body)

    def api(self, path, body, timeout=30):
        st, res = call(self.addr("default"), "POST", path, orjson.dumps(body).decode(), timeout=timeout)
        assert st == 200, (path, body, res)
        return res

    def push_ownership(self, groups=None):
        cat = self.catalog()
        for g in groups or self.shards:
            self.system(g, [["own.set_all", {"group": g, "cols": cat.ownership_for(g)}]])


    # ---- data -----------------------------------------------------------------------
    def rows(self, g, sql, params=()):
        st, body = call(self.addr(g), "POST", f"/db/query?level=linearizable&shard_id={g}",
                        orjson.dumps([[sql] + list(params)]).decode(), timeout=30)
        assert st == 200, body
        r = body["results"][0]
        assert "error" not in r, r
        return [tuple(x) for x in r.get("values") or []]

    def execute(self, g, stmts, timeout=30):
        st, body = call(self.addr(g), "POST", f"/db/execute?transaction=true&shard_id={g}",
                        orjson.dumps(stmts).decode(), timeout=timeout)
        assert st == 200 and all("error" not in r for r in body["results"]), body
        return body["results"]

    def router(self):
        ex = HttpExecutor({g: [self.addr(g)] for g in self.procs})
        src = HttpCatalogSource(ex)
        return Router(ex, src), ex, src

    def rebalance(self, body, timeout=30):
        return call(self.addr("default"), "POST", "/table/rebalance", orjson.dumps(body).decode(),
                    timeout=timeout)

    def status(self):
        st, body = call(self.addr("default"), "GET", "/table/rebalance/status")
        assert st == 200, body
        return body

    def wait_moves_end(self, timeout=90):
        def ended():
            s = self.status()
            if s["moves"] and all(m["phase"] in ("done", "cancelled", "failed") for m in s["moves"]):
                return s
        return wait_for(ended, timeout, "moves to end", interval=0.2)


def setup_table(cl, n_rows, table="kv"):
    """kv registered through the seed's API, on s1 with n_rows rows (loaded through the
    default node's router), then s2 added (owning nothing yet)."""
    cl.execute("default", [f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)"])
    cl.api("/table/register", {"table_name": table, "shard_key": "id", "shard_func": "hash"})
    cl.api("/table/add-to-shard", {"table_name": table, "shard_id": "s1"})
    rows = [(i, f"v{i}", i % 97) for i in range(1, n_rows + 1)]
    for b in range(0, n_rows, 2000):
        part = rows[b:b + 2000]
        st, res = call(cl.addr("default"), "POST", "/db/execute", orjson.dumps(
            [[f"INSERT INTO {table}(id, v, n) VALUES " + ",".join("(?,?,?)" for _ in part)]
             + [x for r in part for x in r]]).decode(), timeout=60)
        assert st == 200 and "error" not in res["results"][0], res
    assert cl.rows("s1", f"SELECT count(*) FROM {table}")[0][0] == n_rows
    cl.api("/table/add-to-shard", {"table_name": table, "shard_id": "s2"})
    return rows


class NodeSQL:
    """Writes through a node's own router (``POST /db/execute``): the product's path."""

    def __init__(self, addr):
        self.addr = addr
        self.session = None

    async def execute(self, statements):
        import aiohttp
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        body = [[sql] + list(args) for sql, args in statements]
        async with self.session.post(f"http://{self.addr}/db/execute", data=orjson.dumps(body),
                                     headers={"Content-Type": "application/json"}) as r:
            j = orjson.loads(await r.read())
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {j}")
            return j["results"]

    async def close(self):
        if self.session is not None:
            await self.session.close()


def check_placement(cl, ref_rows, table="kv", skip_keys=()):
    """Every acknowledged row present exactly once, on the shard owning its key, and
    each shard's own view equals the catalog (no fence left, no trigger left). Keys in
    ``skip_keys`` (writes whose outcome is unknown) are only checked for placement."""
    skip_keys = set(skip_keys)
    cat = cl.catalog()
    union = []
    for g in cl.shards:
        if not cl.rows(g, "SELECT 1 FROM sqlite_master WHERE name = ?", [table]):
            continue
        rows = cl.rows(g, f"SELECT id, v, n FROM {table}")
        for r in rows:
            owner = cat.owner_of(table, ks.key_id(r[0], "hash", "integer"))
            assert owner == g, f"row {r} on {g}, owned by {owner}"
        union.extend(rows)
        assert not cl.rows(g, "SELECT name FROM sqlite_master WHERE type = 'trigger'")
    assert len(union) == len(set(r[0] for r in union)), "a key is held twice"
    want = sorted(r for r in ref_rows if r[0] not in skip_keys)
    got = sorted(r for r in union if r[0] not in skip_keys)
    if got != want:
        missing = set(want) - set(got)
        extra = set(got) - set(want)
        raise AssertionError(f"{len(missing)} acknowledged rows missing (e.g. {sorted(missing)[:3]}), "
                             f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})")
    col = cat.colocations[table]
    ks.check_starts(col["starts"])
    assert not col["fences"]
    return cat


async def write_load(router, ref, stop, seed, stats, n_max=100000, key_max=None, rate=None,
                     table="kv", tolerant=False, writers=1):
    """Random insert/update/delete through the router; the reference (a sqlite3
    connection) gets a write only once it was acknowledged. Latencies recorded.

    With several concurrent writers each must pass ``writers`` (their count) and a distinct
    ``seed`` below it: writer ``seed`` then only touches keys ``k % writers == seed % writers``.
    Two writers with the same key in flight at once could be applied in one order and
    acknowledged in the other, and the reference (applied in acknowledgement order) would then
    differ from a correct cluster."""
    import random
    rnd = random.Random(seed)
    t_next = time.monotonic()
    for i in range(n_max):
        if stop.is_set():
            break
        if rate:
            t_next += 1.0 / rate
            d = t_next - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
        op = rnd.random()
        k = rnd.randrange(seed % writers or writers, key_max + 1, writers)
        uncertain = stats.setdefault("uncertain", set())
        if k in uncertain:
            continue
        if op < 0.4:
            sql, args = f"INSERT OR REPLACE INTO {table}(id, v, n) VALUES (?, ?, ?)", [k, f"w{seed}-{i}", i]
        elif op < 0.75:
            sql, args = f"UPDATE {table} SET v = ?, n = n + 1 WHERE id = ?", [f"u{seed}-{i}", k]
        else:
            sql, args = f"DELETE FROM {table} WHERE id = ?", [k]
        t0 = time.monotonic()
        try:
            res = await router.execute([(sql, args)])
        except Exception:
            if not tolerant:
                raise
            # a process was killed: the outcome of this write is unknown
            uncertain.add(k)
            stats["errors"] = stats.get("errors", 0) + 1
            await asyncio.sleep(0.05)
            continue
        stats.setdefault("lat", []).append((t0, time.monotonic() - t0))
        assert "error" not in res[0], res
        ref.execute(sql, args)
        stats["acked"] = stats.get("acked", 0) + 1
