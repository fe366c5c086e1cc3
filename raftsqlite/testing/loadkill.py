"""``kill -9`` during ``/db/load`` (not part of the CI suite)::

    python -m raftsqlite.testing.loadkill --seed 1 --rounds 8 [--rows 30000]

Each round loads a SQL dump creating table ``ld<round>`` with ``rows`` rows through a
random member (a follower forwards it), and at a random moment while the load runs
kills -9 the leader or a random member (or, in ``--snapshot-threshold`` runs, one that
must then catch up by snapshot), restarts it from its data directory and waits for a
leader. Promise checked after every round, on every member (read locally once they have
converged): each table ``ld<i>`` is absent or complete (a load is all-or-nothing),
complete if its load was acknowledged, the ``base`` rows written before are untouched,
and every member has the same digests. The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
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


async def _count(session, m, table):
    url = f"http://{m.http_addr}/db/query?level=none"
    async with session.post(url, json=[f"SELECT count(*) FROM {table}"],
                            timeout=aiohttp.ClientTimeout(total=10)) as r:
        doc = await r.json(content_type=None)
    res = doc["results"][0]
    if "error" in res:
        return None if "no such table" in res["error"] else res["error"]
    return res["values"][0][0]


async def campaign(seed, rounds, rows, workdir, extra_args, log=print) -> dict:
    rng = random.Random(seed)
    violations, acked, outcomes = [], {}, []
    async with LocalCluster(3, workdir, seed=seed, extra_args=extra_args) as c, \
            aiohttp.ClientSession() as session:
        leader = await c.wait_for_leader(30)
        base = NodeClient(session, leader.id, leader.http_addr, 10.0)
        await base._post("/db/execute", [["CREATE TABLE base (k INTEGER PRIMARY KEY, v)"]]
                         + [["INSERT INTO base VALUES(?, ?)", i, f"b{i}"] for i in range(50)])
        t_load = None
        for rnd in range(rounds):
            table = f"ld{rnd}"
            body = dump(table, rows)
            target = c.members[rng.choice(sorted(c.members))]
            url = f"http://{target.http_addr}/db/load"

            async def load():
                t0 = time.monotonic()
                try:
                    async with session.post(url, data=body,
                                            headers={"Content-Type": "text/plain"},
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
            for m in c.members.values():
                for i in range(rnd + 1):
                    n = await _count(session, m, f"ld{i}")
                    if n not in (None, rows) or (n is None and acked.get(f"ld{i}")):
                        violations.append({"round": rnd, "member": m.id, "table": f"ld{i}",
                                           "rows": n, "acked": acked.get(f"ld{i}", False)})
                if await _count(session, m, "base") != 50:
                    violations.append({"round": rnd, "member": m.id, "reason": "base changed"})
    return {"seed": seed, "rounds": rounds, "rows": rows, "outcomes": outcomes,
            "acked_loads": len(acked), "violations": violations}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftsqlite.testing.loadkill")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--rows", type=int, default=30000)
    p.add_argument("--snapshot-threshold", type=int, default=None)
    p.add_argument("--workdir", default=None)
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = a.workdir or tempfile.mkdtemp(prefix="raftsqlite-loadkill-")
    extra = snapshot_args(a.snapshot_threshold) if a.snapshot_threshold else []
    s = asyncio.run(campaign(seed, a.rounds, a.rows, workdir, extra,
                             log=lambda m: print(m, file=sys.stderr, flush=True)))
    for o in s["outcomes"]:
        print(json.dumps(o, default=repr)[:600], file=sys.stderr)
    for v in s["violations"][:20]:
        print(json.dumps(v, default=repr)[:1500])
    print(json.dumps({k: s[k] for k in ("seed", "rounds", "rows", "acked_loads")}
                     | {"violations": len(s["violations"]), "workdir": workdir}))
    return 1 if s["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
