"""The node's HTTP clients for calls to other nodes (``client.Client``, aiohttp; the
router's ``CallClient``) with TLS arguments from ``TLSConfig.client_kw()``: a bare member
address is dialled over TLS and the server is verified against the CA; without TLS
arguments they stay plaintext (docs/design/security.md, TLS)."""
import asyncio

import pytest

from raftsqlite.client import Client
from raftsqlite.sharding.callclient import CallClient
from raftsqlite.testing.certs import TLSFiles
from raftsqlite.tlsconf import TLSConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return TLSFiles(str(tmp_path_factory.mktemp("certs")))


async def _server(ctx):
    """A one-route HTTP/1.1 server (TLS when ``ctx``) that answers with its own
    connection's TLS state, so the test sees what the client really used."""
    async def handle(r, w):
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = 0
                for ln in head.split(b"\r\n"):
                    if ln.lower().startswith(b"content-length:"):
                        n = int(ln.split(b":")[1])
                if n:
                    await r.readexactly(n)
                body = b"tls" if w.get_extra_info("ssl_object") else b"plain"
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return srv, f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"


def test_clients_use_tls_from_client_kw_and_verify_the_server(files):
    """Invariant: with ``client_kw()`` of a node serving HTTPS, Client and CallClient
    reach a bare address over TLS and refuse a server whose certificate another CA
    signed; with no TLS arguments both speak plaintext."""
    cert, key = files.node
    tls = TLSConfig(http_cert=cert, http_key=key, http_ca_cert=files.ca[0])
    rogue = TLSConfig(http_cert=files.rogue[0], http_key=files.rogue[1])
    kw = tls.client_kw()
    assert kw and TLSConfig().client_kw() == {}

    async def main():
        plain, plain_addr = await _server(None)
        good, good_addr = await _server(tls.http_server)
        bad, bad_addr = await _server(rogue.http_server)
        try:
            async with Client(timeout=5) as c:
                assert (await c.request("GET", plain_addr, "/x")).body == b"plain"
            assert (await CallClient(timeout=5).post(plain_addr, "/x", b"b")).body == b"plain"
            async with Client(timeout=5, **kw) as c:
                assert (await c.request("GET", good_addr, "/x")).body == b"tls"
                with pytest.raises(Exception, match="(?i)certificate"):
                    await c.request("GET", bad_addr, "/x")
            cc = CallClient(timeout=5, **kw)
            assert (await cc.post(good_addr, "/x", b"b")).body == b"tls"
            with pytest.raises(Exception, match="(?i)certificate"):
                await cc.post(bad_addr, "/x", b"b")
        finally:
            for s in (plain, good, bad):
                s.close()
    asyncio.run(asyncio.wait_for(main(), 30))
