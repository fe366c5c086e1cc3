"""FSM apply cost per log entry, against raw apsw doing the same SQL (issue #6).

Entries are shaped as the hot paths send them:

* ``shard N``: a coalesced ``POST /shard/call`` as a one-member shard group applies it: one
  EXECUTE entry (with the store's clock op) holding N requests, each one single-row INSERT
  of one SQL text with params and a one-key ownership guard, checked by the sharding
  service's real FSM hook. No request id: the router sends one only when the client gave
  one (``bench/shard_bench.py``'s clients do not).
* ``shardid N``: the same, each request with the id the router derives from a client's
  (``<client id>@<group>``), recorded in the dedup table.
* ``plain``: an rqlite single-row insert (one request, one statement, no id, no guard).

Each entry is applied alone (``fsm.apply([e])``: one SQLite transaction per entry, as an
idle one-member group commits). ``raw`` is apsw on its own connection doing BEGIN, the N
inserts, the dedup rows, the meta row and COMMIT. Figures are medians of ``--runs``.

    python bench/fsm_bench.py [--entries 3000] [--runs 5] [--quick] [--profile shard16]

The last line is JSON: {"shard1": us/entry, ..., "raw_shard1": ..., "plain": ...}.
(``PYTHONPATH`` does not pick the tree: the script imports the raftsqlite beside it; copy
it into another checkout to A/B.)
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import apsw  # noqa: E402

from raftsqlite.codec import encode_command  # noqa: E402
from raftsqlite.codec.model import Command, CommandType, Entry, Request, Statement  # noqa: E402
from raftsqlite.db import Database  # noqa: E402
from raftsqlite.fsm import FSM, SystemContext, clock_op  # noqa: E402
from raftsqlite.sharding import keyspace as ks  # noqa: E402
from raftsqlite.sharding.glue import ShardState, op_args  # noqa: E402
from raftsqlite.sharding.ownership import GuardItem, encode_guard  # noqa: E402
from raftsqlite.sharding.service import ShardingService  # noqa: E402

SQL = "INSERT INTO t(id, name, v) VALUES (?, ?, ?)"
SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, v REAL)"


def _entries(kind, n_req, count, start_index):
    """``count`` encoded entries of the given shape (fresh ids and keys in each)."""
    out = []
    key = start_index * 64
    clock = clock_op(Database.clock_now_ms())
    for k in range(count):
        reqs = []
        for _ in range(n_req):
            key += 1
            sts = [Statement(SQL, [key, f"user-{key}", key * 0.5])]
            if kind in ("shard", "shardid"):
                kid = ks.key_id(key)
                guard = encode_guard([GuardItem("t", 1, [kid])])
                rid = f"client-{key}@s1".encode() if kind == "shardid" else None
                reqs.append(Request(sts, False, rid, guard))
            else:
                reqs.append(Request(sts))
        data = encode_command(Command(CommandType.EXECUTE, reqs, [clock]))
        out.append(Entry(1, start_index + k, data=data))
    return out


def _fsm(path, guarded):
    db = Database(path, synchronous="OFF")
    fsm = FSM(db)
    if guarded:
        shard = ShardState("s1")
        shard.register(fsm)
        db.internal("BEGIN")
        shard.handler("own.set_all")(SystemContext(db, 1, 1), op_args({
            "group": "s1", "cols": {"t": {"epoch": 1, "shard_func": "hash", "tables": ["t"],
                                          "ranges": [[0, None]]}}}))
        db.internal("COMMIT")
        svc = types.SimpleNamespace(shard=shard)
        fsm.add_request_hook(lambda ctx, req, write=True:
                             ShardingService._fsm_hook(svc, ctx, req, write))
    db.internal(SCHEMA)
    return db, fsm


def run_fsm(kind, n_req, count, prof=None):
    with tempfile.TemporaryDirectory() as d:
        db, fsm = _fsm(os.path.join(d, "f.db"), kind != "plain")
        ents = _entries(kind, n_req, count, 10)
        fsm.apply(ents[:50])                        # warm caches
        todo = [[e] for e in ents[50:]]
        if prof is not None:
            prof.enable()
        t0 = time.process_time()
        for one in todo:
            res = fsm.apply(one)
        dt = time.process_time() - t0
        if prof is not None:
            prof.disable()
        r = res[0]["results"]
        assert len(r) == n_req and "last_insert_id" in r[-1][0], r
        db.close()
    return dt / len(todo) * 1e6


def run_raw(kind, n_req, count):
    """apsw alone: the same statements an FSM apply runs for the entry's rows."""
    with tempfile.TemporaryDirectory() as d:
        c = apsw.Connection(os.path.join(d, "r.db"))
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=OFF")
        c.execute(SCHEMA)
        c.execute("CREATE TABLE m (k TEXT PRIMARY KEY, v)")
        c.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, request_id BLOB NOT NULL UNIQUE, "
                  "result BLOB NOT NULL)")
        key = 0
        t0 = time.process_time()
        for idx in range(count):
            c.execute("BEGIN IMMEDIATE")
            for _ in range(n_req):
                key += 1
                c.execute(SQL, (key, f"user-{key}", key * 0.5))
                if kind == "shardid":
                    c.execute("INSERT INTO q(request_id, result) VALUES (?, ?)",
                              (f"client-{key}@s1".encode(), b'[{"last_insert_id":1}]'))
            c.execute("INSERT OR REPLACE INTO m(k, v) VALUES ('applied_index', ?), "
                      "('applied_term', ?)", (idx, 1))
            c.execute("COMMIT")
        dt = time.process_time() - t0
        c.close()
    return dt / count * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a few seconds: 300 entries, 1 run")
    ap.add_argument("--profile", default=None,
                    help="e.g. shard16, shardid16 or plain: cProfile that case")
    a = ap.parse_args(argv)
    if a.quick:
        a.entries, a.runs = 300, 1
    cases = [("shard", 1), ("shard", 8), ("shard", 16), ("shardid", 1), ("shardid", 8),
             ("shardid", 16), ("plain", 1)]
    if a.profile:
        import cProfile
        import pstats
        kind = a.profile.rstrip("0123456789")
        n = int(a.profile[len(kind):] or 1)
        p = cProfile.Profile()
        run_fsm(kind, n, a.entries, p)
        pstats.Stats(p).sort_stats("tottime").print_stats(25)
        return
    out = {}
    for kind, n in cases:
        name = "plain" if kind == "plain" else f"{kind}{n}"
        count = max(200, a.entries // max(1, n // 2))
        f = statistics.median(run_fsm(kind, n, count) for _ in range(a.runs))
        r = statistics.median(run_raw(kind, n, count) for _ in range(a.runs))
        out[name], out["raw_" + name] = round(f, 1), round(r, 1)
        print(f"{name:8s} fsm {f:7.1f} us/entry ({f / n:6.1f} us/request)   "
              f"raw apsw {r:7.1f} us/entry   overhead {(f - r) / n:6.1f} us/request",
              flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
