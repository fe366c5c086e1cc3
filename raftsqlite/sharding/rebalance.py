"""Online rebalancing (#7): move a key range of a colocation group between shards while
writes continue, losing and duplicating nothing.

One state machine per move, recorded in the catalog (``Catalog.moves``; phases in
``catalog.MOVE_PHASES``). The coordinator (``MoveRunner``) is stateless apart from what
the catalog and the shards hold, so any node can resume any move after a crash.

Phases and what makes each safe to repeat:

``planned -> copying``
    Change capture first: triggers on the source (one per table and kind of change)
    write the key of every changed row to ``_rs_changes`` *in the same SQLite
    transaction as the change* (a trigger runs inside the apply transaction of the
    source's FSM, so it is replicated and ordered with the write). ``IF NOT EXISTS``
    makes it idempotent. Then the range is copied in batches of distinct keys in key
    order; each batch is one linearizable read of the source and one transaction on
    the target that deletes those keys and inserts their rows (idempotent). The last
    key copied is saved as the resume cursor.
``catching_up``
    Replay the change log: for every logged key in the range, re-read the source's
    rows of that key and replace the target's (idempotent; the log is never consumed,
    only read from a cursor, so a restart replays it from the start).
``verifying``
    Catch up to change sequence S, then read the range on both sides and compare
    row count and an order-independent checksum (sum of per-row hashes mod 2**64)
    over the keys *not* changed after S (those cannot have moved on either side
    during the reads). Keys changed after S are verified again under the fence.
``fenced``
    The catalog records the phase and the fence (so routers wait instead of hitting),
    then the source's FSM fences the range: from that log position on, every write
    to the range is refused with ``Fenced`` (retryable; the router waits it out).
    Drain: every change after S is replayed and those keys are compared one by one.
``switched``
    ``catalog.move_switch`` gives the range to the target and bumps the epoch in one
    replicated op (compare: it refuses unless the move is fenced), so the catalog
    never has two owners or none. Then each shard's own view is replaced
    (``own.set_all``): the target first, then the source, which loses the range (and
    the fence with it): a stale router's write reaches the source and gets ``Fenced``
    until then and ``Moved`` after, never applied.
``cleaning -> done``
    Triggers dropped, the source's copy and the change log deleted in batches.

Roll back (cancel, or a failure before the switch): drop the triggers, lift the fence
(catalog and source), delete the target's rows of the range, mark ``cancelled`` or
``failed`` with ``cleaned``. Ownership never changed, so nothing is owned twice.

Only rows of a table with a rowid are supported (WITHOUT ROWID tables are refused at
move creation); the shard key may repeat (rows are moved per key).
"""
import asyncio
import logging
import time

from raftsqlite.codec.model import Statement
from raftsqlite.errors import (BadRequest, CoordinatorFenced, LeaderNotFound, NotFound,
                               NotLeader, OutcomeUnknown, ProposalDropped, RaftSQLiteError,
                               Timeout, Unavailable, Unreachable)
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import MOVE_END, MOVE_PHASES
from raftsqlite.sharding.ownership import token_guard
from raftsqlite.sharding.rebalance_rows import (
    _U64, CHANGES, Checksum, _check, _q, _Range, _rows, _sort_key, _union, key_from_json,
    key_to_json, row_hash)

log = logging.getLogger("raftsqlite.rebalance")


class RebalanceConfig:
    """Settings of the move workflow (data, with help text)."""

    FIELDS = {
        "batch_rows": (1000, "keys copied per batch (one read on the source, one transaction on the target)"),
        "max_rows_per_s": (0, "copy-rate limit in rows/s; 0 = unlimited"),
        "catchup_rounds": (50, "catch-up rounds before verifying regardless of the change rate"),
        "catchup_quiet": (200, "a catch-up round this small means the target has caught up"),
        "progress_every_s": (0.5, "how often rows_copied is written to the catalog"),
        "retry_s": (30.0, "how long a step retries a retryable error (leader change) before failing"),
    }

    def __init__(self, **kw):
        for k, (d, _) in self.FIELDS.items():
            setattr(self, k, kw.pop(k, d))
        if kw:
            raise BadRequest(f"unknown rebalance setting(s): {', '.join(sorted(kw))}")
        if not isinstance(self.batch_rows, int) or self.batch_rows < 1:
            raise BadRequest("batch_rows must be a positive integer")
        if self.max_rows_per_s < 0:
            raise BadRequest("max_rows_per_s must be >= 0")


