"""Cluster endpoints: /nodes, /leader, /readyz, /status, /remove, /snapshot, and the seed's
/join. Shapes follow rqlite (``http/nodes.go``, ``handleStatus``, ``handleReadyz``)."""
import asyncio
import os
import platform
import socket
import sys
import time
from time import perf_counter

from sanic import Blueprint
from sanic.response import HTTPResponse

import raftsqlite
from raftsqlite import errors
from raftsqlite.client import base_url
from raftsqlite.http import forward as fwd
from raftsqlite.http import wire
from raftsqlite.http.params import QueryParams, parse_join, parse_leader_post, parse_remove

VERSION = f"raftsqlite-{raftsqlite.__version__}"

#: The rqlite /status keys clients and tools read; the store's status() supplies them.
REQUIRED_STATUS_KEYS = (
    "store.raft.state", "store.raft.voter", "store.raft.commit_index",
    "store.raft.applied_index", "store.raft.last_log_index", "store.raft.last_snapshot_index",
    "store.leader.node_id", "store.leader.addr", "store.fsm_index", "store.db_applied_index",
    "store.sqlite3.path",
)


def go_duration(seconds):
    """Go's ``time.Duration.String()`` for the ``time_s`` fields."""
    if seconds < 1e-6:
        return f"{round(seconds * 1e9)}ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3f}".rstrip("0").rstrip(".") + "µs"
    if seconds < 1:
        return f"{seconds * 1e3:.6f}".rstrip("0").rstrip(".") + "ms"
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


async def _probe(ctx, member, timeout):
    """Is the member's HTTP API answering? -> (reachable, seconds, error)."""
    start = perf_counter()
    if member.node_id == ctx.node_id():
        return True, perf_counter() - start, None
    if not member.http_addr:
        return False, None, "no HTTP address known"
    try:
        r = await ctx.client.request("GET", member.http_addr, "/readyz?noleader",
                                     timeout=timeout)
    except errors.RaftSQLiteError as e:
        return False, None, str(e)
    if r.status != 200:
        return False, None, f"status {r.status}"
    return True, perf_counter() - start, None


async def _node_docs(ctx, members, p):
    leader = ctx.store.leader()
    leader_id = leader.node_id if leader is not None else None
    timeout = p.timeout or ctx.settings.nodes_probe_timeout
    probes = await asyncio.gather(*(_probe(ctx, m, timeout) for m in members))
    docs = []
    for m, (reachable, t, err) in zip(members, probes):
        d = {"id": m.node_id}
        if m.http_addr:
            d["api_addr"] = base_url(m.http_addr)
        if m.raft_addr:
            d["addr"] = m.raft_addr
        d["version"] = VERSION if reachable else ""
        d["voter"] = bool(m.voter)
        d["reachable"] = reachable
        d["leader"] = reachable and m.node_id == leader_id
        if t:
            d["time"] = t
            d["time_s"] = go_duration(t)
        if err:
            d["error"] = err
        docs.append(d)
    return docs


def _subkey(doc, key):
    """rqlite's ``?key=a.b.c``: walk into the document; a missing key gives ``{}``."""
    for k in key.split("."):
        if isinstance(doc, dict):
            if k not in doc:
                return {}
            doc = doc[k]
        else:
            return doc
    return doc


def status_doc(ctx):
    store_status = dict(ctx.store.status() or {})
    now = time.time()
    doc = {
        "os": {"pid": os.getpid(), "ppid": os.getppid(), "hostname": socket.gethostname(),
               "executable": sys.executable},
        "runtime": {"python": platform.python_version(),
                    "implementation": platform.python_implementation(),
                    "platform": sys.platform, "num_cpu": os.cpu_count(),
                    "version": VERSION},
        "store": store_status,
        "http": ctx.stats(),
        "node": {"start_time": ctx.started_wall, "current_time": now,
                 "uptime": go_duration(now - ctx.started_wall)},
    }
    node_stats = ctx.node_stats()
    for k, v in node_stats.items():
        if k in doc and isinstance(doc[k], dict) and isinstance(v, dict):
            merged = dict(v)
            merged.update(doc[k])  # the rqlite-shaped keys win
            doc[k] = merged
        else:
            doc.setdefault(k, v)
    return doc


