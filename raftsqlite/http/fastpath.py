"""A lean lane through the HTTP server for the single-request write endpoints.

Sanic spends about 30 µs of CPU per request around a handler (Python-level header
parsing, a ``Request`` object, routing, lifecycle signals, response formatting), against
about 14 µs for the whole of a bare uvloop protocol that parses the same request. On a
write-heavy leader that was about a third of its CPU per request. ``FastHttpProtocol``
(Sanic's protocol, subclassed) looks at each request that arrives on an idle keep-alive
connection: when it is a complete, plain ``POST`` to one of the routes in
``app.ctx.fast_routes`` (``/db/execute``, ``/execute``), it calls the *same* handler function with
a small request object and writes the response itself; anything else (another route or
method, a partial or pipelined request, chunked bodies, ``Expect``, ``Connection:
close``, an oversized body, HTTP/1.0, a connection Sanic is busy with) goes to Sanic
untouched. Handlers, error mapping (``app._on_error``) and forwarding are shared, so the
answers are the same bytes Sanic would send (tests/api/test_fastpath.py compares them).
"""
from time import monotonic

from sanic.headers import format_http1_response
from sanic.http import Stage
from sanic.response import HTTPResponse
from sanic.server.protocols.http_protocol import HttpProtocol

# Headers whose presence sends a request to Sanic (semantics we do not reimplement).
_SLOW_HEADERS = frozenset((b"transfer-encoding", b"expect", b"upgrade"))
_MAX_HEADER = 8192
# While a request of ours runs, Sanic's keep-alive timer must not close the connection
# it believes idle: its clock is pushed past any write timeout, and reset after.
_FAR = 10 ** 9


def routes(*pairs):
    """``routes(("POST", "/db/execute", handler), ...)`` -> the table the protocol reads."""
    return {(m.encode(), p.encode()): h for m, p, h in pairs}


class _Headers(dict):
    """Lower-case header names -> str values; ``get`` as on Sanic's headers."""
    __slots__ = ()

    def get(self, key, default=None):
        return dict.get(self, key.lower(), default)


class FastRequest:
    """What the fast-lane handlers and the shared helpers (params, forward, _on_error)
    read from a request."""
    __slots__ = ("app", "method", "path", "query_string", "headers", "body", "raw")

    def __init__(self, app, method, path, query_string, headers, body, raw):
        self.app = app
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.raw = raw


def _parse(data, routes, max_body):
    """-> (handler, method, path, query, headers, body) for a complete plain request that
    is the whole of ``data``; None for anything else."""
    sp = data.find(b" ", 0, 8)
    if sp < 0:
        return None
    method = data[:sp]
    end = data.find(b"\r\n\r\n", sp, _MAX_HEADER)
    if end < 0:
        return None
    nl = data.find(b"\r\n", sp)
    line = data[sp + 1:nl]
    if not line.endswith(b" HTTP/1.1"):
        return None
    target = line[:-9]
    q = target.find(b"?")
    path, query = (target, b"") if q < 0 else (target[:q], target[q + 1:])
    handler = routes.get((method, path))
    if handler is None:
        return None
    headers = _Headers()
    length = None
    for h in data[nl + 2:end].split(b"\r\n"):
        c = h.find(b":")
        if c <= 0:
            return None
        name = h[:c].strip().lower()
        value = h[c + 1:].strip()
        if name in _SLOW_HEADERS:
            return None
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"connection" and value.lower() != b"keep-alive":
            return None
        try:
            headers[name.decode("latin-1")] = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if length is None or length > max_body or end + 4 + length != len(data):
        return None
    try:
        query = query.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return handler, method.decode(), path.decode(), query, headers, data[end + 4:]


class FastHttpProtocol(HttpProtocol):
    """Sanic's HTTP/1.1 protocol with the fast lane in front (see the module doc)."""

    __slots__ = ("_fast_busy", "_fast_held")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._fast_busy = False
        self._fast_held = None

    def data_received(self, data):
        if self._fast_busy:
            # A pipelined request behind one of ours: it waits for our response, then
            # takes whichever lane fits.
            self._fast_held += data
            return
        # Sanic's side of the connection must be idle: its connection task not started
        # yet (the first request), or waiting for the next request with nothing buffered.
        http = getattr(self, "_http", None)
        if ((http.stage is Stage.IDLE if http is not None else self._task is not None)
                and not self.recv_buffer and data and self.transport is not None):
            req = _parse(data, self.app.ctx.fast_routes, self.request_max_size)
            if req is not None:
                handler, method, path, query, headers, body = req
                self._fast_busy = True
                self._fast_held = bytearray()
                self._time = monotonic() + _FAR
                self.loop.create_task(self._fast(handler, FastRequest(
                    self.app, method, path, query, headers, body, data)))
                return
        super().data_received(data)

    def close_if_idle(self):
        # Sanic believes a connection with one of our requests in flight is idle.
        if self._fast_busy:
            return False
        return super().close_if_idle()

    async def _fast(self, handler, request):
        self.app.ctx.counters["fast_lane"] += 1
        try:
            try:
                res = await handler(request)
            except Exception as exc:
                from raftsqlite.http.app import _on_error
                res = await _on_error(request, exc)
            self._write_response(res)
        except Exception:
            # The shared handlers and error mapping always answer; if that fails, the
            # connection cannot be trusted to be in sync any more.
            self.close()
            return
        finally:
            self._fast_busy = False
            self._time = monotonic()
        held, self._fast_held = self._fast_held, None
        if held and self.transport is not None and not self.transport.is_closing():
            self.data_received(bytes(held))

    def _write_response(self, res):
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if not isinstance(res, HTTPResponse):
            raise TypeError(f"handler returned {type(res).__name__}, not HTTPResponse")
        body = res.body or b""
        headers = res.headers
        headers["content-length"] = len(body)
        headers["connection"] = "keep-alive"
        headers["alt-svc"] = ""   # Sanic sends it empty too: the same bytes either way
        tr.write(format_http1_response(res.status, res.processed_headers) + body)
        self.state["requests_count"] = self.state.get("requests_count", 0) + 1