class MoveBackend:
    """What the workflow needs from the node (the integrator implements it; tests use
    ``FakeMoveBackend``):

    - ``executor``: the router's ``GroupExecutor``; calls pass ``guard=None`` (internal
      statements bypass ownership checks; the target does not own the range yet).
      Reads must be linearizable on the group's leader.
    - ``async catalog() -> Catalog``: the authoritative catalog (read on the default
      group's leader after a barrier).
    - ``async catalog_op(name, args: dict) -> dict``: propose ``catalog.<name>``.
    - ``async own_op(group, name, args: dict) -> dict``: propose ``own.<name>`` in a shard.
    Errors are ``RaftSQLiteError``s; ``retryable`` ones are retried by the workflow.
    """


#: Catalog ops a coordinator sends with its fencing token (catalog refuses older ones).
_TOKENED_CATALOG_OPS = ("move_update", "move_switch", "fence", "unfence")
#: Errors after which nothing was applied: a leader change, no leader yet, never sent.
_NOT_APPLIED = (NotLeader, LeaderNotFound, ProposalDropped, Unreachable)
#: Errors after which a write may or may not have applied (a fault mid-request).
_AMBIGUOUS = (OutcomeUnknown, Timeout, Unavailable)


class Cancelled(RaftSQLiteError):
    code = "cancelled"


class NotCoordinator(RaftSQLiteError):
    """This node stopped being the coordinator (it lost the default group's leadership):
    the runner stops at once, neither finishing nor rolling back; the new leader's
    coordinator resumes the move from the catalog."""

    code = "not_coordinator"
    retryable = False


