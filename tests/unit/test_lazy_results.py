"""Proven bulk results left unbuilt (InsertRun.pending) on the way to the rqlite
renderer, and built for every other caller."""
import asyncio

import orjson
import pytest

from raftsqlite.codec import encode_command
from raftsqlite.codec.model import (BulkStatements, Command, CommandType, Entry, EntryType,
                                    InsertRun, Request, Statement)
from raftsqlite.config import StoreConfig
from raftsqlite.db import Database
from raftsqlite.fsm import FSM
from raftsqlite.http.wire import render_results
from raftsqlite.store import Store
from tests.unit.test_store import FakeRaft

SQL = "INSERT INTO t(v) VALUES(?)"


def _strip(rs):
    return [{k: v for k, v in r.items() if k != "time"} for r in rs]


def _apply_bulk(tmp_path, name, lazy, txn):
    db = Database(str(tmp_path / f"{name}.sqlite"))
    fsm = FSM(db)
    fsm.lazy_results = lazy
    db.internal("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    out = []
    for k in range(3):
        cmd = Command(CommandType.EXECUTE,
                      [Request(BulkStatements(SQL, [[f"{k}-{i}"] for i in range(200)]), txn),
                       Request(BulkStatements(SQL, [["a"], ["b"], ["c"]]), False)])
        out.append(fsm.apply([Entry(1, 10 + k, EntryType.NORMAL, encode_command(cmd))])[0])
    rows = db.read([("SELECT id, v FROM t ORDER BY id", None)])[0]["values"]
    db.close()
    return out, rows


@pytest.mark.parametrize("txn", [False, True])
def test_fsm_lazy_results_materialize_to_the_eager_ones(tmp_path, txn):
    """Invariant: with lazy_results the FSM leaves a proven run's results pending, and
    materializing them gives exactly the eager path's results; the database is the same."""
    eager, rows_e = _apply_bulk(tmp_path, "e", False, txn)
    lazy, rows_l = _apply_bulk(tmp_path, "l", True, txn)
    assert rows_e == rows_l and len(rows_e) == 3 * 203
    pending = 0
    for a, b in zip(eager, lazy):
        for ra, rb in zip(a["results"], b["results"]):
            assert type(rb) is InsertRun
            pending += rb.pending is not None
            assert rb.total() == len(ra)
            assert render_results(rb).raw == render_results(ra).raw
            assert _strip(rb.materialize()) == _strip(ra) and rb.pending is None
    assert pending == 6


@pytest.fixture
def env(tmp_path):
    db = Database(str(tmp_path / "db.sqlite"))
    fsm = FSM(db)
    raft = FakeRaft(fsm)
    store = Store(raft, fsm, db, StoreConfig(max_inflight=1), node_id="n1")
    yield store
    store.close()
    db.close()


def test_store_builds_results_unless_the_caller_renders_them(env):
    """Invariant: Store.execute returns built results (a full list) unless the caller
    asked for lazy_results; then the run may be pending, and it renders to the same
    rqlite JSON as the built one."""
    store = env
    assert store.fsm.lazy_results

    async def go():
        await store.execute([Statement("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")])
        built = await store.execute(BulkStatements(SQL, [[str(i)] for i in range(100)]))
        lazy = await store.execute(BulkStatements(SQL, [[str(i)] for i in range(100)]),
                                   lazy_results=True, guard=None)
        return built["results"], lazy["results"]
    built, lazy = asyncio.run(go())
    assert len(built) == 100 and built.pending is None
    assert [r["last_insert_id"] for r in built] == list(range(1, 101))
    assert lazy.pending is not None and lazy.total() == 100
    got = orjson.loads(render_results(lazy).raw)
    assert got == [{"last_insert_id": i, "rows_affected": 1} for i in range(101, 201)]
