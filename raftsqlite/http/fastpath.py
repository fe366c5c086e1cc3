"""A lean lane through the HTTP server for the single-request SQL endpoints.

Sanic spends about 30 µs of CPU per request around a handler (Python-level header
parsing, a ``Request`` object, routing, lifecycle signals, response formatting), against
about 14 µs for the whole of a bare uvloop protocol that parses the same request. On a
write-heavy leader that was about a third of its CPU per request, and half of a point
read's. ``FastHttpProtocol`` (Sanic's protocol, subclassed) looks at each request that
arrives on an idle keep-alive connection: when it is a complete, plain request to one of
the routes in ``app.ctx.fast_routes`` (``POST /db/execute``, ``GET|POST /db/query``,
``POST /execute``, ``GET /query``), it calls the *same* handler function with a small
request object and writes the response itself; anything else (another route or method,
a partial or pipelined request, chunked bodies, ``Expect``, ``Connection: close``, an
oversized body, HTTP/1.0, a non-ASCII URL or header block, a connection Sanic is busy
with) goes to Sanic untouched. Handlers, error mapping (``app._on_error``) and
forwarding are shared, and headers are read as Sanic reads them, so the answers are the
same bytes Sanic would send (tests/api/test_fastpath.py compares them).
"""
from time import monotonic, perf_counter

from sanic.exceptions import RequestTimeout
from sanic.headers import format_http1_response
from sanic.helpers import STATUS_CODES
from sanic.http import Stage
from sanic.response import HTTPResponse
from sanic.server.protocols.http_protocol import HttpProtocol

from raftsqlite.http.metrics import http_metrics
from raftsqlite.http.wire import JSON_CT
from raftsqlite.raft import trace

_MAX_HEADER = 8192
# While a request of ours runs, Sanic's keep-alive timer must not close the connection
# it believes idle: its clock is pushed past any write timeout, and reset after.
_FAR = 10 ** 9
_dget = dict.get
# Sanic's status lines (sanic.headers builds the same table for format_http1_response)
_STATUSLINES = [b"HTTP/1.1 %d %b\r\n" % (status, STATUS_CODES.get(status, b"UNKNOWN"))
                for status in range(1000)]
_JSON_TAIL = (b"\r\nconnection: keep-alive\r\nalt-svc: \r\ncontent-type: "
              + JSON_CT.encode("ascii") + b"\r\n\r\n")


def routes(*pairs):
    """``routes(("POST", "/db/execute", handler), ...)`` -> the table the protocol reads."""
    return {(m.encode(), p.encode()): h for m, p, h in pairs}


class _Headers(dict):
    """Lower-case header names -> left-stripped str values, the first of each name;
    ``get`` as on Sanic's headers."""
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
    nl = data.find(b"\r\n", sp, _MAX_HEADER)
    if nl < 0 or data[nl - 9:nl] != b" HTTP/1.1":
        return None
    target = data[sp + 1:nl - 9]
    if not target.isascii():
        return None     # Sanic answers 400 to a non-ASCII URL
    q = target.find(b"?")
    path, query = (target, b"") if q < 0 else (target[:q], target[q + 1:])
    method = data[:sp]
    handler = routes.get((method, path))
    if handler is None or b"#" in query:
        return None
    end = data.find(b"\r\n\r\n", nl, _MAX_HEADER)
    if end <= nl:
        return None
    block = data[nl + 2:end]
    if not block.isascii():
        return None     # Sanic decodes it with surrogateescape: leave that to it
    # Keys are the exact lower-cased names, as Sanic keys them (not stripped: a name
    # with white space is some other header to both), values left-stripped as Sanic's.
    hdrs = _Headers()
    for h in block.decode("ascii").split("\r\n"):
        name, c, value = h.partition(":")
        if not c or not name:
            return None
        name = name.lower()
        if name not in hdrs:
            hdrs[name] = value.lstrip()
        elif name == "content-length":
            return None
    if "transfer-encoding" in hdrs or "expect" in hdrs or "upgrade" in hdrs:
        return None
    conn = _dget(hdrs, "connection")
    if conn is not None and conn.lower() != "keep-alive":
        return None
    length = _dget(hdrs, "content-length")
    if length is None:
        # A GET carries no body; a POST without Content-Length is Sanic's to judge.
        if method != b"GET":
            return None
        length = 0
    elif length.isdigit():
        length = int(length)
    else:
        return None
    if length > max_body or end + 4 + length != len(data):
        return None
    return handler, method.decode(), path.decode(), query.decode(), hdrs, data[end + 4:]


def json_ok(body):
    """The bytes ``response_bytes`` gives for ``HTTPResponse(body, content_type=JSON_CT)``
    (status 200), without building the response object: a fast-lane handler may return
    them instead of an ``HTTPResponse``."""
    return b"%b%b%d%b%b" % (_STATUSLINES[200], b"content-length: ", len(body), _JSON_TAIL, body)


