"""An asyncio TCP fault proxy placed in front of every member's Raft (and peer HTTP) port.

Each member advertises the proxy's port (``-raft-adv``) while listening on its real
port, so every connection a peer dials passes through a :class:`Proxy`. One
:class:`FaultNetwork` holds the rules for all of them: which directed links
``(src, dst)`` are cut, delayed or lossy.

Who is on the other end? The dialling member is found from the kernel, not from the
protocol: the proxy looks the connection's source port up in ``/proc/net/tcp`` and
finds which member process holds that socket (``/proc/PID/fd``). So the proxy works for
any protocol (Raft frames, HTTP forwarding) and needs no cooperation from the node.
Connections from processes that are not members (the test's own clients) are never cut.

TCP never loses bytes in the middle of a stream, so faults take the forms a real
network produces at the application level:

- **stall** (``mode="stall"``): bytes on a cut link are held, not delivered, until the
  link heals; the sender's buffers fill and its timeouts fire, as with a silent
  partition. Held bytes are delivered after the heal, as TCP retransmission would.
- **reset** (``mode="reset"``): connections on a cut link are closed and new ones are
  closed as soon as they are accepted, as with an unreachable host.
- **delay**: every chunk waits ``delay + U(0, jitter)`` seconds, order kept.
- **loss** (``drop``): each chunk closes its connection with a probability, the way a
  lossy path shows up to an application (connection churn, retransmission stalls).

Cutting is per direction: ``block(a, b)`` holds what ``a`` sends to ``b`` on every
connection between them, whoever dialled. Partition helpers cut both directions.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time

from .procs import free_port

log = logging.getLogger(__name__)

_CHUNK = 65536
_QUEUE_CHUNKS = 64          # per direction; beyond this the proxy stops reading (backpressure)


def _proc_tcp_inode(src_port: int, dst_port: int) -> int | None:
    """Inode of the socket bound to 127.0.0.1:src_port connected to port dst_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    local, remote = parts[1], parts[2]
                    if int(local.rsplit(":", 1)[1], 16) == src_port and \
                            int(remote.rsplit(":", 1)[1], 16) == dst_port:
                        inode = int(parts[9])
                        if inode:
                            return inode
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return None


def _pid_holding(inode: int, pids: dict) -> str | None:
    want = f"socket:[{inode}]"
    for name, pid in pids.items():
        if pid is None:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                    return name
            except OSError:
                continue
    return None


def identify_by_proc(peer_port: int, local_port: int, pids: dict) -> str | None:
    """Name of the member process that dialled from ``peer_port`` to ``local_port``."""
    inode = _proc_tcp_inode(peer_port, local_port)
    return None if inode is None else _pid_holding(inode, pids)


