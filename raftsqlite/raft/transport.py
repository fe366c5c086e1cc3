"""asyncio TCP transport between the members of one Raft group.

Each member dials one persistent connection to every peer and sends its messages on it;
it receives the peers' messages on the connections they dialled. Every connection starts
with a handshake frame (cluster id, group id, sender id and address, receiver id); the
listener answers OK or refuses and closes, so a member of another cluster or group never
gets a message in. Frames are the codec's (length + CRC32C); a frame above
``max_frame_bytes`` closes the connection with a logged error before it is buffered.

Memory is bounded: messages for a peer that is unreachable, or whose socket buffer is
above ``send_buffer_bytes``, are dropped (Raft retransmits) and the core is told the peer
is unreachable. Snapshot chunks are the exception: ``send_stream`` waits for the socket
to drain instead of dropping, and fails if the connection goes away.

TLS: with ``ssl_server``/``ssl_client`` in the config (contexts the node builds from its
flags; this package never reads certificate files) every connection is TLS, with the
same framing, handshake frame and back-pressure above it; a failed TLS handshake with a
peer is logged once per reason and retried at ``reconnect_max`` pace.

Built on asyncio Protocols rather than streams: with uvloop a ``transport.write`` is one
syscall and there is no task switch per message.
"""
import asyncio
import json
import logging
import random
import socket
import ssl

from raftsqlite import codec
from raftsqlite.codec.model import MsgType
from raftsqlite.errors import DecodeError
from raftsqlite.raft.config import split_addr

log = logging.getLogger(__name__)

T_HELLO = 0x80      # dialler -> listener: JSON {cluster, from, addr, to, version}
T_HELLO_OK = 0x81
T_HELLO_REFUSE = 0x82   # payload: the reason, UTF-8
PROTOCOL_VERSION = 1
CONNECT_QUEUE_BYTES = 1 << 20   # kept for a peer while its connection is being made
# Requests a follower forwards to its leader keep the original sender in ``frm``.
_FORWARDED = (MsgType.READ_INDEX, MsgType.TRANSFER_LEADER)


class _Inbound(asyncio.Protocol):
    """A connection a peer dialled to us: handshake, then a stream of messages."""

    def __init__(self, owner):
        self.owner = owner
        self.decoder = codec.FrameDecoder(owner.max_frame_bytes)
        self.peer = None
        self.tr = None

    def connection_made(self, tr):
        self.tr = tr
        self.owner._inbound.add(self)
        _nodelay(tr)

    def connection_lost(self, exc):
        self.owner._inbound.discard(self)

    def data_received(self, data):
        try:
            frames = self.decoder.feed(data)
        except DecodeError as e:
            who = self.peer or _peername(self.tr)
            hint = _foreign_protocol(data) if self.peer is None else None
            if hint:
                log.warning("closing connection from %s on the Raft port: %s", who, hint)
            else:
                log.error("closing raft connection from %s: %s", who, e)
            self.owner.stats_["bad_frames"] += 1
            self.tr.close()
            return
        owner = self.owner
        deliver = owner.on_message
        group = owner.group_id
        for f in frames:
            if self.peer is None:
                if not self._hello(f):
                    return
                continue
            try:
                g, msg = codec.message_from_frame(f)
            except DecodeError as e:
                log.error("closing raft connection from %s: bad message: %s", self.peer, e)
                owner.stats_["bad_frames"] += 1
                self.tr.close()
                return
            if g != group or (msg.frm != self.peer and msg.type not in _FORWARDED):
                owner.stats_["misrouted"] += 1
                continue
            owner.stats_["msgs_in"] += 1
            deliver(msg)

    def _hello(self, f):
        group, ftype, _, _, payload = f
        owner = self.owner
        reason = None
        try:
            hello = json.loads(bytes(payload)) if ftype == T_HELLO else None
        except ValueError:
            hello = None
        if not isinstance(hello, dict):
            reason = "expected a handshake frame"
        elif hello.get("cluster") != owner.cluster_id:
            reason = (f"cluster id mismatch: this member is in {owner.cluster_id!r}, "
                      f"the caller in {hello.get('cluster')!r}")
        elif group != owner.group_id:
            reason = f"group id mismatch: this member is in group {owner.group_id}, caller {group}"
        elif hello.get("to") not in (None, "", owner.node_id):
            reason = f"wrong member: this is {owner.node_id!r}, caller wanted {hello.get('to')!r}"
        elif not hello.get("from"):
            reason = "handshake without a node id"
        if reason is not None:
            log.error("refusing raft connection from %s: %s", _peername(self.tr), reason)
            owner.stats_["refused"] += 1
            self.tr.write(codec.encode_frame(owner.group_id, T_HELLO_REFUSE, 0, 0, reason.encode()))
            self.tr.close()
            return False
        self.peer = hello["from"]
        if hello.get("addr"):
            owner.learned[self.peer] = hello["addr"]
        self.tr.write(codec.encode_frame(owner.group_id, T_HELLO_OK, 0, PROTOCOL_VERSION, b""))
        return True


