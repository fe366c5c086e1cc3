"""``create_app(node)``: the Sanic application for one node.

Per-app state lives on ``app.ctx`` (an ``AppContext``), never in module globals, so tests
build many apps in one process. Lifecycle listeners create the pooled HTTP client and the
queued-write flusher on the serving loop (uvloop when the node runs it), and close them on
stop; with ``manage_node=True`` they also start and stop the node itself.

Every exception a handler raises ends in ``_on_error``, which uses wire.py's single
mapping, so every route answers errors in the one JSON shape.
"""
import asyncio
import collections
import itertools
import logging
import os
import tempfile
import time

from sanic import Sanic
from sanic.exceptions import SanicException
from sanic.signals import RESERVED_NAMESPACES, SignalRouter
from sanic_routing.exceptions import NotFound as _NoSignal

from raftsqlite import errors
from raftsqlite.client import Client
from raftsqlite.http import cluster, metrics, rqlite, seed, wire
from raftsqlite.http.auth import AppAuth
from raftsqlite.http.cors import Cors
from raftsqlite.http.fastpath import CorsFastHttpProtocol, FastHttpProtocol, \
    routes as fast_routes
from raftsqlite.http.backend import HTTPConfig, StoreSQL
from raftsqlite.http.queue import WriteQueue

log = logging.getLogger("raftsqlite.http")
_app_ids = itertools.count(1)

_SANIC_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                408: "timeout", 413: "payload_too_large", 416: "bad_request",
                417: "bad_request", 503: "unavailable"}


class QuietSignalRouter(SignalRouter):
    """Sanic dispatches about nine lifecycle signals per request. With no handler for
    them, each dispatch raises and catches a NotFound (and a non-inline one also spawns a
    task): a quarter of a point read's CPU time. Once the routes are final, remember which
    built-in events have no handler and skip them. Behaviour is unchanged: with no
    handler those dispatches did nothing."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._no_handler = set()

    def add(self, *a, **kw):
        self._no_handler.clear()
        return super().add(*a, **kw)

    def finalize(self, *a, **kw):
        self._no_handler.clear()
        return super().finalize(*a, **kw)

    async def dispatch(self, event, *, context=None, condition=None, fail_not_found=True,
                       inline=False, reverse=False):
        if condition is None and type(event) is str and self.finalized:
            if event not in self._no_handler and \
                    event.split(".", 1)[0] in RESERVED_NAMESPACES and "." in event:
                try:
                    self.get(event)
                except _NoSignal:
                    self._no_handler.add(event)
            if event in self._no_handler:
                if inline:
                    return None
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(None)
                return fut
        return await super().dispatch(event, context=context, condition=condition,
                                      fail_not_found=fail_not_found, inline=inline,
                                      reverse=reverse)


class AppContext:
    """Everything a handler may need, built once per app."""

    def __init__(self, node, settings):
        self.node = node
        self.store = node.store
        self.settings = settings
        self.sql = getattr(node, "sql_backend", None) or StoreSQL(node.store)
        self.client = None
        self.queue = WriteQueue(self, capacity=settings.queue_capacity,
                                batch=settings.queue_batch, interval=settings.queue_interval,
                                tx=settings.queue_tx)
        self.counters = collections.Counter()
        # Routes the HTTP fast lane serves without Sanic's request machinery (fastpath.py)
        fast = [("POST", "/db/execute", rqlite.execute), ("GET", "/db/query", rqlite.query),
                ("POST", "/db/query", rqlite.query), ("POST", "/execute", seed.execute),
                ("GET", "/query", seed.query)]
        # -auth (auth.py): None when off, so nothing below costs anything then. The fast
        # lane's handlers are wrapped to check credentials as Sanic's middleware does.
        creds = getattr(node, "auth", None)
        self.auth = AppAuth(creds) if creds is not None else None
        #: Authorization this node sends on its own calls (-join-as), or None
        self.identity = getattr(node, "identity_header", None)
        self.fast_routes = fast_routes(*fast)
        if self.auth is not None:
            self.fast_routes = self.auth.fast_routes(self.fast_routes)
        # -http-allow-origin (cors.py): None when off, and then nothing of it runs
        self.cors = Cors(settings.allow_origin, self.auth is not None) \
            if settings.allow_origin else None
        self.started_wall = time.time()
        self.bind_addr = None

    def node_id(self):
        cfg = getattr(self.node, "config", None)
        return getattr(cfg, "node_id", None) or getattr(self.store, "node_id", None)

    def is_voter(self):
        cfg = getattr(self.node, "config", None)
        return bool(getattr(cfg, "voter", True))

    def node_stats(self):
        fn = getattr(self.node, "stats", None)
        if fn is None:
            return {}
        try:
            return fn() or {}
        except Exception as e:  # status must answer even when a component cannot
            return {"stats_error": str(e)}

    def spool_dir(self):
        d = self.settings.spool_dir or tempfile.gettempdir()
        os.makedirs(d, exist_ok=True)
        return d

    def clean_spool(self):
        """Spool files left by a process killed mid-load or mid-backup. Only our own
        prefixes, and only in the node's own spool dir (never the shared temp dir)."""
        if not self.settings.spool_dir or not os.path.isdir(self.settings.spool_dir):
            return 0
        n = 0
        for name in os.listdir(self.settings.spool_dir):
            if name.startswith((".load-", ".backup-")):
                try:
                    os.unlink(os.path.join(self.settings.spool_dir, name))
                    n += 1
                except OSError:
                    pass
        return n

    def stats(self):
        return {
            "bind_addr": self.bind_addr,
            "counters": dict(self.counters),
            "queue": self.queue.stats(),
            "client": self.client.stats() if self.client is not None else {},
            **({"auth": self.auth.stats()} if self.auth is not None else {}),
            **(self.cors.stats() if self.cors is not None else {}),
            "limits": {"max_body_bytes": self.settings.max_body_bytes,
                       "max_statements": self.settings.max_statements},
        }


