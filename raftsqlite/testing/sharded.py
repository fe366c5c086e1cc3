"""A sharded topology under faults (issue #8 item 4): the default group (catalog) plus
shard groups, each a :class:`~.cluster.LocalCluster` of real ``raft-sqlite`` processes,
all on one :class:`~.proxy.FaultNetwork`, so every Raft link and every peer-HTTP call
(forwarding, the router's ``/shard/call``, catalog long-polls) passes through a proxy.

Shard members start with ``-shard NAME -join <default members>``: the first bootstraps
its group and records itself in the catalog; the harness waits for that record before
starting the others, which then find the group in the catalog and join it (started
earlier they would bootstrap a second group of the same name).

Workloads talk to any member's ``/db/*`` API: the node's router routes. Tables are
registered, placed on the first shard, and the second shard is added owning nothing,
so a rebalance during the run (``POST /table/rebalance``) moves half the keyspace with
its rows while clients write and the nemesis injects faults. :class:`ShardedNemesis`
picks a group, then a fault within it (leader faults find that group's leader).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp

from raftsqlite import errors

from .checkers import CheckResult, check_convergence
from .cluster import LocalCluster, Member, NodeCannotStart
from .history import History
from .proxy import FaultNetwork

DEFAULT = "default"
SHARDS = ("shard1", "shard2")
PREFIXES = {DEFAULT: "d", "shard1": "s1n", "shard2": "s2n"}
#: Move phases after which a move does nothing more (catalog.MOVE_PHASES' ends).
MOVE_END = ("done", "cancelled", "failed")


async def _http(session, method, url, body=None, timeout=10.0):
    """-> (status, decoded JSON or raw text); raises aiohttp/timeout errors."""
    kw = {"timeout": aiohttp.ClientTimeout(total=timeout)}
    if body is not None:
        kw["data"] = json.dumps(body)
        kw["headers"] = {"Content-Type": "application/json"}
    async with session.request(method, url, **kw) as r:
        raw = await r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw[:500].decode(errors="replace")


class ShardGroup(LocalCluster):
    """The members of one shard group; ``join`` names the default group's members."""

    async def after_first(self, first: Member) -> None:
        # The next members look their group up in the catalog: it must list this one.
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for addr in self.external_join:
                try:
                    st, body = await _http(self.session, "GET", f"http://{addr}/shards",
                                           timeout=5)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    continue
                if st == 200 and any(g.get("group") == self.shard
                                     for g in (body or {}).get("shards", [])):
                    return
            await asyncio.sleep(0.2)
        raise errors.Timeout(f"shard {self.shard}: {first.id} not in the catalog within "
                             f"{self.start_timeout}s (logs in {self.workdir / 'logs'})")


