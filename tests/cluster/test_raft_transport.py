"""Raft transport over loopback TCP (in one process): handshake, refusal of other
clusters, frame size limit, bounded dropping and reconnection."""
import asyncio
import logging
import struct


from raftsqlite import codec
from raftsqlite.codec.model import Entry, Message, MsgType
from raftsqlite.raft.config import RaftConfig
from raftsqlite.raft.transport import Transport
from raftsqlite.testing.procs import free_port


def cfg(nid, port, **kw):
    return RaftConfig(node_id=nid, raft_addr=f"127.0.0.1:{port}", **kw)


async def until(cond, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def pair(cfg_a=None, cfg_b=None):
    pa, pb = free_port(), free_port()
    addrs = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}"}
    got = {"a": [], "b": []}
    ta = Transport(cfg_a or cfg("a", pa), got["a"].append, resolve=addrs.get)
    tb = Transport(cfg_b or cfg("b", pb), got["b"].append, resolve=addrs.get)
    await ta.start()
    await tb.start()
    return ta, tb, got


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_messages_delivered_in_order():
    """After the handshake, messages arrive intact and in send order."""
    async def main():
        ta, tb, got = await pair()
        ta.send(Message(MsgType.APPEND, frm="a", to="b", term=1))
        ta.flush()
        await until(lambda: ta.connected("b"))
        sent = [Message(MsgType.APPEND, frm="a", to="b", term=2, index=i,
                        entries=[Entry(2, i + 1, data=b"x" * i)]) for i in range(200)]
        for m in sent:
            ta.send(m)
        ta.flush()
        await until(lambda: len(got["b"]) >= 200)
        assert got["b"][-200:] == sent
        await ta.stop()
        await tb.stop()
    run(main())


def test_other_cluster_refused(caplog):
    """A member of another cluster is refused at the handshake; nothing is delivered."""
    async def main():
        pa, pb = free_port(), free_port()
        ta, tb, got = await pair(cfg("a", pa, cluster_id="blue"), cfg("b", pb, cluster_id="red"))
        ta._resolve = {"b": f"127.0.0.1:{pb}"}.get
        for _ in range(20):
            ta.send(Message(MsgType.APPEND, frm="a", to="b", term=1))
            ta.flush()
            await asyncio.sleep(0.02)
        await until(lambda: tb.stats()["refused"] >= 1)
        assert got["b"] == [] and not ta.connected("b")
        assert "cluster id mismatch" in ta.stats()["peers"]["b"]["last_error"]
        await ta.stop()
        await tb.stop()
    with caplog.at_level(logging.ERROR):
        run(main())
    assert any("cluster id mismatch" in r.getMessage() for r in caplog.records)


def test_oversized_frame_closes_connection(caplog):
    """A frame above max_frame_bytes closes the connection with a logged error."""
    async def main():
        pb = free_port()
        got = []
        tb = Transport(cfg("b", pb, max_frame_bytes=1 << 20, max_msg_bytes=1 << 16,
                           snapshot_chunk_bytes=1 << 16),
                       got.append)
        await tb.start()
        r, w = await asyncio.open_connection("127.0.0.1", pb)
        hello = b'{"cluster": "raftsqlite", "from": "x", "to": "b"}'
        w.write(codec.encode_frame(0, 0x80, 0, 1, hello))
        await r.readexactly(codec.HEADER_SIZE)
        # a header announcing 100 MB: refused as soon as the header arrives
        w.write(struct.pack("<II", 100 << 20, 0) + b"\0" * 21)
        await w.drain()
        assert await asyncio.wait_for(r.read(), 5) == b""   # closed by the server
        assert tb.stats()["bad_frames"] == 1 and got == []
        w.close()
        await tb.stop()
    with caplog.at_level(logging.ERROR):
        run(main())
    assert any("closing raft connection" in r.getMessage() for r in caplog.records)


