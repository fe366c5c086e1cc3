"""HTTP endpoints of sharding (``node.http_blueprints``): the seed's ``/table/*`` API,
``GET /tables``, ``GET /shards``, ``GET /table/explain``, and the node-to-node calls
under ``/shard/`` (routed requests with their guard, SYSTEM ops, catalog long-poll).

Handlers raise ``raftsqlite.errors``; the HTTP layer's one error handler renders them.
"""
import asyncio
import base64
import logging

import orjson
from sanic import Blueprint
from sanic.response import HTTPResponse

from raftsqlite import errors
from raftsqlite.codec import decode_command
from raftsqlite.codec.model import CommandType, Statement
from raftsqlite.db import quote_ident
from raftsqlite.http import forward as fwd
from raftsqlite.http import wire
from raftsqlite.http.fastpath import FastRequest, json_ok
from raftsqlite.http.params import QueryParams
from raftsqlite.sharding import ops
from raftsqlite.sharding.catalog import DEFAULT_GROUP, MOVE_END
from raftsqlite.sharding.coalesce import outcome_doc
from raftsqlite.sharding.remove import remove_table
from raftsqlite.sharding.service import dump_requests, dump_results

log = logging.getLogger("raftsqlite.sharding.http")

_OCTET = "application/octet-stream"

try:   # #7: online rebalancing, when present, handles /table/rebalance and remove-from-shard
    from raftsqlite.sharding import rebalance_node as _REBALANCE
except ImportError:
    _REBALANCE = None


async def _elsewhere(request, rebalancer=False):
    """The catalog's admin endpoints run on the default group's leader (with
    ``rebalancer``: its coordinator). Here: None, or the ``Rebalancer``. Elsewhere: the
    answer of sending the request there (forward.py: forwarded, or 301 with
    ``redirect``). Decided before anything runs, so nothing runs twice."""
    try:
        if rebalancer:
            return _REBALANCE.coordinator(request)
        svc = _svc(request)
        if not svc.leads_default():
            raise svc.not_default_leader()
        return None
    except errors.NotLeader as e:
        p = QueryParams(request.query_string)
        if p.redirect and not _svc(request).is_default:
            # one 301, to the leader itself (not to the member last reached)
            e.leader_addr = await _svc(request).default_leader_addr() or e.leader_addr
        return await fwd.forward(request, p, e)


async def _catalog_view(svc):
    """The catalog for an operator's view, and the keys that mark it stale (none when
    it is the newest; ``CatalogCache.view`` says when it is not)."""
    cat, stale = await svc.cache.view()
    if stale is None:
        return cat, {}
    return cat, {"stale": True, "catalog_version": cat.version,
                 "stale_reason": stale + "; this is this node's cached catalog"}


def _svc(request):
    return request.app.ctx.node.sharding


def _body(request):
    try:
        b = orjson.loads(request.body or b"")
    except orjson.JSONDecodeError as e:
        raise errors.BadRequest(f"the request body must be a JSON object: {e}") from None
    if not isinstance(b, dict):
        raise errors.BadRequest("the request body must be a JSON object")
    return b


def _idempotent_ddl(sql):
    s = sql.strip()
    up = s.upper()
    for kind in ("CREATE TABLE ", "CREATE INDEX ", "CREATE UNIQUE INDEX "):
        if up.startswith(kind) and not up.startswith(kind + "IF NOT EXISTS"):
            return s[:len(kind)] + "IF NOT EXISTS " + s[len(kind):]
    return s


async def _default_read(svc, sql, params=None):
    res = await svc.executor.query(DEFAULT_GROUP, [Statement(sql, params)], level="weak")
    r = res[0]
    if r.get("error"):
        raise errors.BadRequest(r["error"])
    return r.get("values") or []


_CALL_PARAMS = {}    # query string -> its QueryParams (only read here); routers send a few


def _call_params(qs):
    p = _CALL_PARAMS.get(qs)
    if p is None:
        p = QueryParams(qs)
        if len(_CALL_PARAMS) < 64:
            _CALL_PARAMS[qs] = p
    return p


