"""TLS settings (raftsqlite/tlsconf.py), the CLI flags, the Raft transport over TLS and
the node-wide https scheme of client.py (docs/design/tls.md). Certificates are made by
``openssl`` in a tmp dir."""
import asyncio
import logging
import socket

import pytest

from raftsqlite import client, cli
from raftsqlite.codec.model import Message, MsgType
from raftsqlite.errors import ConfigError
from raftsqlite.raft.config import RaftConfig
from raftsqlite.raft.transport import Transport
from raftsqlite.testing.procs import free_port
from raftsqlite.testing.tlscerts import make_certs
from raftsqlite.tlsconf import NO_TLS, TLSConfig


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def node_tls(c, **kw):
    base = dict(node_cert=c["cert"], node_key=c["key"], node_ca_cert=c["ca"])
    base.update(kw)
    return TLSConfig(**base)


def test_no_flags_means_no_tls():
    """Without flags nothing is enabled and no context exists (plaintext unchanged)."""
    assert not NO_TLS.enabled and NO_TLS.scheme == "http"
    assert NO_TLS.http_server is None and NO_TLS.raft_server is None
    assert NO_TLS.raft_client is None and NO_TLS.http_client is None
    cfg, _ = cli.config_from_args(["-id", "x"])
    assert cfg.tls is NO_TLS or not cfg.tls.enabled


@pytest.mark.parametrize("bad, words", [
    (lambda c: dict(http_cert=c["cert"]), "go together"),
    (lambda c: dict(node_key=c["key"]), "go together"),
    (lambda c: dict(http_cert=c["cert"], http_key=c["other_key"]), "does not match"),
    (lambda c: dict(node_cert=c["cert"], node_key=c["other_key"]), "does not match"),
    (lambda c: dict(http_cert=c["cert"] + ".missing", http_key=c["key"]), "cannot read"),
    (lambda c: dict(node_cert=c["cert"], node_key=c["key"], node_ca_cert=c["key"] + ".nope"),
     "cannot read"),
    (lambda c: dict(node_cert=c["cert"], node_key=c["key"],
                    node_ca_cert=c["ca"].replace("ca.crt", "node.ext")), "not a PEM"),
    (lambda c: dict(http_cert=c["cert"], http_key=c["key"], http_verify_client=True),
     "needs -http-ca-cert"),
    (lambda c: dict(node_verify_client=True), "needs -node-cert"),
])
def test_bad_config_is_a_clear_error(certs, bad, words):
    """Every bad TLS setting stops the config with a ConfigError naming the problem."""
    with pytest.raises(ConfigError, match=words):
        TLSConfig(**bad(certs))


def test_cli_refuses_to_start_with_bad_files(certs, capsys):
    """The CLI maps the flags and exits 2 with a one-line message on a bad file."""
    rc = cli.main(["-id", "x", "-http-cert", certs["cert"], "-http-key", certs["other_key"]])
    assert rc == 2
    assert "-http-key" in capsys.readouterr().err
    cfg, _ = cli.config_from_args(["-http-cert", certs["cert"], "-http-key", certs["key"],
                                   "-node-cert", certs["cert"], "-node-key", certs["key"],
                                   "-node-ca-cert", certs["ca"], "-node-no-verify",
                                   "-node-verify-server-name", "localhost"])
    assert cfg.tls.https and cfg.tls.node_no_verify
    assert cfg.tls.node_verify_server_name == "localhost"
    assert cfg.tls.raft_server is not None


def test_base_url_scheme_follows_the_node():
    """Bare member addresses get the node's scheme; explicit ones keep theirs."""
    assert client.base_url("h:1") == "http://h:1"
    try:
        client.configure_tls("https", None)
        assert client.base_url("h:1") == "https://h:1"
        assert client.base_url("http://h:1") == "http://h:1"
    finally:
        client.configure_tls()
    assert client.base_url("h:1") == "http://h:1" and client.ssl_context() is None


def _cfg(nid, port, tls=None):
    kw = {}
    if tls is not None:
        kw = dict(tls_server=tls.raft_server, tls_client=tls.raft_client,
                  tls_server_name=tls.node_verify_server_name)
    return RaftConfig(node_id=nid, raft_addr=f"127.0.0.1:{port}", **kw)


