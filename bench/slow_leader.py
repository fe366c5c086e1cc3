"""Writes/s while the leader's disk is slow, with and without the slow-disk hand-off
(raft/diskwatch.py; docs/design/raft-io.md, "A leader with a slow disk hands leadership
over").

A 3-member cluster on 127.0.0.1; ``--clients`` concurrent single-row inserts, each sent to
the first member that takes it (followers forward). After a healthy window, the leader's
log fdatasync is slowed by ``--slow-ms`` (the test-only hook raft/slowdisk.py) and writes/s
are printed per ``--window`` seconds. Run once with the hand-off off
(``-raft-opt slow_disk_handoff=0``) and once with the default. Last line: one JSON object.

    python bench/slow_leader.py [--clients 16] [--windows 5] [--window 2] [--slow-ms "50 100"]
"""
import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp  # noqa: E402

from raftsqlite.raft import slowdisk  # noqa: E402
from raftsqlite.testing.cluster import LocalCluster  # noqa: E402
from raftsqlite.testing.nemesis import SLOW_FSYNC_FILE, slow_fsync_path  # noqa: E402


async def load(session, urls, seconds, clients):
    """Acknowledged inserts in ``seconds`` (bounded: 100,000 attempts per client)."""
    end = time.monotonic() + seconds
    acked = 0

    async def client(k):
        nonlocal acked
        for _ in range(100_000):
            if time.monotonic() >= end:
                return
            for u in urls:
                try:
                    async with session.post(f"{u}/db/execute",
                                            json=[["INSERT INTO t(v) VALUES(?)", k]]) as r:
                        if r.status == 200:
                            acked += 1
                            break
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    continue
    await asyncio.gather(*(client(k) for k in range(clients)))
    return acked


async def run(extra, args):
    c = LocalCluster(3, tempfile.mkdtemp(prefix="slowleader-"), proxy=False, extra_args=extra,
                     env={slowdisk.ENV: SLOW_FSYNC_FILE})
    lead = await c.start()
    out = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            async with s.post(f"{lead.url}/db/execute",
                              json=["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]) as r:
                r.raise_for_status()
            urls = [m.url for m in c.members.values()]
            out["healthy"] = round(await load(s, urls, args.window, args.clients) / args.window)
            slow_fsync_path(lead).write_text(args.slow_ms + "\n")
            out["slow_leader"] = []
            for _ in range(args.windows):
                n = await load(s, urls, args.window, args.clients)
                out["slow_leader"].append(round(n / args.window))
            now = await c.current_leader()
            out["leader_moved"] = now is not None and now is not lead
    finally:
        await c.stop()
        c.cleanup()
    return out


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--slow-ms", default="50 100", help='"MS" or "LO HI" per fdatasync')
    args = ap.parse_args()
    res = {}
    for label, extra in (("handoff_off", ["-raft-opt", "slow_disk_handoff=0"]),
                         ("handoff_on", [])):
        res[label] = await run(extra, args)
        print(label, res[label], flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    asyncio.run(main())