def _json_answer(request, body):
    # the fast lane writes pre-rendered bytes; Sanic wants its response object
    if type(request) is FastRequest:
        return json_ok(body)
    return HTTPResponse(body, content_type=wire.JSON_CT)


async def shard_call(request):
    """POST /shard/call: one routed request (or a coalesced batch of them) with its
    guard. Also served by the HTTP fast lane (``http/fastpath.py``; registered by
    ``blueprint``), which passes a ``FastRequest``: read only ``app``, ``method``,
    ``path``, ``query_string``, ``headers.get`` and ``body`` here."""
    ctx = request.app.ctx
    p = _call_params(request.query_string)
    kind = p.raw.get("kind", "execute")
    try:
        cmd = decode_command(request.body or b"")
    except errors.DecodeError as e:
        raise errors.BadRequest(f"undecodable routed request: {e}") from None
    batch = "batch" in p.raw
    if not cmd.requests or (len(cmd.requests) != 1 and not batch):
        raise errors.BadRequest("a routed call carries exactly one request (several "
                                "with batch=1)")
    st = ctx.store
    if kind == "query" or cmd.type == CommandType.QUERY:
        def run(rq):
            return st.query(rq.statements, level=p.level, guard=rq.guard)
    elif kind == "request":
        def run(rq):
            return st.request(rq.statements, transaction=rq.transaction, level=p.level,
                              guard=rq.guard)
    else:
        def run(rq):
            return st.execute(rq.statements, transaction=rq.transaction, guard=rq.guard,
                              request_id=rq.request_id)
    if not batch:
        res = await fwd.on_leader(request, p, lambda: run(cmd.requests[0]))
        if isinstance(res, HTTPResponse):
            return res
        return _json_answer(request, dump_results(res["results"]))
    if kind == "execute" and cmd.type != CommandType.QUERY:
        batch_fn = lambda: _execute_batch(st, cmd.requests)  # noqa: E731
    else:
        batch_fn = lambda: _run_batch(st, run, cmd.requests)  # noqa: E731
    res = await fwd.on_leader(request, p, batch_fn)
    if isinstance(res, HTTPResponse):
        return res
    return _json_answer(request, dump_requests(res))


