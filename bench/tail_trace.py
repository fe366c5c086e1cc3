"""The slowest writes and what overlapped them on the members: a tail-latency tracer.

    python -m bench.tail_trace [--root .] [--workload bulk|insert] [--clients 4]
                               [--duration 8] [--top 15] [--prefill N] [--node-arg ARG ...]
                               [--keep DIR]

Starts a 3-member cluster (fsync on) with ``RAFTSQLITE_TRACE`` set (raftsqlite/raft/trace.py),
drives it from this process with N connections that each keep one request in flight
(``bulk``: the headline's 1000-row ``?transaction`` bodies, bench/driver.py ``RqliteBulk``;
``insert``: single-row INSERTs) and stamps every request's send and full response with
``time.monotonic_ns()``, the clock the members stamp their events with. The members record
intervals (``ev:<kind>...`` lines): each log write with its fdatasync (``logw``, ``+seg``
when it rolled to a new segment, ``+state`` with a state-file write), each spare zero-fill
step (``spare_fill``), each apply on the apply thread (``apply``) and on the loop
(``apply_inline``), each SQLite WAL checkpoint (``ckpt``), each garbage collection
(``gc0``/``gc1``/``gc2``), each local snapshot (``snapshot``), and every Raft tick that
ran more than 3 ms late (``loop_late``: the loop was blocked or had no core).

Prints the latency percentiles, then per event kind its count and duration percentiles and
how often it overlapped a tail request (at or above p99) against a median one (p40-p60)
by at least 1 ms, then the ``--top`` slowest requests, each with the events of at least
1 ms that overlapped it. The last line is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.driver import RqliteBulk, RqliteInsert, _read_response  # noqa: E402
from bench.lat_trace import start_traced_cluster  # noqa: E402

MIN_OVERLAP_NS = 1_000_000


async def _drive(host, port, wl, conns, duration, out):
    deadline = time.monotonic() + duration
    hosthdr = f"{host}:{port}"

    async def worker(cid):
        reader, writer = await asyncio.open_connection(host, port)
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
                req = wl.request(cid, n, hosthdr)
                t0 = time.monotonic_ns()
                writer.write(req)
                status, body, _ = await asyncio.wait_for(_read_response(reader), 30)
                t1 = time.monotonic_ns()
                out.append((t0, t1, cid, status, b'"error"' in body[:4096]))
        finally:
            writer.close()

    await asyncio.gather(*(worker(i + 1) for i in range(conns)))


def drive(url, wl, conns, duration):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    out = []
    gc.collect()
    gc.freeze()            # the client's own pauses must not show up as the servers'
    gc.disable()
    try:
        try:
            import uvloop
            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_drive(host, int(port), wl, conns, duration, out))
        finally:
            loop.close()
    finally:
        gc.enable()
        gc.unfreeze()
    return out


def load_events(path):
    """[(kind, detail, t0, t1)] from one member's trace file."""
    evs = []
    with open(path) as f:
        for line in f:
            t, _, tag = line.rstrip("\n").partition(" ")
            if not tag.startswith("ev:"):
                continue
            body, _, t0 = tag[3:].rpartition(":")
            kind, _, detail = body.partition(":")
            kind, plus, extra = kind.partition("+")
            evs.append((kind, (plus + extra + (":" + detail if detail else "")).lstrip(":"),
                        int(t0), int(t)))
    evs.sort(key=lambda e: e[2])
    return evs


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def overlaps(req, evs, min_ns=MIN_OVERLAP_NS):
    """Events (member, kind, detail, t0, t1, overlap) overlapping ``req`` by >= min_ns."""
    t0, t1 = req[0], req[1]
    out = []
    for member, lst in evs.items():
        for kind, detail, e0, e1 in lst:
            if e0 >= t1:
                break
            ov = min(t1, e1) - max(t0, e0)
            if ov >= min_ns:
                out.append((member, kind, detail, e0, e1, ov))
    return out


def analyse(reqs, evs, top=15):
    lat = [r[1] - r[0] for r in reqs]
    p = {k: pct(lat, q) for k, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))}
    p["max"] = max(lat) if lat else None
    tail = [r for r in reqs if r[1] - r[0] >= p["p99"]]
    mid = [r for r in reqs if pct(lat, 40) <= r[1] - r[0] <= pct(lat, 60)]
    kinds = {}
    for member, lst in evs.items():
        for kind, _, e0, e1 in lst:
            kinds.setdefault(kind, []).append(e1 - e0)
    table = {}
    for kind, durs in sorted(kinds.items()):
        def share(rs):
            if not rs:
                return None
            hit = sum(1 for r in rs if any(o[1] == kind for o in overlaps(r, evs)))
            return round(hit / len(rs), 3)
        table[kind] = {"count": len(durs), "p50_ms": pct(durs, 50) / 1e6,
                       "p99_ms": pct(durs, 99) / 1e6, "max_ms": max(durs) / 1e6,
                       "total_ms": sum(durs) / 1e6,
                       "tail_share": share(tail), "median_share": share(mid)}
    slow = sorted(reqs, key=lambda r: r[0] - r[1])[:top]
    return p, table, slow


