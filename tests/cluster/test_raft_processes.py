"""Real member processes (python -m raftsqlite.raft.demo) on 127.0.0.1: leader loss,
restart and catch-up, whole-group crash, catch-up by snapshot, damaged logs."""
import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

import json

from raftsqlite.raft.demo import OP_ADD, OP_GET, OP_REMOVE, DemoClient, DemoError

pytestmark = pytest.mark.cluster
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_ports(n):
    # below the ephemeral range: a peer's outgoing connection cannot take one first
    from raftsqlite.testing.procs import free_port
    return [free_port() for _ in range(n)]


class Group:
    """Member processes this test started; stopped by PID only."""

    def __init__(self, tmp, n, extra=()):
        self.tmp = tmp
        self.ids = [f"n{i + 1}" for i in range(n)]
        ports = free_ports(2 * n)
        self.raft = {nid: f"127.0.0.1:{ports[i]}" for i, nid in enumerate(self.ids)}
        self.cmd = {nid: ports[n + i] for i, nid in enumerate(self.ids)}
        self.extra = list(extra)
        self.procs = {}

    def add_slot(self, nid):
        """Reserve ports for a member that will join later (not in the bootstrap list)."""
        raft, cmd = free_ports(2)
        self.raft[nid] = f"127.0.0.1:{raft}"
        self.cmd[nid] = cmd
        self.joiners = getattr(self, "joiners", set()) | {nid}

    def start(self, nid):
        joiners = getattr(self, "joiners", set())
        peers = ",".join(f"{i}={a}" for i, a in self.raft.items() if i not in joiners)
        join = ["--join"] if nid in joiners else []
        logf = open(os.path.join(str(self.tmp), f"{nid}.log"), "ab")
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.procs[nid] = subprocess.Popen(
            [sys.executable, "-m", "raftsqlite.raft.demo", "--id", nid,
             "--data", os.path.join(str(self.tmp), nid), "--raft", self.raft[nid],
             "--port", str(self.cmd[nid]), "--peers", peers, "--tick", "0.02",
             "--log-level", "INFO"] + join + self.extra,
            stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(self.tmp))
        logf.close()

    def start_all(self):
        for nid in self.ids:
            self.start(nid)

    def kill(self, nid):
        p = self.procs.pop(nid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)

    def stop_all(self):
        for nid in list(self.procs):
            p = self.procs.pop(nid)
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)

    def log_text(self, nid):
        with open(os.path.join(str(self.tmp), f"{nid}.log"), "rb") as f:
            return f.read().decode(errors="replace")

    async def client(self, nid, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await DemoClient().connect("127.0.0.1", self.cmd[nid], 1.0)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{nid} command port never opened:\n{self.log_text(nid)}")
                await asyncio.sleep(0.05)

    async def status(self, nid):
        c = await self.client(nid)
        try:
            return await c.status()
        finally:
            await c.close()

    async def leader(self, among=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            for nid in among or list(self.procs):
                try:
                    s = await self.status(nid)
                except (OSError, AssertionError, asyncio.TimeoutError, ConnectionError):
                    continue
                if s["role"] == "leader":
                    return nid
            if time.monotonic() > deadline:
                raise AssertionError("no leader elected in time")
            await asyncio.sleep(0.05)

    async def converged(self, nids, timeout=20.0):
        """Wait until every member in ``nids`` has applied the same state."""
        deadline = time.monotonic() + timeout
        while True:
            ss = [await self.status(n) for n in nids]
            if len({s["digest"] for s in ss}) == 1 and len({s["applied"] for s in ss}) == 1:
                return ss
            if time.monotonic() > deadline:
                raise AssertionError(f"members did not converge: "
                                     f"{[(s['node_id'], s['applied'], s['keys']) for s in ss]}")
            await asyncio.sleep(0.1)


async def write_keys(g, keys, inflight=32, timeout=20.0):
    """Write keys through whoever leads; returns the acknowledged ones."""
    acked = []
    deadline = time.monotonic() + timeout
    todo = list(keys)
    while todo:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(todo)} writes not acknowledged in time")
        lead = await g.leader(timeout=max(1.0, deadline - time.monotonic()))
        c = await g.client(lead)
        try:
            batch, todo = todo[:inflight], todo[inflight:]
            res = await asyncio.gather(*[c.put(k, b"v-" + k, 5.0) for k in batch],
                                       return_exceptions=True)
            for k, r in zip(batch, res):
                if isinstance(r, Exception):
                    todo.append(k)   # retry: the value is the same, so a repeat is harmless
                else:
                    acked.append(k)
        finally:
            await c.close()
    return acked


async def read_all(g, nid, keys):
    c = await g.client(nid)
    try:
        out = {}
        for i in range(0, len(keys), 64):
            part = keys[i:i + 64]
            vals = await asyncio.gather(*[c.request(OP_GET, k, 10.0) for k in part])
            out.update(zip(part, vals))
        return out
    finally:
        await c.close()


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def group(tmp_path):
    made = []

    def make(n=3, extra=()):
        g = Group(tmp_path, n, extra)
        made.append(g)
        return g
    yield make
    for g in made:
        g.stop_all()


def test_leader_kill9_then_restart_catches_up(group):
    """After kill -9 of the leader the other two elect a leader and keep committing; the
    killed member restarts from its disk and catches up to the same state."""
    g = group()
    g.start_all()

    async def main():
        await write_keys(g, [b"a%d" % i for i in range(100)])
        old = await g.leader()
        g.kill(old)
        rest = [n for n in g.ids if n != old]
        t0 = time.monotonic()
        new = await g.leader(among=rest, timeout=10)
        assert new != old
        acked = await write_keys(g, [b"b%d" % i for i in range(200)])
        assert len(acked) == 200
        failover = time.monotonic() - t0
        g.start(old)
        ss = await g.converged(g.ids)
        assert ss[0]["keys"] == 300
        vals = await read_all(g, new, [b"a5", b"b199"])
        assert vals == {b"a5": b"v-a5", b"b199": b"v-b199"}
        # a linearizable read on the restarted follower sees the latest write
        await write_keys(g, [b"last"])
        assert await read_all(g, old, [b"last"]) == {b"last": b"v-last"}
        # a follower refuses writes, naming the leader
        c = await g.client(old)
        try:
            with pytest.raises(DemoError) as ei:
                await c.put(b"f", b"1")
        finally:
            await c.close()
        assert ei.value.code == "not_leader" and ei.value.leader == new
        return failover
    failover = run(main())
    assert failover < 10


def test_all_killed_lose_no_acknowledged_write(group):
    """Every acknowledged write survives kill -9 of all members at once, taken while
    writes are in flight."""
    g = group()
    g.start_all()

    async def main():
        lead = await g.leader()
        c = await g.client(lead)
        acked = []
        stop_at = time.monotonic() + 1.5

        async def writer(w):
            i = 0
            while time.monotonic() < stop_at and i < 5000:
                k = b"w%d-%d" % (w, i)
                try:
                    await c.put(k, b"v-" + k, 5.0)
                    acked.append(k)
                except (DemoError, ConnectionError, asyncio.TimeoutError):
                    pass
                i += 1
        tasks = [asyncio.ensure_future(writer(w)) for w in range(32)]
        await asyncio.sleep(1.5)
        for nid in list(g.procs):   # all at once, writes still in flight
            os.kill(g.procs[nid].pid, signal.SIGKILL)
        await asyncio.gather(*tasks, return_exceptions=True)
        await c.close()
        for nid in list(g.procs):
            g.procs.pop(nid).wait(10)
        assert len(acked) > 100, "the load produced too few acknowledged writes to judge"
        g.start_all()
        lead = await g.leader(timeout=15)
        vals = await read_all(g, lead, acked)
        lost = [k for k in acked if vals[k] != b"v-" + k]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        await g.converged(g.ids)
    run(main())


def test_far_behind_member_catches_up_by_snapshot(group):
    """A member that missed more entries than the leader keeps in its log is brought up
    to date by a streamed snapshot, and ends with the same state."""
    g = group(extra=["--snapshot-threshold", "300", "--snapshot-trailing", "20",
                     "--segment-bytes", "16384"])
    g.start_all()

    async def main():
        lead = await g.leader()
        lag = next(n for n in g.ids if n != lead)
        await write_keys(g, [b"x%d" % i for i in range(20)])
        await g.converged(g.ids)
        g.kill(lag)
        await write_keys(g, [b"y%d" % i for i in range(1500)], inflight=64)
        s = await g.status(lead)
        assert s["snapshots_taken"] >= 1
        assert s["log"]["first_index"] > 30, "the leader must have compacted past the laggard"
        g.start(lag)
        ss = await g.converged(g.ids, timeout=30)
        assert ss[0]["keys"] == 1520
        st = await g.status(lag)
        assert st["snapshots_received"] >= 1
    run(main())


def test_damaged_log_refused_torn_tail_truncated(group, tmp_path):
    """A member whose log is damaged before its tail refuses to start and names the file
    and offset; a torn tail is cut and the member starts with the records before it."""
    g = group(n=1)
    g.start_all()

    async def fill():
        await write_keys(g, [b"k%d" % i for i in range(50)])
    run(fill())
    g.stop_all()
    segdir = os.path.join(str(tmp_path), "n1", "raft", "log")
    seg = os.path.join(segdir, sorted(os.listdir(segdir))[-1])
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    # tail: cut the last record in half -> starts, one entry fewer at most
    with open(seg, "wb") as f:
        f.write(data[:-7])
    g.start("n1")

    async def check():
        lead = await g.leader(timeout=10)
        vals = await read_all(g, lead, [b"k%d" % i for i in range(49)])
        assert all(vals[b"k%d" % i] == b"v-k%d" % i for i in range(49))
    run(check())
    assert "truncating torn tail" in g.log_text("n1")
    g.stop_all()
    # middle: flip a byte inside an early record -> refuses to start
    with open(seg, "r+b") as f:
        f.seek(len(data) // 3)
        b = f.read(1)
        f.seek(len(data) // 3)
        f.write(bytes([b[0] ^ 0x55]))
    g.start("n1")
    p = g.procs["n1"]
    assert p.wait(15) == 2
    out = g.log_text("n1")
    assert "corrupt log record in" in out and seg in out and "offset" in out


def test_add_member_catches_up_as_learner_then_promoted_and_removed(group):
    """A new member joins as a learner, catches up, is promoted to voter, holds the same
    state; removing it leaves the group committing."""
    g = group()
    g.add_slot("n4")
    for nid in ("n1", "n2", "n3"):
        g.start(nid)

    async def main():
        await write_keys(g, [b"m%d" % i for i in range(300)], inflight=64)
        g.start("n4")
        await g.status("n4")   # up and listening before it is added, as with a real join
        lead = await g.leader(among=["n1", "n2", "n3"])
        c = await g.client(lead)
        try:
            await c.request(OP_ADD, json.dumps({"id": "n4", "raft": g.raft["n4"]}).encode(), 30)
        finally:
            await c.close()
        s = await g.status(lead)
        assert "n4" in s["core"]["voters"]
        await write_keys(g, [b"after%d" % i for i in range(50)])
        ss = await g.converged(["n1", "n2", "n3", "n4"])
        assert ss[0]["keys"] == 350
        c = await g.client(lead)
        try:
            await c.request(OP_REMOVE, json.dumps({"id": "n4"}).encode(), 10)
        finally:
            await c.close()
        g.kill("n4")
        acked = await write_keys(g, [b"gone%d" % i for i in range(20)])
        assert len(acked) == 20
        s = await g.status(await g.leader(among=["n1", "n2", "n3"]))
        assert "n4" not in s["core"]["voters"] and "n4" not in s["core"]["learners"]
    run(main())


def test_sigterm_leader_hands_over(group):
    """SIGTERM makes a leader hand leadership to another member before exiting cleanly."""
    g = group()
    g.start_all()

    async def main():
        await write_keys(g, [b"t%d" % i for i in range(20)])
        lead = await g.leader()
        p = g.procs.pop(lead)
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        rest = [n for n in g.ids if n != lead]
        await g.leader(among=rest, timeout=3)
        assert "leadership transfer on stop failed" not in g.log_text(lead)
        assert len(await write_keys(g, [b"u%d" % i for i in range(20)])) == 20
    run(main())
