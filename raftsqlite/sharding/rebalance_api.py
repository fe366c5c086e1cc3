"""The rebalance routes (#7) as a Sanic blueprint the node mounts (``node.http_blueprints``):

- ``POST /table/rebalance {"table_name", "dry_run"}`` -> the plan (moves with rows and
  bytes estimated); without ``dry_run`` the moves start and their ids are in the plan.
- ``GET /table/rebalance/status[?table_name=]`` -> every move's phase, rows copied, rows
  to go, rate and time left.
- ``POST /table/rebalance/cancel {"move_id"}`` (before the fence).
- ``POST /table/remove-from-shard {"table_name", "shard_id"}`` -> drains then removes.
- ``POST /table/split {"table_name", "at"|"key"}`` and
  ``POST /table/move-range {"table_name", "start", "end", "shard_id"}``.

``get_rebalancer(request)`` returns the node's ``Rebalancer`` (on the coordinator: the
default group's leader); elsewhere it raises ``NotLeader`` and the request goes to the
coordinator through ``http/forward.py``, like a write (``redirect``, ``timeout``, hops).
"""
import orjson

from raftsqlite.errors import BadRequest, NotLeader, RaftSQLiteError
from raftsqlite.http import forward as fwd
from raftsqlite.http.params import QueryParams


def _body(request):
    try:
        b = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"the request body is not JSON: {e}") from None
    if not isinstance(b, dict):
        raise BadRequest("the request body must be a JSON object")
    return b


def _field(b, name, kind=str):
    v = b.get(name)
    if v is None or (kind is str and (not isinstance(v, str) or not v.strip())):
        raise BadRequest(f"missing or empty field {name!r}")
    return v.strip() if kind is str else v


def _json(obj, status=200):
    from sanic.response import HTTPResponse
    return HTTPResponse(orjson.dumps(obj, default=str), status=status,
                        content_type="application/json")


def _sane(o):
    """JSON cannot carry 2**64 (the keyspace end): it travels as null."""
    if isinstance(o, dict):
        return {k: _sane(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_sane(v) for v in o]
    if isinstance(o, int) and not isinstance(o, bool) and o >= 1 << 64:
        return None
    return o


def blueprint(get_rebalancer, name="rebalance", skip_owned=False):
    """``skip_owned``: leave out /table/rebalance and /table/remove-from-shard (the
    sharding blueprint owns those paths in the node and delegates to ``rebalance_node``)."""
    from sanic import Blueprint
    bp = Blueprint(name)

    async def guarded(fn, request):
        try:
            rb = get_rebalancer(request)
        except NotLeader as e:    # not the coordinator: it goes there, like a write
            return await fwd.forward(request, QueryParams(request.query_string), e)
        try:
            return _json(_sane(await fn(rb, _body(request) if request.method == "POST" else {})))
        except RaftSQLiteError as e:
            status = {"not_found": 404, "bad_request": 400}.get(getattr(e, "code", ""), 400 if isinstance(e, BadRequest) else 503)
            return _json({"error": str(e), "code": getattr(e, "code", "error")}, status)

    async def rebalance(rb, b):
        dry = b.get("dry_run", False)
        if not isinstance(dry, bool):
            raise BadRequest("dry_run must be true or false")
        return await rb.plan(_field(b, "table_name"), dry_run=dry)

    async def remove_from_shard(rb, b):
        return await rb.remove_from_shard(_field(b, "table_name"), _field(b, "shard_id"))

    async def split(rb, b):
        if b.get("at") is None and b.get("key") is None:
            raise BadRequest("give 'at' (a keyspace id) or 'key' (a shard-key value)")
        return await rb.split(_field(b, "table_name"), at=b.get("at"), key=b.get("key"))

    async def move_range(rb, b):
        start = b.get("start")
        if not isinstance(start, int) or isinstance(start, bool):
            raise BadRequest("start must be an integer keyspace id")
        return await rb.move_range(_field(b, "table_name"), start, b.get("end"), _field(b, "shard_id"))

    async def cancel(rb, b):
        return await rb.cancel(_field(b, "move_id"))

    if not skip_owned:
        @bp.post("/table/rebalance")
        async def _rebalance(request):
            return await guarded(rebalance, request)

        @bp.post("/table/remove-from-shard")
        async def _remove(request):
            return await guarded(remove_from_shard, request)

    @bp.get("/table/rebalance/status")
    async def _status(request):
        t = request.args.get("table_name")
        return await guarded(lambda rb, b: rb.status(t), request)

    @bp.post("/table/rebalance/cancel")
    async def _cancel(request):
        return await guarded(cancel, request)

    @bp.post("/table/split")
    async def _split(request):
        return await guarded(split, request)

    @bp.post("/table/move-range")
    async def _move(request):
        return await guarded(move_range, request)

    return bp
