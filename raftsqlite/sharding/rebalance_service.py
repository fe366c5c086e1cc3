"""The rebalance operations the API exposes (#7), over a ``MoveBackend``:

- ``plan(table, dry_run)``: ``POST /table/rebalance``. The plan is
  ``Catalog.plan_rebalance`` with rows and bytes estimated on the sources; a dry run
  returns it and changes nothing; otherwise one move record per planned move is created
  in the catalog and run in the background, one at a time per colocation group.
- ``remove_from_shard(table, shard)``: leave the placement, drain every range the shard
  owns to the others, then drop it from the table.
- ``split(table, at)`` / ``move_range(table, start, end, target)``: explicit operations.
- ``status()``: ``GET /table/rebalance/status`` (phase, rows copied, rows to go, rate,
  time left), computed from the catalog records, so every node answers the same.
- ``cancel(move_id)``: before the fence; the runner notices and rolls back.
- ``resume_all()``: run every move the catalog says is unfinished (called when this node
  becomes the coordinator, i.e. the default group's leader, and periodically).
"""
import asyncio
import copy
import logging
import time

from raftsqlite.codec.model import Statement
from raftsqlite.errors import BadRequest, NotFound
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import MOVE_END, MOVE_PHASES
from raftsqlite.sharding.rebalance import MoveRunner, NotCoordinator, RebalanceConfig, _q

log = logging.getLogger("raftsqlite.rebalance")