async def _until(cond, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _pair(tls_a, tls_b):
    pa, pb = free_port(), free_port()
    addrs = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}"}
    got = []
    ta = Transport(_cfg("a", pa, tls_a), lambda m: None, resolve=addrs.get)
    tb = Transport(_cfg("b", pb, tls_b), got.append, resolve=addrs.get)
    await ta.start()
    await tb.start()
    return ta, tb, got, pb


def test_transport_over_mutual_tls(certs):
    """Two members with certificates from one CA and -node-verify-client exchange
    messages over TLS (the connection's transport carries an ssl object)."""
    async def main():
        tls = node_tls(certs, node_verify_client=True)
        ta, tb, got, _ = await _pair(tls, tls)
        try:
            for i in range(50):
                ta.send(Message(MsgType.APPEND, frm="a", to="b", term=1, index=i))
                ta.flush()
                if got:
                    break
                await asyncio.sleep(0.02)
            await _until(lambda: len(got) >= 1)
            assert ta._peers["b"].proto.tr.get_extra_info("ssl_object") is not None
        finally:
            await ta.stop()
            await tb.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("who", ["wrong_ca", "plaintext", "no_client_cert"])
def test_transport_refuses_mismatched_peers(certs, who, caplog):
    """A peer with another CA's certificate, a plaintext peer, or one without a client
    certificate (-node-verify-client) gets no message in; the listener keeps serving a
    good peer afterwards."""
    good = node_tls(certs, node_verify_client=True)
    bad = {"wrong_ca": TLSConfig(node_cert=certs["other_cert"], node_key=certs["other_key"],
                                 node_ca_cert=certs["other_ca"]),
           "plaintext": None,
           "no_client_cert": TLSConfig(node_ca_cert=certs["ca"])}[who]

    async def main():
        if who == "no_client_cert":
            # a TLS dialler without a certificate: client context only
            pa, pb = free_port(), free_port()
            addrs = {"a": f"127.0.0.1:{pa}", "b": f"127.0.0.1:{pb}"}
            got = []
            cfg_a = RaftConfig(node_id="a", raft_addr=addrs["a"], tls_client=bad.http_client)
            ta = Transport(cfg_a, lambda m: None, resolve=addrs.get)
            tb = Transport(_cfg("b", pb, good), got.append, resolve=addrs.get)
            await ta.start()
            await tb.start()
        else:
            ta, tb, got, pb = await _pair(bad, good)
        try:
            for _ in range(30):
                ta.send(Message(MsgType.APPEND, frm="a", to="b", term=1))
                ta.flush()
                await asyncio.sleep(0.02)
            assert got == [] and not ta.connected("b")
            # raw garbage on the TLS port is dropped too, without harm
            r, w = await asyncio.open_connection("127.0.0.1", pb)
            w.write(b"GET / HTTP/1.1\r\n\r\n")
            await asyncio.wait_for(r.read(), 5)     # closed within the bound, no hang
            w.close()
            # and the listener still serves a good peer
            pc = free_port()
            tc = Transport(_cfg("c", pc, good), lambda m: None,
                           resolve={"b": f"127.0.0.1:{pb}"}.get)
            await tc.start()
            try:
                for _ in range(100):
                    tc.send(Message(MsgType.APPEND, frm="c", to="b", term=1))
                    tc.flush()
                    if got:
                        break
                    await asyncio.sleep(0.02)
                assert got and got[0].frm == "c"
            finally:
                await tc.stop()
        finally:
            await ta.stop()
            await tb.stop()
    with caplog.at_level(logging.ERROR):
        asyncio.run(asyncio.wait_for(main(), 30))
    if who == "wrong_ca":
        assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


def test_plaintext_socket_to_tls_listener_closes(certs):
    """A client that sends plaintext to a TLS Raft listener is disconnected promptly."""
    async def main():
        tls = node_tls(certs)
        pb = free_port()
        tb = Transport(_cfg("b", pb, tls), lambda m: None)
        await tb.start()
        try:
            def probe():
                with socket.create_connection(("127.0.0.1", pb), timeout=5) as s:
                    s.sendall(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 100)
                    try:
                        return s.recv(100)
                    except ConnectionResetError:
                        return b""
            got = await asyncio.get_running_loop().run_in_executor(None, probe)
            assert not got.startswith(b"\x00")   # an alert or a close, never an echo
        finally:
            await tb.stop()
    asyncio.run(asyncio.wait_for(main(), 30))
