"""TLS settings of one node, named and meant as rqlite's flags, turned into ssl contexts.

Two independent halves, as in rqlite:

- **HTTP API** (``-http-cert``, ``-http-key``, ``-http-ca-cert``, ``-http-verify-client``):
  the API port serves HTTPS; with ``-http-verify-client`` a client must present a
  certificate signed by ``-http-ca-cert`` (mutual TLS). A node serving HTTPS advertises
  ``https://host:port``, so every URL built from a member's address (``/nodes``
  ``api_addr``, a ``redirect`` Location, forwarding, joins, the router's shard calls) is
  an https one.
- **Node to node** (``-node-cert``, ``-node-key``, ``-node-ca-cert``, ``-node-no-verify``,
  ``-node-verify-client``, ``-node-verify-server-name``): the Raft transport dials and
  listens with TLS; a peer's certificate is checked against ``-node-ca-cert`` (or the
  system's roots) and its host name or IP (or ``-node-verify-server-name``) unless
  ``-node-no-verify``; with ``-node-verify-client`` the Raft listener wants a client
  certificate too.

A node's own HTTP calls to other nodes (forwarding, join, the router, catalog watch)
reach their HTTP APIs, which present ``-http-cert``; they trust ``-http-ca-cert`` and
``-node-ca-cert`` (rqlite uses ``-http-ca-cert`` for the same calls), present
``-node-cert`` (else ``-http-cert``) for servers that verify clients, and follow
``-node-no-verify`` / ``-node-verify-server-name``.

Every file is read when the config is built, so a missing file, a key that does not match
its certificate or an unreadable CA stops the node at start with a ``ConfigError`` naming
the flag. Without any flag nothing here is used and no code path changes.
"""
import asyncio
import ssl
from dataclasses import dataclass, field, fields

from raftsqlite.errors import ConfigError


