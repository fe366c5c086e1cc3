"""TLS flags: bad configurations stop the node at start with a clear error naming the flag;
no flag means no TLS anywhere; the Raft transport speaks TLS when given contexts."""
import asyncio
import os
import shutil

import pytest

from raftsqlite import cli
from raftsqlite.config import NodeConfig
from raftsqlite.errors import ConfigError
from raftsqlite.testing.certs import OPENSSL, TLSFiles
from raftsqlite.tlsconf import NO_TLS, TLSConfig

pytestmark = pytest.mark.skipif(not shutil.which(OPENSSL) and not os.path.exists(OPENSSL),
                                reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return TLSFiles(str(tmp_path_factory.mktemp("certs")))


def _args(*extra):
    return ["-data", "/nonexistent-not-used", *extra]


def test_no_flags_no_tls():
    """Invariant: without TLS flags the config is the shared no-TLS one, the advertised
    address is a plain host:port and the clients get no TLS arguments."""
    cfg, _ = cli.config_from_args(_args("-http", "127.0.0.1:4001"))
    assert cfg.tls is NO_TLS and cfg.tls.http_server is None and cfg.tls.raft_server is None
    assert cfg.http_advertise == "127.0.0.1:4001"
    assert cfg.tls.client_kw() == {}


def test_https_advertised(files):
    """Invariant: a node serving HTTPS advertises an https:// address; mutual TLS asks
    for client certificates."""
    import ssl
    cfg, _ = cli.config_from_args(_args("-http", "127.0.0.1:4001", *files.node_flags()))
    assert cfg.http_advertise == "https://127.0.0.1:4001"
    assert cfg.tls.http_server.verify_mode == ssl.CERT_REQUIRED
    assert cfg.tls.raft_server.verify_mode == ssl.CERT_REQUIRED
    assert cfg.tls.client_kw()["scheme"] == "https"


@pytest.mark.parametrize("case", ["missing_cert", "missing_key", "mismatch", "bad_ca",
                                  "unreadable_ca", "cert_without_key", "verify_without_ca",
                                  "node_verify_without_ca"])
def test_bad_tls_config_refused_with_clear_error(files, tmp_path, case):
    """Invariant: each bad TLS setting is a ConfigError naming the flag at fault (and the
    CLI exits 2 with that message), before the node opens anything."""
    cert, key = files.node
    rogue_cert, rogue_key = files.rogue
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n")
    noread = tmp_path / "noread.pem"
    noread.write_text(open(files.ca[0]).read())
    noread.chmod(0)
    flags, want = {
        "missing_cert": (["-http-cert", str(tmp_path / "nope.crt"), "-http-key", key],
                         "-http-cert"),
        "missing_key": (["-node-cert", cert, "-node-key", str(tmp_path / "nope.key")],
                        "-node-key"),
        "mismatch": (["-http-cert", cert, "-http-key", rogue_key], "does not match"),
        "bad_ca": (["-node-cert", cert, "-node-key", key, "-node-ca-cert", str(junk)],
                   "-node-ca-cert"),
        "unreadable_ca": (["-http-cert", cert, "-http-key", key, "-http-ca-cert", str(noread)],
                          "-http-ca-cert"),
        "cert_without_key": (["-node-cert", cert], "go together"),
        "verify_without_ca": (["-http-cert", cert, "-http-key", key, "-http-verify-client"],
                              "-http-ca-cert"),
        "node_verify_without_ca": (["-node-cert", cert, "-node-key", key,
                                    "-node-verify-client"], "-node-ca-cert"),
    }[case]
    if case == "unreadable_ca" and os.geteuid() == 0:
        pytest.skip("root reads any file")
    with pytest.raises(ConfigError) as ei:
        cli.config_from_args(_args(*flags))
    assert want in str(ei.value)
    assert cli.main(_args(*flags)) == 2


def test_raft_transport_over_tls_and_refuses_foreign_cert(files):
    """Invariant: two transports with TLS contexts exchange messages; a peer with a
    certificate from another CA is refused (mutual TLS) and nothing it sends is
    delivered; a plaintext connection to the TLS port changes nothing."""
    from raftsqlite.codec.model import Message, MsgType
    from raftsqlite.raft.config import RaftConfig
    from raftsqlite.raft.transport import Transport
    from raftsqlite.testing.procs import free_port

    good = TLSConfig(node_cert=files.node[0], node_key=files.node[1],
                     node_ca_cert=files.ca[0], node_verify_client=True)
    bad = TLSConfig(node_cert=files.rogue[0], node_key=files.rogue[1],
                    node_ca_cert=files.ca[0], node_verify_client=True)

    def cfg(nid, port, t):
        return RaftConfig(node_id=nid, raft_addr=f"127.0.0.1:{port}", ssl_server=t.raft_server,
                          ssl_client=t.raft_client)

    async def run():
        pa, pb, pc = free_port(), free_port(), free_port()
        got = []
        addrs = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}", "c": f"127.0.0.1:{pc}"}
        a = Transport(cfg("a", pa, good), got.append, resolve=addrs.get)
        b = Transport(cfg("b", pb, good), got.append, resolve=addrs.get)
        c = Transport(cfg("c", pc, bad), got.append, resolve=addrs.get)
        for t in (a, b, c):
            await t.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", pa)
            w.write(b"plaintext, not a TLS hello\r\n" * 4)
            await w.drain()
            msg = Message(MsgType.HEARTBEAT, to="a", frm="b", term=1)
            msg2 = Message(MsgType.HEARTBEAT, to="a", frm="c", term=1)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not any(m.frm == "b" for m in got) and loop.time() < deadline:
                b.send(msg)
                c.send(msg2)
                b.flush()
                c.flush()
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            w.close()
            return got, c.stats()
        finally:
            for t in (a, b, c):
                await t.stop()

    got, cstats = asyncio.run(run())
    assert any(m.frm == "b" for m in got), "no message over TLS"
    assert not any(m.frm == "c" for m in got), "a foreign certificate got a message in"
    assert not cstats["peers"]["a"]["connected"]
    assert "TLS" in cstats["peers"]["a"]["last_error"] or cstats["tls_failures"] or \
        cstats["peers"]["a"]["last_error"], cstats