class ShardedCluster:
    """Default group + ``shards``, ``size`` members each (``shard_size`` for the shard
    groups when given). The parts of LocalCluster's
    interface the nemesis run uses (``members``, ``start``, ``stop``, ``heal``,
    ``status``, ``wait_for_leader``, ``stats``) span every group."""

    def __init__(self, size: int = 3, workdir: str | Path | None = None, *,
                 shards=SHARDS, seed=None, extra_args=(), env=None,
                 start_timeout: float = 60.0, shard_size: int | None = None):
        self.workdir = Path(workdir) if workdir else None
        self.net = FaultNetwork(seed=seed)
        self.size = size
        self.shards = tuple(shards)
        kw = dict(extra_args=extra_args, env=env, network=self.net,
                  start_timeout=start_timeout)
        self.groups: dict[str, LocalCluster] = {
            DEFAULT: LocalCluster(size, self._dir(DEFAULT), prefix=PREFIXES[DEFAULT], **kw)}
        for s in self.shards:
            self.groups[s] = ShardGroup(shard_size or size, self._dir(s), prefix=PREFIXES.get(s, s + "n"),
                                        shard=s, **kw)
        self.group_of = {mid: g for g, c in self.groups.items() for mid in c.members}
        self.session: aiohttp.ClientSession | None = None
        self.moves: list[dict] = []

    def _dir(self, g):
        return None if self.workdir is None else self.workdir / g

    @property
    def members(self) -> dict[str, Member]:
        return {mid: m for c in self.groups.values() for mid, m in c.members.items()}

    @property
    def default(self) -> LocalCluster:
        return self.groups[DEFAULT]

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> Member:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        try:
            await self.default.start()
            join = [m.http_addr for m in self.default.members.values()]
            for s in self.shards:
                self.groups[s].external_join = join
                await self.groups[s].start()
            return await self.wait_for_leader(self.default.start_timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for g in reversed(list(self.groups)):
            await self.groups[g].stop()
        await self.net.close()
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def heal(self) -> None:
        self.net.heal()
        await asyncio.gather(*(c.heal() for c in self.groups.values()))

    async def status(self, m: Member, timeout: float = 2.0):
        return await self.groups[self.group_of[m.id]].status(m, timeout)

    async def current_leader(self, quorum=None):
        return await self.default.current_leader(quorum)

    async def wait_for_leader(self, timeout: float = 20.0, quorum=None) -> Member:
        """Until every group has a leader; returns the default group's."""
        leaders = await asyncio.gather(*(c.wait_for_leader(timeout, quorum)
                                         for c in self.groups.values()))
        return leaders[0]

    def copy_logs(self, dest):
        for c in self.groups.values():
            c.copy_logs(dest)

    def stats(self) -> dict:
        return {"groups": {g: {k: v for k, v in c.stats().items() if k != "network"}
                           for g, c in self.groups.items()},
                "network": self.net.stats(), "moves": self.moves}

    # -- sharding API --------------------------------------------------------------------
    async def api(self, path: str, body: dict, timeout: float = 60.0, ok=(200,)) -> dict:
        """POST to the default group's members until one answers 200 (retrying errors
        that say "try again": no leader yet, forwarding failed)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for m in self.default.members.values():
                if not m.available:
                    continue
                try:
                    st, doc = await _http(self.session, "POST", f"{m.url}{path}", body, 30)
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    last = f"{m.id}: {type(e).__name__} {e}"
                    continue
                if st in ok:
                    return doc
                last = f"{m.id}: HTTP {st} {doc}"
                if 400 <= st < 500 and st not in (404, 409, 429):
                    raise errors.BadRequest(f"{path} {body}: {last}")
            await asyncio.sleep(0.3)
        raise errors.Timeout(f"{path} {body} did not succeed within {timeout}s: {last}")

    async def place_tables(self, specs) -> None:
        """Register each ``(table, shard_key, colocate_with)`` (hash), place it on the
        first shard (the whole keyspace) and add the second owning nothing yet."""
        for table, key, colocate in specs:
            body = {"table_name": table, "shard_key": key, "shard_func": "hash"}
            if colocate:
                body["colocate_with"] = colocate
            await self._idempotent("/table/register", body)
        for table, _key, colocate in specs:
            if colocate:
                continue             # the colocation group's placement is the first table's
            for s in self.shards:
                await self._idempotent("/table/add-to-shard",
                                       {"table_name": table, "shard_id": s})

    async def _idempotent(self, path, body):
        try:
            await self.api(path, body)
        except errors.BadRequest as e:
            if "already" not in str(e):
                raise

    async def rebalance(self, table: str, history: History, timeout: float) -> dict:
        """``POST /table/rebalance`` for ``table`` and wait (bounded) until its moves end.
        Recorded as history events; returns the final move records."""
        history.event("rebalance", table=table)
        t0 = time.monotonic()
        try:
            plan = await self.api("/table/rebalance", {"table_name": table},
                                  timeout=min(timeout, 60))
        except (errors.RaftSQLiteError, aiohttp.ClientError) as e:
            rec = {"table": table, "error": f"{type(e).__name__}: {e}"[:500]}
            history.event("rebalance_error", **rec)
            self.moves.append(rec)
            return rec
        ids = [m.get("move_id") for m in (plan or {}).get("moves", []) if m.get("move_id")]
        rec = {"table": table, "status": (plan or {}).get("status"), "move_ids": ids}
        if ids:
            rec["moves"] = await self.wait_moves(ids, timeout - (time.monotonic() - t0))
        rec["seconds"] = round(time.monotonic() - t0, 2)
        history.event("rebalance_end", **rec)
        self.moves.append(rec)
        return rec

    async def move_status(self) -> list | None:
        for m in self.members.values():
            if not m.available or self.group_of[m.id] != DEFAULT:
                continue
            try:
                st, doc = await _http(self.session, "GET",
                                      f"{m.url}/table/rebalance/status", timeout=5)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue
            if st == 200 and isinstance(doc, dict):
                return doc.get("moves", [])
        return None

    async def wait_moves(self, ids=None, timeout: float = 60.0,
                         max_total: float | None = None) -> list:
        """Poll the status until the moves (every move by default) have ended; returns
        ``[{id, phase, rows_copied, error}]`` as last seen. Without ``max_total``,
        ``timeout`` bounds the whole wait. With it, ``timeout`` bounds the time without
        progress (a move whose phase or ``rows_copied`` changed is still moving), and
        ``max_total`` the whole wait."""
        start = time.monotonic()
        deadline = start + max(1.0, timeout)
        hard = start + max(max_total or 0.0, timeout)
        last: list = []
        seen = None
        while True:
            moves = await self.move_status()
            if moves is not None:
                last = [{k: m.get(k) for k in ("move_id", "table", "range", "source",
                                                 "target", "phase", "rows_copied",
                                                 "rows_total", "fence_ms", "error")}
                        for m in moves if ids is None or m.get("move_id") in ids]
                if all(m["phase"] in MOVE_END for m in last):
                    return last
                now_seen = [(m["move_id"], m["phase"], m["rows_copied"]) for m in last]
                if max_total and now_seen != seen:
                    seen = now_seen
                    deadline = min(hard, time.monotonic() + max(1.0, timeout))
            if time.monotonic() > deadline:
                return last
            await asyncio.sleep(0.5)

    async def converge(self, member_checksums, client_for, timeout: float = 30.0):
        """Within each group, every member's tables (read locally with ``shard_id`` at
        level ``none``) are identical; groups differ from each other by design."""
        res = CheckResult("convergence", True)
        per = await asyncio.gather(*(self._converge_group(g, member_checksums, client_for,
                                                          timeout) for g in self.groups))
        for g, r in zip(self.groups, per):
            res.stats[g] = r.stats
            for v in r.violations:
                res.add(v.get("kind", "diverged"), group=g, **{k: x for k, x in v.items()
                                                               if k != "kind"})
            if r.valid is not True and not r.violations:
                res.add("diverged", group=g)
        res.stats["tables"] = sum(s.get("tables", 0) for s in res.stats.values()
                                  if isinstance(s, dict))
        return res

    async def _converge_group(self, g, member_checksums, client_for, timeout):
        deadline = time.monotonic() + timeout
        c = self.groups[g]
        while True:
            sums = {}
            for m in c.members.values():
                sums[m.id] = await member_checksums(client_for(m, g))
            res = check_convergence(sums)
            if res.valid or time.monotonic() > deadline:
                res.stats["digests"] = sums
                return res
            await asyncio.sleep(0.5)


class ShardedNemesis:
    """One fault at a time, like :class:`~.nemesis.Nemesis`, in a group chosen at
    random (the default group holds the catalog and coordinates rebalancing)."""

    def __init__(self, sharded: ShardedCluster, history: History, rng: random.Random,
                 kinds, hold=(2.0, 4.0), quiet=(1.0, 3.0)):
        from .nemesis import Nemesis
        self.sharded = sharded
        self.history = history
        self.rng = rng
        self.hold = hold
        self.quiet = quiet
        self.per = {g: Nemesis(c, history, rng, kinds, hold, quiet)
                    for g, c in sharded.groups.items()}
        self.kinds = self.per[DEFAULT].kinds
        self.counts: dict[str, int] = {}
        self.by_group: dict[str, int] = {}

    @property
    def restart_failures(self) -> list:
        return [f for n in self.per.values() for f in n.restart_failures]

    @property
    def failed_members(self) -> set:
        return set().union(*(n.failed_members for n in self.per.values()))

    async def heal(self, timeout: float = 60.0) -> None:
        self.sharded.net.heal()
        await asyncio.gather(*(n.heal(timeout) for n in self.per.values()))

    async def run(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        groups = sorted(self.per)
        while loop.time() + self.hold[1] + self.quiet[0] < deadline:
            g = self.rng.choice(groups)
            kind = self.rng.choice(self.kinds)
            detail = await self.per[g].inject(kind)
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.by_group[g] = self.by_group.get(g, 0) + 1
            self.history.event(kind, group=g, **detail)
            await asyncio.sleep(self.rng.uniform(*self.hold))
            await self.heal()
            self.history.event("heal")
            await asyncio.sleep(self.rng.uniform(*self.quiet))


__all__ = ["ShardedCluster", "ShardGroup", "ShardedNemesis", "NodeCannotStart"]