def _f(default, help):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TLSConfig:
    http_cert: str = _f("", "X.509 certificate the HTTP API presents; with http_key, "
                            "the API serves HTTPS.")
    http_key: str = _f("", "Private key of http_cert.")
    http_ca_cert: str = _f("", "CA certificate that client certificates are checked "
                               "against (http_verify_client), also trusted when this node "
                               "calls another node's HTTPS API.")
    http_verify_client: bool = _f(False, "Mutual TLS on the HTTP API: refuse clients without "
                                         "a certificate signed by http_ca_cert.")
    node_cert: str = _f("", "X.509 certificate for node-to-node traffic; with node_key, "
                            "the Raft transport uses TLS.")
    node_key: str = _f("", "Private key of node_cert.")
    node_ca_cert: str = _f("", "CA certificate other nodes' certificates are checked against "
                               "(default: the system's roots).")
    node_no_verify: bool = _f(False, "Do not check other nodes' certificates (testing only).")
    node_verify_client: bool = _f(False, "Mutual TLS on the Raft port: refuse peers without "
                                         "a certificate signed by node_ca_cert.")
    node_verify_server_name: str = _f("", "Host name expected in other nodes' certificates "
                                          "(default: the host or IP dialled).")

    @classmethod
    def help(cls) -> dict:
        return {f.name: (f.default, f.metadata.get("help", "")) for f in fields(cls)}

    def __post_init__(self):
        for cert, key in (("http_cert", "http_key"), ("node_cert", "node_key")):
            if bool(getattr(self, cert)) != bool(getattr(self, key)):
                raise ConfigError(f"-{_flag(cert)} and -{_flag(key)} go together: give both "
                                  f"or neither")
        if self.http_verify_client and not self.http_cert:
            raise ConfigError("-http-verify-client needs -http-cert and -http-key (the API "
                              "must serve HTTPS to ask for client certificates)")
        if self.http_verify_client and not self.http_ca_cert:
            raise ConfigError("-http-verify-client needs -http-ca-cert: the CA client "
                              "certificates must be signed by")
        if self.node_verify_client and not self.node_cert:
            raise ConfigError("-node-verify-client needs -node-cert and -node-key")
        if self.node_verify_client and not self.node_ca_cert:
            raise ConfigError("-node-verify-client needs -node-ca-cert: the CA other nodes' "
                              "certificates must be signed by")
        # Read every file now: a bad one must stop the node before it starts anything.
        object.__setattr__(self, "_ctx", _Contexts(self) if self.enabled else None)

    @property
    def enabled(self) -> bool:
        return bool(self.http_cert or self.node_cert or self.node_ca_cert or
                    self.http_ca_cert)

    @property
    def https(self) -> bool:
        """The HTTP API serves TLS (and the node advertises https:// addresses)."""
        return bool(self.http_cert)

    @property
    def scheme(self) -> str:
        return "https" if self.https else "http"

    # ---- contexts (None when that side is plaintext) ---------------------------------
    @property
    def http_server(self):
        return self._ctx.http_server if self._ctx else None

    @property
    def raft_server(self):
        return self._ctx.raft_server if self._ctx else None

    @property
    def raft_client(self):
        return self._ctx.raft_client if self._ctx else None

    @property
    def http_client(self):
        return self._ctx.http_client if self._ctx else None

    def http_client_tls12(self):
        """The ``http_client`` context capped at TLS 1.2 (``refused``'s probe), built on
        first use."""
        c = self.__dict__.get("_tls12")
        if c is None and self._ctx:
            c = self._ctx.client_for_http(self, ssl.TLSVersion.TLSv1_2)
            object.__setattr__(self, "_tls12", c)
        return c

    async def refused(self, url, exc, timeout=5.0):
        """Why the failure ``exc`` of a call to ``url`` is this node's certificate being
        refused (one line), or None when it may be transient.

        Under TLS 1.3 a server checks the client's certificate after the client's side of
        the handshake is done; ours then drops the connection without an alert, and the
        client sees only "server disconnected" or a reset, as for a restart. So after such
        a failure one TLS 1.2 handshake decides it: there the server checks the
        certificate inside the handshake, and a drop during it is the refusal. A server
        that completes it (or cannot be reached) is not refusing the certificate."""
        why = cert_failure(exc)
        if why or not self._ctx or not url.startswith("https://"):
            return why
        import aiohttp      # the node's HTTP client library; only needed here
        if isinstance(exc, (aiohttp.ClientConnectorError, asyncio.TimeoutError)) or \
                not isinstance(exc, (aiohttp.ClientError, OSError)):
            return None
        hostport = url[len("https://"):].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        w = None
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(
                host.strip("[]"), int(port), ssl=self.http_client_tls12(),
                server_hostname=self.node_verify_server_name or host.strip("[]")), timeout)
        except ssl.SSLError as e:
            if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                return _DROPPED + self.own_check()
            return cert_failure(e)
        except (ConnectionResetError, ConnectionAbortedError, EOFError):
            return _DROPPED + self.own_check()
        except (OSError, asyncio.TimeoutError, ValueError):
            return None
        finally:
            if w is not None:
                w.close()
        return None

    def own_check(self) -> str:
        """Our client certificate checked against our own CA files, as a member would
        check it if it trusts the same CA: names the verification error the member does
        not send us (``; checked here: ...``)."""
        cert, key = (self.node_cert, self.node_key) if self.node_cert else (self.http_cert,
                                                                          self.http_key)
        cas = [p for p in (self.http_ca_cert, self.node_ca_cert) if p]
        if not cert or not cas:
            return ""
        try:
            why = _verify_in_memory(cert, key, cas)
        except (ssl.SSLError, OSError) as e:
            return f"; could not check it here: {e}"
        if why is None:
            return ("; checked here: it verifies against this node's own CA files, so the "
                    "members trust a different CA")
        return f"; checked here against this node's own CA files: {why}"

    def client_kw(self) -> dict:
        """Keyword arguments for ``client.Client`` / ``CallClient`` calling other nodes'
        HTTP APIs; empty (so nothing changes) without TLS."""
        if not self.enabled:
            return {}
        return {"ssl": self.http_client, "server_hostname": self.node_verify_server_name or None,
                "scheme": self.scheme}

    def describe(self) -> dict:
        """For /status: what is on, never key material."""
        return {"http": self.https, "http_verify_client": self.http_verify_client,
                "node": bool(self.node_cert), "node_verify_client": self.node_verify_client,
                "node_no_verify": self.node_no_verify,
                "node_verify_server_name": self.node_verify_server_name}