def blueprint():
    bp = Blueprint("sharding")

    # ---- node to node ------------------------------------------------------------------
    bp.post("/shard/call")(shard_call)

    @bp.listener("before_server_start")
    async def _fast_lane(app, *_):
        # Routed calls are many and small: Sanic's per-request machinery was a large part
        # of a shard's CPU per call. The fast lane runs the same handler without it.
        routes = getattr(app.ctx, "fast_routes", None)
        if routes is not None:
            routes[(b"POST", b"/shard/call")] = shard_call

    @bp.post("/shard/system")
    async def system(request):
        b = _body(request)
        try:
            sys_ops = [(str(n), base64.b64decode(a)) for n, a in b["ops"]]
        except (KeyError, TypeError, ValueError) as e:
            raise errors.BadRequest(f"ops must be [[name, base64 args], ...]: {e}") from None
        p = QueryParams(request.query_string)
        res = await fwd.on_leader(request, p, lambda: request.app.ctx.store.system(sys_ops))
        if isinstance(res, HTTPResponse):
            return res
        return wire.json_response({"results": res["results"]})

    @bp.get("/shard/catalog")
    async def catalog(request):
        p = QueryParams(request.query_string)
        try:
            after = int(p.raw.get("after", "-1"))
            timeout = min(float(p.raw.get("poll", "0")), 10.0)
        except ValueError:
            raise errors.BadRequest("after must be an integer and poll a number of seconds") from None
        b = await _svc(request).serve_catalog(after, timeout)
        if b is None:
            return HTTPResponse(status=204)
        return HTTPResponse(b, content_type=_OCTET)

    # ---- the seed's API ------------------------------------------------------------------
    @bp.get("/tables")
    async def tables(request):
        svc = _svc(request)
        cat, stale = await _catalog_view(svc)
        return wire.json_response({"tables": cat.describe_tables(), "epoch": cat.epoch,
                                   **stale})

    @bp.get("/shards")
    async def shards(request):
        svc = _svc(request)
        cat, stale = await _catalog_view(svc)
        groups = cat.describe_groups()
        await asyncio.gather(*[_probe(svc, g) for g in groups])
        return wire.json_response({"shards": groups, **stale})

    @bp.get("/table/explain")
    async def explain(request):
        p = QueryParams(request.query_string)
        if not p.q:
            raise errors.BadRequest("give the statement as q=...")
        return wire.json_response(_svc(request).router.explain(p.q))

    @bp.post("/table/register")
    async def register(request):
        there = await _elsewhere(request)
        if there is not None:
            return there
        svc = _svc(request)
        body = _body(request)
        name = ops._field(body, "table_name").lower()
        create_sql, columns, decl = None, None, None
        rows = await _default_read(svc, "SELECT sql FROM sqlite_schema WHERE type = 'table' "
                                        "AND lower(name) = ?", [name])
        if rows:
            create_sql = rows[0][0]
            info = await _default_read(svc, "SELECT name, type FROM pragma_table_info(?)", [name])
            columns = [r[0] for r in info]
            key = ops._field(body, "shard_key")
            match = [r for r in info if r[0].lower() == key.lower()]
            if not match:
                raise errors.BadRequest(f"table {name} has no column {key!r} (columns: "
                                        f"{', '.join(columns)})")
            decl = match[0][1] or ""
            if await _default_read(svc, f"SELECT 1 FROM {quote_ident(name)} LIMIT 1"):
                raise errors.BadRequest(
                    f"table {name} already has rows in the default group; registering it "
                    "would hide them (reads would go to its shards). Nothing was changed. "
                    "What to do: register an empty table (export the rows, register, add it "
                    "to a shard, then insert them again through the router).")
        op, args = ops.register(body, decl, create_sql, columns)
        res = await svc.catalog_op(op, args)
        return wire.json_response({"registered": name, "result": res,
                                   "table": _table_doc(svc, name)})

    @bp.post("/table/add-to-shard")
    async def add_to_shard(request):
        there = await _elsewhere(request)
        if there is not None:
            return there
        svc = _svc(request)
        body = _body(request)
        op, args = ops.add_to_shard(body)
        cur = svc.cache.current()
        trial = cur.copy()
        trial.apply(op, args)           # refuse before anything changes anywhere
        a = orjson.loads(args)
        table, shard = a["table"], a["shard"]
        await _create_on(svc, shard, cur.colocation_of(table) and
                         [t for t, r in cur.tables.items()
                          if r["colocation"] == cur.tables[table]["colocation"]] or [table])
        res = await svc.catalog_op(op, args)
        late = []
        for g in cur.copy().groups:
            if g != DEFAULT_GROUP and (g == shard or g in svc.cache.current().owning_groups(table)):
                try:
                    await svc.push_ownership(g)
                except (errors.Unavailable, errors.LeaderNotFound, errors.Timeout) as e:
                    # The catalog has changed: answering an error would make a retry fail
                    # ("already on the shard"). The group's leader takes its ownership from
                    # the catalog once it has one (_follow_ownership); until then its
                    # routed calls are refused, never misplaced.
                    late.append(f"{g}: {e}")
        doc = {"table_name": table, "shard_id": shard, "result": res,
               "table": _table_doc(svc, table)}
        if late:
            doc["note"] = ("done in the catalog; not yet acknowledged by " + "; ".join(late) +
                           ". The group takes its ranges when it has a leader again; until "
                           "then its rows cannot be reached (GET /shards)")
        return wire.json_response(doc)

    @bp.post("/table/remove")
    async def remove(request):
        there = await _elsewhere(request)
        if there is not None:
            return there
        return wire.json_response(await remove_table(_svc(request), _body(request)))

    @bp.post("/table/remove-from-shard")
    async def remove_from_shard(request):
        svc = _svc(request)
        if _REBALANCE:   # #7 hook: drain the shard's ranges online, then remove it
            rb = await _elsewhere(request, rebalancer=True)
            if isinstance(rb, HTTPResponse):
                return rb
            return wire.json_response(await _REBALANCE.handle(rb, "remove", _body(request)))
        op, args = ops.remove_from_shard(_body(request))
        res = await svc.catalog_op(op, args)
        return wire.json_response({"result": res, "note": "the shard keeps its ranges until a "
                                   "rebalance moves them (data movement: issue #7)"})

    @bp.post("/table/rebalance")
    async def rebalance(request):
        svc = _svc(request)
        body = _body(request)
        if _REBALANCE:   # #7 hook: plans, dry runs and online moves live in rebalance_node
            rb = await _elsewhere(request, rebalancer=True)
            if isinstance(rb, HTTPResponse):
                return rb
            res = await _REBALANCE.handle(rb, "rebalance", body)
            if res is not None:    # None: no rows to move, switch at once below
                return wire.json_response(res)
        await svc.cache.refresh()
        cat = svc.cache.current()
        plan = ops.rebalance_plan(body, cat)
        if not plan["moves"]:
            plan["status"] = "balanced"
            return wire.json_response(plan)
        if plan["dry_run"]:
            plan["status"] = "dry_run"
            return wire.json_response(plan)
        return await _switch_empty_ranges(svc, cat, plan)

    return bp