def response_bytes(res):
    """The bytes Sanic sends for ``res`` on a keep-alive HTTP/1.1 connection (its header
    order: content-length, connection, alt-svc, then the response's own headers with
    content-type last). A response with only the usual JSON content type (nearly all of
    them) is formatted here in one step; anything else goes through Sanic's own
    header processing."""
    body = res.body or b""
    headers = res.headers
    status = res.status
    if not headers and res.content_type == JSON_CT and 200 <= status < 600 \
            and status not in (204, 304):
        return b"%b%b%d%b%b" % (_STATUSLINES[status], b"content-length: ", len(body),
                                _JSON_TAIL, body)
    headers["content-length"] = len(body)
    headers["connection"] = "keep-alive"
    headers["alt-svc"] = ""   # Sanic sends it empty too: the same bytes either way
    return format_http1_response(status, res.processed_headers) + body


class FastHttpProtocol(HttpProtocol):
    """Sanic's HTTP/1.1 protocol with the fast lane in front (see the module doc)."""

    __slots__ = ("_fast_busy", "_fast_held", "_fast_waiting", "_fast_t0", "_hm", "_fast_task")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._fast_busy = False
        self._fast_held = None
        self._fast_waiting = False
        self._fast_t0 = 0.0
        self._fast_task = None
        # Request counts and latency for GET /metrics, kept by both lanes (metrics.py);
        # the fast lane's requests in flight are counted at scrape time, from here.
        self._hm = http_metrics(self.app)
        self._hm.connections = self.connections
        self.request_handler = self._sanic_request

    async def _sanic_request(self, request):
        hm = self._hm
        if not hm.on:       # nobody has asked for /metrics yet (metrics.py)
            return await self.app.handle_request(request)
        hm.inflight += 1
        t0 = perf_counter()
        try:
            await self.app.handle_request(request)
        finally:
            hm.sanic_done(request, perf_counter() - t0)

    def data_received(self, data):
        if trace.ON:
            trace.mark("h_in")
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
                # (the clock read Sanic's keep-alive timer needs also starts the
                # request's latency for /metrics)
                self._fast_t0 = t0 = monotonic()
                self._time = t0 + _FAR
                self._fast_task = self.loop.create_task(self._fast(handler, FastRequest(
                    self.app, method, path, query, headers, body, data)))
                return
        super().data_received(data)

    def connection_lost(self, exc):
        # As Sanic does with its own handler task: the client is gone, so its request
        # stops (a long read is interrupted rather than left to run to its end).
        t = self._fast_task
        if t is not None and not t.done():
            t.cancel()
        self._fast_task = None
        super().connection_lost(exc)

    def close_if_idle(self):
        # Sanic believes a connection with one of our requests in flight is idle.
        if self._fast_busy:
            return False
        return super().close_if_idle()

    async def _fast(self, handler, request):
        self.app.ctx.counters["fast_lane"] += 1
        if trace.ON:
            trace.mark("h_run")
        status = 0
        try:
            try:
                res = await handler(request)
            except Exception as exc:
                from raftsqlite.http.app import _on_error
                res = await _on_error(request, exc)
            self._write_response(res)
            status = 200 if type(res) is bytes else res.status
            if trace.ON:
                trace.mark("h_out")
        except Exception:
            # The shared handlers and error mapping always answer; if that fails, the
            # connection cannot be trusted to be in sync any more.
            self.close()
            return
        finally:
            self._fast_busy = False
            self._time = now = monotonic()
            hm = self._hm
            if hm.on:
                hm.done(request.path, status, now - self._fast_t0)
        held, self._fast_held = self._fast_held, None
        if held and self.transport is not None and not self.transport.is_closing():
            self.data_received(bytes(held))

    async def receive_more(self):
        self._fast_waiting = True
        try:
            await super().receive_more()
        finally:
            self._fast_waiting = False

    def check_timeouts(self):
        # Sanic bounds the wait for a request's head by REQUEST_TIMEOUT, but once the head
        # is in, the request is in the HANDLER stage, timed by RESPONSE_TIMEOUT (an hour,
        # for long loads and backups), even while it only waits for body bytes. So a
        # client that announced a body (or a chunked body's last CRLF) and stopped
        # sending held a connection and a task for an hour (found by the HTTP fuzzer).
        # Silence of REQUEST_TIMEOUT seconds while the request waits for the client's
        # bytes is answered 408, like a stalled head; a slow handler is not affected.
        http = getattr(self, "_http", None)
        if (self._fast_waiting and self._task is not None and http is not None
                and http.stage is Stage.HANDLER
                and monotonic() - self._time > self.request_timeout):
            http.exception = RequestTimeout(
                f"request body incomplete: no bytes arrived for {self.request_timeout:g} s")
            # Nothing more of this body is awaited after the 408: Sanic would otherwise
            # wait for the rest to drain it before closing the connection.
            http.request_body = None
            self._task.cancel()
            return
        super().check_timeouts()

    def _write_response(self, res):
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if type(res) is bytes:       # a whole answer already rendered (json_ok)
            tr.write(res)
            self.state["requests_count"] = self.state.get("requests_count", 0) + 1
            return
        if not isinstance(res, HTTPResponse):
            raise TypeError(f"handler returned {type(res).__name__}, not HTTPResponse")
        tr.write(response_bytes(res))
        self.state["requests_count"] = self.state.get("requests_count", 0) + 1
