"""The routed calls' lean HTTP client (sharding/callclient.py) against a tiny server."""
import asyncio

import pytest

from raftsqlite import errors
from raftsqlite.sharding.callclient import CallClient


async def _server(handler):
    """A raw HTTP server: ``handler(head, body, writer)`` answers each request."""
    async def conn(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for ln in head.split(b"\r\n"):
                    if ln.lower().startswith(b"content-length:"):
                        n = int(ln.split(b":")[1])
                body = await reader.readexactly(n)
                if await handler(head, body, writer) == "close":
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    srv = await asyncio.start_server(conn, "127.0.0.1", 0)
    return srv, "127.0.0.1:%d" % srv.sockets[0].getsockname()[1]


def _answer(writer, status, body, extra=b""):
    writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Rqlite-Served-By: me\r\n%s\r\n"
                 % (status, len(body), extra) + body)


def test_answers_in_order_over_reused_connections():
    """Invariant: each request gets its own status, headers and exact body, and idle
    keep-alive connections are reused (no connect per call)."""
    async def main():
        seen = []

        async def h(head, body, w):
            seen.append((head.split(b"\r\n")[0], body))
            _answer(w, 200 if body != b"bad" else 503, b"echo:" + body)
        srv, addr = await _server(h)
        c = CallClient(timeout=5)
        try:
            for i in range(5):
                r = await c.post(addr, f"/shard/call?kind=execute&n={i}", b"x%d" % i)
                assert (r.status, r.body) == (200, b"echo:x%d" % i)
                assert r.headers.get("X-RQLITE-SERVED-BY") == "me"
            r = await c.post(addr, "/shard/call", b"bad")
            assert r.status == 503 and r.body == b"echo:bad"
            outs = await asyncio.gather(*[c.post(addr, "/p", b"c%d" % i) for i in range(8)])
            assert [o.body for o in outs] == [b"echo:c%d" % i for i in range(8)]
            assert seen[0] == (b"POST /shard/call?kind=execute&n=0 HTTP/1.1", b"x0")
            assert c.stats()["connects"] <= 8
            assert c.stats()["requests"] == 14
            # an idle connection past idle_s is never reused: a fresh one is made
            c.idle_s = 0.0
            before = c.stats()["connects"]
            await asyncio.sleep(0.01)
            assert (await c.post(addr, "/p", b"late")).body == b"echo:late"
            assert c.stats()["connects"] == before + 1
        finally:
            c.close()
            srv.close()
    asyncio.run(main())


def test_failures_map_to_our_errors():
    """Invariant: refused connection -> Unreachable (nothing sent); a connection closed
    before the answer -> Unavailable (outcome unknown); no answer in time -> Timeout;
    a later call still works (a broken connection is never reused)."""
    async def main():
        mode = {"m": "ok"}

        async def h(head, body, w):
            if mode["m"] == "drop":
                return "close"
            if mode["m"] == "hang":
                await asyncio.sleep(1.0)
            _answer(w, 200, b"ok")
        srv, addr = await _server(h)
        c = CallClient(timeout=5)
        try:
            assert (await c.post(addr, "/p", b"a")).body == b"ok"
            mode["m"] = "drop"
            with pytest.raises(errors.Unavailable):
                await c.post(addr, "/p", b"a")
            mode["m"] = "hang"
            with pytest.raises(errors.Timeout):
                await c.post(addr, "/p", b"a", timeout=0.1)
            mode["m"] = "ok"
            assert (await c.post(addr, "/p", b"a")).body == b"ok"
            port = int(addr.rsplit(":", 1)[1])
        finally:
            c.close()
            srv.close()
            await srv.wait_closed()
        with pytest.raises(errors.Unreachable):
            await CallClient(timeout=2).post(f"127.0.0.1:{port}", "/p", b"a")
    asyncio.run(main())


def test_answer_split_across_reads_and_unsupported_shapes():
    """Invariant: an answer arriving in pieces is reassembled exactly; a chunked answer
    (not sent by our nodes) is an error, never a wrong body."""
    async def main():
        async def h(head, body, w):
            if body == b"chunked":
                w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                return
            payload = b"z" * 70000
            msg = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
            for i in range(0, len(msg), 1000):
                w.write(msg[i:i + 1000])
                await w.drain()
                await asyncio.sleep(0)
        srv, addr = await _server(h)
        c = CallClient(timeout=5)
        try:
            r = await c.post(addr, "/p", b"big")
            assert r.body == b"z" * 70000
            with pytest.raises(errors.Unavailable):
                await c.post(addr, "/p", b"chunked")
        finally:
            c.close()
            srv.close()
    asyncio.run(main())


