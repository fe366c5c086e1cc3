"""Sharding inside a real node: the FSM wiring, the catalog cache, the router as the HTTP
layer's SQL backend, and the executor that reaches every group's leader.

One ``ShardingService`` per node (``node.sharding``):
- every node keeps its group's ``ShardState`` (``own.*`` ops), checks each routed
  request's guard in the FSM before the request runs (``fsm.add_request_hook``) and each
  routed read's guard before reading (``store.guard_check``; a ``strong`` read's again
  in the FSM, in log order, like a write's); ``rs_kid``/``rs_owns`` are SQL functions on
  the writer and every reader;
- default-group nodes also hold the catalog (``catalog.*`` ops) and publish every change
  to their ``CatalogCache`` from the apply thread; other nodes long-poll any node they
  know (``GET /shard/catalog``) and refresh at once when a shard answers ``Moved``;
- after each catalog change the leader of a shard group makes its replicated ownership
  follow the catalog (``own.set_all``; an older epoch is ignored by the shard, so late or
  repeated pushes are harmless).

The executor calls the local store when this node leads the target group, and otherwise
posts the request, codec-encoded with its guard, to ``POST /shard/call`` on a member of
that group (a follower forwards it to its leader, as every endpoint does).
"""
import asyncio
import base64
import logging

import orjson

from raftsqlite import errors
from raftsqlite.http.forward import alternate
from raftsqlite.sharding import keyspace as ks, members
from raftsqlite.sharding.backend import RouterSQL  # noqa: F401  (re-exported)
from raftsqlite.sharding.cache import CatalogCache
from raftsqlite.sharding.coalesce import (ShardCaller, dump_requests, dump_results,  # noqa: F401
                                          error_from, load_results, unb64)
from raftsqlite.sharding.catalog import DEFAULT_GROUP, Catalog
from raftsqlite.sharding.glue import CatalogState, ShardState, op_args
from raftsqlite.sharding.ownership import is_catalog_guard, is_token_guard
from raftsqlite.sharding.router import Router

log = logging.getLogger("raftsqlite.sharding")


class NodeGroupExecutor:
    """The router's ``GroupExecutor`` in a node."""

    def __init__(self, svc):
        self.svc = svc
        self.leaders = {}      # group -> last known leader HTTP address
        self.counts = {"local": 0, "remote": 0, "remote_retries": 0}
        self.caller = ShardCaller(self._post)

    def _local(self, group, need_leader=True):
        s = self.svc
        return group == s.group and (not need_leader or s.node.store.is_leader())

    async def execute(self, group, statements, *, transaction=False, guard=None,
                      request_id=None):
        if self._local(group):
            self.counts["local"] += 1
            try:
                res = await self.svc.node.store.execute(statements, transaction=transaction,
                                                        guard=guard, request_id=request_id)
                return res["results"]
            except errors.NotLeader:
                pass
        return await self.remote(group, "execute", statements, transaction, guard,
                                 request_id=request_id)

    async def execute_alone(self, group, statements):
        """``execute`` never coalesced with other routed writes (VACUUM)."""
        if self._local(group):
            self.counts["local"] += 1
            try:
                return (await self.svc.node.store.execute(statements))["results"]
            except errors.NotLeader:
                pass
        self.counts["remote"] += 1
        return await self.caller.call_alone(group, statements)

    async def query(self, group, statements, *, guard=None, level="weak", **opts):
        # Every named level is served by the local store when this node is in the group
        # (it raises NotLeader when the level needs the leader); ``none`` must read this
        # member's own copy, which is how an operator (or the fault suite) inspects it.
        if self._local(group, need_leader=level not in ("none", "weak", "linearizable",
                                                        "strong")):
            self.counts["local"] += 1
            try:
                res = await self.svc.node.store.query(statements, level=level, guard=guard,
                                                      **opts)
                return res["results"]
            except errors.NotLeader:
                pass
        return await self.remote(group, "query", statements, False, guard, level=level)

    async def request(self, group, statements, *, transaction=False, level="weak", guard=None,
                      **opts):
        if self._local(group):
            self.counts["local"] += 1
            try:
                res = await self.svc.node.store.request(statements, transaction=transaction,
                                                        level=level, guard=guard, **opts)
                return res["results"]
            except errors.NotLeader:
                pass
        return await self.remote(group, "request", statements, transaction, guard, level=level)

    async def remote(self, group, kind, statements, transaction, guard, level="weak",
                     request_id=None):
        # Concurrent calls to one group share a /shard/call (coalesce.py).
        res = await self.caller.call(group, kind, statements, transaction, guard, level,
                                     request_id=request_id)
        self.counts["remote"] += 1
        return res

    async def _post(self, group, path, body):
        return (await self.svc.post_group(group, path, body, "application/octet-stream",
                                          lean=True)).body

    def stats(self):
        return dict(self.counts, leaders=dict(self.leaders), coalesced=self.caller.stats())