class Rebalancer:
    def __init__(self, backend, config=None, clock=time.time):
        self.b = backend
        self.cfg = config or RebalanceConfig()
        self.clock = clock
        self.tasks = {}      # move id -> asyncio.Task (moves this node coordinates)
        self.runners = {}
        self.finished = {}   # move id -> last runner stats
        self._chains = {}    # colocation -> task running its moves in order
        self.hook = None     # tests: passed to every runner
        self._notes = {}     # key -> (last message, when): repeated warnings rate-limited

    # ---- planning ---------------------------------------------------------------------
    async def _estimates(self, cat, table):
        """Rows owned per source shard (only its owned rows) and mean row bytes."""
        t = table.lower()
        rec = cat.tables.get(t)
        if rec is None:
            raise NotFound(f"table {t} is not registered for sharding")
        col = cat.colocations[rec["colocation"]]
        rows, nbytes, sampled = {}, 0, 0
        for g in sorted(set(col["owners"])):
            n = 0
            for tt, r in cat.tables.items():
                if r["colocation"] != rec["colocation"]:
                    continue
                spans = ks.owned_spans(col["starts"], col["owners"], g)
                k = f"rs_kid('{col['shard_func']}', {_q(r['shard_key'])})"
                where = " OR ".join(f"({k} >= ?" + (f" AND {k} < ?)" if e < ks.KEYSPACE_END else ")")
                                    for s, e in spans)
                params = [x for s, e in spans for x in ([s - (1 << 63)] + ([e - (1 << 63)] if e < ks.KEYSPACE_END else []))]
                res = await self.b.executor.query(g, [
                    Statement(f"SELECT count(*) FROM {_q(tt)} WHERE {where}", params),
                    Statement(f"SELECT * FROM {_q(tt)} LIMIT 100")], guard=None)
                if "error" in res[0]:
                    raise BadRequest(f"estimating rows of {tt} on {g}: {res[0]['error']}")
                n += res[0]["values"][0][0]
                for row in (res[1].get("values") or []):
                    nbytes += sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)
                    sampled += 1
            rows[g] = n
        return rows, (nbytes / sampled if sampled else 0.0)

    async def plan(self, table, dry_run=False, reuse=True):
        cat = await self.b.catalog()
        if not dry_run and reuse:
            live = self._moving(cat, table)
            if live:
                # Already rebalancing (typically: the same request retried after the
                # coordinator that created these moves died before it answered): answer
                # those moves, as the first answer would have, instead of a "range
                # overlaps a move in progress" error for a request that succeeded.
                return live
        rows, avg = await self._estimates(cat, table)
        plan = cat.plan_rebalance(table, rows)
        for mv in plan["moves"]:
            mv.setdefault("rows_estimate", 0)
            mv["bytes_estimate"] = int(mv["rows_estimate"] * avg)
        plan["dry_run"] = bool(dry_run)
        plan["rows_estimate"] = sum(m["rows_estimate"] for m in plan["moves"])
        plan["bytes_estimate"] = sum(m["bytes_estimate"] for m in plan["moves"])
        if dry_run or not plan["moves"]:
            return plan
        ids = []
        for mv in plan["moves"]:
            rec = await self.b.catalog_op("move_create", {
                "table": plan["table"], "start": mv["start"], "end": mv["end"],
                "target": mv["target"], "rows_total": mv["rows_estimate"], "now": self.clock()})
            mv["move_id"] = rec["id"]
            ids.append(rec["id"])
        self._start(plan["colocation"], ids)
        return plan

    @staticmethod
    def _moving(cat, table):
        rec = cat.tables.get(table.lower())
        if rec is None:
            return None
        ms = [m for _, m in sorted(cat.moves.items(), key=lambda x: _mnum(x[0]))
              if m["colocation"] == rec["colocation"] and m["phase"] not in MOVE_END]
        if not ms:
            return None
        moves = [{"move_id": m["id"], "start": m["start"], "end": ks.end_to_json(m["end"]),
                  "range": ks.fmt_range(m["start"], m["end"]), "source": m["source"],
                  "target": m["target"], "rows_estimate": m.get("rows_total") or 0,
                  "phase": m["phase"]} for m in ms]
        return {"table": table.lower(), "colocation": rec["colocation"], "moves": moves,
                "dry_run": False, "already_moving": True,
                "rows_estimate": sum(m["rows_estimate"] for m in moves)}

    async def move_range(self, table, start, end, target, wait=False):
        """Move ``[start, end)`` (keyspace ids; ``end`` None = keyspace end) to ``target``.
        The range must lie within one owner's range (split first otherwise... which
        this does for you: the catalog splits at the bounds when it switches)."""
        cat = await self.b.catalog()
        rec = await self.b.catalog_op("move_create", {
            "table": table, "start": int(start), "end": ks.end_to_json(ks.end_from_json(end)),
            "target": target, "now": self.clock()})
        self._start(cat.tables[table.lower()]["colocation"], [rec["id"]])
        if wait:
            await self.wait([rec["id"]])
        return rec

    async def split(self, table, at=None, key=None):
        """Split the range holding keyspace id ``at`` (or the id of shard-key value
        ``key``) there. Ownership does not change, so no epoch moves."""
        cat = await self.b.catalog()
        rec = cat.table(table)
        if rec is None:
            raise NotFound(f"table {table} is not registered for sharding")
        if at is None:
            if key is None:
                raise BadRequest("give either 'at' (a keyspace id) or 'key' (a shard-key value)")
            at = ks.key_id(key, rec["shard_func"], rec.get("key_affinity"))
        await self.b.catalog_op("split", {"table": table, "at": int(at)})
        return {"table": table.lower(), "at": int(at), "range_starts_at": ks.fmt_range(int(at), ks.KEYSPACE_END)}

    async def remove_from_shard(self, table, shard, wait=False):
        await self.b.catalog_op("drain_shard", {"table": table, "shard": shard})
        plan = await self.plan(table, reuse=False)   # the drain's own moves
        ids = [m["move_id"] for m in plan["moves"]]

        async def finish():
            await self.wait(ids)
            cat = await self.b.catalog()
            col = cat.colocation_of(table)
            if shard not in col["owners"]:
                await self.b.catalog_op("remove_from_shard", {"table": table, "shard": shard})
        t = asyncio.get_running_loop().create_task(finish())
        if wait:
            await t
        plan["removing"] = shard
        return plan

    # ---- running ----------------------------------------------------------------------
    def _start(self, colocation, ids):
        prev = self._chains.get(colocation)

        async def chain():
            if prev is not None:
                # Wait for the previous chain however it ended. ``await prev`` would
                # re-raise its outcome here, and a chain that ``stop_all`` cancelled
                # (this node lost the default group's leadership mid-move) ends in
                # CancelledError, which no ``except Exception`` catches: every later
                # chain of this colocation on this node then died at once, so the
                # node never coordinated those moves again until it restarted (found
                # by the sharded nemesis: a move stuck in "copying" for good).
                await asyncio.wait({prev})
            for mid in ids:
                try:
                    await self._run_one(mid)
                except NotCoordinator as e:
                    log.info("move %s: stopped here, %s (the next leader resumes it)", mid, e)
                    raise
                except Exception as e:
                    self._note(mid, logging.WARNING, "move %s stopped by %s: %s (resumed within "
                               "a second while this node leads the default group)",
                               mid, type(e).__name__, e)
                    raise
        t = asyncio.get_running_loop().create_task(chain())
        # its outcome is logged above; a caller of wait() still sees it
        t.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._chains[colocation] = t
        for mid in ids:
            self.tasks[mid] = t

    def _note(self, key, level, msg, *args):
        """Log ``msg``, but a message repeated for ``key`` at most every 30 s (a step
        that keeps failing is retried each second by ``run_forever``)."""
        text = msg % args
        now = time.monotonic()
        last = self._notes.get(key)
        if last is not None and last[0] == text and now - last[1] < 30:
            log.debug(msg, *args)
            return
        self._notes[key] = (text, now)
        log.log(level, msg, *args)

    async def _run_one(self, mid):
        r = MoveRunner(self.b, mid, self.cfg, self.clock)
        r.hook = self.hook
        self.runners[mid] = r
        try:
            return await r.run()
        finally:
            self.finished[mid] = r.stats()
            self.runners.pop(mid, None)

    async def resume_all(self):
        """Resume every unfinished move (and clean cancelled ones) not running here."""
        cat = await self.b.catalog()
        todo = {}
        for mid, m in sorted(cat.moves.items(), key=lambda x: _mnum(x[0])):
            if mid in self.runners or (mid in self.tasks and not self.tasks[mid].done()):
                continue
            if m["phase"] not in MOVE_END or (m["phase"] != "done" and not m.get("cleaned")):
                todo.setdefault(m["colocation"], []).append(mid)
        for cname, ids in todo.items():
            self._start(cname, ids)
        return sum(len(v) for v in todo.values())

    async def run_forever(self, is_coordinator, every=1.0):
        """While ``is_coordinator()`` (the default group's leader), keep every move going."""
        while True:
            try:
                if is_coordinator():
                    await self.resume_all()
                else:
                    self.stop_all()   # a deposed leader must not keep writing to shards
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._note("resume", logging.WARNING, "rebalance: resuming moves failed: %s: %s",
                           type(e).__name__, e)
            await asyncio.sleep(every)

    def stop_all(self):
        """Cancel every move task running here (the catalog keeps their state)."""
        live = [t for t in set(self.tasks.values()) | set(self._chains.values()) if not t.done()]
        if live:
            log.warning("rebalance: this node no longer coordinates (not the default group's "
                        "leader); stopping move(s) %s here, the next leader resumes them from "
                        "the catalog", ", ".join(sorted(self.runners)) or "(queued)")
        for t in live:
            t.cancel()
        self.runners.clear()

    async def wait(self, ids=None, timeout=None):
        """Wait until the moves run here end -> ``{move id: phase}``. Raises the error
        that stopped a move; ``NotCoordinator`` when this node lost the default group's
        leadership meanwhile (``stop_all`` cancelled its tasks: the move goes on under
        the new leader); ``asyncio.TimeoutError`` after ``timeout`` (the moves go on)."""
        ids = list(ids if ids is not None else self.tasks)
        tasks = {i: self.tasks[i] for i in ids if i in self.tasks}
        if tasks:
            # asyncio.wait, not gather: a task cancelled by stop_all would otherwise
            # surface here as a bare CancelledError, which reads as if the *waiter* had
            # been cancelled (and no ``except Exception`` catches it); and a timeout
            # must not cancel the moves themselves.
            _, pending = await asyncio.wait(set(tasks.values()), timeout=timeout)
            if pending:
                raise asyncio.TimeoutError(
                    f"move(s) {', '.join(sorted(i for i, t in tasks.items() if t in pending))} "
                    f"still running after {timeout} s")
            for mid, t in sorted(tasks.items(), key=lambda x: _mnum(x[0])):
                exc = None if t.cancelled() else t.exception()
                if t.cancelled() or isinstance(exc, NotCoordinator):
                    why = ("this node lost the default group's leadership while coordinating "
                           "it and stopped" if exc is None else f"this node stopped ({exc})")
                    raise NotCoordinator(
                        f"move {mid}: {why}; the move continues on the new leader "
                        "(GET /table/rebalance/status on any node follows it)") from exc
                if exc is not None:
                    raise exc
        cat = await self.b.catalog()
        return {i: cat.moves[i]["phase"] for i in ids if i in cat.moves}

    async def cancel(self, move_id):
        cat = await self.b.catalog()
        m = cat.moves.get(move_id)
        if m is None:
            raise NotFound(f"no move {move_id!r}")
        if m["phase"] in MOVE_END:
            return {"move_id": move_id, "phase": m["phase"], "already": True}
        if MOVE_PHASES.index(m["phase"]) >= MOVE_PHASES.index("fenced"):
            raise BadRequest(f"move {move_id} is {m['phase']}: past its fence it can only finish")
        r = self.runners.get(move_id)
        if r is not None:
            r.cancel_requested = True
        # recorded in the catalog too, so a runner on another node (or a resumed one)
        # rolls back instead of fencing
        await self.b.catalog_op("move_update", {"move_id": move_id, "phase": "cancelled",
                                                "error": "cancelled by request",
                                                "updated": self.clock()})
        return {"move_id": move_id, "phase": "cancelled"}

    # ---- visibility -------------------------------------------------------------------
    async def status(self, table=None):
        cat = await self.b.catalog()
        now = self.clock()
        out = []
        for mid, m in sorted(cat.moves.items(), key=lambda x: _mnum(x[0])):
            if table and m["table"] != table.lower() and m["colocation"] != table.lower():
                continue
            out.append(move_status(m, now, self.runners.get(mid) or self.finished.get(mid)))
        return {"moves": out, "active": sum(1 for m in out if m["phase"] not in MOVE_END),
                "epoch": cat.epoch}

    def stats(self):
        return {"running": sorted(self.runners), "finished": len(self.finished),
                "config": {k: getattr(self.cfg, k) for k in RebalanceConfig.FIELDS}}


