"""Sharding benchmark.

Default (in-process): the router's planning cost per statement, cold (parse + analyse +
rewrite, empty plan cache) and warm (cache hit + resolving owners for the bound
parameters), and routed inserts / point reads / scatter latency over in-process sqlite3
groups (keys prefixed ``inproc_``: router overhead, not cluster scaling).

``--cluster``: real clusters, a default group with 1 and with 2 shard groups of one
member each (separate ``raft-sqlite -shard`` processes on 127.0.0.1, fsync on), set up
through the seed's /table/* API. Routed single-row INSERTs come from ``--workers`` load
processes, each with its own client-side router (``Router`` + ``POST /shard/call`` with
ownership guards checked by the shards' FSMs; concurrent writes to one shard share a call,
``sharding/coalesce.py``); windows alternate between the two clusters ``--reps`` times so
both see the same machine load, and the per-process CPU use of each window is printed,
with the CPU per insert of the shard nodes and of the routers (the figures that bound
``scale_ratio`` on a machine whose cores the load generators share). ``node_routed_*`` sends the same INSERTs to the shard nodes'
own routers instead. Then the 2-group cluster is loaded to ``--rows`` rows and
``SELECT COUNT(*)`` and ``ORDER BY ... LIMIT 10`` are timed through the router.

Usage: ``python bench/shard_bench.py [--quick]`` or ``python bench/shard_bench.py
--cluster [--seconds 3] [--clients 64] [--workers 2] [--reps 3] [--rows 1000000]
[--no-fsync]`` (``--help`` lists every option). Last line: one JSON object.
"""
import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raftsqlite import codec  # noqa: E402
from raftsqlite.sharding.fake import FakeCluster  # noqa: E402
from raftsqlite.sharding.planner import Planner, build_plan  # noqa: E402
from raftsqlite.sharding.router import Router  # noqa: E402

SHAPES = {
    "point_select": ("SELECT id, name, age FROM users WHERE id = ?", [12345]),
    "in_select": ("SELECT id, name FROM users WHERE id IN (?, ?, ?, ?)", [1, 2, 3, 4]),
    "insert_1row": ("INSERT INTO users (id, name, age) VALUES (?, ?, ?)", [7, "x", 3]),
    "insert_4rows": ("INSERT INTO users (id, name, age) VALUES (?, ?, ?), (?, ?, ?), (?, ?, ?), (?, ?, ?)",
                     [1, "a", 1, 2, "b", 2, 3, "c", 3, 4, "d", 4]),
    "update_by_key": ("UPDATE users SET age = age + 1 WHERE id = ?", [99]),
    "scatter_order_limit": ("SELECT id, name FROM users WHERE age > ? ORDER BY age DESC, id LIMIT 10 OFFSET 5", [30]),
    "scatter_agg": ("SELECT city, COUNT(*), AVG(age) FROM users GROUP BY city HAVING COUNT(*) > ? ORDER BY 2 DESC", [1]),
    "colocated_join": ("SELECT u.name, o.amount FROM users u JOIN orders o ON u.id = o.user_id WHERE u.id = ?", [5]),
    "unsharded": ("SELECT * FROM settings WHERE k = ?", ["a"]),
}


def make_cluster(shards):
    cl = FakeCluster(shards, yield_each=False)
    cl.op("register_table", table="users", shard_key="id", key_affinity="integer")
    cl.op("register_table", table="orders", shard_key="user_id", key_affinity="integer",
          colocate_with="users")
    for s in shards:
        cl.op("add_to_shard", table="users", shard=s)
    for m in cl.catalog.plan_rebalance("users")["moves"]:
        cl.op("assign", table="users", start=m["start"], end=m["end"], owner=m["target"])
    return cl


def plan_costs(cat, runs, n):
    out = {}
    for name, (sql, params) in SHAPES.items():
        cold, warm = [], []
        for _ in range(runs):
            t = time.perf_counter()
            for _ in range(n):
                build_plan(sql, cat).route(cat, params)
            cold.append((time.perf_counter() - t) / n * 1e6)
            p = Planner()
            p.plan(sql, cat)
            t = time.perf_counter()
            for _ in range(n * 20):
                p.plan(sql, cat).route(cat, params)
            warm.append((time.perf_counter() - t) / (n * 20) * 1e6)
        # Median of the runs (the machine is shared, so the minimum is printed too).
        out[name] = {"cold_us": round(statistics.median(cold), 1), "warm_us": round(statistics.median(warm), 2),
                     "cold_us_min": round(min(cold), 1), "warm_us_min": round(min(warm), 2)}
    return out