class ShardingService:
    def __init__(self, node):
        self.node = node
        cfg = node.config
        self.group = cfg.shard or DEFAULT_GROUP
        self.is_default = self.group == DEFAULT_GROUP
        db, fsm = node.db, node.fsm
        self.shard = ShardState(self.group)
        self.shard.register(fsm)
        fsm.add_request_hook(self._fsm_hook)
        node.store.guard_check = self._read_check
        db.create_function("rs_kid", 2, ks.sql_kid)
        db.create_function("rs_owns", 2, lambda c, v: self.shard.load(db.read_internal).owns(c, v),
                           deterministic=False)
        self.catalog_state = None
        self.loop = None
        self.cache = CatalogCache(fetch=self._refresh_default if self.is_default
                                  else self._fetch_catalog)
        if self.is_default:
            self.catalog_state = CatalogState(on_change=self._catalog_applied)
            self.catalog_state.register(fsm)
            # the catalog check's upper bound must cover what is stored before any apply
            self.catalog_state.load(db.read_internal)
            # a snapshot install replaces the catalog without an op: republish it
            fsm.add_restore_listener(lambda: self._catalog_applied(
                self.catalog_state.load(db.read_internal).to_bytes()))
        self.executor = NodeGroupExecutor(self)
        self.router = Router(self.executor, self.cache)
        self.sql = RouterSQL(self)
        self.seeds = list(cfg.join)      # HTTP addresses to learn the catalog from
        self._tasks = []
        self._client = None
        self._call_client = None
        self.counts = {"own_pushes": 0, "catalog_polls": 0}
        # A default-group node reads the catalog from its own state machine, which is
        # empty (just joined) or old (restarted, log not replayed up to the leader's
        # commit) until it has caught up: it routes only once it has (``_catch_up``).
        self._synced = not self.is_default
        self._synced_event = None       # asyncio.Event, made on the loop in start()
        self.catch_up_wait = 3.0        # how long a routed call waits for it, then 503
        prev_ready = getattr(node.store, "ready_check", None)
        node.store.ready_check = (lambda: self.catalog_loaded()
                                  and (prev_ready is None or prev_ready()))

    # ---- FSM side (apply thread) ------------------------------------------------------
    def _fsm_hook(self, ctx, req, write=True):
        g = req.guard
        if g is not None:
            if is_catalog_guard(g):
                self._catalog_check(ctx.execute, g)
            elif is_token_guard(g):
                self.shard.take_token(ctx.execute, g)
            else:
                self.shard.check(ctx.execute, g, write=write, index=ctx.index)

    def _read_check(self, guard):
        if is_catalog_guard(guard):
            self._catalog_check(self.node.db.read_internal, guard)
        elif is_token_guard(guard):
            self.shard.take_token(self.node.db.read_internal, guard, record=False)
        else:
            self.shard.check(self.node.db.read_internal, guard, write=False)

    def _catalog_check(self, internal, guard):
        if self.catalog_state is None:
            raise errors.BadRequest(f"a call planned for the default group reached group "
                                    f"{self.group}, which does not hold the catalog")
        self.catalog_state.check(internal, guard)

    def _catalog_applied(self, b):
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self._publish(b)))

    async def _publish(self, b):
        if await self.cache.publish(b):
            await self._follow_ownership()

    # ---- lifecycle ----------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from raftsqlite.client import Client
            self._client = Client(timeout=30.0,
                                  auth=getattr(self.node, "identity_header", None),
                                  **_tls_kw(self.node))
        return self._client

    @property
    def call_client(self):
        if self._call_client is None:
            from raftsqlite.sharding.callclient import CallClient
            self._call_client = CallClient(
                timeout=30.0, auth=getattr(self.node, "identity_header", None),
                **_tls_kw(self.node))
        return self._call_client

    def catalog_loaded(self) -> bool:
        """A shard node routes only once it has received the catalog; a default-group
        node (which holds it in its own state machine) once its copy is at least as new
        as its leader's was when it asked (``_catch_up``). Later staleness is safe:
        shards check ownership and answer Moved, and the router refreshes."""
        if self.is_default:
            return self._synced
        return self.cache.current().version > 0

    async def start(self):
        self.loop = asyncio.get_running_loop()
        if self.is_default:
            b = self.catalog_state.load(self.node.db.read_internal).to_bytes()
            await self.cache.publish(b)
            self._tasks.append(self.loop.create_task(self._catch_up()))
        elif not self.catalog_loaded():
            # A restarted shard node: one bounded attempt before HTTP opens; otherwise
            # the poll below brings it and routed calls answer 503 until then.
            try:
                b = await asyncio.wait_for(self._fetch_catalog(-1, 0), 3.0)
                if b:
                    await self.cache.publish(b)
            except (errors.RaftSQLiteError, asyncio.TimeoutError, OSError) as e:
                log.info("catalog not loaded at start (%s); polling", e)
        self._tasks.append(self.loop.create_task(self._poll()))

    async def stop(self):
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self._client is not None:
            await self._client.close()
        if self._call_client is not None:
            self._call_client.close()

    async def _poll(self):
        """Follow the catalog (non-default nodes) and keep this group's ownership in step
        with it (every node; only a leader proposes)."""
        if self.is_default:
            while True:
                await asyncio.sleep(0.5)
                try:
                    await self._record_default_members()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.debug("recording default-group members failed: %s", e)
        while True:
            try:
                b = await self._fetch_catalog(self.cache.current().version, 0.5)
                self.counts["catalog_polls"] += 1
                if b:
                    await self.cache.publish(b)
                await self._follow_ownership()
                await members.sync(self)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.cache.errors += 1
                log.debug("catalog poll failed: %s", e)
                await asyncio.sleep(0.3)

    def _set_synced(self):
        self._synced = True
        if self._synced_event is not None:
            self._synced_event.set()

    async def wait_caught_up(self, timeout):
        if self._synced:
            return True
        if self._synced_event is None:
            self._synced_event = asyncio.Event()
        try:
            await asyncio.wait_for(self._synced_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self._synced

    async def _catch_up(self):
        """Default group: open routing once this node's catalog is as new as the
        leader's. A leader commits a barrier (everything in its log, which holds every
        committed entry, is then applied here); a follower asks its leader for its
        catalog and waits until its own applied copy reaches that version. Until then
        routed calls answer 503 (a just-joined member would otherwise plan statements on
        sharded tables as unsharded ones and run them on the default group's template
        table)."""
        st = self.node.store
        while not self._synced:
            try:
                if st.is_leader():
                    await st.barrier(timeout=5.0)
                    if st.is_leader():
                        await self.cache.publish(
                            self.catalog_state.load(self.node.db.read_internal).to_bytes())
                        self._set_synced()
                        log.info("default group: caught up with the catalog (leader)")
                        return
                else:
                    lead = st.leader()
                    if lead is not None and lead.http_addr and lead.node_id != st.node_id:
                        r = await self.client.request(
                            "GET", lead.http_addr, "/shard/catalog?after=-1&poll=0",
                            timeout=5.0)
                        if r.status == 200:
                            want = Catalog.from_bytes(r.body).version
                            deadline = self.loop.time() + 10.0
                            while (self.cache.current().version < want
                                   and self.loop.time() < deadline):
                                await self.cache.wait_newer(self.cache.current().version, 0.5)
                            if self.cache.current().version >= want:
                                self._set_synced()
                                log.info("default group: caught up with the catalog "
                                         "(version %d)", want)
                                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("catalog catch-up: %s", e)
            await asyncio.sleep(0.2)

    async def _record_default_members(self):
        """The default group's leader keeps its members in the catalog (GET /shards, and
        where shard nodes find the catalog after a restart); members.py."""
        await members.sync(self)

    async def _follow_ownership(self):
        if self.is_default or not self.node.store.is_leader():
            return
        cat = self.cache.current()
        if self.group not in cat.groups:
            return
        want = cat.ownership_for(self.group)
        have = self.shard.load(self.node.db.read_internal)
        if not _needs_push(have, want):
            return
        try:
            await self.node.store.system([("own.set_all", op_args({"group": self.group,
                                                                   "cols": want}))])
            self.counts["own_pushes"] += 1
        except errors.RaftSQLiteError as e:
            log.info("ownership push failed: %s", e)

    # ---- joining as a shard node -------------------------------------------------------
    def _seeds_file(self):
        import os
        return os.path.join(self.node.config.data_dir, "sharding-seeds.json")

    async def plan_start(self, fresh):
        """-> (addresses to join through, whether this node starts a new group)."""
        import os
        cfg = self.node.config
        path = self._seeds_file()
        if self.seeds:
            with open(path, "wb") as f:
                f.write(orjson.dumps(self.seeds))
        elif os.path.exists(path):
            with open(path, "rb") as f:
                self.seeds = list(orjson.loads(f.read()))
        if not fresh:
            return (), False
        if not self.seeds:
            raise errors.ConfigError(f"-shard {self.group} needs -join with the HTTP address "
                                     "of any member of the default group (where the catalog "
                                     "lives)")
        deadline = asyncio.get_running_loop().time() + cfg.join_timeout
        while True:
            try:
                b = await self._fetch_catalog(-1, 0)
                break
            except errors.RaftSQLiteError as e:
                why = await _tls_refusal(cfg, self.seeds, e)
                if why:     # a refused certificate does not heal by retrying
                    raise errors.ConfigError(f"cannot read the catalog through "
                                             f"{', '.join(self.seeds)}: {why}") from None
                if asyncio.get_running_loop().time() > deadline:
                    raise errors.Unavailable(f"cannot read the catalog through "
                                             f"{', '.join(self.seeds)}: {e}") from None
                await asyncio.sleep(0.3)
        await self.cache.publish(b)
        members = self.cache.current().groups.get(self.group, {}).get("members", {})
        addrs = [m["http_addr"] for n, m in sorted(members.items())
                 if n != cfg.node_id and m.get("http_addr")]
        if addrs:
            return tuple(addrs), False
        if not cfg.voter:
            return (), True      # node.start refuses: a non-voter cannot start a group
        # Nobody else is registered: claim the group in the catalog before bootstrapping.
        # Two nodes started at once both get here; the log orders their claims, the first
        # wins and bootstraps, the other joins it (node.start retries the join until the
        # winner serves).
        res = await self._catalog_retrying(
            [("catalog.claim_group", op_args({"group": self.group, "member": self._me()}))],
            "claim")
        if res["won"]:
            return (), True
        log.info("shard %s: another node claimed the group first; joining it", self.group)
        return tuple(m["http_addr"] for _, m in sorted(res["members"].items())
                     if m.get("http_addr")), False

    def _me(self):
        cfg = self.node.config
        return {"node_id": cfg.node_id, "raft_addr": cfg.raft_advertise,
                "http_addr": cfg.http_advertise, "voter": cfg.voter}

    async def _catalog_retrying(self, ops_, what):
        """Propose catalog ops, retrying while the default group has no leader, for at
        most ``join_timeout``; -> the first op's result."""
        deadline = asyncio.get_running_loop().time() + self.node.config.join_timeout
        while True:
            try:
                res = await self.system(DEFAULT_GROUP, ops_)
                if isinstance(res[0], dict) and res[0].get("error"):
                    raise errors.BadRequest(res[0]["error"])
                return res[0]
            except (errors.Unavailable, errors.LeaderNotFound, errors.Timeout) as e:
                if asyncio.get_running_loop().time() > deadline:
                    raise errors.Unavailable(f"could not {what} shard {self.group} in the "
                                             f"catalog: {e}") from None
                await asyncio.sleep(0.3)

    async def register_member(self, new_group):
        """Record this node in the catalog (its group first, when it started one)."""
        cfg = self.node.config
        m = self._me()
        ops_ = []
        if new_group or self.group not in self.cache.current().groups:
            ops_.append(("catalog.add_group", op_args({"group": self.group, "members": [m]})))
        else:
            ops_.append(("catalog.set_member", op_args(dict(m, group=self.group))))
        await self._catalog_retrying(ops_, "register")
        await self.cache.refresh()
        log.info("shard %s: %s registered in the catalog", self.group, cfg.node_id)

    # ---- catalog transport ---------------------------------------------------------------
    def catalog_sources(self):
        """Default-group members to ask for the catalog, the one that last served a
        default-group call (its leader, as far as this node knows) first."""
        cat = self.cache.current()
        addrs = [m["http_addr"] for m in cat.groups.get(DEFAULT_GROUP, {}).get("members", {}).values()
                 if m.get("http_addr")]
        addrs += [a for a in self.seeds if a not in addrs]
        lead = self.executor.leaders.get(DEFAULT_GROUP)
        if lead in addrs and addrs[0] != lead:
            addrs.remove(lead)
            addrs.insert(0, lead)
        return addrs

    async def _refresh_default(self, after, timeout):
        """A default-group node's ``refresh`` (after ``StaleCatalog`` or ``Moved``): its own
        state machine's copy first; a follower then asks its leader, because a member cut
        off from the log keeps an old copy (its router would plan a newly sharded table
        as unsharded forever; the default group refuses such calls at apply time)."""
        await self.cache.publish(self.catalog_state.load(self.node.db.read_internal).to_bytes())
        st = self.node.store
        lead = st.leader()
        if st.is_leader() or lead is None or not lead.http_addr or lead.node_id == st.node_id:
            return None
        try:
            r = await self.client.request("GET", lead.http_addr,
                                          "/shard/catalog?after=-1&poll=0", timeout=5.0)
        except errors.RaftSQLiteError as e:
            log.info("catalog refresh from the leader failed: %s", e)
            return None
        return r.body if r.status == 200 else None

    async def _fetch_catalog(self, after, timeout):
        last = None
        for a in self.catalog_sources():
            try:
                r = await self.client.request("GET", a, f"/shard/catalog?after={after}&poll={timeout}",
                                              timeout=timeout + 5)
            except errors.RaftSQLiteError as e:
                last = e
                continue
            if r.status == 204:
                return None
            if r.status == 200:
                return r.body
            last = error_from(r.status, r.body)
        raise last or errors.Unavailable("no node to fetch the catalog from")

    async def serve_catalog(self, after, timeout):
        """Bytes of a catalog newer than ``after``, or None after ``timeout``."""
        if not self.catalog_loaded():
            # an empty or old copy would mislead a restarted shard node; it asks another
            raise errors.Unavailable("this node has not caught up with the catalog yet")
        st = self.node.store
        if self.is_default and not st.is_leader() and st.leader() is None:
            # A member cut off from its leader (no leader after an election timeout)
            # keeps answering with its old copy: a shard node's router would refresh to
            # it and plan with it again, and its long-poll would wait on it for good.
            raise errors.Unavailable("this default-group member has no leader: its catalog "
                                     "may be stale; ask another member")
        cat = self.cache.current()
        if after < 0 or cat.version > after:
            return cat.to_bytes()
        c = await self.cache.wait_newer(after, timeout) if timeout > 0 else None
        return c.to_bytes() if c is not None else None

    # ---- proposing to groups -------------------------------------------------------------
    def group_addrs(self, group):
        cat = self.cache.current()
        members = cat.groups.get(group, {}).get("members", {})
        addrs = [m["http_addr"] for _, m in sorted(members.items()) if m.get("http_addr")]
        if group == self.group:
            # our own group: its leader as we know it (a follower's own endpoint would
            # only forward there)
            lead = self.node.store.leader()
            first = lead.http_addr if lead is not None and lead.http_addr else self.node.config.http_advertise
            addrs = [first] + [a for a in addrs if a != first]
        if group == DEFAULT_GROUP:
            addrs += [a for a in self.seeds if a not in addrs]
        lead = self.executor.leaders.get(group)
        if lead in addrs:
            addrs.remove(lead)
            addrs.insert(0, lead)
        if not addrs:
            raise errors.Unavailable(f"group {group!r} has no known member; GET /shards "
                                     "lists groups and members")
        return addrs

    def leads_default(self):
        return self.is_default and self.node.store.is_leader()

    def not_default_leader(self):
        """The ``NotLeader`` that sends an admin request (catalog changes, rebalancing) to
        the default group's leader through ``http/forward.py``. A default-group member
        leaves ``leader_addr`` empty (forward.py asks its store); any other node names the
        default-group member it last reached (its leader, as far as this node knows),
        which forwards again if it does not lead (the hop limit bounds the chain); the other
        members follow in ``alternates``, tried when one cannot be reached."""
        e = errors.NotLeader("the default group's leader runs this; this node forwards "
                             "there (GET /shards lists it)")
        if not self.is_default:
            try:
                e = alternate(e, self.group_addrs(DEFAULT_GROUP))
            except errors.Unavailable:
                pass
        return e

    async def default_leader_addr(self):
        """The default group's leader's HTTP address as one of its members says it now
        (``GET /leader``), or None. For a 301 (``redirect``) from a node outside the
        group: the member this node last reached may have lost the leadership since, and
        a 301 to it would be followed by a second one."""
        for a in self.group_addrs(DEFAULT_GROUP):
            try:
                r = await self.client.request("GET", a, "/leader", timeout=2.0)
            except errors.RaftSQLiteError:
                continue
            if r.status == 200:
                addr = orjson.loads(r.body).get("api_addr")
                if addr:
                    self.executor.leaders[DEFAULT_GROUP] = addr
                    return addr
        return None

    async def post_group(self, group, path, body, ctype="application/json", lean=False):
        """POST to a member of ``group`` (it forwards to its leader); the answer, or the
        error it carried. Unreachable members are skipped. ``lean``: over the routed
        calls' own keep-alive client (``callclient.py``) instead of aiohttp."""
        last = None
        for a in self.group_addrs(group):
            try:
                if lean:
                    r = await self.call_client.post(a, path, body, {"Content-Type": ctype})
                else:
                    r = await self.client.request("POST", a, path, body=body,
                                                  headers={"Content-Type": ctype})
            except errors.Unreachable as e:
                last = e
                self.executor.counts["remote_retries"] += 1
                continue
            if r.status == 200:
                served = r.headers.get("X-RQLITE-SERVED-BY")
                self.executor.leaders[group] = served or a
                return r
            exc = error_from(r.status, r.body)
            if isinstance(exc, (errors.LeaderNotFound, errors.Unavailable)) and \
                    not isinstance(exc, (errors.Moved, errors.Fenced)):
                last = exc
                continue
            raise exc
        raise last or errors.Unavailable(f"no member of group {group!r} answered")

    async def system(self, group, ops):
        """Propose SYSTEM ops in ``group`` -> one result per op."""
        ops = [(n, bytes(a)) for n, a in ops]
        if group == self.group and self.node.store.is_leader():
            return (await self.node.store.system(ops))["results"]
        body = orjson.dumps({"ops": [[n, base64.b64encode(a).decode()] for n, a in ops]})
        r = await self.post_group(group, "/shard/system", body)
        return orjson.loads(r.body)["results"]

    async def catalog_op(self, name, args_bytes):
        """One catalog op through the default group; raises BadRequest when it failed;
        returns its result once this node's router holds the new catalog."""
        res = (await self.system(DEFAULT_GROUP, [(name, args_bytes)]))[0]
        if isinstance(res, dict) and res.get("error"):
            raise errors.BadRequest(res["error"])
        await self.cache.refresh()
        return res

    async def push_ownership(self, group, cat=None):
        """Make ``group`` hold what ``cat`` (default: the current catalog) says it owns."""
        cat = cat or self.cache.current()
        res = await self.system(group, [("own.set_all", op_args(
            {"group": group, "cols": cat.ownership_for(group)}))])
        self.counts["own_pushes"] += 1
        if isinstance(res[0], dict) and res[0].get("error"):
            raise errors.Unavailable(f"ownership push to {group} failed: {res[0]['error']}")

    def stats(self):
        return {"group": self.group, "catalog": self.cache.stats(), "router": self.router.stats(),
                "executor": self.executor.stats(), **self.counts,
                "call_client": self._call_client.stats() if self._call_client else {},
                "ownership": self.shard.load(self.node.db.read_internal).stats()}


def _needs_push(have, want):
    """Whether the shard's replicated view lags the catalog's ``ownership_for``."""
    if set(have.cols) - set(want):
        return True
    for c, w in want.items():
        h = have.cols.get(c)
        if h is None or w["epoch"] > h["epoch"]:
            return True
        if w["epoch"] == h["epoch"] and (
                sorted(str(t).lower() for t in w["tables"]) != h["tables"]
                or [list(r) for r in w["ranges"]] != [[s, ks.end_to_json(e)] for s, e in h["ranges"]]):
            return True
    return False


__all__ = ["ShardingService", "NodeGroupExecutor", "RouterSQL", "error_from", "dump_results",
           "load_results", "unb64"]


async def _tls_refusal(cfg, addrs, exc):
    """Why every one of ``addrs`` refuses this node's certificate (or this node theirs),
    or None when the failure ``exc`` may be transient (tlsconf.refused)."""
    tls = getattr(cfg, "tls", None)
    if tls is None or not tls.enabled or not addrs:
        return None
    from raftsqlite.client import base_url
    whys = [await tls.refused(base_url(a, tls.scheme) + "/shard/catalog", exc.__cause__ or exc)
            for a in addrs]
    return "; ".join(f"{a}: {w}" for a, w in zip(addrs, whys)) if all(whys) else None


def _tls_kw(node):
    """How this node's calls reach other nodes' HTTP APIs (tlsconf; {} without TLS)."""
    tls = getattr(getattr(node, "config", None), "tls", None)
    return tls.client_kw() if tls is not None else {}
