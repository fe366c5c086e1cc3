"""A leader alone in its group writes its small log batches on the loop thread (driver
``_persist``, as a follower's): nothing to send or hear while the write runs, so no
hand-off to the persist thread. A leader with peers keeps the persist thread."""
import asyncio

from raftsqlite.codec.model import Member
from raftsqlite.raft.config import RaftConfig
from raftsqlite.raft.demo import KVStateMachine
from raftsqlite.raft.driver import RaftNode
from raftsqlite.testing.procs import free_port

from tests.cluster.test_raft_driver import bootstrap_and_elect, cfg, run, single


def test_single_member_writes_inline_and_keeps_every_acknowledged_entry(tmp_path):
    """Invariant: with one member, small log writes run on the loop (persist_inline
    counts them), every proposal gets its own index in order, and every acknowledged
    entry is in the log after a restart."""
    c = cfg(tmp_path)

    async def main():
        node, fsm = await single(c)
        first = await node.propose(b"a=1")  # the term's first writes (hard state) are inline anyway
        before = node.stats()["persist_inline"]
        res = [await node.propose(b"k%d=%d" % (i, i)) for i in range(200)]
        res += await asyncio.gather(*[node.propose(b"k%d=%d" % (i, i)) for i in range(200, 300)])
        assert res == sorted(res) and len(set(res)) == 300 and res[0] > first
        s = node.stats()
        assert s["persist_inline"] > before, s
        last = res[-1]
        await node.stop()
        again, fsm2 = await single(c)
        assert again.last_log_index >= last
        await again.propose(b"z=1")      # commits everything before it
        for _ in range(300):
            if len(fsm2.data) >= 302:
                break
            await asyncio.sleep(0.01)
        assert fsm2.data[b"k299"] == b"299" and fsm2.data[b"a"] == b"1"
        await again.stop()
    run(main())


def test_a_leader_with_peers_keeps_the_persist_thread(tmp_path):
    """Invariant: a stable leader with followers does not write its appends on the loop
    (its own fdatasync runs beside the followers' round trip)."""
    async def main():
        ports = [free_port() for _ in range(3)]
        ids = ["a", "b", "c"]
        members = [Member(i, f"127.0.0.1:{p}") for i, p in zip(ids, ports)]
        nodes = []
        for nid, port in zip(ids, ports):
            node = RaftNode(RaftConfig(node_id=nid, data_dir=str(tmp_path / nid),
                                       tick_interval=0.05, raft_addr=f"127.0.0.1:{port}"),
                            KVStateMachine())
            await node.start()
            nodes.append(node)
        lead = await bootstrap_and_elect(nodes, members)
        await lead.propose(b"first=1")   # the term's first writes (hard state) may be inline
        before = lead.stats()["persist_inline"]
        await asyncio.gather(*[lead.propose(b"k%d=%d" % (i, i)) for i in range(50)])
        s = lead.stats()
        assert s["persist_inline"] == before and s["persist_waited"] + s["persist_threaded"] > 0, s
        for n in nodes:
            await n.stop()
    run(main())


def test_single_member_proposal_is_one_ready_cycle(tmp_path):
    """Invariant: a lone leader runs exactly one Ready cycle per proposal made one at a
    time (the commit is taken in the same pass as the persist, not in a second Ready)."""
    async def main():
        node, _ = await single(cfg(tmp_path))
        await node.propose(b"warm=1")
        s0 = node.stats()
        n = 30
        for i in range(n):
            await node.propose(b"k%d=%d" % (i, i))
        s = node.stats()
        assert s["ready"] - s0["ready"] == n, (s0["ready"], s["ready"])
        assert s["committed_at_persist"] - s0["committed_at_persist"] == n
        await node.stop()
    run(main())


def _record_order(node, fsm, events, slow=0.0):
    """Log every durable write's last index, every apply and every acknowledgement."""
    import time as _time
    write, apply = node.log.write, fsm.apply

    def rec_write(b):
        if slow:
            _time.sleep(slow)
        write(b)
        if b.entries:
            events.append(("durable", b.entries[-1].index))

    def rec_apply(entries):
        for e in entries:
            events.append(("apply", e.index))
        return apply(entries)
    node.log.write = rec_write
    fsm.apply = rec_apply


def _check_order(events, acked):
    durable = 0
    for kind, idx in events:
        if kind == "durable":
            durable = max(durable, idx)
        else:
            assert idx <= durable, f"{kind} of {idx} before it was durable ({durable}): {events}"
    assert acked and all(i <= durable for i in acked)


def test_single_member_applies_and_acknowledges_only_after_the_persist(tmp_path):
    """Invariant: in a group of one, an entry is applied and its proposal acknowledged
    only after the log write that holds it returned (fdatasync done), on the inline path
    and on the persist thread (persist_wait=0, a slow write)."""
    for sub, kw, slow in (("inline", {}, 0.0), ("thread", {"persist_wait": 0}, 0.01)):
        async def main():
            node, fsm = await single(cfg(tmp_path / sub, **kw))
            await node.propose(b"warm=1")
            events, acked = [], []
            _record_order(node, fsm, events, slow)

            def ack(f):
                if not f.exception():
                    events.append(("ack", f.result()))
                    acked.append(f.result())
            futs = []
            for i in range(40):
                f = node.propose_future(b"k%d=%d" % (i, i))
                f.add_done_callback(ack)
                futs.append(f)
                if i % 3 == 0:
                    await f
            await asyncio.gather(*futs)
            _check_order(events, acked)
            assert len(acked) == 40
            await node.stop()
        run(main())