def test_drops_while_down_then_reconnects():
    """Messages to an unreachable peer are dropped (bounded memory, core told), and the
    connection comes back once the peer listens."""
    async def main():
        pa, pb = free_port(), free_port()
        addrs = {"b": f"127.0.0.1:{pb}"}
        unreachable = []
        ta = Transport(cfg("a", pa, reconnect_min=0.01, reconnect_max=0.05), lambda m: None,
                       resolve=addrs.get, on_unreachable=unreachable.append)
        await ta.start()
        for i in range(1000):
            ta.send(Message(MsgType.HEARTBEAT, frm="a", to="b", term=1, index=i))
        ta.flush()
        # kept at most while the first connection attempt runs, then dropped
        await until(lambda: ta.stats()["dropped"] == 1000)
        assert "b" in unreachable
        assert ta._peers["b"].early == []
        got = []
        tb = Transport(cfg("b", pb), got.append)
        await tb.start()
        await until(lambda: ta.connected("b"))
        ta.send(Message(MsgType.HEARTBEAT, frm="a", to="b", term=1, index=7))
        ta.flush()
        await until(lambda: got)
        assert got[0].index == 7
        await ta.stop()
        await tb.stop()
    run(main())


def test_send_buffer_bound():
    """A peer that does not read makes us drop beyond send_buffer_bytes, never buffer more."""
    async def main():
        pa = free_port()
        srv_conns = []

        async def silent(r, w):  # accepts the handshake, then never reads again
            await r.readexactly(8)
            srv_conns.append(w)
            w.write(codec.encode_frame(0, 0x81, 0, 1, b""))
            await asyncio.sleep(30)
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ta = Transport(cfg("a", pa, send_buffer_bytes=1 << 20, max_frame_bytes=1 << 22,
                           snapshot_chunk_bytes=1 << 16,
                           max_msg_bytes=1 << 16), lambda m: None,
                       resolve={"b": f"127.0.0.1:{port}"}.get)
        await ta.start()
        ta.send(Message(MsgType.HEARTBEAT, frm="a", to="b"))
        await until(lambda: ta.connected("b"))
        big = b"y" * 60000
        for i in range(400):
            ta.send(Message(MsgType.APPEND, frm="a", to="b", entries=[Entry(1, i, data=big)]))
            ta.flush()
            await asyncio.sleep(0)
        proto = ta._peers["b"].proto
        assert proto.tr.get_write_buffer_size() <= (1 << 20) + 70000
        assert ta.stats()["dropped"] > 0
        await ta.stop()
        server.close()
    run(main())


def test_send_stream_large_chunks():
    """send_stream waits for the socket instead of dropping: every chunk arrives."""
    async def main():
        ta, tb, got = await pair()
        chunk = b"z" * (1 << 20)
        for i in range(20):
            await ta.send_stream(Message(MsgType.SNAPSHOT, frm="a", to="b", offset=i << 20,
                                         data=chunk, done=(i == 19)))
        await until(lambda: len(got["b"]) == 20, 15)
        assert [m.offset for m in got["b"]] == [i << 20 for i in range(20)]
        assert got["b"][-1].done
        await ta.stop()
        await tb.stop()
    run(main())


def test_connection_closed_during_handshake_is_quiet_and_retried(monkeypatch):
    """Invariant: a connection that dies between connect and the handshake write (a peer
    killed or partitioned at that instant) is retried like any failed connect, and
    leaves no "Task/Future exception was never retrieved" behind (uvloop raises on a
    write to a closed transport; the handshake future then fails with nobody waiting)."""
    import gc
    import uvloop
    from raftsqlite.raft import transport as tmod
    closed = []
    real = tmod._nodelay

    def closing(tr):
        if not closed:
            closed.append(1)
            tr.close()
        else:
            real(tr)
    monkeypatch.setattr(tmod, "_nodelay", closing)
    noise = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, ctx: noise.append(ctx.get("message")))
        ta, tb, got = await pair()
        ta.send(Message(MsgType.APPEND, frm="a", to="b", term=1))
        ta.flush()
        await until(lambda: ta.connected("b"), 10)
        ta.send(Message(MsgType.APPEND, frm="a", to="b", term=2))
        ta.flush()
        await until(lambda: any(m.term == 2 for m in got["b"]))
        gc.collect()
        await asyncio.sleep(0.05)
        await ta.stop()
        await tb.stop()
    uvloop.install()
    try:
        run(main())
    finally:
        asyncio.set_event_loop_policy(None)
    gc.collect()
    assert closed and noise == [], noise