def blueprint():
    bp = Blueprint("cluster")

    @bp.get("/nodes")
    async def nodes(request):
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        members = sorted(ctx.store.members(), key=lambda m: m.node_id)
        if not p.nonvoters:
            members = [m for m in members if m.voter]
        docs = await _node_docs(ctx, members, p)
        body = {"nodes": docs} if p.ver == "2" else {d["id"]: d for d in docs}
        return wire.json_response(body, pretty=p.pretty)

    @bp.get("/leader")
    async def leader_get(request):
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        m = ctx.store.leader()
        if m is None:
            raise errors.LeaderNotFound("leader not found")
        (doc,) = await _node_docs(ctx, [m], p)
        return wire.json_response(doc, pretty=p.pretty)

    @bp.post("/leader")
    async def leader_post(request):
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        to = parse_leader_post(request.body)
        res = await fwd.on_leader(request, p, lambda: ctx.store.transfer_leadership(to=to))
        if isinstance(res, HTTPResponse):
            return res
        return HTTPResponse(b"", status=200)

    @bp.get("/readyz")
    async def readyz(request):
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        ctx.counters["readyz"] += 1
        if p.noleader:
            return _text(200, "[+]node ok")
        removed = getattr(ctx.store, "removed", None)
        why = removed() if removed is not None else None
        if why:
            return _text(503, f"[+]node ok\n[+]removed from the cluster: {why}")
        disk = getattr(ctx.store, "disk_error", None)
        why = disk() if disk is not None else None
        if why:
            return _text(503, f"[+]node ok\n[+]disk error: {why}")
        if ctx.store.leader() is None:
            return _text(503, "[+]node ok\n[+]leader does not exist")
        wait = getattr(ctx.store, "wait_ready", None)
        if not (await wait(min(p.timeout or 1.0, ctx.settings.default_timeout))
                if wait is not None else ctx.store.ready()):
            return _text(503, "[+]node ok\n[+]leader ok\n[+]store not ready")
        msg = "[+]node ok\n[+]leader ok\n[+]store ok"
        if p.sync:
            sync = getattr(ctx.store, "wait_synced", None)
            try:
                if sync is not None:
                    await sync(timeout=p.timeout or ctx.settings.default_timeout)
            except errors.RaftSQLiteError as e:
                return _text(503, msg + f"\n[+]sync {e}")
            msg += "\n[+]sync ok"
        return _text(200, msg)

    @bp.get("/status")
    async def status(request):
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        doc = status_doc(ctx)
        if p.key:
            doc = _subkey(doc, p.key)
        return wire.json_response(doc, pretty=p.pretty)

    @bp.delete("/remove")
    async def remove(request):
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        node_id = parse_remove(request.body)
        try:
            res = await fwd.on_leader(request, p, lambda: ctx.store.remove(node_id))
        except errors.NotFound as e:
            # sharded: a member of another group is removed through that group
            from raftsqlite.sharding.members import elsewhere
            raise elsewhere(getattr(ctx.node, "sharding", None), node_id) or e from None
        if isinstance(res, HTTPResponse):
            return res
        return HTTPResponse(b"", status=200)

    @bp.post("/snapshot")
    async def snapshot(request):
        ctx = request.app.ctx
        res = await ctx.store.snapshot()
        # rqlite answers 204 when there was nothing new to snapshot.
        return HTTPResponse(b"", status=204 if res is False else 200)

    @bp.post("/join")
    async def join(request):
        ctx = request.app.ctx
        p = QueryParams(request.query_string)
        node_id, raft_addr, http_addr, voter = parse_join(request.body)
        # -fk / -extensions-path must match the group's (group_settings.py): refused here,
        # on any member (they all have the group's), before the leader adds it
        from raftsqlite.group_settings import HEADER, check_joiner
        check_joiner(getattr(ctx.node, "group_settings", None), request.headers.get(HEADER))
        # ``fresh``: the joiner's data dir is empty (a wiped member comes back)
        kw = {"fresh": True} if p.raw.get("fresh") in ("", "true", "1") else {}
        res = await fwd.on_leader(
            request, p, lambda: ctx.store.join(node_id, raft_addr, http_addr, voter=voter, **kw))
        if isinstance(res, HTTPResponse):
            return res
        return wire.json_response({"node_id": node_id, "raft_addr": raft_addr,
                                   "http_addr": http_addr, "voter": voter})

    return bp


def _text(status, msg):
    return HTTPResponse(msg.encode(), status=status, content_type="text/plain; charset=utf-8")
