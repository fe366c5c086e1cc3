"""Raw SQLite through apsw in one process: the storage ceiling.

The same work raftsqlite's workloads do, with no network, no Raft and no JSON: single-row
INSERTs each in its own transaction, 1000-row transactions, and point reads by primary
key. WAL mode; ``synchronous`` is a parameter because the fair setting depends on the
question: ``FULL`` makes every commit durable (the promise a replicated write also makes,
since raftsqlite fsyncs its log before acknowledging), ``NORMAL`` is SQLite's fastest
crash-safe WAL setting. Both are reported by the suite.

Every loop is bounded by a duration and a count.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from ..driver import percentiles_ms


def available() -> tuple[bool, str]:
    try:
        import apsw  # noqa: F401
    except ImportError:
        return False, "apsw is not installed; apsw peer skipped"
    return True, ""


def version() -> str | None:
    try:
        import apsw
        return f"{apsw.apswversion()} (SQLite {apsw.sqlitelibversion()})"
    except ImportError:
        return None


def _open(path: str, synchronous: str):
    import apsw
    con = apsw.Connection(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute("CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT)")
    return con


def _result(kind, n, rows, wall, lat_ns, synchronous, **extra) -> dict:
    pct = percentiles_ms(lat_ns)
    return {"system": "apsw", "workload": kind, "synchronous": synchronous,
            "ops": n, "rps": round(n / wall, 1), "rows_per_s": round(rows / wall, 1),
            "p50_ms": pct["p50"], "p90_ms": pct["p90"], "p99_ms": pct["p99"],
            "p999_ms": pct["p999"], "max_ms": pct["max"], "mean_ms": pct["mean"],
            "duration_s": round(wall, 3), **extra}


def insert_rate(workdir: str, duration_s: float = 5.0, max_ops: int = 2_000_000,
                synchronous: str = "FULL", value_size: int = 100) -> dict:
    """Single-row INSERT, one transaction each (autocommit)."""
    con = _open(os.path.join(workdir, "insert.db"), synchronous)
    pad = "x" * max(0, value_size - 16)
    lat, n = [], 0
    t0 = time.perf_counter()
    end = t0 + duration_s
    while n < max_ops:
        a = time.perf_counter_ns()
        con.execute("INSERT INTO bench(v) VALUES(?)", (f"1-{n}-{pad}",))
        lat.append(time.perf_counter_ns() - a)
        n += 1
        if (n & 63) == 0 and time.perf_counter() >= end:
            break
    wall = time.perf_counter() - t0
    con.close()
    return _result("insert", n, n, wall, lat, synchronous)


def bulk_rate(workdir: str, duration_s: float = 5.0, max_batches: int = 100_000,
              rows: int = 1000, synchronous: str = "FULL", value_size: int = 100) -> dict:
    """``rows`` parameterized single-row INSERTs per transaction."""
    con = _open(os.path.join(workdir, "bulk.db"), synchronous)
    pad = "b" * value_size
    params = [(f"{i}-{pad}",) for i in range(rows)]
    lat, n = [], 0
    t0 = time.perf_counter()
    end = t0 + duration_s
    while n < max_batches:
        a = time.perf_counter_ns()
        with con:
            con.executemany("INSERT INTO bench(v) VALUES(?)", params)
        lat.append(time.perf_counter_ns() - a)
        n += 1
        if time.perf_counter() >= end:
            break
    wall = time.perf_counter() - t0
    con.close()
    return _result("bulk", n, n * rows, wall, lat, synchronous, rows_per_batch=rows)


def point_read_rate(workdir: str, duration_s: float = 5.0, max_ops: int = 5_000_000,
                    nrows: int = 10_000) -> dict:
    """Point reads by primary key over ``nrows`` rows, keys uniform at random."""
    import random
    con = _open(os.path.join(workdir, "read.db"), "NORMAL")
    with con:
        con.executemany("INSERT INTO bench(v) VALUES(?)", [(f"r{i}",) for i in range(nrows)])
    rnd = random.Random(7)
    lat, n = [], 0
    t0 = time.perf_counter()
    end = t0 + duration_s
    while n < max_ops:
        a = time.perf_counter_ns()
        con.execute("SELECT v FROM bench WHERE id=?", (rnd.randint(1, nrows),)).fetchall()
        lat.append(time.perf_counter_ns() - a)
        n += 1
        if (n & 255) == 0 and time.perf_counter() >= end:
            break
    wall = time.perf_counter() - t0
    con.close()
    return _result("point_read", n, n, wall, lat, "NORMAL")


class ApswWorkdir:
    """A temporary directory for the peer's database files, removed afterwards."""

    def __init__(self, base: str | None = None):
        self.path = tempfile.mkdtemp(prefix="bench-apsw-", dir=base)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