async def _switch_empty_ranges(svc, cat, plan):
    """``/table/rebalance`` when the sources hold no rows: switch the ranges at once
    (``assign`` ops). The sources are fenced on the moving ranges first and checked
    empty with a linearizable read after the fence, so a routed write that reached a
    source between the check and its release cannot stay behind on a range it no longer
    owns (invisible to routed reads); without the fence a write could land there. The
    fence is lifted whatever happens (a released range drops it by itself)."""
    cname = plan["colocation"]
    moving = sorted(m["id"] for m in cat.moves.values()
                    if m["colocation"] == cname and m["phase"] not in MOVE_END)
    if cat.colocations[cname].get("removing"):
        raise errors.Conflict(f"table {cat.colocations[cname]['removing']['table']} is being "
                              "removed (POST /table/remove); rebalance after that ends")
    if moving:
        raise errors.Conflict(f"a move of {plan['table']} is in progress ({', '.join(moving)}); "
                              "wait for it (GET /table/rebalance/status), then rebalance again")
    sources = sorted({m["source"] for m in plan["moves"]})
    fenced = []
    try:
        for m in plan["moves"]:
            await _own_range(svc, m["source"], "own.fence", cname, m)
            fenced.append(m)
        holding = []
        for g in sources:
            for t in plan["tables"]:
                res = await svc.executor.query(g, [Statement(f"SELECT 1 FROM {quote_ident(t)} LIMIT 1")],
                                               level="linearizable")
                if res[0].get("values"):
                    holding.append(g)
                    break
        if holding:
            plan["status"] = "needs_data_movement"
            plan["note"] = (f"shard(s) {', '.join(holding)} hold rows of the ranges to move "
                            "(written just now?); nothing was changed. Rebalance again to move "
                            "them online.")
            return wire.json_response(plan)
        assigns = ops.assign_ops(plan)
        after = cat.copy()
        for n, a in assigns:
            after.apply(n, a)
        targets = sorted({m["target"] for m in plan["moves"]})
        for g in targets:               # acquire before the catalog switches
            await svc.push_ownership(g, after)
        results = await svc.system(DEFAULT_GROUP, assigns)
        errs = [r["error"] for r in results if isinstance(r, dict) and r.get("error")]
        await svc.cache.refresh()
        for g in sorted(set(plan["shards"]) | set(sources)):
            await svc.push_ownership(g)
        if errs:
            raise errors.BadRequest("rebalance not applied: " + "; ".join(errs))
    finally:
        for m in fenced:
            try:
                await _own_range(svc, m["source"], "own.unfence", cname, m)
            except errors.RaftSQLiteError as e:
                log.warning("could not lift the fence of %s on %s: %s", cname, m["source"], e)
    plan["status"] = "applied"
    plan["table"] = _table_doc(svc, plan["table"])
    return wire.json_response(plan)