class FaultNetwork:
    """The rules for every link between members, and the proxies that enforce them.

    ``identify(peer_port, local_port) -> member name | None`` names the dialler of a
    connection; by default it looks in ``/proc`` for the member PIDs in ``self.pids``
    (which the cluster harness keeps current across restarts).
    """

    def __init__(self, identify=None, seed: int | None = None, mode: str = "stall"):
        self.pids: dict[str, int | None] = {}
        # (runs in a worker thread: it reads a copy of ``pids``, which the loop changes)
        self._identify = identify or (lambda peer, local: identify_by_proc(
            peer, local, dict(self.pids)))
        self.rng = random.Random(seed)
        self.blocked: set[tuple] = set()
        self.delays: dict[tuple, tuple[float, float]] = {}
        self.default_delay: tuple[float, float] = (0.0, 0.0)
        self.drop_prob: dict[tuple, float] = {}
        self.mode = mode
        self.proxies: list[Proxy] = []
        self._changed = asyncio.Event()
        self.counters = {"connections": 0, "refused": 0, "resets": 0, "dropped_conns": 0,
                         "unidentified": 0}

    # -- proxies ---------------------------------------------------------------------
    async def add_proxy(self, member: str, upstream_port: int, listen_port: int = 0,
                        kind: str = "raft") -> "Proxy":
        p = Proxy(self, member, upstream_port, listen_port, kind)
        await p.start()
        self.proxies.append(p)
        return p

    async def close(self) -> None:
        for p in self.proxies:
            await p.close()
        self.proxies.clear()

    async def identify(self, peer_port: int, local_port: int) -> str | None:
        for attempt in range(3):
            # A /proc scan costs tens of ms on a busy machine: off the loop, which also
            # carries every proxied byte (a stalled loop would be an unintended partition).
            name = await asyncio.to_thread(self._identify, peer_port, local_port)
            if name is not None:
                return name
            if not self.pids:
                break
            await asyncio.sleep(0.005 * (attempt + 1))
        self.counters["unidentified"] += 1
        return None

    # -- rules -------------------------------------------------------------------------
    def _notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()
        if self.mode == "reset":
            for p in self.proxies:
                p.reset_blocked()

    def link_open(self, src, dst) -> bool:
        return (src, dst) not in self.blocked

    def link_delay(self, src, dst) -> float:
        base, jitter = self.delays.get((src, dst), self.default_delay)
        if base <= 0 and jitter <= 0:
            return 0.0
        return base + (self.rng.uniform(0, jitter) if jitter > 0 else 0.0)

    def link_drop(self, src, dst) -> float:
        return self.drop_prob.get((src, dst), self.drop_prob.get(("*", "*"), 0.0))

    def block(self, src: str, dst: str, both: bool = True) -> None:
        self.blocked.add((src, dst))
        if both:
            self.blocked.add((dst, src))
        self._notify()

    def partition(self, *groups) -> None:
        """Members in different groups cannot talk; members within a group can."""
        groups = [set(g) for g in groups]
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))
                        self.blocked.add((y, x))
        self._notify()

    def isolate(self, member: str, others) -> None:
        self.partition({member}, set(others) - {member})

    def bridge(self, left, bridge: str, right) -> None:
        """``left`` and ``right`` cannot talk to each other; ``bridge`` talks to both."""
        left, right = set(left) - {bridge}, set(right) - {bridge}
        for x in left:
            for y in right:
                self.blocked.add((x, y))
                self.blocked.add((y, x))
        self._notify()

    def delay(self, seconds: float, jitter: float = 0.0, links=None) -> None:
        """Delay ``links`` (pairs), or every link when None."""
        if links is None:
            self.default_delay = (seconds, jitter)
        else:
            for link in links:
                self.delays[tuple(link)] = (seconds, jitter)
        self._notify()

    def drop(self, probability: float, links=None) -> None:
        """Each chunk on ``links`` (every link when None) resets its connection with
        ``probability``."""
        if links is None:
            self.drop_prob[("*", "*")] = probability
        else:
            for link in links:
                self.drop_prob[tuple(link)] = probability
        self._notify()

    def heal(self) -> None:
        """Remove every rule: all links open, no delay, no loss."""
        self.blocked.clear()
        self.delays.clear()
        self.default_delay = (0.0, 0.0)
        self.drop_prob.clear()
        self._notify()

    async def wait_open(self, src, dst) -> None:
        while not self.link_open(src, dst):
            await self._changed.wait()

    def describe(self) -> dict:
        return {"blocked": sorted(map(list, self.blocked)),
                "delay": {f"{k[0]}->{k[1]}": v for k, v in self.delays.items()},
                "default_delay": self.default_delay,
                "drop": {f"{k[0]}->{k[1]}": v for k, v in self.drop_prob.items()},
                "mode": self.mode}

    def stats(self) -> dict:
        return {**self.counters, **self.describe(),
                "proxies": [p.stats() for p in self.proxies]}


