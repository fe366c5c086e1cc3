"""rqlite's data API: /db/execute, /db/query, /db/request, /db/backup, /db/load, /boot.

Handlers are thin: parse once (params.py), one call into the SQL backend (forwarded to
the leader when needed, forward.py), render (wire.py).
"""
import asyncio
import codecs
import os
import tempfile
import zlib
from time import perf_counter

from sanic import Blueprint
from sanic.response import HTTPResponse

from raftsqlite import errors
from raftsqlite.http import forward as fwd
from raftsqlite.http import wire
from raftsqlite.http.params import REQUEST_ID_HEADER, QueryParams, request_statements

SQLITE_MAGIC = b"SQLite format 3\x00"
CHUNK = 1 << 20


def resolve_level(ctx, level):
    """``auto``: a read replica reads locally (``none``), a voter at ``weak`` (rqlite)."""
    if level == "auto":
        return "weak" if ctx.is_voter() else "none"
    return level


def _render(p, result, started, query_family=False):
    body = wire.rqlite_body(result, p, started=started, now=perf_counter(),
                            query_family=query_family)
    return wire.json_response(body, pretty=p.pretty, blob_array=p.blob_array)


async def _queued(request, p, started):
    ctx = request.app.ctx
    if not p.noleader and ctx.store.leader() is None:
        ctx.counters["leader_not_found"] += 1
        raise errors.LeaderNotFound("leader not found")
    try:
        stmts = request_statements(request, ctx.settings.max_statements)
    except errors.PayloadTooLarge:
        raise
    except errors.BadRequest:
        if not (p.wait and not (request.body or b"").strip(b" \t\r\n[]")):
            raise
        stmts = []  # rqlite: an empty queued request with `wait` just waits for a flush
    check = getattr(ctx.sql, "check_queue", None)   # sharding: the other groups' leaders
    if check is not None and not p.noleader and stmts:
        await check(stmts)
    seq, fut = ctx.queue.put(stmts, p.wait)
    if fut is not None:
        timeout = p.timeout or ctx.settings.default_timeout
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise errors.QueueWaitTimeout("queue wait timeout") from None
    body = wire.queued_body(seq, p, started=started, now=perf_counter())
    return wire.json_response(body, pretty=p.pretty)


async def execute(request):
    """POST /db/execute. Also served by the HTTP fast lane (fastpath.py), which passes a
    ``FastRequest``: read only ``app``, ``method``, ``path``, ``query_string``,
    ``headers.get`` and ``body`` here."""
    started = perf_counter()
    ctx = request.app.ctx
    p = QueryParams(request.query_string)
    ctx.counters["executions"] += 1
    if p.queue:
        return await _queued(request, p, started)
    p.set_request_id(request.headers.get(REQUEST_ID_HEADER))
    stmts = request_statements(request, ctx.settings.max_statements, bulk=True)
    # _render writes a proven bulk run from its first rowid: the store need not build
    # its 1000 result dicts (with timings or associative each result is read)
    p.lazy_results = not (p.timings or p.associative)
    try:    # fwd.on_leader, spelled out on the two hottest routes
        res = await ctx.sql.execute(stmts, p)
    except errors.NotLeader as e:
        return await fwd.forward(request, p, e)
    return _render(p, res, started)


async def query(request):
    """GET|POST /db/query. Also served by the HTTP fast lane (as ``execute``)."""
    started = perf_counter()
    ctx = request.app.ctx
    p = QueryParams(request.query_string)
    ctx.counters["queries"] += 1
    stmts = request_statements(request, ctx.settings.max_statements, allow_q=True, q=p.q)
    level = resolve_level(ctx, p.level)
    try:
        res = await ctx.sql.query(stmts, p, level)
    except errors.NotLeader as e:
        return await fwd.forward(request, p, e)
    return _render(p, res, started, query_family=True)


