"""The suite's own benchmarks, each ending with one JSON line:

- ``headline``: the issue's figures: single-row INSERTs/s at 64 clients (raftsqlite vs etcd
  PUT) and their ratio, p50 at 1 client for both, 1000-row batch rows/s vs raw apsw;
- ``workloads``: every workload against raftsqlite and the peers that can do it;
- ``peers``: the same, peers only (useful while no raftsqlite node is runnable);
- ``driver``: the load driver against a trivial local server (its own ceiling).

    python -m bench.suites headline [--quick] [--repeat 3] [--duration 8]

Medians: each measurement is repeated ``--repeat`` times, interleaved between systems so
that background noise hits all of them alike, and the run with the median throughput is
reported whole (its percentiles come from that same run).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack

from . import cluster as rcluster
from .driver import (EtcdPut, EtcdRange, Mix, RqliteBulk, RqliteInsert, RqliteQuery,
                     run_load, WRK)
from .peers import apsw_peer, etcd as etcd_peer, pysyncobj_peer

CLIENTS = (1, 16, 64)
BULK_ROWS = 1000
BULK_CONNS = 4
READ_CONNS = 32
READ_ROWS = 10_000
ETCD_KEYS = 1000
TARGETS = {"ratio_vs_etcd": 2.0, "bulk_fraction_of_apsw": 0.5}


class Ctx:
    def __init__(self, a):
        self.quick = a.quick
        self.duration = a.duration or (1.0 if a.quick else 8.0)
        self.repeat = a.repeat or (1 if a.quick else 3)
        self.driver = a.driver
        self.root = a.root
        self.notes: list[str] = []
        self.rows: list[dict] = []
        self.raftsqlite_info: dict | None = None

    def note(self, msg: str):
        self.notes.append(msg)
        print(f"NOTE: {msg}", flush=True)


def _row(workload: str, system: str, clients: int, res: dict, **extra) -> dict:
    keep = ("rps", "rows_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms",
            "duration_s", "driver", "driver_cpu_frac", "driver_bound", "server_cpu_frac",
            "errors", "error_count", "notes", "synchronous", "inflight")
    row = {"workload": workload, "system": system, "clients": clients}
    row.update({k: res[k] for k in keep if k in res})
    row.update(extra)
    return row


def _print_row(r: dict):
    flag = " DRIVER-BOUND" if r.get("driver_bound") else ""
    errs = f" errors={r['errors']}" if r.get("errors") else ""
    system = r["system"] + "".join(f"/{r[k]}" for k in ("synchronous", "variant") if r.get(k))
    print(f"{r['workload']:<20} {system:<20} c={r['clients']:<4} "
          f"{r.get('rps', 0):>10.1f} req/s {r.get('rows_per_s', 0):>11.1f} rows/s  "
          f"p50={r.get('p50_ms', 0):.3f} p99={r.get('p99_ms', 0):.3f} "
          f"p99.9={r.get('p999_ms', 0):.3f} ms{flag}{errs}", flush=True)


def _http_row(ctx, workload, system, url, wl, conns, pids) -> dict:
    res = run_load(url, wl, conns, ctx.duration, driver=ctx.driver, watch_pids=pids).to_dict()
    row = _row(workload, system, conns, res)
    _print_row(row)
    ctx.rows.append(row)
    return row


def _local_row(ctx, workload, system, clients, res, **extra) -> dict:
    row = _row(workload, system, clients, res, **extra)
    _print_row(row)
    ctx.rows.append(row)
    return row


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per (workload, system, clients, variant): the run with median throughput,
    with every run's throughput kept in ``runs``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["workload"], r["system"], r["clients"], r.get("synchronous"), r.get("variant"))
        groups.setdefault(key, []).append(r)
    out = []
    for runs in groups.values():
        runs_sorted = sorted(runs, key=lambda r: r.get("rows_per_s") or r.get("rps") or 0)
        med = dict(runs_sorted[(len(runs_sorted) - 1) // 2])
        med["runs"] = [r.get("rows_per_s") or r.get("rps") for r in runs]
        med["driver_bound"] = any(r.get("driver_bound") for r in runs)
        out.append(med)
    return out


def _pick(rows, workload, system, clients=None, synchronous=None):
    for r in rows:
        if (r["workload"] == workload and r["system"] == system
                and (clients is None or r["clients"] == clients)
                and (synchronous is None or r.get("synchronous") == synchronous)):
            return r
    return None


# --------------------------------------------------------------------------- clusters

def _start_raftsqlite(ctx, stack) -> rcluster.RaftsqliteCluster | None:
    ok, why = rcluster.available(ctx.root)
    if not ok:
        ctx.note(f"raftsqlite not measured: {why}")
        return None
    try:
        c = stack.enter_context(rcluster.RaftsqliteCluster(3, root=ctx.root))
        c.execute([["CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT)"]])
    except (RuntimeError, TimeoutError, OSError) as e:
        ctx.note(f"raftsqlite not measured: the 3-member cluster did not start: {e}")
        return None
    impl = _codec_impl(ctx.root)
    ctx.raftsqlite_info = {"root": ctx.root, "codec": impl, "members": 3, "fsync": True}
    if impl != "c":
        ctx.note(f"raftsqlite runs the {impl} codec, not the compiled one "
                 "(build it: python setup.py build_ext --inplace)")
    print(f"raftsqlite: 3 members up, leader {c.leader_url()}, codec {impl}", flush=True)
    return c


def _codec_impl(root: str) -> str | None:
    try:
        out = subprocess.run([sys.executable, "-c",
                              "import raftsqlite.codec as c; print(c.IMPLEMENTATION)"],
                             cwd=root, env=rcluster._env(root), capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _start_etcd(ctx, stack) -> etcd_peer.EtcdCluster | None:
    if ctx.quick:
        return None
    ok, why = etcd_peer.available()
    if not ok:
        ctx.note(why)
        return None
    try:
        c = stack.enter_context(etcd_peer.EtcdCluster(3))
    except (RuntimeError, TimeoutError, OSError) as e:
        ctx.note(f"etcd not measured: cluster did not start: {e}")
        return None
    print(f"etcd {etcd_peer.version()}: 3 members up, leader {c.leader_url()}", flush=True)
    return c


def _warm(ctx, url, wl, pids):
    if not ctx.quick:
        run_load(url, wl, 8, 1.0, driver=ctx.driver, watch_pids=pids)


def _apsw_workdir(ctx):
    """apsw_peer's scratch directory, or None (with a note saying why) without apsw."""
    ok, why = apsw_peer.available()
    if not ok:
        ctx.note(why)
        return None
    return apsw_peer.ApswWorkdir()