class _Conn:
    """One proxied connection: the dialler's side and the upstream side."""

    def __init__(self, proxy: "Proxy", src, c_reader, c_writer):
        self.proxy = proxy
        self.src = src                      # dialling member, or None (not a member)
        self.dst = proxy.member
        self.c_reader, self.c_writer = c_reader, c_writer
        self.u_reader = self.u_writer = None
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    def involves_blocked(self) -> bool:
        net = self.proxy.net
        return self.src is not None and (not net.link_open(self.src, self.dst)
                                         or not net.link_open(self.dst, self.src))

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.c_writer, self.u_writer):
            if w is not None:
                try:
                    w.transport.abort()
                except Exception:  # noqa: BLE001 - already gone
                    pass
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()

    async def run(self) -> None:
        try:
            self.u_reader, self.u_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.proxy.upstream_port), 5)
        except (OSError, asyncio.TimeoutError):
            self.abort()                     # the member is down: like a refused connect
            return
        a = asyncio.ensure_future(self._pump(self.c_reader, self.u_writer, self.src, self.dst))
        b = asyncio.ensure_future(self._pump(self.u_reader, self.c_writer, self.dst, self.src))
        self.tasks = [a, b]
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.abort()
            self.proxy.conns.discard(self)

    async def _pump(self, reader, writer, src, dst) -> None:
        """Copy one direction, with the network's delay, loss and cut rules."""
        net = self.proxy.net
        queue: asyncio.Queue = asyncio.Queue(_QUEUE_CHUNKS)
        last_deadline = 0.0

        async def deliver():
            while True:
                deadline, data = await queue.get()
                if data is None:
                    return
                wait = deadline - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.src is not None:
                    await net.wait_open(src, dst)
                writer.write(data)
                await writer.drain()
                self.proxy.bytes += len(data)

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if self.src is not None:
                    p = net.link_drop(src, dst)
                    if p > 0 and net.rng.random() < p:
                        net.counters["dropped_conns"] += 1
                        break
                d = net.link_delay(src, dst) if self.src is not None else \
                    net.link_delay(None, None)
                last_deadline = max(last_deadline, time.monotonic() + d)
                await queue.put((last_deadline, data))
            await queue.put((0.0, None))
            await sender                     # flush what was read before EOF
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except OSError:
                pass
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()


class Proxy:
    """Listens on 127.0.0.1:``listen_port`` and forwards to 127.0.0.1:``upstream_port``,
    the real port of ``member``."""

    def __init__(self, net: FaultNetwork, member: str, upstream_port: int,
                 listen_port: int = 0, kind: str = "raft"):
        self.net = net
        self.member = member
        self.upstream_port = upstream_port
        self.listen_port = listen_port
        self.kind = kind
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[_Conn] = set()
        self.accepted = 0
        self.bytes = 0

    async def start(self) -> None:
        if self.listen_port:
            self.server = await asyncio.start_server(self._accept, "127.0.0.1",
                                                     self.listen_port, reuse_address=True)
            return
        # Not an ephemeral port (bind 0): the proxy stops listening while its member is
        # down, and an outgoing connection could take an ephemeral port meanwhile, so
        # up() would find it in use. A pick can still clash with another listener: retry.
        for i in range(20):
            try:
                self.server = await asyncio.start_server(self._accept, "127.0.0.1",
                                                         free_port(), reuse_address=True)
                break
            except OSError:
                if i == 19:
                    raise
        self.listen_port = self.server.sockets[0].getsockname()[1]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def down(self) -> None:
        """Stop listening while the member is dead, so a dial is refused as it is by a
        host whose process died (accepting and then closing would look like a crash
        mid-request, an ambiguous outcome, to the dialler)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.reset_all()

    async def up(self, attempts: int = 20) -> None:
        """Listen again on the same port (the member advertises it)."""
        if self.server is not None:
            return
        for i in range(attempts):
            try:
                self.server = await asyncio.start_server(self._accept, "127.0.0.1",
                                                         self.listen_port, reuse_address=True)
                return
            except OSError:
                if i == attempts - 1:
                    raise
                await asyncio.sleep(0.1)

    async def _accept(self, reader, writer) -> None:
        self.accepted += 1
        self.net.counters["connections"] += 1
        peer_port = writer.get_extra_info("peername")[1]
        src = await self.net.identify(peer_port, self.listen_port)
        conn = _Conn(self, src, reader, writer)
        if self.net.mode == "reset" and conn.involves_blocked():
            self.net.counters["refused"] += 1
            writer.transport.abort()
            return
        self.conns.add(conn)
        await conn.run()

    def reset_blocked(self) -> None:
        for conn in list(self.conns):
            if conn.involves_blocked():
                self.net.counters["resets"] += 1
                conn.abort()

    def reset_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.reset_all()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass
            self.server = None

    def stats(self) -> dict:
        return {"member": self.member, "kind": self.kind, "listen": self.listen_port,
                "upstream": self.upstream_port, "accepted": self.accepted,
                "active": len(self.conns), "bytes": self.bytes,
                "sources": sorted({str(c.src) for c in self.conns})}