class _Outbound(asyncio.Protocol):
    """Our connection to one peer: waits for the handshake answer, then only writes."""

    def __init__(self, peer):
        self.peer = peer
        self.tr = None
        self.ready = asyncio.get_running_loop().create_future()
        # The connect loop may stop waiting for the handshake (the write failed, a
        # timeout): a failure set on it afterwards must not be logged as unretrieved.
        self.ready.add_done_callback(_retrieve)
        self.decoder = codec.FrameDecoder(1 << 16)
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.closed = False

    def connection_made(self, tr):
        self.tr = tr
        _nodelay(tr)
        tr.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data):
        try:
            frames = self.decoder.feed(data)
        except DecodeError as e:
            self._fail(ConnectionError(f"bad handshake answer: {e}"))
            return
        for _, ftype, _, _, payload in frames:
            if self.ready.done():
                continue
            if ftype == T_HELLO_OK:
                self.ready.set_result(True)
            elif ftype == T_HELLO_REFUSE:
                self._fail(PermissionError(bytes(payload).decode(errors="replace")))
            else:
                self._fail(ConnectionError(f"unexpected handshake answer type {ftype}"))

    def _fail(self, exc):
        if not self.ready.done():
            self.ready.set_exception(exc)
        self.tr.close()

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()

    def connection_lost(self, exc):
        self.closed = True
        self.can_write.set()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))
        self.peer._lost(self)


class _Peer:
    def __init__(self, owner, node_id):
        self.owner = owner
        self.node_id = node_id
        self.proto = None         # connected and handshaken _Outbound
        self.pending = []         # frames waiting for flush()
        self.pending_bytes = 0
        self.early = []           # frames queued while connecting
        self.early_bytes = 0
        self.task = None
        self.backoff = owner.reconnect_min
        self.dropped = 0
        self.sent = 0
        self.connects = 0
        self.last_error = ""

    def ensure_connecting(self):
        if self.proto is None and (self.task is None or self.task.done()) and not self.owner._closing:
            self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self):
        owner = self.owner
        while not owner._closing and self.proto is None:
            addr = owner.resolve(self.node_id)
            try:
                if not addr:
                    raise ConnectionError("address unknown")
                host, port = split_addr(addr)
                loop = asyncio.get_running_loop()
                if owner.ssl_client is None:
                    conn = loop.create_connection(lambda: _Outbound(self), host, port)
                else:
                    conn = loop.create_connection(
                        lambda: _Outbound(self), host, port, ssl=owner.ssl_client,
                        server_hostname=owner.ssl_server_name or host,
                        ssl_handshake_timeout=3.0)
                _, proto = await asyncio.wait_for(conn, 3.0)
                if proto.closed or proto.tr.is_closing():
                    # lost between connect and here (uvloop raises on such a write)
                    raise ConnectionError("connection lost before the handshake")
                proto.tr.write(codec.encode_frame(owner.group_id, T_HELLO, 0, PROTOCOL_VERSION,
                                                  owner.hello_for(self.node_id)))
                await asyncio.wait_for(proto.ready, 3.0)
                self.proto = proto
                if self.early:
                    proto.tr.write(b"".join(self.early))
                    self.sent += len(self.early)
                    self.early, self.early_bytes = [], 0
                self.connects += 1
                self.backoff = owner.reconnect_min
                self.last_error = ""
                return
            except asyncio.CancelledError:
                raise
            except ssl.SSLError as e:
                # a certificate the peer (or we) refused: say why once, retry slowly
                why = f"TLS handshake with {addr} failed: {e}"
                if self.last_error != why:
                    log.error("raft peer %s: %s", self.node_id, why)
                self.last_error = why
                owner.stats_["tls_failures"] += 1
                delay = owner.reconnect_max
            except PermissionError as e:
                if self.last_error != str(e):
                    log.error("raft peer %s at %s refused us: %s", self.node_id, addr, e)
                self.last_error = str(e)
                delay = owner.reconnect_max
            except (OSError, asyncio.TimeoutError, ConnectionError, ValueError) as e:
                self.last_error = str(e) or type(e).__name__
                delay = self.backoff
                self.backoff = min(owner.reconnect_max, self.backoff * 2)
            if self.early:
                # Stale by the next attempt: Raft will have retransmitted what matters.
                self.dropped += len(self.early)
                owner.stats_["dropped"] += len(self.early)
                self.early, self.early_bytes = [], 0
                owner.on_unreachable(self.node_id)
            await asyncio.sleep(delay * (0.5 + random.random()))

    def _lost(self, proto):
        if self.proto is proto:
            self.proto = None
            self.pending = []
            self.pending_bytes = 0
            self.ensure_connecting()

    def close(self):
        if self.task is not None:
            self.task.cancel()
        if self.proto is not None:
            self.proto.tr.close()
            self.proto = None