async def inproc(shards, rows, reads):
    cl = make_cluster(shards)
    r = Router(cl.executor, cl.source)
    await r.execute(["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, city TEXT)"])
    t = time.perf_counter()
    for i in range(rows):
        await r.execute([("INSERT INTO users (id, name, age, city) VALUES (?, ?, ?, ?)",
                          [i, f"n{i}", i % 80, f"c{i % 7}"])])
    ins = rows / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(reads):
        await r.query([("SELECT * FROM users WHERE id = ?", [(i * 7919) % rows])])
    rd = reads / (time.perf_counter() - t)
    lat = {}
    for name, sql in (("count", "SELECT COUNT(*) FROM users"),
                      ("order_limit", "SELECT id, name FROM users ORDER BY age DESC, id LIMIT 10")):
        xs = []
        for _ in range(7):
            t = time.perf_counter()
            await r.query([sql])
            xs.append((time.perf_counter() - t) * 1e3)
        lat[name] = round(statistics.median(xs), 2)
    return ins, rd, lat


# ---- real sharded clusters (one process per group) -------------------------------------

def setup_cluster(tmp, n_groups):
    from raftsqlite.sharding.local import LocalCluster, http
    shards = tuple(f"shard{i + 1}" for i in range(n_groups))
    extra = ["-no-fsync"] if ARGS and ARGS.no_fsync else []   # diagnosis only: is fsync the limit?
    extra += ARGS.node_args.split() if ARGS and ARGS.node_args else []
    cl = LocalCluster(os.path.join(tmp, f"g{n_groups}"), shards=shards, extra_args=extra).start()
    d = cl.addrs["default"]
    for method, path, body in (
            ("POST", "/db/execute", ["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, city TEXT)"]),
            ("POST", "/table/register", {"table_name": "users", "shard_key": "id", "shard_func": "hash"}),
            *[("POST", "/table/add-to-shard", {"table_name": "users", "shard_id": s}) for s in shards],
            ("POST", "/table/rebalance", {"table_name": "users"})):
        st, res = http(method, d, path, body)
        assert st == 200, (path, st, res)
    # every node's router must know the table before the load starts
    deadline = time.monotonic() + 10
    for s in shards:
        while True:
            st, res = http("GET", cl.addrs[s], "/table/explain?q=SELECT+1+FROM+users+WHERE+id%3D1")
            if st == 200 and res.get("shards"):
                break
            assert time.monotonic() < deadline, res
            time.sleep(0.1)
    return cl, shards


def remote_executor(session, addrs):
    """``GroupExecutor`` of a client-side router (like vtgate beside the application):
    each routed request, with its ownership guard, goes straight to the owning group's
    leader (``POST /shard/call``), so no node spends CPU on a second hop. Requests to
    one group that are in flight together share a call (``sharding/coalesce.py``); each
    keeps its own guard, results and errors."""
    from raftsqlite.sharding.coalesce import RemoteExecutor, error_from

    kw = {"max_inflight": ARGS.inflight if ARGS else 1}
    if ARGS is None or ARGS.call_client == "lean":
        # the product's own client-side executor (callclient.py, writes without a task
        # or coroutine per call)
        return RemoteExecutor.over_http(addrs, **kw)

    async def post(group, path, body):
        async with session.post(f"http://{addrs[group]}{path}", data=body) as r:
            data = await r.read()
        if r.status != 200:
            raise error_from(r.status, data)
        return data
    return RemoteExecutor(post, **kw)


async def client_router(session, d, addrs):
    from raftsqlite.sharding.cache import CatalogCache

    async def fetch(after, timeout):
        async with session.get(f"http://{d}/shard/catalog?after={after}&poll={timeout}") as r:
            return await r.read() if r.status == 200 else None
    cache = CatalogCache(fetch=fetch)
    await cache.refresh()
    return Router(remote_executor(session, addrs), cache)


