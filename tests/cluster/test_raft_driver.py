"""RaftNode in one process (one member, loopback listener): proposal results and
errors, ReadIndex, snapshots with compaction, restart from snapshot + log, fail-stop."""
import asyncio
import os

import pytest

from raftsqlite import errors
from raftsqlite.codec.model import Member
from raftsqlite.raft.config import RaftConfig
from raftsqlite.raft.demo import KVStateMachine
from raftsqlite.raft.driver import RaftNode
from raftsqlite.testing.procs import free_port


def cfg(tmp_path, **kw):
    kw.setdefault("raft_addr", f"127.0.0.1:{free_port()}")
    return RaftConfig(node_id="n1", data_dir=str(tmp_path), tick_interval=0.01, **kw)


async def single(c, fsm=None):
    fsm = fsm or KVStateMachine()
    node = RaftNode(c, fsm)
    await node.start()
    if node.last_log_index == 0:
        await node.bootstrap([Member("n1", c.raft_addr)])
    for _ in range(500):
        if node.is_leader:
            break
        await asyncio.sleep(0.01)
    assert node.is_leader
    return node, fsm


async def bootstrap_and_elect(nodes, members, timeout=5.0):
    """Bootstrap every node with ``members`` and return the leader (bounded wait)."""
    for n in nodes:
        await n.bootstrap(members)
    for _ in range(int(timeout / 0.01)):
        if any(n.is_leader for n in nodes):
            break
        await asyncio.sleep(0.01)
    return next(n for n in nodes if n.is_leader)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_propose_returns_state_machine_result(tmp_path):
    """propose() resolves with exactly what apply returned for that entry; concurrent
    proposals share batches and all apply once, in order."""
    async def main():
        node, fsm = await single(cfg(tmp_path))
        idx = await node.propose(b"a=1")
        assert idx == node.applied_index and fsm.data[b"a"] == b"1"
        res = await asyncio.gather(*[node.propose(b"k%d=%d" % (i, i)) for i in range(500)])
        assert res == sorted(res) and len(set(res)) == 500
        assert node.stats()["batches"] < 500
        await node.read_index()
        assert len(fsm.data) == 501
        await node.stop()
    run(main())


def test_errors_are_definite_or_not(tmp_path):
    """Oversized proposals are refused up front; a stopped node drops proposals."""
    async def main():
        node, _ = await single(cfg(tmp_path, max_proposal_bytes=100))
        with pytest.raises(errors.PayloadTooLarge):
            await node.propose(b"x" * 101)
        await node.stop()
        with pytest.raises(errors.ProposalDropped):
            await node.propose(b"a=1")
    run(main())


def test_snapshot_compaction_and_restart(tmp_path):
    """Past the threshold a snapshot is taken and the log compacted; a restart with an
    empty in-memory state machine restores the snapshot and replays the rest."""
    c = cfg(tmp_path, snapshot_threshold=200, snapshot_trailing=10, segment_bytes=4096)

    async def first():
        node, fsm = await single(c)
        for i in range(0, 1000, 50):
            await asyncio.gather(*[node.propose(b"k%d=%d" % (j, j)) for j in range(i, i + 50)])
        for _ in range(200):
            if node.log.first_index() > 100:
                break
            await asyncio.sleep(0.02)
        assert node.stats()["snapshots_taken"] >= 1
        assert node.log.first_index() > 100
        digest = fsm.digest()
        await node.stop()
        return digest

    async def second(digest):
        node, fsm = await single(c)
        await node.read_index()
        assert fsm.digest() == digest and len(fsm.data) == 1000
        await node.stop()
    d = run(first())
    snaps = os.listdir(os.path.join(str(tmp_path), "raft", "snap"))
    assert any(n.endswith(".snap") for n in snaps)
    run(second(d))


class Exploding(KVStateMachine):
    def apply(self, entries):
        if any(e.data == b"boom=1" for e in entries):
            raise RuntimeError("bug in the state machine")
        return super().apply(entries)


def test_wait_applied(tmp_path):
    """wait_applied returns True at once for an applied index, True as soon as a later
    index is applied (never before: the state machine holds it when it returns), and
    False when its timeout passes first."""
    async def main():
        node, fsm = await single(cfg(tmp_path))
        first = await node.propose(b"a=1")
        assert await node.wait_applied(first, 0.01)
        assert not await node.wait_applied(node.applied_index + 1, 0.05)
        target = node.applied_index + 3
        waiter = asyncio.ensure_future(node.wait_applied(target, 5))
        await asyncio.sleep(0)
        assert not waiter.done()
        for i in range(3):
            node.propose_future(b"w%d=%d" % (i, i))
        assert await waiter
        assert node.applied_index >= target and fsm.data[b"w2"] == b"2"
        await node.stop()
    run(main())