async def _own_range(svc, group, name, cname, m):
    res = await svc.system(group, [(name, orjson.dumps(
        {"colocation": cname, "start": m["start"], "end": m["end"]}))])
    err = isinstance(res[0], dict) and res[0].get("error")
    if err and not (name == "own.unfence" and "holds no colocation" in err):
        raise errors.Unavailable(f"{name} on {group} failed: {err}; nothing was changed")


async def _execute_batch(st, requests):
    """The writes of a coalesced routed call, queued together (``Store.execute_many``) so
    they share one group-commit entry: one outcome per request. A follower raises
    ``NotLeader`` before queuing anything, and the call is forwarded as a whole."""
    outs = await st.execute_many(requests)
    return [outcome_doc(o) if isinstance(o, BaseException) else {"results": o["results"]}
            for o in outs]


async def _run_batch(st, run, requests):
    """Every request of a coalesced routed call, each on its own (the store's group
    commit packs them into one log entry, each isolated by its savepoint): one outcome
    per request. Only when every request found this node not leading is the call
    forwarded as a whole (nothing of it ran here)."""
    async def one(rq):
        try:
            return {"results": (await run(rq))["results"]}
        except errors.NotLeader as e:
            return e
        except errors.RaftSQLiteError as e:
            return outcome_doc(e)
    outs = await asyncio.gather(*[one(rq) for rq in requests])
    if all(isinstance(o, errors.NotLeader) for o in outs):
        raise outs[0]
    return [outcome_doc(o) if isinstance(o, BaseException) else o for o in outs]


def _table_doc(svc, name):
    for t in svc.cache.current().describe_tables():
        if t["table_name"] == name:
            return t
    return None


async def _create_on(svc, shard, tables):
    """Create the tables (and their indexes) on ``shard`` from the default group's schema,
    idempotently, before the shard takes ownership."""
    stmts = []
    for t in tables:
        rows = await _default_read(svc, "SELECT type, sql FROM sqlite_schema WHERE lower(tbl_name) = ? "
                                        "AND sql IS NOT NULL ORDER BY type = 'index'", [t])
        stmts += [Statement(_idempotent_ddl(sql)) for typ, sql in rows if typ in ("table", "index")]
    if not stmts:
        return
    res = await svc.executor.execute(shard, stmts)
    bad = [r["error"] for r in res if r.get("error") and "already exists" not in r["error"]]
    if bad:
        raise errors.BadRequest(f"could not create the table on {shard}: {'; '.join(bad)}")


async def _probe(svc, g):
    """Add leader and health to one group's description."""
    members = g["members"]

    async def one(m):
        try:
            r = await svc.client.request("GET", m["http_addr"], "/status", timeout=1.0)
            m["reachable"] = r.status == 200
            if r.status == 200:
                st = _store_doc(orjson.loads(r.body)) or {}
                m["state"] = (st.get("raft") or {}).get("state")
                m["leader_id"] = (st.get("leader") or {}).get("node_id") or None
        except errors.RaftSQLiteError:
            m["reachable"] = False
    await asyncio.gather(*[one(m) for m in members if m.get("http_addr")])
    leaders = {m.get("leader_id") for m in members if m.get("leader_id")}
    g["leader"] = leaders.pop() if len(leaders) == 1 else None
    up = sum(1 for m in members if m.get("reachable"))
    # the majority that keeps a group writable counts voters only (read replicas do not)
    voters = [m for m in members if m.get("voter", True)]
    up_voters = sum(1 for m in voters if m.get("reachable"))
    g["health"] = ("ok" if g["leader"] and up_voters > len(voters) // 2 else
                   "degraded" if up else "unreachable")


def _store_doc(d):
    """The part of /status that the store wrote (it has both "raft" and "leader")."""
    if isinstance(d, dict):
        if isinstance(d.get("raft"), dict) and isinstance(d.get("leader"), dict):
            return d
        for v in d.values():
            f = _store_doc(v)
            if f is not None:
                return f
    return None