def create_app(node, *, name=None, manage_node=False, settings=None):
    """The HTTP API of ``node`` (an object with ``store``, ``config`` and ``stats()``)."""
    settings = settings or HTTPConfig.from_node_config(getattr(node, "config", None))
    app = Sanic(name or f"raftsqlite-{os.getpid()}-{next(_app_ids)}",
                ctx=AppContext(node, settings), configure_logging=False,
                signal_router=QuietSignalRouter())
    app.config.update({
        "REQUEST_MAX_SIZE": settings.max_body_bytes,
        "KEEP_ALIVE_TIMEOUT": settings.keep_alive_timeout,
        # Backups and loads of large databases take long; the per-request `timeout`
        # flag bounds the SQL work itself.
        "REQUEST_TIMEOUT": 60,
        "RESPONSE_TIMEOUT": 3600,
        "ACCESS_LOG": False,
        "MOTD": False,
        "NOISY_EXCEPTIONS": False,
        "FALLBACK_ERROR_FORMAT": "json",
        "TOUCHUP": False,
        "AUTO_EXTEND": False,
    })
    app.blueprint(rqlite.blueprint())
    app.blueprint(seed.blueprint())
    app.blueprint(cluster.blueprint())
    app.blueprint(metrics.blueprint())      # GET /metrics, GET /debug/vars
    # Other layers add their own API families (the sharding router's /table/*, /shards)
    # without this module importing them: node.http_blueprints holds Blueprints or
    # zero-argument factories returning one.
    for bp in getattr(node, "http_blueprints", None) or ():
        app.blueprint(bp() if callable(bp) and not hasattr(bp, "routes") else bp)
    # Sanic's GET routes leave a body unread and then log ERROR "body not consumed" for
    # every GET that carries one (clients do send them); read it like any other body
    # (bounded by REQUEST_MAX_SIZE) and ignore it.
    for route in app.router.routes:
        route.extra.ignore_body = False
    if app.ctx.auth is not None:
        app.on_request(app.ctx.auth.check_request)
    if app.ctx.cors is not None:
        app.on_response(app.ctx.cors.on_response)
    app.exception(Exception)(_on_error)
    app.exception(asyncio.CancelledError)(_on_cancelled)

    @app.before_server_start
    async def _start(app):
        ctx = app.ctx
        tls = getattr(getattr(node, "config", None), "tls", None)
        ctx.client = Client(timeout=settings.default_timeout, auth=ctx.identity,
                            **(tls.client_kw() if tls is not None else {}))
        ctx.clean_spool()
        ctx.queue.start()
        if manage_node:
            await node.start()

    @app.after_server_start
    async def _bound(app):
        try:
            sock = app.state.server_info[0].server.server.sockets[0]
            app.ctx.bind_addr = "%s:%d" % sock.getsockname()[:2]
        except Exception:
            pass

    @app.before_server_stop
    async def _stop(app):
        ctx = app.ctx
        await ctx.queue.stop()
        if manage_node:
            await node.stop()
        if ctx.client is not None:
            await ctx.client.close()

    return app