def blueprint():
    bp = Blueprint("rqlite")
    bp.post("/db/execute")(execute)
    bp.route("/db/query", methods=["GET", "POST"])(query)

    @bp.post("/db/request")
    async def request_(request):
        started = perf_counter()
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        ctx.counters["requests"] += 1
        p.set_request_id(request.headers.get(REQUEST_ID_HEADER))
        stmts = request_statements(request, ctx.settings.max_statements)
        level = resolve_level(ctx, p.level)
        res = await fwd.on_leader(request, p, lambda: ctx.sql.request(stmts, p, level))
        if isinstance(res, HTTPResponse):
            return res
        return _render(p, res, started)

    @bp.get("/db/backup")
    async def backup(request):
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        ctx.counters["backups"] += 1
        if not p.noleader and not ctx.store.is_leader():
            return await _relay_stream(request, p)
        # A sharded database: the rows of its registered tables are on the shard groups
        # (sharding/backup.py assembles them); None means this node's own copy is all.
        seam = getattr(ctx.sql, "backup", None)
        path = await seam(p, ctx.spool_dir()) if seam is not None else None
        try:
            if path is None:
                fd, path = tempfile.mkstemp(prefix=".backup-", dir=ctx.spool_dir())
                os.close(fd)
                try:
                    await ctx.store.backup(path, fmt=p.fmt, tables=p.tables)
                except errors.NotLeader as e:
                    os.unlink(path)
                    return await _relay_stream(request, p, e)
            ctype = "application/sql" if p.fmt == "sql" else "application/octet-stream"
            headers = {}
            if p.compress:
                headers["Content-Encoding"] = "gzip"
            resp = await request.respond(content_type=ctype, headers=headers)
            await _send_file(resp, path, p.compress)
            await resp.eof()
            return None
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    @bp.post("/db/load", stream=True)
    async def load(request):
        return await _load(request, boot=False)

    @bp.post("/boot", stream=True)
    async def boot(request):
        """rqlite's boot: seed a single-node cluster from a SQLite file. Ours is the same
        streamed load through the log (no faster path is needed to stay safe), so only the
        two rules differ: one voter, a SQLite file."""
        return await _load(request, boot=True)

    async def _load(request, boot):
        started = perf_counter()
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        ctx.counters["boots" if boot else "loads"] += 1
        if boot and sum(1 for m in ctx.store.members() if m.voter) > 1:
            raise errors.BadRequest("boot seeds a single-node cluster only; this one has "
                                    "several voters: send the file to /db/load instead")
        # Streaming lifts Sanic's limit; ours for loads is separate and much larger.
        request.stream.request_max_size = ctx.settings.max_load_bytes
        if p.redirect and not ctx.store.is_leader():
            # Say where to send it before the client uploads a large body to us.
            _, ready = fwd.forward_target(request, p, None)
            return ready
        fd, path = tempfile.mkstemp(prefix=".load-", dir=ctx.spool_dir())
        try:
            spool_fd, fd = fd, None  # _spool owns (and closes) it from here
            head = await _spool(request, spool_fd)
            if not head:
                raise errors.BadRequest("no data: send a SQLite database file or a SQL dump")
            if head.startswith(SQLITE_MAGIC):
                fmt = "sqlite"
            elif boot:
                raise errors.BadRequest("boot takes a SQLite database file; send a SQL dump "
                                        "to /db/load")
            elif head[:2] == b"\x1f\x8b":
                raise errors.BadRequest("compressed load data is not supported: "
                                        "send the SQLite file or SQL dump uncompressed")
            else:
                fmt = "sql"
            try:
                # A sharded database: registered tables' rows go to their shards
                # (sharding/load.py); None means the plain load is the whole answer.
                seam = getattr(ctx.sql, "load", None)
                res = await seam(path, fmt, p, ctx.spool_dir()) if seam is not None else None
                if res is None:
                    res = await ctx.store.load(path, fmt=fmt)
            except errors.NotLeader as e:
                return await _forward_file(request, p, e, path)
            if isinstance(res, dict) and "sharded_rows" in res:
                # a sharded load: not one transaction, so it says what went where
                body = wire.rqlite_body(res, p, started=started, now=perf_counter())
                body["sharded_rows"] = res["sharded_rows"]
                body["rows_per_group"] = res.get("rows_per_group", {})
                return wire.json_response(body, pretty=p.pretty)
            return _render(p, res if isinstance(res, dict) else {"results": []}, started)
        finally:
            if fd is not None:
                os.close(fd)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    return bp