def _apsw_bulk_rows(ctx, d, workload):
    for sync in ("FULL", "NORMAL"):
        res = apsw_peer.bulk_rate(d, ctx.duration, rows=BULK_ROWS, synchronous=sync)
        _local_row(ctx, workload, "apsw", 1, res)


def _apsw_bulk(ctx, workload="bulk_1000"):
    wd = _apsw_workdir(ctx)
    if wd is None:
        return
    with wd as d:
        _apsw_bulk_rows(ctx, d, workload)


def _best_apsw(rows, workload):
    """The faster of apsw's two synchronous settings: the ceiling we compare against."""
    cands = [r for r in rows if r["workload"] == workload and r["system"] == "apsw"]
    return max(cands, key=lambda r: r.get("rows_per_s") or 0) if cands else None


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


# --------------------------------------------------------------------------- suites

def headline(ctx) -> dict:
    with ExitStack() as stack:
        rs = _start_raftsqlite(ctx, stack)
        et = _start_etcd(ctx, stack)
        if rs:
            rurl = rs.leader_url()
            _warm(ctx, rurl, RqliteInsert(), rs.pids)
        if et:
            eurl = et.leader_url()
            _warm(ctx, eurl, EtcdPut(), et.pids)
        for rep in range(ctx.repeat):
            print(f"-- repeat {rep + 1}/{ctx.repeat}", flush=True)
            for c in (64, 1):
                if rs:
                    _http_row(ctx, f"insert_c{c}", "raftsqlite", rurl, RqliteInsert(), c, rs.pids)
                if et:
                    _http_row(ctx, f"insert_c{c}", "etcd", eurl, EtcdPut(), c, et.pids)
            if rs:
                _http_row(ctx, "bulk_1000", "raftsqlite", rurl, RqliteBulk(rows=BULK_ROWS),
                          BULK_CONNS, rs.pids)
            if not ctx.quick:
                _apsw_bulk(ctx)
    rows = median_rows(ctx.rows)
    r64, e64 = _pick(rows, "insert_c64", "raftsqlite"), _pick(rows, "insert_c64", "etcd")
    r1, e1 = _pick(rows, "insert_c1", "raftsqlite"), _pick(rows, "insert_c1", "etcd")
    rb, ab = _pick(rows, "bulk_1000", "raftsqlite"), _best_apsw(rows, "bulk_1000")
    out = {
        "insert_rps": r64 and r64["rps"], "etcd_put_rps": e64 and e64["rps"],
        "ratio_vs_etcd": _ratio(r64 and r64["rps"], e64 and e64["rps"]),
        "p50_ms_1": r1 and r1["p50_ms"], "etcd_p50_ms_1": e1 and e1["p50_ms"],
        "insert_rps_1": r1 and r1["rps"], "etcd_put_rps_1": e1 and e1["rps"],
        "p99_ms_64": r64 and r64["p99_ms"], "etcd_p99_ms_64": e64 and e64["p99_ms"],
        "bulk_rows_per_s": rb and rb["rows_per_s"],
        "apsw_bulk_rows_per_s": ab and ab["rows_per_s"],
        "apsw_bulk_synchronous": ab and ab.get("synchronous"),
        "bulk_fraction_of_apsw": _ratio(rb and rb["rows_per_s"], ab and ab["rows_per_s"]),
        "bulk_connections": BULK_CONNS,
    }
    # The spread of the ratio across repeats (each repeat measures both back to back).
    if r64 and e64 and len(r64["runs"]) == len(e64["runs"]):
        out["ratio_vs_etcd_runs"] = [_ratio(a, b) for a, b in zip(r64["runs"], e64["runs"])]
    out["targets_met"] = {
        "ratio_vs_etcd>=2": None if out["ratio_vs_etcd"] is None
        else out["ratio_vs_etcd"] >= TARGETS["ratio_vs_etcd"],
        "p50_ms_1<=etcd_p50_ms_1": None if not (r1 and e1) else r1["p50_ms"] <= e1["p50_ms"],
        "bulk_fraction_of_apsw>=0.5": None if out["bulk_fraction_of_apsw"] is None
        else out["bulk_fraction_of_apsw"] >= TARGETS["bulk_fraction_of_apsw"],
    }
    out["driver_bound"] = sorted({f"{r['workload']}/{r['system']}" for r in rows
                                  if r.get("driver_bound")})
    # "partial": some figure is missing (a system was not measured; the notes say why).
    status = "ok" if all(out[k] is not None for k in (
        "insert_rps", "etcd_put_rps", "bulk_rows_per_s", "apsw_bulk_rows_per_s")) else "partial"
    if ctx.quick:  # quick mode measures raftsqlite alone by design
        status = "ok" if out["insert_rps"] is not None else "skipped"
    return {**out, "suite": "headline", "status": status, "raftsqlite": ctx.raftsqlite_info,
            "repeat": ctx.repeat,
            "duration_s": ctx.duration, "rows": rows, "notes": ctx.notes}