def test_node_config_default_tls_is_none():
    """Invariant: a NodeConfig built without tls (tests, embedders) has no TLS."""
    assert NodeConfig().tls is NO_TLS


def test_certificate_refusals_are_told_from_transient_failures(files):
    """Invariant: ``cert_failure`` names a certificate rejected by us or refused by the
    peer (also when wrapped, as aiohttp wraps it) and says None for transient failures;
    ``own_check`` names the verification error of a certificate from another CA and
    accepts the right one."""
    import ssl

    from raftsqlite.tlsconf import cert_failure
    bad = ssl.SSLCertVerificationError(1, "certificate verify failed")
    bad.verify_message = "unable to get local issuer certificate"
    assert "unable to get local issuer" in cert_failure(bad)
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)")
    wrapped = OSError("connection failed")
    wrapped.__cause__ = alert
    assert "refused this node's certificate" in cert_failure(wrapped)
    for transient in (ConnectionResetError(104, "reset"), asyncio.TimeoutError(),
                      ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")):
        assert cert_failure(transient) is None
    rogue = TLSConfig(**dict(zip(("http_cert", "http_key"), files.rogue)),
                      http_ca_cert=files.ca[0])
    assert "unable to get local issuer certificate" in rogue.own_check()
    good = TLSConfig(**dict(zip(("http_cert", "http_key"), files.node)), http_ca_cert=files.ca[0])
    assert "verifies against this node's own CA files" in good.own_check()


def test_refused_probe_tells_a_refusal_from_a_drop(files):
    """Invariant: after a dropped call, ``refused`` tells a server that refuses our
    certificate (TLS 1.2 handshake dropped) from one that accepts it and from one that
    cannot be reached; plain http:// URLs are never probed."""
    import ssl

    import aiohttp
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(*files.node)
    srv.load_verify_locations(cafile=files.ca[0])
    srv.verify_mode = ssl.CERT_REQUIRED

    async def go():
        async def handle(r, w):
            w.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=srv)
        port = server.sockets[0].getsockname()[1]
        url = f"https://127.0.0.1:{port}/join"
        drop = aiohttp.ServerDisconnectedError()
        try:
            rogue = TLSConfig(**dict(zip(("http_cert", "http_key"), files.rogue)),
                              http_ca_cert=files.ca[0])
            good = TLSConfig(**dict(zip(("http_cert", "http_key"), files.node)),
                             http_ca_cert=files.ca[0])
            why = await rogue.refused(url, drop)
            assert why and "refused this node's certificate" in why, why
            assert await good.refused(url, drop) is None
            assert await rogue.refused(url.replace("https", "http"), drop) is None
        finally:
            server.close()
            await server.wait_closed()
        assert await rogue.refused(url, drop) is None       # nobody listens any more
    asyncio.run(go())