def _flag(name):
    return name.replace("_", "-")


def _read_check(path, flag):
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise ConfigError(f"-{flag} {path}: cannot read it: {e.strerror or e}") from None
    if b"-----BEGIN" not in head:
        raise ConfigError(f"-{flag} {path}: not a PEM file (no '-----BEGIN' line)")


def _load_chain(ctx, cert, key, cert_flag, key_flag):
    _read_check(cert, cert_flag)
    _read_check(key, key_flag)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        why = str(e)
        if "KEY_VALUES_MISMATCH" in why or "key values mismatch" in why:
            raise ConfigError(f"-{key_flag} {key} does not match the certificate "
                              f"-{cert_flag} {cert}") from None
        raise ConfigError(f"-{cert_flag} {cert} / -{key_flag} {key}: cannot load the "
                          f"certificate and key: {why}") from None


def _load_ca(ctx, path, flag):
    _read_check(path, flag)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(f"-{flag} {path}: not a usable CA certificate: {e}") from None


def _server(cert, key, ca, verify_client, flag):
    """A server context from ``-{flag}-cert``/``-key``/``-ca-cert``/``-verify-client``."""
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(c, cert, key, f"{flag}-cert", f"{flag}-key")
    if ca:
        _load_ca(c, ca, f"{flag}-ca-cert")
    if verify_client:
        c.verify_mode = ssl.CERT_REQUIRED
    return c


class _Contexts:
    """The ssl contexts, built once from the files (contexts are loop-independent)."""

    def __init__(self, t: TLSConfig):
        self.http_server = self.raft_server = self.raft_client = None
        if t.http_cert:
            self.http_server = _server(t.http_cert, t.http_key, t.http_ca_cert,
                                       t.http_verify_client, "http")
        elif t.http_ca_cert:
            _read_check(t.http_ca_cert, "http-ca-cert")
        if t.node_cert:
            self.raft_server = _server(t.node_cert, t.node_key, t.node_ca_cert,
                                       t.node_verify_client, "node")
            self.raft_client = self._client(t, t.node_cert, t.node_key,
                                            [(t.node_ca_cert, "node-ca-cert")])
        elif t.node_ca_cert:
            _read_check(t.node_ca_cert, "node-ca-cert")
        # Calls to other nodes' HTTP APIs (which present -http-cert).
        self.http_client = self.client_for_http(t)

    def client_for_http(self, t, max_version=None):
        if t.node_cert:
            cert, key = t.node_cert, t.node_key
        else:
            cert, key = t.http_cert, t.http_key
        return self._client(t, cert, key, [(t.http_ca_cert, "http-ca-cert"),
                                           (t.node_ca_cert, "node-ca-cert")], max_version)

    @staticmethod
    def _client(t, cert, key, cas, max_version=None):
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.minimum_version = ssl.TLSVersion.TLSv1_2
        if max_version is not None:
            c.maximum_version = max_version
        if cert:
            _load_chain(c, cert, key, "node-cert" if cert == t.node_cert else "http-cert",
                        "node-key" if key == t.node_key else "http-key")
        cas = [(p, f) for p, f in cas if p]
        if t.node_no_verify:
            c.check_hostname = False
            c.verify_mode = ssl.CERT_NONE
        elif cas:
            for p, f in cas:
                _load_ca(c, p, f)
        else:
            c.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return c


