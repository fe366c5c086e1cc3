"""The fault proxy: bytes pass through it, a partition stops them, a heal restores them.

An echo server stands in for a member; the proxy sits in front of it as it sits in front
of a member's Raft port in the cluster harness.
"""
import asyncio
import os
import subprocess
import sys
import time

import pytest

from raftsqlite.testing.proxy import FaultNetwork, identify_by_proc

pytestmark = pytest.mark.timeout(60)


async def _echo_server():
    async def handle(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def _roundtrip(port, payload=b"ping", timeout=2.0, conn=None):
    r, w = conn or await asyncio.open_connection("127.0.0.1", port)
    w.write(payload)
    await w.drain()
    got = b""
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(r.read(65536), timeout)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 50))


def test_echo_through_proxy_and_partition_stalls_then_heals():
    """Data flows through the proxy; a cut link holds it; the heal delivers it."""
    async def main():
        srv, port = await _echo_server()
        net = FaultNetwork(identify=lambda peer, local: "a")
        proxy = await net.add_proxy("b", port)
        conn = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        assert await _roundtrip(None, b"hello", conn=conn) == b"hello"
        net.partition({"a"}, {"b"})
        conn[1].write(b"held")
        await conn[1].drain()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conn[0].read(100), 0.4)
        net.heal()
        got = await asyncio.wait_for(conn[0].read(100), 2)
        assert got == b"held"
        assert await _roundtrip(None, b"after", conn=conn) == b"after"
        assert net.stats()["proxies"][0]["bytes"] >= len(b"hellohheldafter")
        conn[1].close()
        await net.close()
        srv.close()
    run(main())


def test_reset_mode_closes_cut_connections_and_refuses_new_ones():
    """In reset mode a partition closes existing connections and refuses new ones."""
    async def main():
        srv, port = await _echo_server()
        net = FaultNetwork(identify=lambda peer, local: "a", mode="reset")
        proxy = await net.add_proxy("b", port)
        conn = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        assert await _roundtrip(None, b"x", conn=conn) == b"x"
        net.isolate("b", ["a", "b", "c"])
        assert await asyncio.wait_for(conn[0].read(10), 2) == b""
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _roundtrip(proxy.listen_port)
        net.heal()
        assert await _roundtrip(proxy.listen_port) == b"ping"
        assert net.counters["resets"] >= 1 and net.counters["refused"] >= 1
        await net.close()
        srv.close()
    run(main())


def test_non_members_are_never_cut_and_other_links_stay_open():
    """Only links between the partitioned members are cut."""
    async def main():
        srv, port = await _echo_server()
        who = {"src": None}
        net = FaultNetwork(identify=lambda peer, local: who["src"])
        proxy = await net.add_proxy("b", port)
        net.partition({"a"}, {"b", "c"})
        assert await _roundtrip(proxy.listen_port) == b"ping"      # test client
        who["src"] = "c"
        assert await _roundtrip(proxy.listen_port) == b"ping"      # same side
        who["src"] = "a"
        with pytest.raises(asyncio.TimeoutError):
            await _roundtrip(proxy.listen_port, timeout=0.3)
        net.heal()
        net.bridge({"a"}, "b", {"c"})                               # a and c cut, b bridges
        assert await _roundtrip(proxy.listen_port) == b"ping"
        await net.close()
        srv.close()
    run(main())


def test_delay_and_drop():
    """A delayed link adds its delay to each direction; a lossy link resets connections."""
    async def main():
        srv, port = await _echo_server()
        net = FaultNetwork(identify=lambda peer, local: "a", seed=1)
        proxy = await net.add_proxy("b", port)
        net.delay(0.15)
        t0 = time.monotonic()
        assert await _roundtrip(proxy.listen_port) == b"ping"
        assert time.monotonic() - t0 >= 0.3          # 0.15 s each way
        net.heal()
        t0 = time.monotonic()
        assert await _roundtrip(proxy.listen_port) == b"ping"
        assert time.monotonic() - t0 < 0.2
        net.drop(1.0)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _roundtrip(proxy.listen_port)
        assert net.counters["dropped_conns"] == 1
        await net.close()
        srv.close()
    run(main())


def test_identify_by_proc_names_the_dialling_process():
    """The dialler of a connection is found by PID from /proc, across processes."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc")

    async def main():
        accepted = asyncio.Queue()

        async def handle(r, w):
            await accepted.put(w.get_extra_info("peername")[1])
            await r.read()
            w.close()
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", (
            "import socket,sys,time; s=socket.create_connection(('127.0.0.1', %d));"
            "sys.stdin.read()") % port], stdin=subprocess.PIPE)
        try:
            peer = await asyncio.wait_for(accepted.get(), 10)
            pids = {"me": os.getpid(), "child": child.pid}
            assert identify_by_proc(peer, port, pids) == "child"
            assert identify_by_proc(peer, port, {"me": os.getpid()}) is None
            r, w = await asyncio.open_connection("127.0.0.1", port)
            mine = await asyncio.wait_for(accepted.get(), 5)
            assert identify_by_proc(mine, port, pids) == "me"
            w.close()
        finally:
            child.stdin.close()
            child.wait(10)
            srv.close()
    run(main())


def test_proxy_of_a_dead_member_refuses_dials_then_serves_again():
    """While its member is dead the proxy does not listen, so a dial is refused (as by
    a host whose process died) instead of accepted and dropped (which a client must
    treat as an ambiguous outcome); back up, it forwards on the same port."""
    async def main():
        srv, port = await _echo_server()
        net = FaultNetwork(identify=lambda peer, local: None)
        proxy = await net.add_proxy("b", port)
        addr = proxy.listen_port
        assert await _roundtrip(addr) == b"ping"
        proxy.down()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", addr)
        await proxy.up()
        assert proxy.listen_port == addr and await _roundtrip(addr) == b"ping"
        await net.close()
        srv.close()
    run(main())