def report(reqs, evs, roles, top, start_ns):
    p, table, slow = analyse(reqs, evs, top)
    ms = {k: (v / 1e6 if v is not None else None) for k, v in p.items()}
    print(f"requests {len(reqs)}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    print(f"\n{'event':<14}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'total ms':>10}"
          f"  overlaps >=1 ms: tail (>=p99) / median requests")
    for kind, t in table.items():
        print(f"{kind:<14}{t['count']:>7}{t['p50_ms']:>9.2f}{t['p99_ms']:>9.2f}"
              f"{t['max_ms']:>9.1f}{t['total_ms']:>10.0f}  {t['tail_share']} / {t['median_share']}")
    print(f"\nthe {len(slow)} slowest requests (start s from the first request; events of "
          ">= 1 ms overlapping them: member kind detail, duration ms [overlap ms])")
    for r in slow:
        print(f"{(r[1] - r[0]) / 1e6:8.1f} ms  at {(r[0] - start_ns) / 1e9:7.3f} s  conn {r[2]}")
        for member, kind, detail, e0, e1, ov in sorted(overlaps(r, evs), key=lambda o: -o[5]):
            if kind == "apply" and ov < 0.5 * (r[1] - r[0]):
                continue     # the normal apply of other batches; long ones still show
            print(f"      {roles[member]:<10}{kind:<12}{detail:<24}{(e1 - e0) / 1e6:8.1f}"
                  f" [{ov / 1e6:.1f}]  from {(e0 - start_ns) / 1e9:.3f} s")
    return {"requests": len(reqs), **{f"{k}_ms": (round(v, 3) if v is not None else None)
                                      for k, v in ms.items()},
            "events": {k: {kk: (round(vv, 3) if isinstance(vv, float) else vv)
                           for kk, vv in t.items()} for k, t in table.items()}}


def _status(url):
    """The members' own counters that bear on the tail: log segments taken from a
    prepared spare or grown, and the database's checkpoints."""
    from bench.cluster import http
    try:
        st = http("GET", url + "/status", timeout=10)[1]
    except OSError as e:
        return {"error": repr(e)}

    def find(d, key):
        if isinstance(d, dict):
            if key in d:
                return d[key]
            for v in d.values():
                r = find(v, key)
                if r is not None:
                    return r
        return None
    return {k: find(st, k) for k in ("segments_from_spare", "segments_grown",
                                     "spares_zero_filled", "spares_recycled", "checkpoints",
                                     "snapshots_taken")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=ROOT)
    ap.add_argument("--workload", choices=["bulk", "insert"], default="bulk")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--prefill", type=int, default=0,
                    help="1000-row batches written before the measured run (a larger database)")
    ap.add_argument("--node-arg", action="append", default=[],
                    help="extra raft-sqlite argument for every member (repeatable)")
    ap.add_argument("--keep", default=None, help="keep the trace files in this directory")
    a = ap.parse_args(argv)
    tdir, c = start_traced_cluster(a.keep, "tail-trace-", a.root, a.node_arg)
    wl = RqliteBulk() if a.workload == "bulk" else RqliteInsert()
    try:
        c.execute([["CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT)"]])
        url = c.leader_url()
        lpid = c.pids[c.urls.index(url)]
        pids = list(c.pids)
        if a.prefill:
            for _ in range(a.prefill):
                c.execute(json.loads(RqliteBulk().body), transaction=True, timeout=60)
        drive(url, wl, a.clients, 1.0)       # warm-up
        reqs = drive(url, wl, a.clients, a.duration)
        statuses = [_status(u) for u in c.urls]
    finally:
        c.stop()
    roles = {p: ("leader" if p == lpid else f"follower{i + 1}") for i, p in enumerate(pids)}
    evs = {}
    for p in pids:
        f = os.path.join(tdir, f"{p}.trace")
        evs[p] = load_events(f) if os.path.exists(f) else []
    if not any(evs.values()):
        print(f"no events in {tdir} (a checkout without the tail trace points?)")
    start = min(r[0] for r in reqs)
    wall = (max(r[1] for r in reqs) - start) / 1e9
    bad = sum(1 for r in reqs if r[3] >= 300 or r[4])
    print(f"# {a.workload}, {a.clients} connections, {a.duration} s, root {a.root}, "
          f"load {os.getloadavg()[0]:.1f}; {len(reqs) / wall:.0f} req/s, {bad} errors")
    for p, st in zip(pids, statuses):
        print(f"{roles[p]}: {st}")
    out = report(reqs, evs, roles, a.top, start)
    out.update(workload=a.workload, clients=a.clients, rps=round(len(reqs) / wall, 1),
               errors=bad)
    if not a.keep:
        shutil.rmtree(tdir, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