NO_TLS = TLSConfig()

_DROPPED = ("the peer refused this node's certificate: it dropped the connection during "
            "the TLS handshake, after this node presented its certificate (is it signed by "
            "the CA the members trust, their -http-ca-cert?)")

# OpenSSL reasons that say a certificate was refused, by us or by the peer (its alert).
# Retrying changes none of them: the files must change. Under TLS 1.3 the server checks
# the client's certificate after the client's handshake has completed, so the client
# learns of the refusal as an alert on its first read (an OSError in aiohttp, not an
# ssl error of the connect), which is why the chain is searched.
_CERT_REASONS = ("CERTIFICATE_VERIFY_FAILED", "UNKNOWN_CA", "BAD_CERTIFICATE",
                 "CERTIFICATE_REQUIRED", "CERTIFICATE_UNKNOWN", "UNSUPPORTED_CERTIFICATE",
                 "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED", "HOSTNAME_MISMATCH")


def _verify_in_memory(cert, key, cas):
    """A handshake in memory between a client presenting ``cert`` and a server trusting
    ``cas`` and requiring a client certificate -> the server's verification error, or
    None when it accepts ``cert``."""
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(cert, key)
    for p in cas:
        srv.load_verify_locations(cafile=p)
    srv.verify_mode = ssl.CERT_REQUIRED
    cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cli.check_hostname = False
    cli.verify_mode = ssl.CERT_NONE
    cli.load_cert_chain(cert, key)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = cli.wrap_bio(c_in, c_out)
    s = srv.wrap_bio(s_in, s_out, server_side=True)
    done = set()
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as e:
                return e.verify_message or str(e)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            return None
    return None


def cert_failure(exc):
    """Why ``exc`` (an exception of a TLS connection, or one raised from it) is a
    certificate refusal that no retry can heal, as one line; None when it may be
    transient (a reset, a timeout, a refused port)."""
    seen = 0
    while exc is not None and seen < 8:
        seen += 1
        if isinstance(exc, ssl.SSLCertVerificationError):
            inner = getattr(exc, "certificate_error", exc)       # aiohttp wraps it
            why = getattr(inner, "verify_message", None) or str(inner).split("(_ssl")[0].strip()
            return f"this node rejected the peer's certificate: {why}"
        reason = getattr(exc, "reason", None) or ""
        text = str(exc)
        if isinstance(exc, ssl.SSLError) or "[SSL:" in text:
            for r in _CERT_REASONS:
                if r in reason or r in text:
                    who = "the peer refused this node's certificate" if "ALERT" in (reason + text) \
                        else "certificate check failed"
                    return f"{who}: {text.split('(_ssl')[0].strip()}"
        nxt = exc.__cause__ or exc.__context__
        if nxt is None and getattr(exc, "os_error", None) is not exc:
            nxt = getattr(exc, "os_error", None)     # aiohttp's connector errors
        exc = nxt
    return None


def add_flags(flag):
    """The TLS flags on the node's parser (``flag(name, **kw)`` as in cli.py)."""
    h = TLSConfig.help()
    for name in ("http_cert", "http_key", "http_ca_cert", "node_cert", "node_key",
                 "node_ca_cert", "node_verify_server_name"):
        flag(_flag(name), dest="tls_" + name, default="",
             metavar="NAME" if name == "node_verify_server_name" else "PATH",
             help=h[name][1])
    for name in ("http_verify_client", "node_no_verify", "node_verify_client"):
        flag(_flag(name), dest="tls_" + name, action="store_true", help=h[name][1])


def from_args(args) -> TLSConfig:
    """Raises ``ConfigError`` (naming the flag) for a bad combination or a bad file."""
    kw = {f.name: getattr(args, "tls_" + f.name) for f in fields(TLSConfig)}
    if not any(kw.values()):
        return NO_TLS
    return TLSConfig(**kw)