def test_raising_apply_fails_stop(tmp_path):
    """A state machine that raises stops the member: callers get Unavailable, never a
    hang, and nothing more is acknowledged. The failed member no longer claims to lead
    or to know a leader (its core still says leader; a node that believed it served
    weak reads and /readyz "ok" from a database that no longer moves), and its leader
    contact stops being "now" (freshness-bounded reads see it age)."""
    async def main():
        node, _ = await single(cfg(tmp_path), Exploding())
        await node.propose(b"a=1")
        assert node.is_leader and node.leader_id and node.failed is None
        with pytest.raises(errors.Unavailable):
            await node.propose(b"boom=1", timeout=5)
        with pytest.raises(errors.Unavailable):
            await node.propose(b"b=1", timeout=5)
        assert node.stats()["failed"] and "bug in the state machine" in node.failed
        assert not node.is_leader and node.leader_id is None
        contact = node.last_leader_contact
        await asyncio.sleep(0.02)
        assert contact is None or node.last_leader_contact == contact
        await node.stop()
    run(main())


def test_nothing_acknowledged_before_durable(tmp_path):
    """Three members in one loop: every successful APPEND_RESP names only entries that
    member had already fdatasynced, and every vote granted was durable (state file
    written) before the answer left."""
    from raftsqlite.codec.model import MsgType

    async def main():
        ports = [free_port() for _ in range(3)]
        ids = ["a", "b", "c"]
        members = [Member(i, f"127.0.0.1:{p}") for i, p in zip(ids, ports)]
        nodes = []
        violations = []
        for nid, port in zip(ids, ports):
            c = RaftConfig(node_id=nid, data_dir=str(tmp_path / nid), tick_interval=0.01,
                           raft_addr=f"127.0.0.1:{port}")
            node = RaftNode(c, KVStateMachine())
            await node.start()
            durable = {"last": 0, "vote": ("", 0)}
            real_write = node.log.write

            def write(b, real_write=real_write, durable=durable):
                real_write(b)
                if b.entries:
                    durable["last"] = b.entries[-1].index
                elif b.truncate is not None:
                    durable["last"] = min(durable["last"], b.truncate[0].first + b.truncate[2] - 1)
                if b.state_bytes is not None:
                    durable["vote"] = (b.state.vote, b.state.term)
            node.log.write = write
            real_send = node.transport.send

            def send(m, real_send=real_send, durable=durable, nid=nid):
                if m.type == MsgType.APPEND_RESP and not m.reject and m.index > durable["last"]:
                    violations.append((nid, "ack", m.index, durable["last"]))
                if m.type == MsgType.VOTE_RESP and not m.reject and \
                        durable["vote"] != (m.to, m.term):
                    violations.append((nid, "vote", m.to, m.term, durable["vote"]))
                real_send(m)
            node.transport.send = send
            nodes.append(node)
        lead = await bootstrap_and_elect(nodes, members)
        for i in range(0, 600, 100):
            await asyncio.gather(*[lead.propose(b"k%d=v" % j) for j in range(i, i + 100)])
        await lead.transfer_leadership(None, timeout=5)   # one more election
        lead = next(n for n in nodes if n.is_leader)
        await asyncio.gather(*[lead.propose(b"z%d=v" % j) for j in range(100)])
        for n in nodes:
            await n.stop()
        assert not violations, violations[:5]
    run(main())


def test_heartbeats_flow_while_fsync_is_slow(tmp_path):
    """Three members, each on a loop thread of its own (as in its own process: a member
    whose loop blocked could not then freeze the others and hide an election), whose log
    writes each take 4x the election timeout: heartbeats and their responses still flow
    during the writes (each loop runs on while its persist thread writes), so the leader
    keeps its leadership and nobody starts an election (term unchanged) while proposals
    commit."""
    import time as _time

    from tests.cluster.raft_members import Watch, start_group, stop_group

    group, lead = start_group(tmp_path, tick_interval=0.01, election_ticks=10,
                              heartbeat_ticks=2)
    try:
        slow = {"on": False}
        for m in group:
            real_write = m.node.log.write

            def write(b, real_write=real_write):
                if slow["on"]:
                    _time.sleep(0.4)   # election timeout is 0.1-0.2 s
                real_write(b)
            m.node.log.write = write
        lead.call(lead.node.propose(b"warm=1"))
        term = lead.node.term
        slow["on"] = True
        watch = Watch(group, lead, term)
        for i in range(3):
            lead.call(lead.node.propose(b"k%d=v" % i, timeout=10))
        slow["on"] = False
        lost = watch.stop()
        assert not lost, lost[:3]
        assert lead.node.stats()["heartbeats_during_persist"] > 0
    finally:
        stop_group(group)


def test_recycle_bytes_reaches_the_log(tmp_path):
    """RaftConfig.recycle_bytes is what the member's log keeps for recycling; 0 turns
    recycling off (compacted segments are deleted)."""
    on = RaftNode(cfg(tmp_path / "a", recycle_bytes=5 << 20), KVStateMachine())
    assert on.log._recycler is not None and on.log._recycler.max_bytes == 5 << 20
    off = RaftNode(cfg(tmp_path / "b", recycle_bytes=0), KVStateMachine())
    assert off.log._recycler is None