def _send(c, addr, path, body, timeout=None):
    """``CallClient.send`` as an awaitable of what ``done`` got."""
    fut = asyncio.get_running_loop().create_future()
    c.send(addr, path, body, lambda r: fut.done() or fut.set_result(r), timeout=timeout)
    return fut


def test_send_callback_form_answers_and_fails_like_post():
    """Invariant: ``send`` hands ``done`` exactly what ``post`` returns or raises: each
    request its own status and body over reused connections (none reused after a
    failure), Unavailable when the connection drops, Timeout when no answer comes in
    time (one timer for all requests, not one each), Unreachable when nothing listens."""
    async def main():
        mode = {"m": "ok"}
        calls = []

        async def h(head, body, w):
            calls.append(body)
            if mode["m"] == "drop":
                return "close"
            if mode["m"] == "hang":
                await asyncio.sleep(1.0)
            _answer(w, 200 if body != b"bad" else 409, b"echo:" + body)
        srv, addr = await _server(h)
        c = CallClient(timeout=5)
        try:
            outs = [await _send(c, addr, "/shard/call?n=%d" % i, b"x%d" % i) for i in range(4)]
            assert [(r.status, r.body) for r in outs] == [(200, b"echo:x%d" % i) for i in range(4)]
            assert outs[0].headers.get("X-RQLITE-SERVED-BY") == "me"
            assert c.stats()["connects"] == 1 and c.stats()["requests"] == 4
            r = await _send(c, addr, "/p", b"bad")
            assert (r.status, r.body) == (409, b"echo:bad")
            many = await asyncio.gather(*[_send(c, addr, "/p", b"m%d" % i) for i in range(6)])
            assert [m.body for m in many] == [b"echo:m%d" % i for i in range(6)]
            mode["m"] = "drop"
            assert isinstance(await _send(c, addr, "/p", b"a"), errors.Unavailable)
            mode["m"] = "hang"
            t0 = asyncio.get_running_loop().time()
            res = await asyncio.wait_for(_send(c, addr, "/p", b"slow", timeout=0.2), 3)
            assert isinstance(res, errors.Timeout)
            assert asyncio.get_running_loop().time() - t0 < 0.9
            mode["m"] = "ok"
            assert (await _send(c, addr, "/p", b"again")).body == b"echo:again"
            # the dropped and the timed-out connections were closed, never pooled again
            assert all(not cn.closed for cn, _ in c._idle[addr])
            assert not c._busy
            assert c.stats()["failures"] == 2
            port = int(addr.rsplit(":", 1)[1])
        finally:
            c.close()
            srv.close()
            await srv.wait_closed()
        res = await _send(CallClient(timeout=2), f"127.0.0.1:{port}", "/p", b"a")
        assert isinstance(res, errors.Unreachable)
    asyncio.run(main())


def test_node_answer_head_parses_as_the_general_parse_does():
    """Invariant: the one-step parse of our nodes' usual answer head gives the same
    status, headers and length as the general parse; any other head (another status,
    an extra header) is left to the general parse."""
    from sanic.response import HTTPResponse

    from raftsqlite.http import fastpath, wire
    from raftsqlite.sharding import callclient as cc

    def general(head):
        saved = cc._OK_HEAD
        cc._OK_HEAD = b"\x00never"
        try:
            return cc._parse_head(head)
        finally:
            cc._OK_HEAD = saved
    for status, body, headers in ((200, b'{"results":[]}', None), (200, b"x" * 12345, None),
                                  (409, b'{"error":"moved"}', None),
                                  (200, b"{}", {"X-RQLITE-SERVED-BY": "n1"})):
        raw = fastpath.response_bytes(HTTPResponse(body, status=status, headers=headers,
                                                   content_type=wire.JSON_CT))
        head = raw[:raw.index(b"\r\n\r\n")]
        st, h, n = cc._parse_head(head)
        assert (st, dict(h), n) == (lambda g: (g[0], dict(g[1]), g[2]))(general(head))
        assert n == len(body) and st == status
        if headers:
            assert h.get("x-rqlite-served-by") == "n1"