async def _spool(request, fd):
    """Write the request body to ``fd`` off the loop, in ~1 MiB writes; returns the first
    bytes (to tell a SQLite file from a SQL dump). Never holds the body in memory. A body
    that is not a SQLite file must be a SQL dump: UTF-8 text without NUL bytes."""
    loop = asyncio.get_running_loop()
    f = os.fdopen(fd, "wb")
    head, buf, size, text_check, bad = b"", [], 0, None, None
    try:
        async for chunk in request.stream:
            if chunk is None:
                break
            if len(head) < 16:
                head += bytes(chunk[:16 - len(head)])
                if len(head) >= 16 and not head.startswith(SQLITE_MAGIC):
                    text_check = codecs.getincrementaldecoder("utf-8")()
            if bad is not None:
                continue  # drain the body so the connection stays usable, write nothing
            if text_check is not None:
                bad = _check_text(text_check, chunk)
            buf.append(chunk)
            size += len(chunk)
            if size >= CHUNK:
                data, buf, size = b"".join(buf), [], 0
                await loop.run_in_executor(None, f.write, data)
        if bad is None and len(head) < 16 and not head.startswith(SQLITE_MAGIC[:len(head)]):
            short = codecs.getincrementaldecoder("utf-8")()
            bad = _check_text(short, head)
            if bad is None:
                try:
                    short.decode(b"", final=True)   # a short body cut inside a character
                except UnicodeDecodeError:
                    bad = "it ends inside a UTF-8 character"
        if bad is None and text_check is not None:
            try:
                text_check.decode(b"", final=True)
            except UnicodeDecodeError:
                bad = "it ends inside a UTF-8 character"
        if buf and bad is None:
            await loop.run_in_executor(None, f.write, b"".join(buf))
        await loop.run_in_executor(None, f.flush)
    finally:
        f.close()
    if bad is not None and not head.startswith(b"\x1f\x8b"):
        raise errors.BadRequest(f"load data is neither a SQLite database file nor a SQL "
                                f"dump: {bad}")
    return head


def _check_text(decoder, chunk):
    if b"\x00" in chunk:
        return "it contains NUL bytes"
    try:
        decoder.decode(bytes(chunk))
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    return None


async def _send_file(resp, path, compress):
    loop = asyncio.get_running_loop()
    z = zlib.compressobj(6, zlib.DEFLATED, 31) if compress else None

    def read_chunk(f):
        data = f.read(CHUNK)
        if z is None:
            return data, bool(data)
        if not data:
            return z.flush(), False
        return z.compress(data), True

    with open(path, "rb") as f:
        more = True
        while more:
            data, more = await loop.run_in_executor(None, read_chunk, f)
            if data:
                await resp.send(data)


async def _relay_stream(request, p, exc=None):
    """Backups on a follower come from the leader (unless ``noleader``): relay its stream."""
    ctx = request.app.ctx
    addr, ready = fwd.forward_target(request, p, exc)
    if ready is not None:
        return ready
    qs = request.query_string
    status, headers, chunks = await ctx.client.stream(
        "GET", addr, request.path + (("?" + qs) if qs else ""),
        headers=fwd.forward_headers(request), timeout=p.timeout or ctx.settings.default_timeout)
    keep = {k: v for k, v in headers.items()
            if k.lower() in ("content-type", "content-encoding")}
    keep[fwd.SERVED_BY] = addr
    resp = await request.respond(status=status, headers=keep)
    try:
        async for chunk in chunks:
            await resp.send(chunk)
    finally:
        await chunks.aclose()
    await resp.eof()
    return None


async def _forward_file(request, p, exc, path):
    ctx = request.app.ctx
    addr, ready = fwd.forward_target(request, p, exc)
    if ready is not None:
        return ready
    qs = request.query_string
    ctx.counters["forwarded"] += 1
    with open(path, "rb") as f:
        r = await ctx.client.request(
            "POST", addr, request.path + (("?" + qs) if qs else ""), body=f,
            headers=fwd.forward_headers(request),
            timeout=p.timeout or ctx.settings.default_timeout)
    return HTTPResponse(r.body, status=r.status, headers={
        "Content-Type": r.headers.get("Content-Type", wire.JSON_CT), fwd.SERVED_BY: addr})

