"""RaftNodes on threads of their own, each with its own event loop, as members in
processes of their own would be: a member whose loop thread blocks (a log write done
inline, stalled) does not stop the others' ticks, heartbeats and elections, which it would
if they all shared the test's loop."""
import asyncio
import threading
import time

from raftsqlite.codec.model import Member
from raftsqlite.raft.config import RaftConfig
from raftsqlite.raft.demo import KVStateMachine
from raftsqlite.raft.driver import RaftNode
from raftsqlite.testing.procs import free_port


class LoopMember:
    def __init__(self, config, fsm=None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name=f"member-{config.node_id}")
        self.thread.start()
        self.node = RaftNode(config, fsm or KVStateMachine())
        self.call(self.node.start())

    def call(self, coro, timeout=20.0):
        """Run ``coro`` on this member's loop; its result (bounded wait)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        try:
            self.call(self.node.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            if not self.thread.is_alive():
                self.loop.close()


def start_group(tmp_path, n=3, timeout=10.0, **kw):
    """``n`` LoopMembers bootstrapped together. -> (members, the leader's LoopMember)."""
    ports = [free_port() for _ in range(n)]
    ids = [chr(ord("a") + i) for i in range(n)]
    ms = [Member(i, f"127.0.0.1:{p}") for i, p in zip(ids, ports)]
    group = []
    try:
        for nid, port in zip(ids, ports):
            c = RaftConfig(node_id=nid, data_dir=str(tmp_path / nid),
                           raft_addr=f"127.0.0.1:{port}", **kw)
            group.append(LoopMember(c))
        for m in group:
            m.call(m.node.bootstrap(ms))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = [m for m in group if m.node.is_leader]
            if lead:
                return group, lead[0]
            time.sleep(0.01)
        raise TimeoutError("no leader elected")
    except BaseException:
        stop_group(group)
        raise


def stop_group(group):
    for m in group:
        try:
            m.stop()
        except Exception:  # noqa: BLE001 - stop the others too
            pass


class Watch:
    """Records, every 10 ms until ``stop()``, any moment when ``lead`` is not leader or
    some member's term differs from ``term`` (an election happened)."""

    def __init__(self, group, lead, term):
        self.lost = []
        self._stop = threading.Event()

        def watch():
            while not self._stop.wait(0.01):
                if not lead.node.is_leader or any(m.node.term != term for m in group):
                    self.lost.append([(m.node.node_id, m.node.term, m.node.is_leader)
                                      for m in group])
        self._t = threading.Thread(target=watch, daemon=True)
        self._t.start()

    def stop(self):
        self._stop.set()
        self._t.join(5)
        return self.lost