def _etcd_fill(url: str, nkeys: int, timeout: float = 60.0):
    from .driver import _etcd_key
    deadline = time.monotonic() + timeout
    value = EtcdPut().value
    for k in range(1, nkeys + 1):
        if time.monotonic() > deadline:
            raise TimeoutError(f"etcd fill stopped at key {k}")
        body = json.dumps({"key": _etcd_key(k), "value": value}).encode()
        req = urllib.request.Request(url + "/v3/kv/put", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()


def _pysyncobj(ctx):
    ok, why = pysyncobj_peer.available()
    if not ok:
        ctx.note(why)
        return
    # its clusters start once per mode, so the repeats run back to back inside them
    loads = [{"inflight": c, "duration": ctx.duration} for _ in range(ctx.repeat)
             for c in CLIENTS]
    # Both of pysyncobj's modes: immediate send wins at low concurrency, batching may win
    # at high; the better of the two is its figure for each concurrency.
    for batch in (False, True):
        try:
            results = pysyncobj_peer.run_cluster(loads, batch=batch,
                                                 timeout=60 + 3 * len(loads) * ctx.duration)
        except (RuntimeError, OSError) as e:
            ctx.note(f"pysyncobj (batch={batch}) not measured: {e}")
            continue
        for res in results:
            _local_row(ctx, f"insert_c{res['inflight']}", "pysyncobj", res["inflight"], res,
                       variant="batch" if batch else "immediate")


def workloads(ctx, with_raftsqlite: bool = True) -> dict:
    with ExitStack() as stack:
        rs = _start_raftsqlite(ctx, stack) if with_raftsqlite else None
        et = _start_etcd(ctx, stack)
        for rep in range(ctx.repeat):
            print(f"-- repeat {rep + 1}/{ctx.repeat}", flush=True)
            if rs:
                rurl = rs.leader_url()
                if rep == 0:
                    _warm(ctx, rurl, RqliteInsert(), rs.pids)
                for c in CLIENTS:
                    _http_row(ctx, f"insert_c{c}", "raftsqlite", rurl, RqliteInsert(), c, rs.pids)
                _http_row(ctx, "bulk_1000", "raftsqlite", rurl, RqliteBulk(rows=BULK_ROWS),
                          BULK_CONNS, rs.pids)
                if rep == 0:
                    rs.fill("reads", READ_ROWS)
                for level in ("none", "weak", "linearizable"):
                    _http_row(ctx, f"read_{level}", "raftsqlite", rurl,
                              RqliteQuery("reads", READ_ROWS, level), READ_CONNS, rs.pids)
                _http_row(ctx, "mix_90_10", "raftsqlite", rurl,
                          Mix(RqliteQuery("reads", READ_ROWS, "linearizable"), RqliteInsert()),
                          READ_CONNS, rs.pids)
            if et:
                eurl = et.leader_url()
                if rep == 0:
                    _warm(ctx, eurl, EtcdPut(), et.pids)
                    _etcd_fill(eurl, ETCD_KEYS)
                for c in CLIENTS:
                    _http_row(ctx, f"insert_c{c}", "etcd", eurl, EtcdPut(), c, et.pids)
                # etcd's serializable read is its local-member read: the analogue of `none`
                _http_row(ctx, "read_none", "etcd", eurl, EtcdRange(ETCD_KEYS, True),
                          READ_CONNS, et.pids)
                _http_row(ctx, "read_linearizable", "etcd", eurl, EtcdRange(ETCD_KEYS, False),
                          READ_CONNS, et.pids)
                _http_row(ctx, "mix_90_10", "etcd", eurl,
                          Mix(EtcdRange(ETCD_KEYS, False), EtcdPut()), READ_CONNS, et.pids)
            if not ctx.quick:
                _apsw_local(ctx)
        if not ctx.quick:
            _pysyncobj(ctx)
    rows = median_rows(ctx.rows)
    summary = {}
    for r in rows:
        v = r.get("rows_per_s") if r["workload"].startswith("bulk") else r.get("rps")
        key = f"{r['system']}_{r['workload']}" + (f"_{r['variant']}" if r.get("variant") else "")
        # apsw: the faster of its synchronous settings is the ceiling (see _best_apsw)
        summary[key] = max(v or 0, summary.get(key) or 0) if r["system"] == "apsw" else v
    return {"suite": "workloads" if with_raftsqlite else "peers", **summary,
            "raftsqlite": ctx.raftsqlite_info,
            "repeat": ctx.repeat, "duration_s": ctx.duration, "rows": rows,
            "notes": ctx.notes}


def _apsw_local(ctx):
    wd = _apsw_workdir(ctx)
    if wd is None:
        return
    with wd as d:
        for sync in ("FULL", "NORMAL"):
            _local_row(ctx, "insert_c1", "apsw", 1,
                       apsw_peer.insert_rate(d, ctx.duration, synchronous=sync))
        _apsw_bulk_rows(ctx, d, "bulk_1000")
        _local_row(ctx, "read_none", "apsw", 1,
                   apsw_peer.point_read_rate(d, ctx.duration, nrows=READ_ROWS))


def driver_suite(ctx) -> dict:
    """Both drivers against the validating test server: their ceilings and CPU use."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.testserver", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=rcluster.REPO_ROOT,
                            env=rcluster._env(rcluster.REPO_ROOT),
                            preexec_fn=rcluster.die_with_parent())
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"test server did not start: {line!r}")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        drivers = (["wrk"] if WRK else []) + ["asyncio"]
        if not WRK:
            ctx.note("wrk not installed: only the asyncio driver measured")
        out = {}
        for d in drivers:
            res = run_load(url, RqliteInsert(), 16, ctx.duration, driver=d,
                           watch_pids=[proc.pid]).to_dict()
            row = _local_row(ctx, "driver_insert_c16", d, 16, res)
            if row.get("error_count"):
                raise RuntimeError(f"driver {d} got errors from the test server: {row['errors']}")
            out[f"{d}_rps"] = row["rps"]
            out[f"{d}_cpu_frac"] = row["driver_cpu_frac"]
    finally:
        proc.terminate()
        proc.wait(10)
    return {"suite": "driver", **out, "rows": ctx.rows, "notes": ctx.notes}


SUITES = {
    "headline": headline,
    "workloads": workloads,
    "peers": lambda ctx: workloads(ctx, with_raftsqlite=False),
    "driver": driver_suite,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", choices=sorted(SUITES))
    p.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    p.add_argument("--repeat", type=int, default=0, help="runs per measurement (median kept)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds per measurement")
    p.add_argument("--driver", choices=["auto", "wrk", "asyncio"], default="auto")
    p.add_argument("--root", default=os.environ.get("BENCH_RAFTSQLITE_ROOT", rcluster.REPO_ROOT),
                   help="directory holding the raftsqlite package to benchmark")
    a = p.parse_args(argv)
    # The runner stops an overdue suite with SIGTERM: exit through the ExitStacks so the
    # clusters this process started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = Ctx(a)
    t0 = time.monotonic()
    out = SUITES[a.suite](ctx)
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
