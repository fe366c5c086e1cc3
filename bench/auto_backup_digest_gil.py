"""How much the auto-backup digest holds the GIL: a thread sleeping 0.5 ms in a loop
(standing in for the node's event loop) measures its wake-up delays while the digest of a
~100 MB SQLite file runs, for the digest as shipped (rows rendered by SQLite) and for a
Python-side rendering (``repr`` of every row), alternated.

    python bench/auto_backup_digest_gil.py [--rows 800000]
"""
import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from itertools import islice

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import apsw  # noqa: E402
from raftsqlite import db_files  # noqa: E402


def python_rendering(path):
    c = apsw.Connection(f"file:{path}?immutable=1",
                        flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    h = hashlib.blake2b(digest_size=16)
    cur = c.execute("SELECT rowid, * FROM t")
    while True:
        rows = list(islice(cur, 2000))
        if not rows:
            break
        h.update(repr(rows).encode())
    c.close()


def probe(fn, path):
    stop, lat = [False], []

    def loop():
        while not stop[0]:
            t = time.perf_counter()
            time.sleep(0.0005)
            lat.append(time.perf_counter() - t)
    th = threading.Thread(target=loop)
    th.start()
    t0 = time.perf_counter()
    fn(path)
    dt = time.perf_counter() - t0
    stop[0] = True
    th.join()
    lat.sort()
    return (f"{dt:.2f}s; sleeper wake-up p50 {lat[len(lat) // 2] * 1e3:.2f} ms, "
            f"p99 {lat[int(.99 * len(lat))] * 1e3:.2f} ms, max {lat[-1] * 1e3:.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=800_000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="digest-gil-")
    path = os.path.join(d, "db.sqlite")
    c = apsw.Connection(path)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB)")
    c.execute(f"WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s "
              f"WHERE x < {a.rows}) INSERT INTO t(a, b, c) SELECT printf('%060d', x), "
              f"x * 1.5, randomblob(40) FROM s")
    c.close()
    print(f"# {' '.join(sys.argv)}: {os.path.getsize(path) / 1e6:.0f} MB, {a.rows} rows")
    try:
        for _ in range(2):
            print("shipped (SQLite renders): ", probe(db_files.content_digest, path))
            print("python repr of each row:  ", probe(python_rendering, path))
    finally:
        os.unlink(path)
        os.rmdir(d)


if __name__ == "__main__":
    main()
