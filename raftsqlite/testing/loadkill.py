"""``kill -9`` during ``/db/load`` (not part of the CI suite)::

    python -m raftsqlite.testing.loadkill --seed 1 --rounds 8 [--rows 30000] [--format sqlite]

Each round loads a SQL dump creating table ``ld<round>`` with ``rows`` rows through a
random member (a follower forwards it), and at a random moment while the load runs
kills -9 the leader or a random member (or, in ``--snapshot-threshold`` runs, one that
must then catch up by snapshot), restarts it from its data directory and waits for a
leader. Promise checked after every round, on every member (read locally once they have
converged): each table ``ld<i>`` is absent or complete (a load is all-or-nothing),
complete if its load was acknowledged, the ``base`` rows written before are untouched,
and every member has the same digests. The last stdout line is one JSON object.

``--format sqlite`` loads SQLite database files instead. Such a load replaces the whole
database, so file ``i`` holds ``base`` (the same 50 rows), ``gen`` (one row: ``i``) and
``ld<i>``; the promise is that every member holds exactly one generation's tables, all
complete: the one before the round, or round ``i``'s (which it must be if acknowledged).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time

import aiohttp

from .cluster import LocalCluster
from .nemesis import snapshot_args, wait_converged
from .workloads import NodeClient


def dump(table: str, rows: int) -> bytes:
    out = [f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v TEXT);"]
    out += [f"INSERT INTO {table} VALUES({i}, 'v{i}-{'x' * 40}');" for i in range(rows)]
    return ("BEGIN TRANSACTION;\n" + "\n".join(out) + "\nCOMMIT;\n").encode()


def sqlite_file(table: str, rows: int, gen: int) -> bytes:
    """A SQLite database file: ``base`` (50 rows), ``gen`` (``gen``) and ``table``."""
    fd, path = tempfile.mkstemp(suffix=".db")
    os.close(fd)
    try:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE base (k INTEGER PRIMARY KEY, v)")
        db.executemany("INSERT INTO base VALUES(?, ?)", [(i, f"b{i}") for i in range(50)])
        db.execute("CREATE TABLE gen (g INTEGER)")
        db.execute("INSERT INTO gen VALUES(?)", (gen,))
        db.execute(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY, v TEXT)")
        db.executemany(f"INSERT INTO {table} VALUES(?, ?)",
                       ((i, f"v{i}-{'x' * 40}") for i in range(rows)))
        db.commit()
        db.close()
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


async def _query(session, m, sql):
    url = f"http://{m.http_addr}/db/query?level=none"
    async with session.post(url, json=[sql], timeout=aiohttp.ClientTimeout(total=10)) as r:
        doc = await r.json(content_type=None)
    return doc["results"][0]


async def _file_state(session, m, rows) -> dict:
    """One member's generation after file loads: its user tables, ``gen`` value, and
    whether every table of that generation is complete."""
    res = await _query(session, m, "SELECT name FROM sqlite_schema WHERE type='table' AND "
                                   "name NOT LIKE 'sqlite%' AND name NOT LIKE '_raftsqlite%'")
    tables = sorted(r[0] for r in res.get("values") or [])
    g = None
    if "gen" in tables:
        g = ((await _query(session, m, "SELECT g FROM gen")).get("values") or [[None]])[0][0]
    counts = {t: await _count(session, m, t) for t in tables}
    want = {"base": 50} | ({"gen": 1, f"ld{g}": rows} if g is not None else {})
    return {"gen": g, "tables": tables, "complete": counts == want, "counts": counts}


async def _count(session, m, table):
    url = f"http://{m.http_addr}/db/query?level=none"
    async with session.post(url, json=[f"SELECT count(*) FROM {table}"],
                            timeout=aiohttp.ClientTimeout(total=10)) as r:
        doc = await r.json(content_type=None)
    res = doc["results"][0]
    if "error" in res:
        return None if "no such table" in res["error"] else res["error"]
    return res["values"][0][0]


async def campaign(seed, rounds, rows, workdir, extra_args, log=print, fmt="sql") -> dict:
    rng = random.Random(seed)
    violations, acked, outcomes = [], {}, []
    gen = None              # file loads: the generation every member held after the last round
    async with LocalCluster(3, workdir, seed=seed, extra_args=extra_args) as c, \
            aiohttp.ClientSession() as session:
        leader = await c.wait_for_leader(30)
        base = NodeClient(session, leader.id, leader.http_addr, 10.0)
        await base._post("/db/execute", [["CREATE TABLE base (k INTEGER PRIMARY KEY, v)"]]
                         + [["INSERT INTO base VALUES(?, ?)", i, f"b{i}"] for i in range(50)])
        t_load = None
        for rnd in range(rounds):
            table = f"ld{rnd}"
            body = dump(table, rows) if fmt == "sql" else sqlite_file(table, rows, rnd)
            ctype = "text/plain" if fmt == "sql" else "application/octet-stream"
            target = c.members[rng.choice(sorted(c.members))]
            url = f"http://{target.http_addr}/db/load"

            async def load():
                t0 = time.monotonic()
                try:
                    async with session.post(url, data=body,
                                            headers={"Content-Type": ctype},
                                            timeout=aiohttp.ClientTimeout(total=120)) as r:
                        return r.status, (await r.read())[:300], time.monotonic() - t0
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    return None, repr(e)[:300], time.monotonic() - t0
            task = asyncio.ensure_future(load())
            # Kill somewhere inside the load (its length measured by an unfaulted round).
            delay = rng.uniform(0, t_load or 2.0) if rnd > 0 else None
            victim = None
            if delay is not None:
                await asyncio.sleep(delay)
                who = rng.choice(["leader", "leader", "random", "target"])
                victim = (await c.current_leader() if who == "leader" else target
                          if who == "target" else c.members[rng.choice(sorted(c.members))])
                victim = victim or c.members[rng.choice(sorted(c.members))]
                c.kill(victim)
            status, answer, took = await task
            if delay is None and status == 200:
                t_load = took
            if victim is not None:
                await c.restart(victim)
            await c.wait_for_leader(30)
            if status == 200:
                acked[table] = True
            outcomes.append({"round": rnd, "table": table, "status": status, "took": round(took, 2),
                             "killed": victim.id if victim else None,
                             "kill_after": round(delay, 2) if delay is not None else None,
                             "answer": answer if status != 200 else None})
            log(f"round {rnd}: load via {target.id} -> {status} in {took:.1f}s; "
                f"killed {victim.id if victim else '-'} after {delay}")
            conv = await wait_converged(c, session, timeout=60)
            if not conv.valid:
                violations.append({"round": rnd, "reason": "members did not converge",
                                   "detail": conv.to_dict()})
            if fmt == "sqlite":
                states = {m.id: await _file_state(session, m, rows) for m in c.members.values()}
                for mid, st in states.items():
                    ok = st["complete"] and st["gen"] in (gen, rnd) and (
                        st["gen"] == rnd or not acked.get(table))
                    if not ok:
                        violations.append({"round": rnd, "member": mid, "state": st,
                                           "before": gen, "acked": acked.get(table, False)})
                gens = {st["gen"] for st in states.values()}
                outcomes[-1]["generation_after"] = sorted(gens, key=repr)
                gen = gens.pop() if len(gens) == 1 else gen
                continue
            for m in c.members.values():
                for i in range(rnd + 1):
                    n = await _count(session, m, f"ld{i}")
                    if n not in (None, rows) or (n is None and acked.get(f"ld{i}")):
                        violations.append({"round": rnd, "member": m.id, "table": f"ld{i}",
                                           "rows": n, "acked": acked.get(f"ld{i}", False)})
                if await _count(session, m, "base") != 50:
                    violations.append({"round": rnd, "member": m.id, "reason": "base changed"})
    return {"seed": seed, "rounds": rounds, "rows": rows, "format": fmt, "outcomes": outcomes,
            "acked_loads": len(acked), "violations": violations}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftsqlite.testing.loadkill")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--rows", type=int, default=30000)
    p.add_argument("--snapshot-threshold", type=int, default=None)
    p.add_argument("--format", choices=("sql", "sqlite"), default="sql",
                   help="load a SQL dump (default) or a SQLite database file")
    p.add_argument("--workdir", default=None)
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = a.workdir or tempfile.mkdtemp(prefix="raftsqlite-loadkill-")
    extra = snapshot_args(a.snapshot_threshold) if a.snapshot_threshold else []
    s = asyncio.run(campaign(seed, a.rounds, a.rows, workdir, extra,
                             log=lambda m: print(m, file=sys.stderr, flush=True), fmt=a.format))
    for o in s["outcomes"]:
        print(json.dumps(o, default=repr)[:600], file=sys.stderr)
    for v in s["violations"][:20]:
        print(json.dumps(v, default=repr)[:1500])
    print(json.dumps({k: s[k] for k in ("seed", "rounds", "rows", "format", "acked_loads")}
                     | {"violations": len(s["violations"]), "workdir": workdir}))
    return 1 if s["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
