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
