"""The seed's own API, exactly as its README shows it:

- ``POST /execute {"query": "SQL", "args": [...]}`` -> 200 ``{"last_insert_id": N,
  "rows_affected": M}``;
- ``GET /query?q=SQL`` -> a JSON array with one object per row (column name -> value).

A failing statement is a whole-request failure here (400 with the one error shape),
because the seed's shapes have no place for a per-statement error. The sharding flags
``auto_route`` and ``shard_id`` are parsed into the params the SQL backend receives.
"""
from sanic import Blueprint
from sanic.response import HTTPResponse

from raftsqlite import errors
from raftsqlite.http import forward as fwd
from raftsqlite.http import wire
from raftsqlite.http.params import (REQUEST_ID_HEADER, QueryParams, parse_seed_execute,
                                     request_statements)
from raftsqlite.http.rqlite import resolve_level


def _first(res):
    results = res.get("results") or ()
    if not results:
        raise errors.Unavailable("the store returned no result")
    r = results[0]
    if r.get("error"):
        raise errors.SQLError(r["error"])
    return r


async def execute(request):
    """POST /execute. Also served by the HTTP fast lane (see rqlite.execute)."""
    ctx = request.app.ctx
    p = QueryParams(request.query_string)
    stmts, flags = parse_seed_execute(request.body, ctx.settings.max_statements)
    if flags:
        p.apply_form_flags(flags)
    p.set_request_id(request.headers.get(REQUEST_ID_HEADER))
    res = await fwd.on_leader(request, p, lambda: ctx.sql.execute(stmts, p))
    if isinstance(res, HTTPResponse):
        return res
    return wire.json_response(wire.seed_execute_body(_first(res)))


async def query(request):
    """GET /query. Also served by the HTTP fast lane (see rqlite.execute)."""
    ctx = request.app.ctx
    p = QueryParams(request.query_string)
    stmts = request_statements(request, ctx.settings.max_statements, allow_q=True, q=p.q)
    level = resolve_level(ctx, p.level)
    res = await fwd.on_leader(request, p, lambda: ctx.sql.query(stmts, p, level))
    if isinstance(res, HTTPResponse):
        return res
    return wire.json_response(wire.seed_rows(_first(res)))


def blueprint():
    bp = Blueprint("seed")
    bp.post("/execute")(execute)
    bp.get("/query")(query)
    return bp
