"""Store.execute_many: the writes of a sharding router's coalesced call are queued
together and leave in one group-commit entry, each keeping its own outcome."""
import asyncio

import pytest

from raftsqlite.codec.model import Request, Statement
from raftsqlite.config import StoreConfig
from raftsqlite.db import Database
from raftsqlite.errors import BadRequest, NotLeader
from raftsqlite.fsm import FSM
from raftsqlite.store import Store
from test_store import FakeRaft


@pytest.fixture
def env(tmp_path):
    db = Database(str(tmp_path / "db.sqlite"))
    fsm = FSM(db)
    raft = FakeRaft(fsm)
    store = Store(raft, fsm, db, StoreConfig(max_inflight=2), node_id="n1")
    yield store, raft
    store.close()
    db.close()


def test_requests_that_arrive_together_share_one_entry(env):
    """Invariant: N requests handed over together on an idle store become one log entry
    (not the first alone and the rest later); each gets its own results, a bad request
    its own BadRequest, a failing transaction only its own error, and an empty request
    an empty result."""
    store, raft = env

    async def go():
        await store.execute([Statement("CREATE TABLE t (a UNIQUE)")])
        before = len(raft.proposals)
        reqs = [Request([Statement("INSERT INTO t VALUES (?)", [i])]) for i in range(20)]
        reqs.append(Request([Statement("INSERT INTO t VALUES (100)"),
                             Statement("INSERT INTO t VALUES (1)")], transaction=True))
        reqs.append(Request([Statement("INSERT INTO t VALUES (?)", [1 << 70])]))
        reqs.append(Request([]))
        outs = await store.execute_many(reqs)
        q = await store.query([Statement("SELECT count(*) FROM t")])
        return outs, len(raft.proposals) - before, q
    outs, proposals, q = asyncio.run(go())
    assert proposals == 1
    assert [o["results"][0]["last_insert_id"] for o in outs[:20]] == list(range(1, 21))
    assert "error" in outs[20]["results"][-1]
    assert isinstance(outs[21], BadRequest)
    assert outs[22]["results"] == []
    assert q["results"][0]["values"] == [[20]]


def test_follower_refuses_before_queuing(env):
    """Invariant: on a follower nothing is queued or proposed; NotLeader is raised for
    the whole call (so the HTTP layer forwards it as a whole)."""
    store, raft = env
    raft.is_leader, raft.leader_id = False, "n2"
    with pytest.raises(NotLeader):
        asyncio.run(store.execute_many([Request([Statement("CREATE TABLE t (a)")])]))
    assert raft.proposals == [] and len(store._queue) == 0