class Transport:
    """``on_message(msg)`` is called on the loop for each message received;
    ``resolve(node_id) -> 'host:port' | None`` gives a peer's address (from the membership);
    ``on_unreachable(node_id)`` is told when messages to a peer had to be dropped."""

    def __init__(self, config, on_message, resolve=None, on_unreachable=None):
        self.node_id = config.node_id
        self.cluster_id = config.cluster_id
        self.group_id = config.group_id
        self.listen_addr = config.raft_addr
        self.advertise = config.advertise
        self.max_frame_bytes = config.max_frame_bytes
        self.send_buffer_bytes = config.send_buffer_bytes
        self.reconnect_min = config.reconnect_min
        self.reconnect_max = config.reconnect_max
        self.ssl_server = config.ssl_server
        self.ssl_client = config.ssl_client
        self.ssl_server_name = config.ssl_server_name
        self.on_message = on_message
        self._resolve = resolve or (lambda nid: None)
        self.on_unreachable = on_unreachable or (lambda nid: None)
        self.learned = {}         # node id -> address, from inbound handshakes
        self._peers = {}
        self._dirty = []
        self._inbound = set()
        self._unreachable = set()
        self._server = None
        self._closing = False
        self._hello_cache = {}
        self.stats_ = {"msgs_in": 0, "msgs_out": 0, "dropped": 0, "bad_frames": 0,
                       "refused": 0, "misrouted": 0, "bytes_out": 0,
                       "tls_failures": 0}

    def resolve(self, node_id):
        return self._resolve(node_id) or self.learned.get(node_id)

    def hello_for(self, to):
        h = self._hello_cache.get(to)
        if h is None:
            h = self._hello_cache[to] = json.dumps(
                {"cluster": self.cluster_id, "from": self.node_id, "addr": self.advertise,
                 "to": to, "version": PROTOCOL_VERSION}).encode()
        return h

    async def start(self):
        host, port = split_addr(self.listen_addr)
        loop = asyncio.get_running_loop()
        kw = {}
        if self.ssl_server is not None:
            # A peer that never finishes its handshake (a plaintext client, a port scan)
            # is dropped after this, not held.
            kw = {"ssl": self.ssl_server, "ssl_handshake_timeout": 5.0}
        self._server = await loop.create_server(lambda: _Inbound(self), host, port,
                                                reuse_address=True, backlog=128, **kw)
        self.bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self):
        self._closing = True
        for p in self._peers.values():
            p.close()
        if self._server is not None:
            self._server.close()
        for c in list(self._inbound):
            c.tr.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass

    def _peer(self, node_id):
        p = self._peers.get(node_id)
        if p is None:
            p = self._peers[node_id] = _Peer(self, node_id)
        return p

    def send(self, msg):
        """Queue ``msg`` for its peer; it leaves at the next ``flush()``. Never blocks."""
        p = self._peer(msg.to)
        proto = p.proto
        if proto is None:
            p.ensure_connecting()
            # Keep a little while the connection is being made, so the first messages to
            # a new peer (a probe, a vote) are not lost to connection set-up.
            if p.task is not None and not p.task.done() and \
                    p.early_bytes < CONNECT_QUEUE_BYTES:
                frame = codec.encode_message(msg, self.group_id)
                p.early.append(frame)
                p.early_bytes += len(frame)
            else:
                self._drop(p)
            return
        frame = codec.encode_message(msg, self.group_id)
        if proto.tr.get_write_buffer_size() + p.pending_bytes + len(frame) > self.send_buffer_bytes:
            self._drop(p)
            return
        if not p.pending:
            self._dirty.append(p)
        p.pending.append(frame)
        p.pending_bytes += len(frame)

    def _drop(self, p):
        p.dropped += 1
        self.stats_["dropped"] += 1
        self._unreachable.add(p.node_id)

    def flush(self):
        """Write every queued frame: one write call per peer per Ready."""
        for p in self._dirty:
            if p.pending and p.proto is not None:
                p.proto.tr.write(b"".join(p.pending) if len(p.pending) > 1 else p.pending[0])
                p.sent += len(p.pending)
                self.stats_["msgs_out"] += len(p.pending)
                self.stats_["bytes_out"] += p.pending_bytes
            p.pending = []
            p.pending_bytes = 0
        self._dirty = []
        if self._unreachable:
            # Told once per flush, not per dropped message.
            for nid in self._unreachable:
                self.on_unreachable(nid)
            self._unreachable.clear()

    async def send_stream(self, msg, timeout=10.0):
        """Send one message with back-pressure instead of dropping (snapshot chunks).
        Raises ConnectionError if the peer is not connected or the connection goes away."""
        p = self._peer(msg.to)
        if p.proto is None:
            p.ensure_connecting()
            deadline = asyncio.get_running_loop().time() + timeout
            while p.proto is None:
                if asyncio.get_running_loop().time() > deadline or self._closing:
                    raise ConnectionError(f"no connection to {msg.to}")
                await asyncio.sleep(0.02)
        proto = p.proto
        await asyncio.wait_for(proto.can_write.wait(), timeout)
        if proto.closed or p.proto is not proto:
            raise ConnectionError(f"connection to {msg.to} lost")
        frame = codec.encode_message(msg, self.group_id)
        proto.tr.write(frame)
        self.stats_["msgs_out"] += 1
        self.stats_["bytes_out"] += len(frame)

    def connected(self, node_id):
        p = self._peers.get(node_id)
        return p is not None and p.proto is not None

    def forget(self, node_id):
        """Close the connection to a removed member."""
        p = self._peers.pop(node_id, None)
        if p is not None:
            p.close()

    def stats(self):
        s = dict(self.stats_)
        s["peers"] = {nid: {"connected": p.proto is not None, "sent": p.sent,
                            "dropped": p.dropped, "connects": p.connects,
                            "last_error": p.last_error}
                      for nid, p in self._peers.items()}
        s["inbound"] = len(self._inbound)
        s["tls"] = self.ssl_server is not None
        return s


def _retrieve(fut):
    if not fut.cancelled():
        fut.exception()


_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def _foreign_protocol(data):
    """What a first packet that is no Raft frame most likely is, as advice (or None). An
    HTTP client or a TLS handshake on the Raft port is an operator's address mix-up (a -join
    or a load balancer given the -raft address), not a broken member."""
    head = bytes(data[:8])
    if head.startswith(_HTTP_METHODS):
        return ("an HTTP request reached the Raft port; clients, -join and load balancers "
                "take the -http address")
    if head[:1] == b"\x16" and head[1:2] == b"\x03":
        return ("a TLS handshake reached the Raft port, which this member serves without "
                "TLS; give every member the same -node-cert/-node-key settings")
    return None


def _nodelay(tr):
    sock = tr.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _peername(tr):
    try:
        return "%s:%s" % tr.get_extra_info("peername")[:2]
    except Exception:
        return "?"
