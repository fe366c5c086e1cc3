"""A lean HTTP/1.1 client for the router's node-to-node calls (``POST /shard/call``).

A routed call is one small POST with a codec body and a small JSON answer, sent over and
over to the same few leaders. aiohttp spends about 150 us of CPU on each (a request
object, a response object, timers, payload and stream wrappers, cookie and redirect
handling), more than the shard spends applying a coalesced call's inserts. This client
keeps a pool of keep-alive connections per address, each an asyncio ``Protocol`` that
writes the request in one ``write`` and parses the status line, ``Content-Length`` and
the body of the answer; nothing else. One request per connection at a time (no
pipelining), so a broken connection loses at most the one request it carried.

Failures are the same errors as ``raftsqlite.client.Client``'s: ``Unreachable`` when the
connection could not be made (nothing was sent: safe to retry elsewhere), ``Unavailable``
when it broke after the request was written (outcome unknown) and ``Timeout`` when no
answer came in time. A pooled connection that the server closed while idle is noticed
by ``connection_lost`` and never reused. Answers it cannot parse simply (chunked bodies,
a missing length) also raise ``Unavailable``: our nodes always send a length.
"""
import asyncio
import time

from raftsqlite import errors
from raftsqlite.client import Response

_MAX_HEAD = 65536
_READ_SIZE = 65536      # per read; a longer answer arrives over several reads


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection. A buffered protocol: the loop reads into ``rbuf`` (one
    per connection, reused). The plain protocol's read on asyncio's own loop allocates a
    256 KiB buffer per read, which glibc serves with an mmap, an mremap and a munmap
    every time (strace of a bench router: 3 syscalls and fresh pages per answer, gone
    with this; the router's CPU per insert did not change measurably in the bench)."""
    __slots__ = ("transport", "buf", "rbuf", "fut", "cb", "closed", "head", "need")

    def __init__(self):
        self.transport = None
        self.rbuf = memoryview(bytearray(_READ_SIZE))
        self.buf = bytearray()
        self.fut = None       # post(): the answer's future
        self.cb = None        # send(): called with the answer (Response) or a ConnectionError
        self.closed = False
        self.head = None      # (status, headers) once parsed
        self.need = 0         # body bytes expected after the head

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        f = self.fut
        if f is not None and not f.done():
            f.set_exception(ConnectionError(f"connection closed before the answer ({exc})"))
        self.fut = None
        cb = self.cb
        if cb is not None:
            self.cb = None
            cb(ConnectionError(f"connection closed before the answer ({exc})"))

    def get_buffer(self, sizehint):
        return self.rbuf

    def buffer_updated(self, nbytes):
        self.data_received(self.rbuf[:nbytes])

    def data_received(self, data):
        buf = self.buf
        buf += data             # a copy: ``data`` may be a view of rbuf
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail("answer header too long")
                return
            try:
                self.head = _parse_head(bytes(buf[:end]))
            except ValueError as e:
                self._fail(str(e))
                return
            del buf[:end + 4]
            self.need = self.head[2]
        if len(buf) >= self.need:
            f, cb = self.fut, self.cb
            status, headers, n = self.head
            body = bytes(buf[:n])
            del buf[:n]
            self.head = None
            self.fut = self.cb = None
            if buf:          # bytes nobody asked for: the connection is out of step
                self._fail("unexpected bytes after the answer")
            if cb is not None:
                cb(Response(status, headers, body))
            elif f is not None and not f.done():
                f.set_result(Response(status, headers, body))

    def _fail(self, why):
        f, cb = self.fut, self.cb
        self.fut = self.cb = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if f is not None and not f.done():
            f.set_exception(ConnectionError(why))
        if cb is not None:
            cb(ConnectionError(why))


class _Expired(Exception):
    pass


def _call_error(addr, t, exc):
    """What the caller of a call sees when its connection timed out (``_Expired``) or
    failed (anything else): the write may or may not have been applied."""
    if isinstance(exc, _Expired):
        return errors.Timeout(f"no answer from {addr} within {t:g}s; a write may or may not "
                              "have been applied")
    return errors.Unavailable(f"connection to {addr} failed: {exc}; a write may or may not "
                              "have been applied")


def _expire(fut):
    if not fut.done():
        fut.set_exception(_Expired())


class _Headers(dict):
    """Lower-case names -> values; ``get`` ignores case like aiohttp's."""
    __slots__ = ()

    def get(self, key, default=None):
        return dict.get(self, key.lower(), default)


_OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: "
_JSON_TAIL = b"\r\nconnection: keep-alive\r\nalt-svc: \r\ncontent-type: application/json; charset=utf-8"
_JSON_HEADERS = {"connection": "keep-alive", "alt-svc": "", "content-type": "application/json; charset=utf-8"}


def _parse_head(head):
    if head.startswith(_OK_HEAD) and head.endswith(_JSON_TAIL):
        # Our nodes' usual answer (http/fastpath.py response_bytes): a length and the
        # same three headers every time; anything else takes the general parse below.
        num = head[len(_OK_HEAD):len(head) - len(_JSON_TAIL)]
        if num.isdigit():
            h = _Headers(_JSON_HEADERS)
            h["content-length"] = num.decode()
            return 200, h, int(num)
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = _Headers()
    length = None
    for ln in lines[1:]:
        c = ln.find(b":")
        if c <= 0:
            continue
        name = ln[:c].strip().lower().decode("latin-1")
        value = ln[c + 1:].strip().decode("latin-1")
        headers[name] = value
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            raise ValueError("chunked answers are not supported on this lane")
    if length is None:
        if status in (204, 304) or 100 <= status < 200:
            length = 0
        else:
            raise ValueError("answer without Content-Length")
    return status, headers, length


class CallClient:
    """``await post(addr, path, body, headers=None, timeout=None) -> Response``.
    Create and use it on one event loop; ``close()`` drops every pooled connection."""

    def __init__(self, *, timeout=30.0, max_idle=64, idle_s=30.0, auth=None, ssl=None,
                 server_hostname=None, scheme="http"):
        # TLS (tlsconf.TLSConfig.client_kw): an https:// address (or one without a scheme
        # when ``scheme`` is https) is dialled with ``ssl``; the pool is per address.
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._scheme = scheme
        self.default_timeout = timeout
        # the node's own -join-as credentials (http/auth.py), sent on every call
        self._auth_line = b"" if not auth else b"\r\nAuthorization: " + auth.encode("ascii")
        self.max_idle = max_idle
        # A connection idle this long is closed rather than reused: well inside the
        # nodes' keep-alive (75 s), so a request never races the server closing it.
        self.idle_s = idle_s
        self._idle = {}       # addr -> [(_Conn, monotonic time it became idle)]
        self.counts = {"requests": 0, "connects": 0, "failures": 0}
        # send()'s requests in flight: conn -> (loop time it expires, addr, timeout), and
        # one timer for the earliest of them instead of a timer per request
        self._busy = {}
        self._sweep = None
        self._sweep_at = 0.0

    async def _connect(self, addr):
        host, _, port = addr.rpartition(":")
        scheme = self._scheme
        if "://" in host:
            scheme, host = host.split("://", 1)
        host = host.strip("[]")
        kw = {}
        if scheme == "https":
            kw = {"ssl": self._ssl or True, "server_hostname": self._server_hostname or host}
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Conn, host, int(port), **kw)
        except (OSError, ValueError) as e:
            raise errors.Unreachable(f"cannot reach {addr}: {e} (nothing was sent)") from None
        self.counts["connects"] += 1
        return conn

    def _take(self, addr):
        pool = self._idle.get(addr)
        if not pool:
            return None
        now = time.monotonic()
        while pool:
            c, since = pool.pop()
            if c.closed:
                continue
            if now - since > self.idle_s:
                c._fail("idle too long")
                continue
            return c
        return None

    async def post(self, addr, path, body, headers=None, timeout=None):
        self.counts["requests"] += 1
        conn = self._take(addr)
        if conn is None:
            conn = await self._connect(addr)
        host = addr.split("://", 1)[-1]
        head = [b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", host.encode(), self._auth_line,
                b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        for k, v in (headers or {}).items():
            head += [k.encode(), b": ", str(v).encode(), b"\r\n"]
        head.append(b"\r\n")
        loop = asyncio.get_running_loop()
        fut = conn.fut = loop.create_future()
        conn.transport.write(b"".join(head) + body)
        t = timeout or self.default_timeout
        # a timer that fails the future, cheaper than wait_for's wrapper per call
        timer = loop.call_later(t, _expire, fut) if t else None
        try:
            res = await fut
        except _Expired as e:
            self.counts["failures"] += 1
            conn._fail("timed out")
            raise _call_error(addr, t, e) from None
        except ConnectionError as e:
            self.counts["failures"] += 1
            conn._fail(str(e))
            raise _call_error(addr, t, e) from None
        except asyncio.CancelledError:
            conn._fail("cancelled")     # its answer would arrive on a reused connection
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._release(conn, addr, res)
        return res

    def send(self, addr, path, body, done, timeout=None):
        """``post`` without a task, a coroutine or a timer per request: ``done`` is called
        once, from the event loop, with the ``Response`` or the exception ``post`` would
        raise (``Unreachable``, ``Unavailable``, ``Timeout``). Used for routed calls,
        where a coroutine chain per call was a visible part of a router's CPU."""
        self.counts["requests"] += 1
        conn = self._take(addr)
        if conn is None:
            # no idle connection: connect first (rare; the pool keeps them)
            self.counts["requests"] -= 1      # post() counts it
            asyncio.get_running_loop().create_task(
                self._send_slow(addr, path, body, done, timeout))
            return
        loop = asyncio.get_running_loop()
        t = timeout or self.default_timeout
        conn.cb = lambda res: self._answered(conn, addr, t, done, res)
        conn.transport.write(b"%b%b%b%b%b%b%d\r\n\r\n%b" % (
            b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", addr.split("://", 1)[-1].encode(),
            self._auth_line, b"\r\nContent-Length: ", len(body), body))
        if t:
            at = loop.time() + t
            self._busy[conn] = at
            if self._sweep is None or at < self._sweep_at:
                if self._sweep is not None:
                    self._sweep.cancel()
                self._sweep_at = at
                self._sweep = loop.call_at(at, self._expire_busy)

    async def _send_slow(self, addr, path, body, done, timeout):
        try:
            res = await self.post(addr, path, body, timeout=timeout)
        except Exception as e:      # noqa: BLE001 - handed to the caller, as post raises it
            done(e)
            return
        done(res)

    def _answered(self, conn, addr, t, done, res):
        self._busy.pop(conn, None)
        if isinstance(res, BaseException):
            self.counts["failures"] += 1
            conn._fail(str(res))
            done(_call_error(addr, t, res))
            return
        self._release(conn, addr, res)
        done(res)

    def _release(self, conn, addr, res):
        """After an answer: back to the idle pool, unless the server closes the connection
        or the pool is full."""
        if res.headers.get("connection", "").lower() == "close":
            conn._fail("closed by the server")
        elif not conn.closed:
            pool = self._idle.setdefault(addr, [])
            if len(pool) < self.max_idle:
                pool.append((conn, time.monotonic()))
            else:
                conn._fail("pool full")

    def _expire_busy(self):
        self._sweep = None
        if not self._busy:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = [c for c, at in self._busy.items() if at <= now]
        for c in late:
            del self._busy[c]
            cb = c.cb
            if cb is not None:
                c.cb = None
                cb(_Expired())
        if self._busy:
            self._sweep_at = min(self._busy.values())
            self._sweep = loop.call_at(self._sweep_at, self._expire_busy)

    def close(self):
        for pool in self._idle.values():
            for c, _ in pool:
                c._fail("client closed")
        self._idle.clear()

    def stats(self):
        return dict(self.counts, idle=sum(len(p) for p in self._idle.values()))


__all__ = ["CallClient"]