async def _on_error(request, exc):
    """The one exception -> response mapping (see wire.STATUS)."""
    ctx = request.app.ctx
    if ctx.cors is not None and request.method == "OPTIONS" \
            and getattr(exc, "status_code", 0) in (404, 405):
        # no route takes OPTIONS: a CORS preflight, answered as rqlite does (cors.py)
        return ctx.cors.preflight()
    if isinstance(exc, errors.RaftSQLiteError):
        resp = wire.exception_response(exc)
        ctx.counters[f"status_{resp.status}"] += 1
        return resp
    if isinstance(exc, SanicException):
        status = getattr(exc, "status_code", 500) or 500
        msg = str(exc) or _SANIC_CODES.get(status, "error")
        if status == 413 and "header" in msg.lower():
            # Not the body: a head bigger than Sanic's HEADER_MAX_SIZE (the body limit
            # below was named here, a wrong answer for a 12-byte body; found by the fuzzer).
            limit = request.app.config.REQUEST_MAX_HEADER_SIZE
            msg = (f"request head too large: the limit is {limit} bytes of request line "
                   "and headers")
        elif status == 413:
            limit = (ctx.settings.max_load_bytes if request.path in ("/db/load", "/boot")
                     else ctx.settings.max_body_bytes)
            msg = f"request body too large: the limit is {limit} bytes"
        ctx.counters[f"status_{status}"] += 1
        headers = getattr(exc, "headers", None) or None
        return wire.error_response(status, msg, _SANIC_CODES.get(status, "error"), headers)
    disk = _disk_error(exc)
    if disk is not None:
        # A full or failing disk (spooling a load, writing a backup): 507 / 503, named
        resp = wire.exception_response(disk)
        ctx.counters[f"status_{resp.status}"] += 1
        return resp
    # A bug: say so honestly (500), log it, keep serving.
    log.exception("unhandled error on %s %s", request.method, request.path)
    ctx.counters["status_500"] += 1
    return wire.error_response(500, f"internal error: {type(exc).__name__}: {exc}",
                               "internal")


def _disk_error(exc):
    from raftsqlite.raft.diskerr import classify
    d = classify(exc)
    if d is None or d is exc:
        return d
    where = getattr(exc, "filename", None)
    return type(d)(f"{d}" + (f" writing {where}" if where else "")
                   + "; free space on that disk")


async def _on_cancelled(request, exc):
    """A handler cancelled under us: the server is stopping (or the client left). Not a
    bug, so no traceback: answer 503 if anyone is still listening."""
    request.app.ctx.counters["cancelled"] += 1
    return wire.error_response(503, "request cancelled: the node is shutting down",
                               "unavailable")


async def start_server(app, host, port, *, backlog=1024, ssl=None):
    """Serve ``app`` on the running loop (the node's); returns a handle for
    ``stop_server``. Runs the app's lifecycle listeners. ``ssl``: an ``ssl.SSLContext``
    to serve HTTPS (the fast lane works the same: it sees decrypted bytes)."""
    srv = await app.create_server(host=host, port=port, backlog=backlog,
                                  return_asyncio_server=True, access_log=False,
                                  protocol=FastHttpProtocol if app.ctx.cors is None
                                  else CorsFastHttpProtocol, ssl=ssl)
    await srv.startup()
    await srv.before_start()
    await srv.after_start()
    return srv


async def stop_server(srv):
    await srv.before_stop()
    srv.close()
    await srv.wait_closed()
    await srv.after_stop()


def run(node, host, port):
    """Standalone: run the app (and the node) on uvloop until interrupted."""
    import uvloop

    async def main():
        app = create_app(node, manage_node=True)
        srv = await start_server(app, host, port)
        try:
            await srv.serve_forever()
        finally:
            await stop_server(srv)

    uvloop.run(main())
