"""A STAND-IN for the sharding integration of the node, used by the rebalance cluster
tests and bench until the sharding branch wires the node itself. It runs the real
``raft-sqlite`` node (same CLI flags) and adds, using only the sharding modules'
documented extension points:

- the FSM handlers of ``sharding.glue`` (``catalog.*`` in the default group, ``own.*``
  in shards), ``rs_kid``/``rs_owns`` on the writer and readers, and the guard check as
  an FSM request hook (``Request.guard``);
- ``POST /_rs/system {"ops": [[name, args]]}`` (propose SYSTEM ops here),
  ``GET /_rs/catalog`` (the catalog after a barrier), ``POST /_rs/execute`` (a write
  carrying a routing guard);
- in the default group: a ``Rebalancer`` (coordinator while leader) and its routes.

Run: ``python -m tests.cluster.rebalance_node -id n1 -data d -http :p -raft :q [-shard s1]``
"""
import asyncio
import sys

import orjson

import raftsqlite.node as node_mod
from raftsqlite import cli
from raftsqlite.codec.model import Request, Statement
from raftsqlite.errors import BadRequest, RaftSQLiteError
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.glue import CatalogState, ShardState
from raftsqlite.sharding.rebalance import RebalanceConfig
from raftsqlite.sharding.rebalance_api import _sane, blueprint as rebalance_blueprint
from raftsqlite.sharding.rebalance_remote import HttpExecutor, HttpMoveBackend
from raftsqlite.sharding.rebalance_service import Rebalancer


class StandinNode(node_mod.Node):
    def __init__(self, config):
        super().__init__(config)
        self.group = config.shard or "default"
        self.shard_state = ShardState(self.group)
        self.shard_state.register(self.fsm)
        self.db.create_function("rs_kid", 2, ks.sql_kid)
        self.db.create_function("rs_owns", 2, self.shard_state.owns_fn(self.db.internal))
        self.fsm.add_request_hook(self._guard_hook)
        self.catalog_state = None
        self.rebalancer = None
        bps = [self._rs_blueprint]
        if not config.shard:
            self.catalog_state = CatalogState()
            self.catalog_state.register(self.fsm)
            self.catalog_state.load(self.db.internal)   # before Raft applies anything
            self.catalog_state.on_change = None
            ex = HttpExecutor()
            self.backend = HttpMoveBackend(ex, local_catalog=self._catalog,
                                           local_system=self._system_one)
            import os
            cfg = RebalanceConfig(**orjson.loads(os.environ.get("RS_REBALANCE", "{}")))
            self.rebalancer = Rebalancer(self.backend, cfg)
            self.rebalancer.hook = _fault_hook(os.environ.get("RS_FAULT"))
            bps.append(lambda: rebalance_blueprint(lambda req: self._need_rebalancer()))
        self.http_blueprints = bps
        self._resume_task = None

    def _need_rebalancer(self):
        if not self.store.raft.is_leader:
            raise BadRequest("ask the default group's leader (this node is not it)")
        return self.rebalancer

    def _guard_hook(self, ctx, req):
        g = getattr(req, "guard", None)
        if g:
            self.shard_state.check(ctx.execute, g, write=True)

    async def _catalog(self):
        await self.store.barrier()
        return Catalog.from_bytes(self.catalog_state._bytes or b"")

    async def _system_one(self, name, args):
        res = await self.store.system([(name, orjson.dumps(_sane(args)))])
        r = res["results"][0]
        if isinstance(r, dict) and "error" in r and len(r) <= 3:
            raise BadRequest(r["error"])
        return r

    async def start(self):
        await super().start()
        if self.rebalancer is not None:
            self._resume_task = asyncio.get_running_loop().create_task(
                self.rebalancer.run_forever(lambda: self.store.raft.is_leader))

    async def stop(self):
        if self._resume_task is not None:
            self._resume_task.cancel()
        await super().stop()

    def _rs_blueprint(self):
        from sanic import Blueprint
        from sanic.response import HTTPResponse
        bp = Blueprint("rs_standin")
        node = self

        def js(o, status=200):
            return HTTPResponse(orjson.dumps(_sane(o), default=str), status=status,
                                content_type="application/json")

        def err(e):
            return js({"error": str(e), "code": getattr(e, "code", "error")},
                      400 if isinstance(e, BadRequest) else 503)

        @bp.post("/_rs/system")
        async def system(request):
            try:
                ops = [(str(n), orjson.dumps(_sane(a))) for n, a in orjson.loads(request.body)["ops"]]
                res = await node.store.system(ops)
            except RaftSQLiteError as e:
                return err(e)
            for r in res["results"]:
                if isinstance(r, dict) and "error" in r and len(r) <= 3:
                    return js({"error": r["error"], "code": "bad_request"}, 400)
            return js(res)

        @bp.get("/_rs/catalog")
        async def catalog(request):
            if node.catalog_state is None:
                return js({"error": "not the default group", "code": "bad_request"}, 400)
            try:
                c = await node._catalog()
            except RaftSQLiteError as e:
                return err(e)
            return js({"catalog": c.to_dict()})

        @bp.post("/_rs/execute")
        async def execute(request):
            try:
                b = orjson.loads(request.body)
                stmts = [Statement(s[0], list(s[1:]) or None) for s in b["statements"]]
                node.store._require_leader()
                _, results = await node.store._submit(
                    Request(stmts, bool(b.get("transaction")), None, bytes.fromhex(b["guard"])),
                    node.store.config.write_timeout)
            except RaftSQLiteError as e:
                return err(e)
            return js({"results": results})

        return bp


def _fault_hook(spec):
    """Tests: ``RS_FAULT={"step", "action": "die"|"pause", "flag": path}``. ``die``
    SIGKILLs this process at the step (once: a marker file remembers); ``pause`` blocks
    the coordinator at the step until ``flag.go`` exists (the test kills and restarts
    another process meanwhile), after writing ``flag.reached``."""
    if not spec:
        return None
    import os
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
        deadline = time.monotonic() + 60
        while not os.path.exists(f["flag"] + ".go") and time.monotonic() < deadline:
            time.sleep(0.05)
    return hook


def main(argv=None):
    node_mod.Node = StandinNode
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
