"""The second group-commit slot: opened by queued bulk requests, never by small writes."""
import asyncio

import pytest

from raftsqlite.codec.model import BulkStatements, Statement
from raftsqlite.config import StoreConfig
from raftsqlite.db import Database
from raftsqlite.fsm import FSM
from raftsqlite.store import PIPELINE_BYTES, Store, _request_size
from tests.unit.test_store import FakeRaft


class CountingRaft(FakeRaft):
    """FakeRaft that records how many proposals were in flight at once."""

    def __init__(self, fsm, delay=0.02):
        super().__init__(fsm, delay)
        self.active = 0
        self.most = 0

    async def propose(self, data, timeout):
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            return await super().propose(data, timeout)
        finally:
            self.active -= 1


@pytest.fixture
def env(tmp_path):
    db = Database(str(tmp_path / "db.sqlite"))
    fsm = FSM(db)
    raft = CountingRaft(fsm)
    store = Store(raft, fsm, db, StoreConfig(max_inflight=2), node_id="n1")
    yield store, raft
    store.close()
    db.close()


def _bulk(start, n=1000):
    return BulkStatements("INSERT INTO t(v) VALUES(?)", [[f"{i}-" + "b" * 100]
                                                         for i in range(start, start + n)])


def test_small_writes_keep_one_proposal_in_flight(env):
    """Single-row writes arriving while a proposal is in flight wait and leave together
    (the rule that keeps entries large for many small clients): never two in flight."""
    store, raft = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")])
        raft.most = 0
        await asyncio.gather(*(store.execute([Statement("INSERT INTO t(v) VALUES (?)", [i])])
                               for i in range(40)))
    asyncio.run(go())
    assert raft.most == 1


def test_bulk_requests_use_the_second_slot_with_exact_results(env):
    """Queued 1000-row requests open the second slot (two entries in flight), and every
    request still gets its own rows' results in order, applied in log order."""
    store, raft = env
    assert _request_size(_bulk(0)) >= PIPELINE_BYTES

    async def go():
        await store.execute([Statement("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")])
        raft.most = 0
        return await asyncio.gather(*(store.execute(_bulk(k * 1000), transaction=True)
                                      for k in range(4)))
    res = asyncio.run(go())
    assert raft.most == 2
    ids = sorted(r["results"][k]["last_insert_id"] for r in res for k in range(1000))
    assert ids == list(range(1, 4001))
    for r in res:
        got = [x["last_insert_id"] for x in r["results"]]
        assert got == list(range(got[0], got[0] + 1000))
    rows = store.db.read([("SELECT count(*), min(id), max(id) FROM t", None)])[0]["values"]
    assert rows == [[4000, 1, 4000]]
