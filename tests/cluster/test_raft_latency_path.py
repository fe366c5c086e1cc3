"""The 1-client write path's shortcuts (docs/design/raft-io.md, "The 1-client write path"):
small committed batches applied on the loop, small log writes waited for blocked (bounded),
commit-only APPENDs held for the next APPEND. Each keeps the order, the results and the
durability of the plain path."""
import asyncio
import threading
import time

from raftsqlite.codec.model import Member, MsgType
from raftsqlite.raft.config import RaftConfig
from raftsqlite.raft.demo import KVStateMachine
from raftsqlite.raft.driver import RaftNode
from raftsqlite.testing.procs import free_port

from tests.cluster.test_raft_driver import bootstrap_and_elect, cfg, run, single


class Recording(KVStateMachine):
    """Records which thread applied which indexes; a big entry is slow to apply, so the
    entries committed meanwhile queue behind it."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.big_started = threading.Event()

    def apply(self, entries):
        if any(len(e.data) > 1000 for e in entries):
            self.big_started.set()
            time.sleep(0.05)
        # recorded when done: the order in which applies finished
        self.calls.append((threading.get_ident(), [e.index for e in entries]))
        return super().apply(entries)


def test_inline_and_threaded_applies_keep_the_order(tmp_path):
    """Small batches are applied on the loop, big ones on the apply thread, and entries
    committed while a big one is still being applied wait behind it: every index is
    applied exactly once, in order, and each proposer gets its own entry's result."""
    async def main():
        fsm = Recording()
        node, _ = await single(cfg(tmp_path, apply_inline_bytes=1000), fsm)
        loop_thread = threading.get_ident()
        first = await node.propose(b"a=1")
        assert first == node.applied_index
        big = node.propose_future(b"big=" + b"x" * 5000)
        for _ in range(500):                # until the big entry is being applied
            if fsm.big_started.is_set():
                break
            await asyncio.sleep(0.005)
        assert fsm.big_started.is_set()
        small = [node.propose(b"k%d=%d" % (i, i)) for i in range(20)]
        res = await asyncio.gather(big, *small)
        assert res == sorted(res) and len(set(res)) == 21
        more = await asyncio.gather(*[node.propose(b"m%d=1" % i) for i in range(5)])
        applied = [i for _, idx in fsm.calls for i in idx]
        assert applied == sorted(applied) and len(applied) == len(set(applied))
        assert applied[-1] == more[-1] == node.applied_index
        threads = {t for t, _ in fsm.calls}
        assert loop_thread in threads and len(threads) == 2
        big_call = next(t for t, idx in fsm.calls if res[0] in idx)
        assert big_call != loop_thread
        s = node.stats()
        # (a lone leader writes its small batches inline, others wait for the thread)
        assert s["applied_inline"] > 0 and s["persist_waited"] + s["persist_inline"] > 0
        await node.stop()
    run(main())


def test_commit_only_appends_are_piggybacked_and_idle_followers_catch_up(tmp_path):
    """With one write at a time the commit index reaches followers on the next write's
    APPEND (no commit-only APPEND of its own), and when writes stop the held one goes out
    after commit_notify_delay: every follower applies everything, in bounded time, with no
    heartbeat to bring the commit index."""
    async def main():
        ports = [free_port() for _ in range(3)]
        ids = ["a", "b", "c"]
        members = [Member(i, f"127.0.0.1:{p}") for i, p in zip(ids, ports)]
        nodes, fsms = [], []
        for nid, port in zip(ids, ports):
            c = RaftConfig(node_id=nid, data_dir=str(tmp_path / nid), tick_interval=0.05,
                           raft_addr=f"127.0.0.1:{port}", commit_notify_delay=0.02)
            fsm = KVStateMachine()
            node = RaftNode(c, fsm)
            await node.start()
            nodes.append(node)
            fsms.append(fsm)
        lead = await bootstrap_and_elect(nodes, members)
        sent = []
        real_send = lead.transport.send

        def send(m):
            # Heartbeats carry the commit too: dropped here, so only APPENDs (held or
            # not) can bring it to the followers.
            if m.type != MsgType.HEARTBEAT:
                sent.append(m)
                real_send(m)
        lead.transport.send = send
        for i in range(30):
            await lead.propose(b"k%d=%d" % (i, i))
        commit_only = [m for m in sent if m.type == MsgType.APPEND and not m.entries]
        with_entries = [m for m in sent if m.type == MsgType.APPEND and m.entries]
        assert lead.stats()["commit_piggybacked"] > 0
        # without holding, every write would add one commit-only APPEND per follower
        assert len(commit_only) < len(with_entries)
        target = lead.applied_index
        deadline = time.monotonic() + 1.0
        while any(f.applied < target for f in fsms) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert all(f.applied >= target for f in fsms), [f.applied for f in fsms]
        assert all(f.data == fsms[0].data for f in fsms) and len(fsms[0].data) == 30
        lead.transport.send = real_send
        for n in nodes:
            await n.stop()
    run(main())