def move_status(m, now, runner=None):
    copied = m.get("rows_copied") or 0
    total = m.get("rows_total") or 0
    if isinstance(runner, MoveRunner) and runner.rows_copied > copied:
        copied = runner.rows_copied
    resume = m.get("resume") or {}
    started = resume.get("started")
    end = resume.get("copied_at") or (m.get("updated") if m["phase"] != "copying" else now)
    rate = copied / (end - started) if started and end and end > started and copied else 0.0
    to_go = max(0, total - copied) if m["phase"] in ("planned", "copying") else 0
    eta = to_go / rate if rate > 0 else None
    if m["phase"] in MOVE_END or m["phase"] not in ("planned", "copying"):
        eta = 0.0 if m["phase"] != "planned" else None
    fence = None
    if isinstance(runner, dict):
        fence = runner.get("fence_ms")
    elif runner is not None:
        fence = runner.fence_ms
    return {"move_id": m["id"], "table": m["table"], "colocation": m["colocation"],
            "range": ks.fmt_range(m["start"], m["end"]), "source": m["source"],
            "target": m["target"], "phase": m["phase"], "rows_copied": copied,
            "rows_total": total, "rows_to_go": to_go, "rows_per_s": round(rate, 1),
            "eta_s": None if eta is None else round(eta, 1), "error": m.get("error"),
            "checksum": m.get("checksum"), "fence_ms": fence,
            "progress": (min(1.0, copied / total) if total else (1.0 if m["phase"] == "done" else 0.0))}


def _mnum(mid):
    try:
        return (0, int(str(mid).lstrip("m")))
    except ValueError:
        return (1, str(mid))


class FakeMoveBackend:
    """``MoveBackend`` over ``sharding.fake.FakeCluster`` (in-process groups)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.executor = cluster.executor

    async def catalog(self):
        await asyncio.sleep(0)
        return self.cluster.catalog.copy()

    async def catalog_op(self, name, args):
        await asyncio.sleep(0)
        return copy.deepcopy(self.cluster.catalog.apply("catalog." + name, dict(args)))

    async def own_op(self, group, name, args):
        await asyncio.sleep(0)
        return self.cluster.groups[group].own.apply("own." + name, dict(args))