def _insert_worker(default_addr, addrs, clients, t_start, t_end, id_base, out):
    """One load-generator process with its own client-side router (applications each
    embed one): warms up until ``t_start``, counts routed inserts until ``t_end``."""
    import aiohttp

    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients * 2)) as s:
            router = await client_router(s, default_addr, addrs)
            ids = iter(range(id_base, id_base + 10 ** 7))
            sql = "INSERT INTO users (id, name, age, city) VALUES (?, ?, ?, ?)"

            async def one(c, router=router, ids=ids, stop=t_end, start=t_start):
                k = 0
                while True:
                    now = time.monotonic()
                    if now >= stop:
                        return k
                    i = next(ids)
                    res = await router.execute([(sql, [i, f"n{i}", i % 80, f"c{i % 7}"])])
                    assert "error" not in res[0], res
                    if start <= now:
                        k += 1
            gen_us = await _generator_cost(one, clients)
            k = sum(await asyncio.gather(*[one(c) for c in range(clients)]))
            return k, dict(router.ex.stats(), generator_us=gen_us)
    if ARGS is not None and ARGS.loop == "uvloop":
        import uvloop
        uvloop.install()
    out.put(asyncio.run(main()))


async def _generator_cost(one, clients, n=20000):
    """CPU us per insert of the load generator alone: the same client coroutines against
    a router that answers at once (one loop turn per call, as a real answer costs at
    least), so its share of a router process's CPU can be told apart."""
    class _Done(Exception):
        pass

    class _Null:
        async def execute(self, statements):
            await asyncio.sleep(0)
            return [{"last_insert_id": 1, "rows_affected": 1}]
    per = max(1, n // clients)
    t0 = time.process_time()
    ids = iter(range(0, 10 ** 7))
    far = time.monotonic() + 3600
    left = [per] * clients

    async def bounded(c):
        class _Stop(_Null):
            async def execute(self, statements):
                left[c] -= 1
                if left[c] < 0:
                    raise _Done
                return await _Null.execute(self, statements)
        try:
            await one(c, router=_Stop(), ids=ids, stop=far, start=far)
        except _Done:
            pass
    await asyncio.gather(*[bounded(c) for c in range(clients)])
    return round((time.process_time() - t0) / (per * clients) * 1e6, 2)


def _machine_busy_s():
    """CPU seconds the whole machine spent busy so far (all cores, /proc/stat): with the
    per-process figures, how much of the machine other processes took in a window."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _verdict(busy, rps, clients, gen_share, others):
    """What bounded one insert window, from its per-process cores busy."""
    ncpu = os.cpu_count() or 1
    ours = sum(busy.values())
    notes = []
    if others >= 0.25:
        notes.append(f"other processes took {others:.2f} cores")
    if any(v >= 0.9 for p, v in busy.items() if p.startswith("router")):
        notes.append(f"LOAD-GENERATOR BOUND: a load process (generator + its router) is at a "
                     f"full core; the generator alone is {gen_share:.0%} of it")
    if ours + others >= 0.9 * ncpu:
        notes.append(f"CPU bound: the {ncpu} cores are busy")
    elif any(v >= 0.9 for p, v in busy.items() if p.startswith("shard")):
        notes.append("shard bound: a shard process is at a full core")
    else:
        notes.append(f"latency bound: no process at a full core, so {clients} closed-loop "
                     f"clients / {clients / max(rps, 1) * 1e3:.2f} ms per insert set the rate")
    return "; ".join(notes)


def _log_writes(addrs):
    """Each shard member's Raft log writes so far: (seconds spent writing and
    fdatasyncing, count), from its /status (the driver's persist_s and persists)."""
    out = {}
    for name, addr in addrs.items():
        if not name.startswith("shard"):
            continue
        try:
            with urllib.request.urlopen(f"http://{addr}/status", timeout=5) as r:
                doc = json.loads(r.read())
        except (OSError, ValueError):
            continue
        todo = [doc]
        while todo:
            d = todo.pop()
            if "persist_s" in d and "persists" in d:
                out[name] = (d["persist_s"], d["persists"])
                break
            todo.extend(v for v in d.values() if isinstance(v, dict))
    return out


def _log_write_summary(w0, w1, seconds):
    """Mean time of one log write (+ fdatasync) per shard over a window, and the share of
    the window each shard spent in them: whether the disk bounds the window."""
    out = {}
    for name in w1:
        if name in w0:
            ds, dn = w1[name][0] - w0[name][0], w1[name][1] - w0[name][1]
            out[name] = {"us": round(ds / max(dn, 1) * 1e6), "busy": round(ds / seconds, 2)}
    return out


def _run_delay_s(pids):
    """Seconds each pid's threads have spent runnable but waiting for a core so far
    (Linux /proc/<pid>/task/*/schedstat, second field; 0 where unavailable)."""
    out = {}
    for name, pid in pids.items():
        tot = 0
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            tids = []
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    tot += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                pass
        out[name] = tot / 1e9
    return out


def _core_wait_summary(r0, r1, w0, w1):
    """Per shard: time its threads waited for a core per Raft round over a window. A
    Raft round's fdatasync sleeps twice on this disk (the data write, then the cache
    flush; no FUA), and each wake-up waits for a core when both are busy: with two
    groups that wait, not the disk, is what grows (docs/design/raft-io.md)."""
    out = {}
    for name in w1:
        if name in w0:
            proc = next((p for p in r1 if p.split("-")[0] == name), None)
            if proc is not None and proc in r0:
                dn = max(w1[name][1] - w0[name][1], 1)
                out[name] = round((r1[proc] - r0[proc]) / dn * 1e6)
    return out


def _start_trace(pids):
    """``--trace-fsync``: trace this window's shard fdatasyncs (bench/fsync_trace.py), or
    say why not and go on untraced."""
    try:
        from bench.fsync_trace import Trace
        return Trace(pids)
    except OSError as e:
        print(f"  (--trace-fsync: tracing unavailable: {e})", flush=True)
        return None


def _cpu_s(pids):
    """User+system CPU seconds used so far by each pid (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            out[name] = 0.0
    return out


async def cluster_all(seconds, clients, rows_scan, reps, workers=2):
    """Both clusters up at once (1 and 2 shard groups); insert and read windows alternate
    between them ``reps`` times, so both see the same machine load (this machine is
    shared; a slow minute must not land on one side only). Then the 2-group cluster is
    loaded to ``rows_scan`` rows and the scatter queries are timed."""
    import tempfile
    import aiohttp
    tmp = tempfile.mkdtemp(prefix="shard_bench_")
    clusters = {}
    try:
        for n in (1, 2):
            clusters[n] = setup_cluster(tmp, n)
        conn = aiohttp.TCPConnector(limit=clients * 4)
        async with aiohttp.ClientSession(connector=conn) as session:
            counter = iter(range(10 ** 9))
            routers = {n: await client_router(session, cl.addrs["default"], cl.addrs)
                       for n, (cl, _) in clusters.items()}
            ins_sql = "INSERT INTO users (id, name, age, city) VALUES (?, ?, ?, ?)"

            async def post(addr, path, body):
                async with session.post(f"http://{addr}{path}", json=body) as r:
                    out = await r.json(content_type=None)
                if r.status != 200 or "error" in out.get("results", [{}])[0]:
                    raise RuntimeError(f"{path}: {r.status} {out}")
                return out

            async def writer(n, stop, c):
                k = 0
                while time.monotonic() < stop:
                    i = next(counter)
                    res = await routers[n].execute([(ins_sql, [i, f"n{i}", i % 80, f"c{i % 7}"])])
                    assert "error" not in res[0], res
                    k += 1
                return k

            async def node_writer(n, stop, c):
                k = 0
                cl, shards = clusters[n]
                addr = cl.addrs[shards[c % len(shards)]]
                while time.monotonic() < stop:
                    i = next(counter)
                    await post(addr, "/db/execute", [[ins_sql, i, f"n{i}", i % 80, f"c{i % 7}"]])
                    k += 1
                return k

            async def reader(n, stop, c):
                k, m = c, 0
                while time.monotonic() < stop:
                    k = (k * 7919 + 13) % 5000
                    res = await routers[n].query([("SELECT * FROM users WHERE id = ?", [k])])
                    assert "error" not in res[0], res
                    m += 1
                return m

            async def window(fn, n):
                cl, _ = clusters[n]
                pids = {name: p.pid for name, p in cl.procs.items()}
                pids["bench(router)"] = os.getpid()
                c0 = _cpu_s(pids)
                t0 = time.monotonic()
                k = sum(await asyncio.gather(*[fn(n, t0 + seconds, c) for c in range(clients)]))
                dt = time.monotonic() - t0
                c1 = _cpu_s(pids)
                return k / dt, {p: round((c1[p] - c0[p]) / dt, 2) for p in pids}

            window_no = iter(range(1, 10 ** 6))

            async def proc_window(n):
                """Inserts from ``workers`` processes, each with its own router."""
                import multiprocessing as mp
                cl, _ = clusters[n]
                ctx = mp.get_context("fork")
                q = ctx.Queue()
                t_start = time.monotonic() + 3.0
                t_end = t_start + seconds
                base = next(window_no) * 10 ** 8
                ps = [ctx.Process(target=_insert_worker, args=(
                    cl.addrs["default"], dict(cl.addrs), max(1, clients // workers), t_start, t_end,
                    base + w * 10 ** 7, q)) for w in range(workers)]
                for p_ in ps:
                    p_.start()
                await asyncio.sleep(max(0.0, t_start - time.monotonic()))
                pids = {name: p.pid for name, p in cl.procs.items()}
                pids.update({f"router{w + 1}": p_.pid for w, p_ in enumerate(ps)})
                w0 = _log_writes(cl.addrs)
                spids = {p: v for p, v in pids.items() if p.startswith("shard")}
                rd0 = _run_delay_s(spids)
                tr = _start_trace(dict(pids, bench=os.getpid())) if ARGS and ARGS.trace_fsync else None
                c0, m0 = _cpu_s(pids), _machine_busy_s()
                await asyncio.sleep(max(0.0, t_end - time.monotonic()))
                c1, m1 = _cpu_s(pids), _machine_busy_s()
                rd1 = _run_delay_s(spids)
                split = tr.stop() if tr is not None else None
                w1 = _log_writes(cl.addrs)
                writes = _log_write_summary(w0, w1, seconds)
                waits = _core_wait_summary(rd0, rd1, w0, w1)
                loop = asyncio.get_running_loop()
                k, calls, sends, gen = 0, 0, 0, []
                for _ in ps:
                    kw, st = await loop.run_in_executor(None, q.get, True, 60)
                    k += kw
                    calls += st["calls"]
                    sends += st["sends"]
                    gen.append(st["generator_us"])
                for p_ in ps:
                    p_.join(10)
                cpu = {p: round((c1[p] - c0[p]) / seconds, 2) for p in pids}
                others = max(0.0, (m1 - m0) - sum(c1[p] - c0[p] for p in pids)) / seconds
                # CPU per insert, per role: robust to a busy machine where rates are not
                us = {"shards": sum(c1[p] - c0[p] for p in pids if p.startswith("shard")),
                      "routers": sum(c1[p] - c0[p] for p in pids if p.startswith("router"))}
                us = {r: round(v / max(k, 1) * 1e6, 1) for r, v in us.items()}
                # the routers' figure includes the load generator (same processes)
                us["generator"] = round(statistics.mean(gen), 1)
                us["per_process"] = {p: round((c1[p] - c0[p]) / max(k, 1) * 1e6, 1) for p in pids}
                rps = k / seconds
                verdict = _verdict(cpu, rps, clients, us["generator"] / max(us["routers"], 1e-9),
                                   others)
                if writes:
                    verdict += "; log write + fdatasync per Raft round " + ", ".join(
                        f"{k} {v['us']} us ({v['busy']:.0%} of the window)"
                        for k, v in sorted(writes.items()))
                if waits:
                    verdict += "; shard threads waiting for a core per Raft round " + ", ".join(
                        f"{k} {v} us" for k, v in sorted(waits.items()))
                if split:
                    from bench.fsync_trace import describe
                    verdict += "; traced: " + describe(split)
                us["log_write_us"] = writes
                us["core_wait_us"] = waits
                return rps, cpu, us, round(calls / max(sends, 1), 1), round(others, 2), verdict
            for n in (1, 2):   # warm-up: connections, plan cache, first entries
                await asyncio.gather(*[writer(n, time.monotonic() + 1.0, c) for c in range(clients)])
            res = {n: {"ins": [], "node_ins": [], "read": [], "cpu": [], "us": [], "coalesced": [],
                       "others": [], "verdict": []} for n in (1, 2)}
            for rep in range(reps):
                for n in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    rps, cpu, us, co, others, verdict = await proc_window(n)
                    res[n]["ins"].append(rps)
                    res[n]["cpu"].append(cpu)
                    res[n]["us"].append(us)
                    res[n]["coalesced"].append(co)
                    res[n]["others"].append(others)
                    res[n]["verdict"].append(verdict)
                    print(f"  rep {rep + 1}: {n} group(s) inserts {rps:,.0f}/s, cores busy {cpu} "
                          f"(other processes {others}), CPU us per insert {us['per_process']} "
                          f"(shards {us['shards']}, routers {us['routers']} of which the load "
                          f"generator alone {us['generator']}), inserts per /shard/call {co}; "
                          f"{verdict}", flush=True)
            for rep in range(reps):
                for n in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    res[n]["read"].append((await window(reader, n))[0])
                    res[n]["node_ins"].append((await window(node_writer, n))[0])
            lat = {}
            if rows_scan:
                router = routers[2]
                have = (await router.query(["SELECT COUNT(*) FROM users"]))[0]["values"][0][0]
                batch, par = 500, 8
                base = 10 ** 8
                todo = max(0, rows_scan - have)
                sql = "INSERT INTO users (id, name, age, city) VALUES " + ", ".join(["(?, ?, ?, ?)"] * batch)
                t_load = time.monotonic()
                starts = iter(range(0, todo, batch))

                async def loader(c):
                    for s0 in starts:
                        k = min(batch, todo - s0)
                        q = sql if k == batch else "INSERT INTO users (id, name, age, city) VALUES " + ", ".join(["(?, ?, ?, ?)"] * k)
                        params = [v for j in range(k) for v in (base + s0 + j, "b", (s0 + j) % 97, "x")]
                        r = await router.execute([(q, params)])
                        assert "error" not in r[0], r[0]
                await asyncio.gather(*[loader(c) for c in range(par)])
                lat["load_rows_per_s"] = round(todo / max(time.monotonic() - t_load, 1e-9))
                for name, q in (("count", "SELECT COUNT(*) FROM users"),
                                ("order_limit", "SELECT id, name FROM users ORDER BY age DESC, id LIMIT 10")):
                    xs = []
                    for _ in range(5):
                        t = time.perf_counter()
                        r = await router.query([q])
                        assert "error" not in r[0], r[0]
                        xs.append((time.perf_counter() - t) * 1e3)
                    lat[name] = round(statistics.median(xs), 1)
                lat["total_rows"] = (await router.query(["SELECT COUNT(*) FROM users"]))[0]["values"][0][0]
            return res, lat
    finally:
        for cl, _ in clusters.values():
            cl.stop()


ARGS = None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="shard_bench.py", description=(
            "Sharding benchmark. Without --cluster: the router's planning cost and routed "
            "statements over in-process groups. With --cluster: real clusters with 1 and 2 "
            "shard groups (one member each, fsync on), routed single-row INSERTs from "
            "client-side routers in --workers processes, windows alternating between the "
            "clusters; prints scale_ratio. Last line: one JSON object."))
    ap.add_argument("--quick", action="store_true", help="in-process mode: fewer runs and rows")
    ap.add_argument("--cluster", action="store_true", help="measure real clusters (1 vs 2 shard groups)")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each measured window (default 3)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients in all (default 64)")
    ap.add_argument("--workers", type=int, default=2,
                    help="load processes, each with its own client-side router (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="alternating windows per cluster (default 3)")
    ap.add_argument("--rows", type=int, default=1_000_000,
                    help="rows loaded into the 2-group cluster before timing scatter queries (0: skip)")
    ap.add_argument("--inflight", type=int, default=1,
                    help="write calls in flight per shard per router; more wait and leave together "
                         "as one /shard/call (default 1, as in the nodes' routers)")
    ap.add_argument("--call-client", choices=("lean", "aiohttp"), default="lean",
                    help="HTTP client of the client-side routers' /shard/call (default lean: "
                         "sharding/callclient.py, as the nodes' routers use)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                    help="event loop of the load processes (the nodes always run uvloop)")
    ap.add_argument("--node-args", default="",
                    help="diagnosis only: extra raft-sqlite flags for every node, e.g. '-max-inflight 8'")
    ap.add_argument("--no-fsync", action="store_true", help="diagnosis only: run the nodes without fsync")
    ap.add_argument("--trace-fsync", action="store_true",
                    help="diagnosis only (Linux, root, tracefs): split each shard's log fdatasyncs "
                         "in every insert window into on-CPU, I/O sleep and waiting for a core "
                         "(bench/fsync_trace.py)")
    return ap.parse_args(argv)


def main():
    global ARGS
    ARGS = parse_args()
    quick = ARGS.quick
    if ARGS.cluster:
        return main_cluster()
    runs, n = (3, 20) if quick else (7, 100)
    print(f"# shard_bench: python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} cpus, hash implementation {codec.IMPLEMENTATION}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    cat = make_cluster(("s1", "s2", "s3")).catalog
    costs = plan_costs(cat, runs, n)
    print(f"{'statement':24s} {'cold us':>10s} {'warm us':>10s}   (min of {runs} runs: cold, warm)")
    for k, v in costs.items():
        print(f"{k:24s} {v['cold_us']:10.1f} {v['warm_us']:10.2f}   ({v['cold_us_min']:.1f}, {v['warm_us_min']:.2f})")
    cold = statistics.median(v["cold_us"] for v in costs.values())
    warm = statistics.median(v["warm_us"] for v in costs.values())
    print(f"median over shapes: cold {cold:.1f} us, warm {warm:.2f} us per statement")
    rows, reads = (2000, 2000) if quick else (20000, 20000)
    res = {}
    for shards in (("s1",), ("s1", "s2")):
        ins, rd, lat = asyncio.run(inproc(shards, rows, reads))
        res[len(shards)] = (ins, rd, lat)
        print(f"in-process, {len(shards)} group(s), {rows} rows: routed inserts {ins:,.0f}/s, "
              f"point reads {rd:,.0f}/s, scatter COUNT(*) {lat['count']} ms, "
              f"ORDER BY LIMIT 10 {lat['order_limit']} ms")
    print("cluster figures (real groups over HTTP/Raft): run with --cluster")
    print(json.dumps({
        "plan_us_warm": round(warm, 2), "plan_us_cold": round(cold, 1),
        "plan_costs": costs,
        "inproc_insert_rps_1_group": round(res[1][0]), "inproc_insert_rps_2_groups": round(res[2][0]),
        "inproc_point_read_rps_1_group": round(res[1][1]), "inproc_point_read_rps_2_groups": round(res[2][1]),
        "inproc_rows": rows,
        "inproc_scatter_count_ms_2_groups": res[2][2]["count"],
        "inproc_scatter_order_limit_ms_2_groups": res[2][2]["order_limit"],
        "insert_rps_1_group": None, "insert_rps_2_groups": None, "scale_ratio": None,
        "hash_impl": codec.IMPLEMENTATION,
    }))


def main_cluster():
    """Real clusters: a default group with 1 and with 2 shard groups of one member each
    (separate ``raft-sqlite`` processes, fsync on). Writes and reads go through a
    client-side router in this process (ownership guards checked by each shard's FSM);
    ``node_routed_*`` is the same load sent to the shard nodes' own routers instead."""
    seconds, clients, rows = ARGS.seconds, ARGS.clients, ARGS.rows
    reps, workers = ARGS.reps, ARGS.workers
    print(f"# shard_bench --cluster: python {platform.python_version()}, {os.cpu_count()} cpus, "
          f"{clients} clients in {workers} router processes for inserts, {reps} alternating {seconds}s windows per figure, scan over "
          f"{rows} rows; loadavg {os.getloadavg()[0]:.2f}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    cat = make_cluster(("s1", "s2", "s3")).catalog
    costs = plan_costs(cat, 7, 100)
    warm = statistics.median(v["warm_us"] for v in costs.values())
    cold = statistics.median(v["cold_us"] for v in costs.values())
    print(f"planning cost per statement (median over shapes): cold {cold:.1f} us, warm {warm:.2f} us")
    res, lat = asyncio.run(cluster_all(seconds, clients, rows, reps, workers))
    med = {n: {k: statistics.median(v) for k, v in r.items() if k in ("ins", "node_ins", "read", "coalesced")}
           for n, r in res.items()}
    us = {n: {role: round(statistics.median(u[role] for u in res[n]["us"]), 1)
              for role in ("shards", "routers", "generator")} for n in (1, 2)}
    for n in (1, 2):
        print(f"{n} shard group(s): CPU per routed insert (median of windows): shard node(s) "
              f"{us[n]['shards']} us, client-side routers {us[n]['routers']} us (of which the "
              f"load generator alone {us[n]['generator']} us); {med[n]['coalesced']} inserts "
              f"per /shard/call; other processes took {statistics.median(res[n]['others'])} "
              f"cores; last window: {res[n]['verdict'][-1]}")
    # One log write (+ fdatasync) per Raft round, median over windows of the shards' mean:
    # how long each round holds a shard, beside its CPU (docs/design/sharding.md).
    wus = {n: round(statistics.median(statistics.mean(v["us"] for v in u["log_write_us"].values())
                                      for u in res[n]["us"] if u.get("log_write_us")))
           if any(u.get("log_write_us") for u in res[n]["us"]) else None for n in (1, 2)}
    cws = {n: round(statistics.median(statistics.mean(u["core_wait_us"].values())
                                      for u in res[n]["us"] if u.get("core_wait_us")))
           if any(u.get("core_wait_us") for u in res[n]["us"]) else None for n in (1, 2)}
    print(f"shard threads waiting for a core per Raft round (median of windows): 1 group "
          f"{cws[1]} us, 2 groups {cws[2]} us")
    print(f"log write + fdatasync per Raft round (median of windows): 1 group {wus[1]} us, "
          f"2 groups {wus[2]} us")
    for n in (1, 2):
        print(f"{n} shard group(s): routed single-row inserts {med[n]['ins']:,.0f}/s (median of "
              f"{', '.join(f'{x:,.0f}' for x in res[n]['ins'])}), point reads {med[n]['read']:,.0f}/s, "
              f"through the nodes' own routers {med[n]['node_ins']:,.0f} inserts/s")
    if lat:
        print(f"scatter over {lat['total_rows']:,} rows (2 groups, loaded at {lat['load_rows_per_s']:,} rows/s): "
              f"COUNT(*) {lat['count']} ms, ORDER BY ... LIMIT 10 {lat['order_limit']} ms")
    ratios = [b / a for a, b in zip(res[1]["ins"], res[2]["ins"])]
    # What the CPU costs allow: every core busy with this run's processes and nothing
    # else, at the measured CPU per insert (less noisy than rates on a shared machine).
    ncpu = os.cpu_count() or 1
    ceiling = {n: ncpu * 1e6 / max(us[n]["shards"] + us[n]["routers"], 1e-9) for n in (1, 2)}
    print(f"CPU ceilings ({ncpu} cores, nothing else running, CPU per insert as measured): "
          f"1 group {ceiling[1]:,.0f}/s, 2 groups {ceiling[2]:,.0f}/s; 2 groups over the "
          f"measured 1-group rate: {ceiling[2] / max(med[1]['ins'], 1):.2f}")
    print(json.dumps({
        "insert_rps_1_group": round(med[1]["ins"]), "insert_rps_2_groups": round(med[2]["ins"]),
        "scale_ratio": round(med[2]["ins"] / med[1]["ins"], 2),
        "scale_ratio_per_rep": [round(x, 2) for x in ratios],
        "node_routed_insert_rps_1_group": round(med[1]["node_ins"]),
        "node_routed_insert_rps_2_groups": round(med[2]["node_ins"]),
        "point_read_rps_1_group": round(med[1]["read"]), "point_read_rps_2_groups": round(med[2]["read"]),
        "cores_busy_inserts_1_group": res[1]["cpu"][-1], "cores_busy_inserts_2_groups": res[2]["cpu"][-1],
        "cpu_us_per_insert_1_group": us[1], "cpu_us_per_insert_2_groups": us[2],
        "cpu_ceiling_rps_1_group": round(ceiling[1]), "cpu_ceiling_rps_2_groups": round(ceiling[2]),
        "scale_ratio_cpu_ceiling": round(ceiling[2] / max(med[1]["ins"], 1), 2),
        "log_write_us_1_group": wus[1], "log_write_us_2_groups": wus[2],
        "core_wait_us_per_round_1_group": cws[1], "core_wait_us_per_round_2_groups": cws[2],
        "inserts_per_call_1_group": med[1]["coalesced"], "inserts_per_call_2_groups": med[2]["coalesced"],
        "other_cores_busy_1_group": statistics.median(res[1]["others"]),
        "other_cores_busy_2_groups": statistics.median(res[2]["others"]),
        "bound_1_group": res[1]["verdict"][-1], "bound_2_groups": res[2]["verdict"][-1],
        "router_loop": ARGS.loop, "coalesce_inflight": ARGS.inflight,
        "scatter_count_ms": lat.get("count"), "scatter_order_limit_ms": lat.get("order_limit"),
        "scan_rows": lat.get("total_rows"), "plan_us_warm": round(warm, 2), "plan_us_cold": round(cold, 1),
        "guard_checked": True, "hash_impl": codec.IMPLEMENTATION, "fsync": not ARGS.no_fsync,
        "node_args": ARGS.node_args,
        "loadavg_1m_end": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
