"""Wiring of online rebalancing (#7) into a node (``attach(node)``, called by node.py).

On default-group nodes: a ``Rebalancer`` over ``NodeMoveBackend`` (the node's sharding
service), run as the coordinator while this node leads the default group (it resumes
every unfinished move from the catalog every second), and the rebalance routes. The
``/table/rebalance`` and ``/table/remove-from-shard`` handlers of ``http_api`` delegate
to ``node.rebalancer`` (see ``handle``). Every other node (a default-group follower, a
shard-group member) mounts the same routes and hands the request to the default group's
leader through ``http/forward.py`` (``redirect``, ``timeout`` and the hop limit as for
writes): ``ShardingService.not_default_leader`` names where it goes.
"""
import asyncio
import logging
import os

import orjson

from raftsqlite import errors
from raftsqlite.sharding.catalog import DEFAULT_GROUP, Catalog
from raftsqlite.sharding.rebalance import NotCoordinator, RebalanceConfig
from raftsqlite.sharding.rebalance_api import _sane
from raftsqlite.sharding.rebalance_service import Rebalancer

log = logging.getLogger("raftsqlite.rebalance")


class _LinearizableExecutor:
    """The node's group executor with reads forced to ``linearizable`` (a move must read
    what the group's leader has committed, never a stale follower), and writes refused
    once this node no longer leads the default group (a deposed coordinator must not
    write stale copies into a target; the new one resumes from the catalog)."""

    def __init__(self, ex, is_leader):
        self.ex = ex
        self.is_leader = is_leader

    async def execute(self, group, statements, *, transaction=False, guard=None):
        if not self.is_leader():
            raise NotCoordinator("this node no longer leads the default group")
        return await self.ex.execute(group, statements, transaction=transaction, guard=guard)

    async def query(self, group, statements, *, guard=None, **opts):
        return await self.ex.query(group, statements, guard=guard, level="linearizable")


class NodeMoveBackend:
    def __init__(self, svc):
        self.svc = svc
        self.executor = _LinearizableExecutor(svc.executor, svc.node.store.is_leader)

    async def catalog(self):
        svc = self.svc
        if svc.is_default and svc.node.store.is_leader():
            await svc.node.store.barrier()
            return Catalog.from_bytes(svc.catalog_state.load(svc.node.db.read_internal).to_bytes())
        raise NotCoordinator("the rebalance coordinator runs on the default group's leader")

    async def _one(self, group, name, args):
        res = (await self.svc.system(group, [(name, orjson.dumps(_sane(args)))]))[0]
        if isinstance(res, dict) and res.get("error") and set(res) <= {"error", "code", "time"}:
            if res.get("code") == errors.CoordinatorFenced.code:
                raise errors.CoordinatorFenced(res["error"])
            raise errors.BadRequest(res["error"])
        return res

    async def catalog_op(self, name, args):
        res = await self._one(DEFAULT_GROUP, "catalog." + name, args)
        try:
            await self.svc.cache.publish(await self.catalog())   # this node's router sees it now
        except errors.RaftSQLiteError:
            pass
        return res

    async def own_op(self, group, name, args):
        return await self._one(group, "own." + name, args)


def attach(node):
    """Give a default-group node its coordinator; give every node the routes (a node
    without the coordinator forwards them to it)."""
    svc = node.sharding
    node.rebalancer = None
    if not svc.is_default:
        node.http_blueprints = list(node.http_blueprints or ()) + [_routes(node)]
        return
    try:
        cfg = RebalanceConfig(**orjson.loads(os.environ.get("RAFTSQLITE_REBALANCE", "{}")))
    except (ValueError, TypeError) as e:
        raise errors.ConfigError(f"RAFTSQLITE_REBALANCE: {e}") from None
    node.rebalancer = Rebalancer(NodeMoveBackend(svc), cfg)
    # A move's phase changes and retried steps are few lines and are what an operator
    # needs to follow it; the node logs at WARNING by default, so they would be lost.
    lg = logging.getLogger("raftsqlite.rebalance")
    if lg.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() == logging.WARNING:
        lg.setLevel(logging.INFO)
    node.rebalancer.hook = fault_hook(os.environ.get("RAFTSQLITE_REBALANCE_FAULT"))
    node.http_blueprints = list(node.http_blueprints or ()) + [_routes(node)]


def _routes(node):
    from raftsqlite.sharding.rebalance_api import blueprint

    def bp():
        b = blueprint(coordinator, name="rebalance", skip_owned=True)
        if node.rebalancer is None:
            return b

        @b.after_server_start
        async def _start(app, loop=None):
            app.ctx.rebalance_task = asyncio.get_running_loop().create_task(
                node.rebalancer.run_forever(node.store.is_leader))

        @b.before_server_stop
        async def _stop(app, loop=None):
            t = getattr(app.ctx, "rebalance_task", None)
            if t is not None:
                t.cancel()
        return b
    return bp


def fault_hook(spec):
    """Tests only: ``RAFTSQLITE_REBALANCE_FAULT={"step", "action": "die"|"pause",
    "flag": path}``. ``die`` SIGKILLs this process at the workflow step (once: a marker
    file remembers, so the restarted coordinator resumes); ``pause`` writes
    ``flag.reached`` and blocks the coordinator at the step until ``flag.go`` exists
    (at most 60 s), while the test kills and restarts another process."""
    if not spec:
        return None
    import signal
    import time
    f = orjson.loads(spec)

    def hook(step):
        if step != f["step"] or os.path.exists(f["flag"] + ".done"):
            return
        open(f["flag"] + ".done", "w").close()
        if f["action"] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        open(f["flag"] + ".reached", "w").close()
        return _pause(f["flag"] + ".go")

    async def _pause(go):
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    return hook


def coordinator(request):
    node = request.app.ctx.node
    if getattr(node, "rebalancer", None) is None or not node.store.is_leader():
        raise node.sharding.not_default_leader()
    return node.rebalancer


async def handle(rb, kind, body):
    """``/table/rebalance`` and ``/table/remove-from-shard`` on the coordinator (http_api
    forwards them there first: ``coordinator``). ``None`` means "no rows to move":
    http_api then switches the ranges at once, as it does without #7."""
    if kind == "rebalance":
        dry = body.get("dry_run", False)
        if not isinstance(dry, bool):
            raise errors.BadRequest("dry_run must be true or false")
        table = _field(body, "table_name")
        if not dry:
            # ranges whose sources hold no rows switch at once (http_api's own path)
            cat = await rb.b.catalog()
            rows, _ = await rb._estimates(cat, table)
            if not any(rows.values()):
                return None
        plan = await rb.plan(table, dry_run=dry)
        plan["status"] = "dry_run" if dry else ("balanced" if not plan["moves"] else "moving")
        return _sane(plan)
    return _sane(await rb.remove_from_shard(_field(body, "table_name"), _field(body, "shard_id")))


def _field(b, name):
    v = b.get(name)
    if not isinstance(v, str) or not v.strip():
        raise errors.BadRequest(f"missing or empty field {name!r}")
    return v.strip()
