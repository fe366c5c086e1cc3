"""What -auto-backup costs the writes of its leader: one node holding a ~100 MB database,
single-row INSERTs one at a time through HTTP, with the automatic backup on (interval 1s,
so with writes going on it backs up continuously: the worst case) and off, alternated.

    python bench/auto_backup_ab.py [--mb 100] [--seconds 15] [--rounds 2] [--vacuum]

Prints per phase: writes, p50/p99/max latency (ms), the backups written and their mean
duration; the last line is one JSON object. On a shared 2-core machine compare the
phases of one run, never absolute figures across runs.
"""
import argparse
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.cluster.node_harness import NodeProc, execute, wait_for  # noqa: E402
from raftsqlite.testing.procs import free_port  # noqa: E402


PRIMES = [2654435761, 40503, 2246822519, 3266489917, 668265263, 374761393, 1181783497,
          2870177450, 1609587929, 1073676287, 2147483647, 1000003, 999983, 7919, 104729,
          15485863, 32452843, 49979687, 67867967, 86028121, 104395301, 122949823,
          141650939, 160481183, 179424673, 198491317, 217645177, 236887691, 256203161,
          275604541, 295075147, 314606869, 334214459, 353868013, 373587883, 393342739,
          413158511, 433024223, 452930459, 472882027, 492876847, 512927357, 533000389,
          553105243, 573259391, 593441843, 613651349, 633910099]
DIGITS = " || ".join(f"((x * {p}) % 1000000007)" for p in PRIMES)


def fill(addr, mb):
    """~``mb`` MB of ~500-byte rows of digits (gzip takes them to about half, as it would
    ordinary data; zeros would flatter the compression), a recursive CTE per entry."""
    st, body = execute(addr, ["CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT)",
                              "CREATE TABLE w(id INTEGER PRIMARY KEY, v TEXT)"])
    assert st == 200, body
    per = 20_000
    n = mb * 1_000_000 // 520
    for start in range(0, n, per):
        sql = (f"WITH RECURSIVE c(x) AS (SELECT {start} UNION ALL SELECT x + 1 FROM c "
               f"WHERE x < {min(start + per, n) - 1}) INSERT INTO big(id, v) "
               f"SELECT x, {DIGITS} FROM c")
        st, body = execute(addr, [sql], timeout=120)
        assert st == 200 and "error" not in body["results"][0], body


def measure(addr, seconds):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    lat = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and i < 1_000_000:
        i += 1
        body = json.dumps([["INSERT INTO w(v) VALUES (?)", f"row {i}"]])
        t0 = time.perf_counter()
        conn.request("POST", "/db/execute", body=body,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        lat.append(time.perf_counter() - t0)
        assert r.status == 200
    conn.close()
    lat.sort()

    def q(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)
    return {"writes": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99),
            "max_ms": round(lat[-1] * 1000, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--vacuum", action="store_true")
    a = ap.parse_args()
    wd = tempfile.mkdtemp(prefix="autobk-ab-")
    bdir = os.path.join(wd, "backups")
    cfg = os.path.join(wd, "ab.json")
    with open(cfg, "w") as f:
        json.dump({"version": 1, "type": "file", "interval": "1s", "vacuum": a.vacuum,
                   "sub": {"dir": bdir, "file": "backup.sqlite"}}, f)
    print(f"# {' '.join(sys.argv)} | python {platform.python_version()} | "
          f"{os.cpu_count()} cpus | one node, fsync on", flush=True)
    hp, rp = free_port(), free_port()
    node = NodeProc(wd, "n1", hp, rp)
    out = {"phases": []}
    try:
        node.start()
        wait_for(node.ready, 30, "node ready")
        t0 = time.monotonic()
        fill(node.http, a.mb)
        size = os.path.getsize(os.path.join(node.data, "db.sqlite"))
        print(f"# filled {size / 1e6:.0f} MB in {time.monotonic() - t0:.1f}s", flush=True)
        out["db_mb"] = round(size / 1e6)
        for r in range(a.rounds):
            for on in (True, False):
                node.terminate()
                node.extra = ["-auto-backup", cfg] if on else []
                node.start(node.argv())
                wait_for(node.ready, 60, "node ready")
                if on:  # the first backup of the unchanged data, before measuring
                    wait_for(lambda: ((node.status() or {}).get("auto_backup") or {})
                             .get("backups_ok", 0) + ((node.status() or {}).get(
                                 "auto_backup") or {}).get("skipped_same_content", 0) >= 1,
                             120, "a first backup")
                before = (node.status() or {}).get("auto_backup") or {}
                res = measure(node.http, a.seconds)
                ab = (node.status() or {}).get("auto_backup") or {}
                res.update(round=r + 1, auto_backup=on)
                if on:
                    res["backups"] = ab["backups_ok"] - before.get("backups_ok", 0)
                    res["last_backup_s"] = ab.get("last_backup_seconds")
                    res["last_backup_mb"] = round((ab.get("last_backup_bytes") or 0) / 1e6, 1)
                print(json.dumps(res), flush=True)
                out["phases"].append(res)
    finally:
        node.kill()
        shutil.rmtree(wd, ignore_errors=True)
    for on in (True, False):
        ph = [p for p in out["phases"] if p["auto_backup"] == on]
        if ph:
            med = {k: sorted(p[k] for p in ph)[len(ph) // 2]
                   for k in ("writes", "p50_ms", "p99_ms", "max_ms")}
            out["median_on" if on else "median_off"] = med
            print(f"# auto-backup {'on ' if on else 'off'}: median of {len(ph)} phases "
                  f"{json.dumps(med)}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