class MoveRunner:
    """Drives one move from whatever phase the catalog records to an end."""

    def __init__(self, backend, move_id, config=None, clock=time.time):
        self.b = backend
        self.ex = backend.executor
        self.id = move_id
        self.cfg = config or RebalanceConfig()
        self.clock = clock
        self.m = None
        self.cat = None
        self.tables = []      # [(table, key column)]
        self.change_seq = 0   # change-log cursor (in memory: a restart replays the log)
        self.verify_seq = None
        self.rows_copied = 0
        self.fence_started = None
        self.fence_ms = None
        self.cancel_requested = False
        self.token = None     # this coordinator's fencing token for the move (move_claim)
        self.hook = None      # tests: ``hook(phase_name)`` called at step boundaries

    # ---- plumbing ---------------------------------------------------------------------
    async def _retry(self, fn, *a, _idempotent=True, **kw):
        """Retry ``fn`` for ``retry_s`` on errors that say "try again": Moved/Fenced, a
        leader change or no leader yet (nothing applied), and, for idempotent steps
        (every read and shard write here: IF [NOT] EXISTS DDL, per-key replace, range
        deletes, own.* ops), a lost outcome or an unreachable member. Catalog ops retry
        only the errors that certainly applied nothing (``move_switch`` is a
        compare-and-set that a repeat would refuse)."""
        deadline = self.clock() + self.cfg.retry_s
        delay = 0.05
        tries, logged = 0, None
        while True:
            try:
                res = await fn(*a, **kw)
                if tries:
                    log.info("move %s: %s succeeded after %d retr%s", self.id, _what(fn, a),
                             tries, "y" if tries == 1 else "ies")
                return res
            except CoordinatorFenced as e:
                raise NotCoordinator(f"move {self.id}: {e}; this coordinator (token "
                                     f"{self.token}) stops") from e
            except RaftSQLiteError as e:
                again = (getattr(e, "retryable", False) or isinstance(e, _NOT_APPLIED)
                         or (_idempotent and isinstance(e, _AMBIGUOUS)))
                if not again or self.clock() > deadline:
                    if again:
                        log.warning("move %s: %s still failing after %d retries over %.0f s "
                                    "(%s: %s); giving up this step", self.id, _what(fn, a),
                                    tries, self.cfg.retry_s, type(e).__name__, e)
                    raise
                tries += 1
                now = time.monotonic()
                if logged is None or now - logged >= 10:
                    # the first failure of a step, then one line per 10 s while it lasts
                    logged = now
                    log.warning("move %s: %s failed (%s: %s); retrying (attempt %d, for up "
                                "to %.0f s)", self.id, _what(fn, a), type(e).__name__, e,
                                tries, max(0.0, deadline - self.clock()))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _read(self, group, sql, params=()):
        return _rows(await self._retry(self.ex.query, group, [Statement(sql, list(params))],
                                       guard=None))

    def _guard(self):
        """Writes bypass ownership (the target does not own the range yet) but carry the
        fencing token, so a shard refuses them once a newer coordinator has the move."""
        return None if self.token is None else token_guard(self.id, self.token)

    async def _write(self, group, stmts, transaction=True):
        st = [Statement(s, list(p) if p is not None else None) for s, p in stmts]
        return _check(await self._retry(self.ex.execute, group, st, transaction=transaction,
                                        guard=self._guard()))

    async def _claim(self):
        """Take the move over: a new fencing token from the catalog, announced to both
        shards before anything else, so from here on they refuse every request of a
        previous coordinator of this move (one still in flight from a deposed leader)."""
        self.m = await self._cat_op("move_claim", move_id=self.id)
        self.token = self.m["token"]
        try:
            await self._announce()
        except NotCoordinator:
            # A shard also refuses a first token that is not newer than one of a move
            # that ended there (``own.release``): this claim was made before that move's
            # last one and reached the shard after it ended. Claim once more, unless
            # another coordinator claimed this move since (then this one stops).
            self.m = await self._cat_op("move_claim", move_id=self.id, expect_token=self.token)
            self.token = self.m["token"]
            await self._announce()

    async def _announce(self):
        for g in (self.m["source"], self.m["target"]):
            await self._own_op(g, "claim")

    async def _release(self):
        """The move ended and its cleanup is done: both shards forget its token (keeping
        only the newest ended token), so their state does not grow with every move."""
        if self.token is not None:
            for g in (self.m["source"], self.m["target"]):
                await self._own_op(g, "release")

    async def _cat_op(self, name, **args):
        if self.token is not None and name in _TOKENED_CATALOG_OPS:
            args.setdefault("move_id", self.id)
            args["token"] = self.token
        res = await self._retry(self.b.catalog_op, name, args, _idempotent=False)
        if isinstance(res, dict) and "start" in res and "end" in res:
            res["end"] = ks.end_from_json(res["end"])   # JSON carries the keyspace end as null
        return res

    async def _own_op(self, grp, name, **args):
        if self.token is not None and name in ("claim", "fence", "unfence", "release"):
            args.update(move=self.id, token=self.token)
        return await self._retry(self.b.own_op, grp, name, args)

    async def _update(self, **kw):
        kw["updated"] = self.clock()
        before = (self.m or {}).get("phase")
        try:
            self.m = await self._cat_op("move_update", move_id=self.id, **kw)
        except BadRequest:
            if (await self._retry(self.b.catalog)).moves[self.id]["phase"] == "cancelled":
                raise Cancelled(f"move {self.id} was cancelled") from None
            raise
        if self.m.get("phase") == "cancelled":
            raise Cancelled(f"move {self.id} was cancelled")
        if "phase" in kw and kw["phase"] != before:
            self._log_phase(before, kw["phase"])
        return self.m

    def _log_phase(self, before, after, how=None):
        m = self.m or {}
        rng = ks.fmt_range(m.get("start", 0), ks.end_from_json(m.get("end")))
        log.info("move %s of %s (range %s, %s -> %s): %s (rows copied %s of ~%s)%s",
                 self.id, m.get("table"), rng, m.get("source"), m.get("target"),
                 f"phase {before} -> {after}" if how is None else f"{how} {after}",
                 m.get("rows_copied", self.rows_copied), m.get("rows_total"),
                 f"; error: {m['error']}" if m.get("error") else "")

    async def _load(self):
        self.cat = await self._retry(self.b.catalog)
        if self.id not in self.cat.moves:
            raise NotFound(f"no move {self.id!r}")
        self.m = self.cat.moves[self.id]
        cname = self.m["colocation"]
        self.func = self.cat.colocations[cname]["shard_func"]
        self.tables = sorted((t, r["shard_key"]) for t, r in self.cat.tables.items()
                             if r["colocation"] == cname)
        return self.m

    def _rng(self, key):
        return _Range(self.func, key, self.m["start"], self.m["end"])

    async def _at(self, name):
        if self.hook is not None:
            r = self.hook(name)
            if asyncio.iscoroutine(r):   # a test hook may wait without blocking the loop
                await r

    async def _cancel_check(self):
        if self.cancel_requested:
            raise Cancelled(f"move {self.id} was cancelled")

    # ---- the workflow -----------------------------------------------------------------
    async def run(self):
        """Run to ``done``, ``cancelled`` or ``failed``; returns the final record."""
        m = await self._load()
        self._log_phase(None, m["phase"], how="coordinating from phase")
        if m["phase"] not in MOVE_END or (m["phase"] != "done" and not m.get("cleaned")):
            await self._claim()
        try:
            if m["phase"] in MOVE_END:
                if m["phase"] != "done" and not m.get("cleaned"):
                    await self._rollback(m["phase"], m.get("error"))
                return self.m
            ph = MOVE_PHASES.index(m["phase"])
            if ph < MOVE_PHASES.index("fenced"):
                await self._copy()
                await self._catch_up()
                await self._verify()
                await self._fence_and_drain()
            elif m["phase"] == "fenced":
                # resumed under the fence: the pre-fence verification is lost, so the
                # whole range is verified again (the fence lasts longer, nothing else)
                self.verify_seq = None
                await self._fence_and_drain()
            await self._switch()
            await self._cleanup()
            return self.m
        except Cancelled:
            await self._rollback("cancelled", None)
            return self.m
        except NotCoordinator:
            raise
        except RaftSQLiteError as e:
            cur = await self._load()
            if MOVE_PHASES.index(cur["phase"]) >= MOVE_PHASES.index("switched") \
                    if cur["phase"] in MOVE_PHASES else False:
                raise  # past the switch a move only finishes: resume it later
            if cur["phase"] == "cancelled":
                await self._rollback("cancelled", None)
                return self.m
            log.warning("move %s failed (%s); rolling back", self.id, e)
            await self._rollback("failed", f"{type(e).__name__}: {e}")
            return self.m

    async def _ensure_target_schema(self):
        tgt = self.m["target"]
        for t, _ in self.tables:
            rows = await self._read(self.m["source"],
                                    "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? "
                                    "AND sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
                                    "AND type IN ('table', 'index') ORDER BY type = 'index'", [t])
            if not rows:
                raise BadRequest(f"table {t} does not exist on shard {self.m['source']}")
            if "WITHOUT ROWID" in rows[0][1].upper():
                raise BadRequest(f"table {t} is WITHOUT ROWID; moving it is not supported")
            for _typ, sql in rows:
                res = await self._retry(self.ex.execute, tgt, [Statement(sql)],
                                        guard=self._guard())
                err = res[0].get("error", "")
                if err and "already exists" not in err:
                    raise BadRequest(f"creating {t} on {tgt}: {err}")

    async def _install_capture(self):
        stmts = [(f"CREATE TABLE IF NOT EXISTS {CHANGES}(seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                  f"move TEXT NOT NULL, tbl TEXT NOT NULL, k)", None)]
        for t, key in self.tables:
            k = _q(key)
            log_ = f"INSERT INTO {CHANGES}(move, tbl, k) "
            for kind, body in (
                    ("INSERT", f"{log_}VALUES ('{self.id}', '{t}', NEW.{k});"),
                    # the new key only when the update changed it (one row, not two)
                    ("UPDATE", f"{log_}VALUES ('{self.id}', '{t}', OLD.{k}); {log_}SELECT "
                               f"'{self.id}', '{t}', NEW.{k} WHERE NEW.{k} IS NOT OLD.{k};"),
                    ("DELETE", f"{log_}VALUES ('{self.id}', '{t}', OLD.{k});")):
                stmts.append((f"CREATE TRIGGER IF NOT EXISTS {_q(self._trig(t, kind))} "
                              f"AFTER {kind} ON {_q(t)} BEGIN {body} END", None))
        await self._write(self.m["source"], stmts)

    def _trig(self, t, kind):
        return f"_rs_mv_{self.id}_{t}_{kind[0].lower()}"

    async def _drop_capture(self):
        stmts = [(f"DROP TRIGGER IF EXISTS {_q(self._trig(t, k))}", None)
                 for t, _ in self.tables for k in ("INSERT", "UPDATE", "DELETE")]
        await self._write(self.m["source"], stmts)

    async def _copy(self):
        m = self.m
        if m["phase"] == "planned":
            await self._ensure_target_schema()
            await self._install_capture()
            await self._at("capture_installed")
            total = 0
            for t, key in self.tables:
                w, p = self._rng(key).where()
                total += (await self._read(m["source"], f"SELECT count(*) FROM {_q(t)} WHERE {w}", p))[0][0]
            await self._update(phase="copying", rows_total=total, rows_copied=0,
                               resume={"started": self.clock(), "table": 0, "after": None})
        else:
            await self._ensure_target_schema()
            await self._install_capture()   # idempotent: a resumed move may predate it
        if self.m["phase"] != "copying":
            return
        resume = dict(self.m.get("resume") or {})
        resume.setdefault("started", self.clock())
        ti = resume.get("table", 0)
        after = key_from_json(resume.get("after"))
        self.rows_copied = self.m.get("rows_copied") or 0
        t0, rows0 = self.clock(), self.rows_copied
        last_report = self.clock()
        dirty = False
        while ti < len(self.tables):
            t, key = self.tables[ti]
            w, p = self._rng(key).where()
            while True:
                await self._cancel_check()
                wait = self._throttle_wait(t0, rows0)
                if dirty and wait >= self.cfg.progress_every_s:
                    # Save the cursor before a long wait: the wait can outlast this
                    # coordinator (a batch of many-row keys buys ``rows/rate`` seconds;
                    # the fault suite's took 35 s while the default group's leader
                    # changed every ~20 s), and progress not saved is copied again by
                    # the next one, so the copy never advanced.
                    resume.update(table=ti, after=key_to_json(after))
                    await self._update(rows_copied=self.rows_copied, resume=resume)
                    last_report, dirty = self.clock(), False
                    wait = self._throttle_wait(t0, rows0)
                if wait > 0:
                    await asyncio.sleep(wait)
                if after is None:
                    keys = await self._read(m["source"], f"SELECT DISTINCT {_q(key)} FROM {_q(t)} "
                                            f"WHERE {w} ORDER BY 1 LIMIT ?", p + [self.cfg.batch_rows])
                else:
                    keys = await self._read(m["source"], f"SELECT DISTINCT {_q(key)} FROM {_q(t)} "
                                            f"WHERE {_q(key)} > ? AND {w} ORDER BY 1 LIMIT ?",
                                            [after] + p + [self.cfg.batch_rows])
                if not keys:
                    break
                keys = [k[0] for k in keys]
                self.rows_copied += await self._sync_keys(t, key, keys)
                after, dirty = keys[-1], True
                await self._at("copy_batch")
                if self.clock() - last_report >= self.cfg.progress_every_s:
                    last_report, dirty = self.clock(), False
                    resume.update(table=ti, after=key_to_json(after))
                    await self._update(rows_copied=self.rows_copied, resume=resume)
            ti, after = ti + 1, None
        resume.update(table=ti, after=None, copied_at=self.clock())
        await self._update(phase="catching_up", rows_copied=self.rows_copied, resume=resume)
        await self._at("copied")

    def _throttle_wait(self, t0, rows0):
        """Seconds the next batch waits: it waits for its own budget first (one row
        per key assumed), so the copy's mean rate since ``t0`` stays under the limit;
        a batch of keys with many rows each is paid for after it."""
        rate = self.cfg.max_rows_per_s
        if not rate:
            return 0.0
        return (self.rows_copied - rows0 + self.cfg.batch_rows) / rate - (self.clock() - t0)

    async def _sync_keys(self, t, key, keys):
        """Make the target's rows of ``keys`` equal the source's now: one read request
        on the source, one transaction on the target (one Raft entry, one fsync), so
        the copy costs two round trips per batch. Idempotent. Returns rows written."""
        chunks = [keys[i:i + 400] for i in range(0, len(keys), 400)]
        reads = [Statement(f"SELECT * FROM {_q(t)} WHERE {_q(key)} IN ({','.join('?' * len(c))})",
                           list(c)) for c in chunks]
        res = await self._retry(self.ex.query, self.m["source"], reads, guard=None)
        stmts, n = [], 0
        for c, r in zip(chunks, res):
            if "error" in r:
                raise BadRequest(f"rebalance read failed: {r['error']}")
            cols, rows = r.get("columns") or [], r.get("values") or []
            stmts.append((f"DELETE FROM {_q(t)} WHERE {_q(key)} IN ({','.join('?' * len(c))})", c))
            if rows:
                collist = ",".join(_q(x) for x in cols)
                one = "(" + ",".join("?" * len(cols)) + ")"
                per = max(1, 900 // max(1, len(cols)))
                for j in range(0, len(rows), per):
                    part = rows[j:j + per]
                    stmts.append((f"INSERT INTO {_q(t)}({collist}) VALUES " + ",".join([one] * len(part)),
                                  [v for row in part for v in row]))
            n += len(rows)
        if stmts:
            await self._write(self.m["target"], stmts)
        return n

    async def _changes(self, upto=None):
        """Keys changed in the range after the cursor: ``{table: set(keys)}``, and the
        last sequence number read."""
        out = {}
        last = self.change_seq
        keycol = dict(self.tables)
        while True:
            rows = await self._read(self.m["source"], f"SELECT seq, tbl, k FROM {CHANGES} "
                                    "WHERE move = ? AND seq > ? ORDER BY seq LIMIT 5000",
                                    [self.id, last])
            for seq, t, k in rows:
                if upto is not None and seq > upto:
                    return out, last
                last = seq
                if t in keycol and self._rng(keycol[t]).contains(k):
                    out.setdefault(t, set()).add(k)
            if len(rows) < 5000:
                return out, last

    async def _apply_changes(self, changes):
        n = 0
        for t, keys in changes.items():
            key = dict(self.tables)[t]
            n += len(keys)
            await self._sync_keys(t, key, sorted(keys, key=_sort_key))
        return n

    async def _catch_up(self):
        if self.m["phase"] != "catching_up":
            return
        for _ in range(self.cfg.catchup_rounds):
            await self._cancel_check()
            ch, self.change_seq = await self._changes()
            n = await self._apply_changes(ch)
            await self._at("catchup_round")
            if n < self.cfg.catchup_quiet:
                break
        await self._update(phase="verifying")

    async def _range_hashes(self, group):
        """``{table: {key: [rows, sum of row hashes]}}`` of the range on ``group``,
        read in rowid pages (rowids differ between the sides; row values do not)."""
        out = {}
        for t, key in self.tables:
            w, p = self._rng(key).where()
            per = out.setdefault(t, {})
            after = -(1 << 63)
            ki = None
            while True:
                res = await self._retry(self.ex.query, group, [Statement(
                    f"SELECT rowid, * FROM {_q(t)} WHERE rowid > ? AND {w} ORDER BY rowid LIMIT 5000",
                    [after] + p)], guard=None)
                r = res[0]
                if "error" in r:
                    raise BadRequest(f"rebalance checksum read failed: {r['error']}")
                rows = r.get("values") or []
                if ki is None:
                    ki = (r.get("columns") or [])[1:].index(key) + 1
                for row in rows:
                    c = per.setdefault(row[ki], [0, 0])
                    c[0] += 1
                    c[1] = (c[1] + row_hash(row[1:])) & _U64
                if len(rows) < 5000:
                    break
                after = rows[-1][0]
        return out

    def _compare(self, src, tgt, exclude, what):
        """Compare per-key hashes outside ``exclude``; returns the total Checksum."""
        total = Checksum()
        for t, _ in self.tables:
            a, b = src.get(t, {}), tgt.get(t, {})
            skip = exclude.get(t, set())
            for k in set(a) | set(b):
                if k in skip:
                    continue
                if a.get(k) != b.get(k):
                    raise BadRequest(f"move {self.id}: {what} failed: table {t} key {k!r} has "
                                     f"{a.get(k, [0])[0]} row(s) on the source and "
                                     f"{b.get(k, [0])[0]} on the target, or different values")
                total.rows += a[k][0]
                total.sum = (total.sum + a[k][1]) & _U64
        return total

    async def _verify(self):
        if self.m["phase"] != "verifying":
            return
        # Converge to sequence S, read both sides, then learn which keys changed after S:
        # every other key was still on both sides while they were read, so it must match.
        ch, self.change_seq = await self._changes()
        await self._apply_changes(ch)
        s = self.change_seq
        src = await self._range_hashes(self.m["source"])
        tgt = await self._range_hashes(self.m["target"])
        late, _ = await self._changes()
        self.pre_checksum = self._compare(src, tgt, late, "verification")
        self.verify_seq = s
        self.verify_excluded = late
        await self._at("verified")

    async def _fence_and_drain(self):
        m = self.m
        await self._cancel_check()
        if m["phase"] != "fenced":
            await self._update(phase="fenced")
        await self._cat_op("fence", table=self.tables[0][0], start=m["start"], end=ks.end_to_json(m["end"]))
        self.fence_started = time.monotonic()
        await self._own_op(m["source"], "fence", colocation=m["colocation"], start=m["start"],
                           end=ks.end_to_json(m["end"]))
        await self._at("fenced")
        if self.cancel_requested or (await self._retry(self.b.catalog)).moves[self.id]["phase"] == "cancelled":
            raise Cancelled(f"move {self.id} was cancelled")
        if self.verify_seq is None:
            # no usable pre-fence check: sync everything logged, compare the whole range
            self.change_seq = 0
            ch, self.change_seq = await self._changes()
            await self._apply_changes(ch)
            total = self._compare(await self._range_hashes(m["source"]),
                                  await self._range_hashes(m["target"]), {},
                                  "verification under the fence")
        else:
            self.change_seq = self.verify_seq
            ch, self.change_seq = await self._changes()
            await self._apply_changes(ch)
            total = self.pre_checksum
            for t, keys in _union(ch, self.verify_excluded).items():
                a = await self._key_checksum(m["source"], t, keys)
                b = await self._key_checksum(m["target"], t, keys)
                if a != b:
                    raise BadRequest(f"move {self.id}: drained keys differ (source "
                                     f"{a.to_json()}, target {b.to_json()})")
                total = Checksum(total.rows + a.rows, (total.sum + a.sum) & _U64)
            total = Checksum(total.rows, total.sum)
        # (with a pre-fence check, keys changed after it count in both parts of "rows")
        self.m = await self._cat_op("move_update", move_id=self.id, checksum=total.to_json(),
                                    updated=self.clock())
        await self._at("drained")

    async def _key_checksum(self, group, t, keys):
        key = dict(self.tables)[t]
        out = Checksum()
        keys = sorted(keys, key=_sort_key)
        for i in range(0, len(keys), 400):
            chunk = keys[i:i + 400]
            rows = await self._read(group, f"SELECT * FROM {_q(t)} WHERE {_q(key)} IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
            for row in rows:
                out.add(row)
        return out

    async def _switch(self):
        m = self.m
        if m["phase"] == "fenced":
            self.m = await self._cat_op("move_switch", move_id=self.id)
            self._log_phase("fenced", "switched")
            await self._at("switched_catalog")
        await self._push_ownership()
        if self.fence_started is not None:
            self.fence_ms = (time.monotonic() - self.fence_started) * 1000
            log.info("move %s: ownership pushed to both shards; fenced for %.0f ms",
                     self.id, self.fence_ms)
        if self.m["phase"] == "switched":
            await self._update(phase="cleaning")

    async def _push_ownership(self):
        cat = await self._retry(self.b.catalog)
        m = self.m
        for g in (m["target"], m["source"]):
            await self._own_op(g, "set_all", group=g, cols=cat.ownership_for(g))
            await self._at("pushed_" + ("target" if g == m["target"] else "source"))

    async def _delete_range(self, group):
        """Delete the range's rows on ``group`` in rowid windows: each batch reads the next
        rowids of the range, then deletes that window (a seek, never a rescan from the
        start). Only called where nobody else writes the range (source after the switch,
        target of a rolled-back move)."""
        for t, key in self.tables:
            if not await self._read(group, "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                    "AND name = ?", [t]):
                continue   # a move rolled back before the target had the table
            w, p = self._rng(key).where()
            after = -(1 << 63)
            while True:
                rows = await self._read(group, f"SELECT rowid FROM {_q(t)} WHERE rowid > ? AND {w} "
                                        "ORDER BY rowid LIMIT 5000", [after] + p)
                if not rows:
                    break
                hi = rows[-1][0]
                await self._write(group, [(f"DELETE FROM {_q(t)} WHERE rowid > ? AND rowid <= ? AND {w}",
                                           [after, hi] + p)])
                after = hi
                if len(rows) < 5000:
                    break

    async def _cleanup(self):
        m = self.m
        if m["phase"] not in ("cleaning", "switched"):
            return
        await self._drop_capture()
        await self._delete_range(m["source"])
        await self._write(m["source"], [(f"DELETE FROM {CHANGES} WHERE move = ?", [self.id])])
        await self._at("cleaned")
        await self._release()
        await self._update(phase="done", cleaned=True)

    async def _rollback(self, phase, error):
        m = await self._load()
        if m["phase"] in MOVE_PHASES and MOVE_PHASES.index(m["phase"]) >= MOVE_PHASES.index("switched"):
            raise BadRequest(f"move {self.id} is past its switch; it can only finish")
        if m["phase"] not in MOVE_END:
            self.m = await self._cat_op("move_update", move_id=self.id, phase=phase, error=error,
                                        updated=self.clock())
            self._log_phase(m["phase"], phase)
        await self._cat_op("unfence", table=self.tables[0][0], start=m["start"],
                           end=ks.end_to_json(m["end"]))
        try:
            await self._own_op(m["source"], "unfence", colocation=m["colocation"], start=m["start"],
                               end=ks.end_to_json(m["end"]))
        except BadRequest:
            pass  # the source holds no such colocation: nothing fenced
        await self._at("rollback_unfenced")
        await self._drop_capture()
        await self._delete_range(m["target"])
        await self._write(m["source"], [(f"CREATE TABLE IF NOT EXISTS {CHANGES}(seq INTEGER PRIMARY KEY "
                                         "AUTOINCREMENT, move TEXT NOT NULL, tbl TEXT NOT NULL, k)", None),
                                        (f"DELETE FROM {CHANGES} WHERE move = ?", [self.id])])
        await self._release()
        self.m = await self._cat_op("move_update", move_id=self.id, cleaned=True, updated=self.clock())
        log.info("move %s: rolled back (%s): fences lifted, capture dropped, target's copy "
                 "deleted", self.id, self.m.get("phase"))

    def stats(self):
        return {"move_id": self.id, "rows_copied": self.rows_copied, "fence_ms": self.fence_ms}


def _what(fn, a):
    """A step's name for the log: ``query shard1``, ``catalog_op move_update``."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return f"{name} {a[0]}" if a and isinstance(a[0], str) else name
