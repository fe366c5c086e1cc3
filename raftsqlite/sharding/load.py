"""``POST /db/load`` into a sharded database: the registered tables' rows go to their shards.

Without this, a load went to the default group as it is, and the rows of a registered
table landed in its template there, where no routed query ever looks: answered 200, and
the rows were invisible. A SQLite file without a registered table even dropped the
template. Restoring a backup of a sharded database (sharding/backup.py) was impossible.

What a load does when tables are registered (``load_for``), on the default group's leader:
- A SQL dump that neither writes nor creates a registered table (a cheap scan: INSERT ...
  VALUES and CREATE TABLE by name, the planner for anything else) is loaded as before.
- Otherwise the data is treated as a database: a dump is first run into a scratch SQLite
  file (so it must create the tables it fills, as every backup dump does); a SQLite file
  is used as it is. Then, before anything changes:
  * every registered table must be in it, with the schema it is registered with (a file
    load replaces the default group's tables, templates included);
  * every registered table it has rows for must be empty on the shards (a load fills
    sharded tables; it does not replace their rows: ``DELETE FROM t`` first).
  Then the default group loads the file without the registered tables' rows (one
  all-or-nothing entry, as any load), the indexes and triggers of registered tables
  are fanned out to their shards (routed DDL, idempotent), and the rows are inserted
  through the router in parameterized batches, each with a request id (fresh per load),
  so a batch the router retries applies once. Across groups this is not one transaction: if a batch fails, the answer
  says which tables and how many rows were loaded before it (per table and per group),
  and nothing after, with what to do: ``DELETE FROM`` those tables and load again (the
  sharded tables were empty before, which the load checked). A success answers
  ``sharded_rows`` (per table) and ``rows_per_group``.
  Why not all-or-nothing: the default group's part replaces its whole database (one
  entry), and the sharded rows are inserts on other groups' logs; undoing them would
  need the old default database kept and a delete that cannot tell a loaded row from one
  a client wrote meanwhile. What makes a failure after the default part unlikely is
  checked first: every filled table's groups answer (the emptiness check is a
  ``strong`` read on every owner), and the rows come from a SQLite file with the
  registered schema, so its constraints already hold for them.
"""
import asyncio
import os
import re
import tempfile
import uuid

from raftsqlite import db_files, errors
from raftsqlite.db import Database, iter_sql
from raftsqlite.db_shapes import quote_ident

_NAME = r'("(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|[A-Za-z_][\w$]*)'
_INSERT = re.compile(r"\s*(?:INSERT|REPLACE)(?:\s+OR\s+\w+)?\s+INTO\s+" + _NAME +
                     r"\s*(?:\([^)]*\)\s*)?VALUES\s*\(", re.I)
_CREATE = re.compile(r"\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME, re.I)
_SKIP = ("BEGIN", "COMMIT", "END", "PRAGMA", "ROLLBACK")


def _unquote(name):
    if name[0] in '"`[':
        name = name[1:-1].replace('""', '"')
    return name.lower()


def _norm(sql):
    return " ".join((sql or "").split()).lower()


def dump_touches(path, registered, plan_kind):
    """True when the dump at ``path`` writes or creates a registered table. Streams it."""
    with open(path, encoding="utf-8") as f:
        for sql in iter_sql(f):
            m = _INSERT.match(sql) or _CREATE.match(sql)
            if m:
                if _unquote(m.group(1)) in registered:
                    return True
                continue
            if sql.lstrip()[:10].upper().startswith(_SKIP):
                continue
            try:
                if plan_kind(sql) != "default":
                    return True
            except errors.RaftSQLiteError:
                return True
    return False


class ShardedLoad:
    def __init__(self, svc, spool_dir):
        self.svc = svc
        self.spool_dir = spool_dir
        self._tmps = []

    def _tmp(self, tag):
        fd, path = tempfile.mkstemp(prefix=f".load-{tag}-", dir=self.spool_dir)
        os.close(fd)
        self._tmps.append(path)
        return path

    def cleanup(self):
        for p in self._tmps:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def run(self, path, fmt, request_id=None):
        svc = self.svc
        cat = svc.cache.current()
        registered = cat.tables
        if fmt == "sql":
            def plan_kind(sql):
                return svc.router.planner.plan(sql, cat).kind
            if not await self._in_thread(dump_touches, path, set(registered), plan_kind):
                return None
            db_path = self._tmp("scratch")
            with open(path, encoding="utf-8") as f:
                await self._in_thread(db_files.run_script, db_path, iter_sql(f))
        else:
            db_path = path
        have = await self._in_thread(db_files.tables_of, db_path)
        await self._check(registered, have)
        filled = [t for t in registered if have[t][2]]
        for t in filled:
            if await self._has_rows(t):
                raise errors.BadRequest(
                    f"sharded table {t} already has rows; a load fills sharded tables, it "
                    f"does not replace their rows. Nothing was changed. What to do: "
                    f"DELETE FROM {t} (through /db/execute), then load again")
        rest = self._tmp("default")
        await self._in_thread(db_files.copy_without_rows, db_path, rest, [have[t][0] for t in filled])
        res = await svc.node.store.load(rest, fmt="sqlite")
        await self._fan_out_ddl(registered, db_path)
        loaded = {}
        self.per_group = {}
        try:
            for t in filled:
                loaded[t] = 0
                await self._insert_rows(have[t][0], db_path, loaded, request_id)
        except errors.RaftSQLiteError as e:
            done = ", ".join(f"{k}: {n} rows" for k, n in loaded.items() if n) or "none"
            where = ", ".join(f"{g}: {n}" for g, n in sorted(self.per_group.items()) if n)
            raise type(e)(
                f"load not complete (it is not atomic across groups): the default group's "
                f"tables were loaded; rows of sharded tables loaded: {done}"
                + (f" (per group: {where})" if where else "") + f"; then: {e}. The rest was "
                "not loaded. What to do: DELETE FROM each sharded table named here "
                "(through /db/execute), then repeat the load (it replaces the default "
                "group's tables again and refuses sharded tables that still have rows)"
            ) from None
        out = dict(res) if isinstance(res, dict) else {"results": []}
        out["sharded_rows"] = loaded
        out["rows_per_group"] = dict(sorted(self.per_group.items()))
        return out

    def _count_groups(self, r, sql, params):
        """Add a batch's applied rows to ``per_group`` -> how many applied: a multi-group
        insert's result says per group; a one-group one does not name it, so route it
        (cached plan)."""
        per = r.get("shards")
        if isinstance(per, dict):
            n = 0
            for g, gr in per.items():
                if isinstance(gr, dict) and not gr.get("error"):
                    k = gr.get("rows_affected") or 0
                    self.per_group[g] = self.per_group.get(g, 0) + k
                    n += k
            return n
        if r.get("error"):
            return 0
        try:
            cat = self.svc.cache.current()
            calls = self.svc.router.planner.plan(sql, cat).route(cat, params).calls
            g = calls[0].group if len(calls) == 1 else "?"
        except (errors.RaftSQLiteError, AttributeError, IndexError):
            g = "?"
        n = r.get("rows_affected") or 0
        self.per_group[g] = self.per_group.get(g, 0) + n
        return n

    async def _check(self, registered, have):
        db = self.svc.node.store.db
        for t in sorted(registered):
            if t not in have:
                raise errors.BadRequest(
                    f"the data has no table {t}, which is registered for sharding; loading "
                    "it would drop the table's template in the default group. Nothing was "
                    "changed. What to do: include the table (empty is fine), or remove its "
                    "registration first (POST /table/remove)")
            live = await self._in_thread(
                db.read_internal, "SELECT sql FROM sqlite_schema WHERE type = 'table' "
                "AND lower(name) = ?", [t])
            if live and _norm(live[0][0]) != _norm(have[t][1]):
                raise errors.BadRequest(
                    f"table {t} in the data is not the one registered for sharding: "
                    f"{have[t][1]!r} against {live[0][0]!r}. Nothing was changed. What to "
                    "do: change the schema through /db/execute (routed DDL) first, or load "
                    "data with the registered schema")

    async def _has_rows(self, table):
        res = await self.svc.router.query([(f"SELECT 1 FROM {quote_ident(table)} LIMIT 1", None)],
                                          level="strong")
        r = res[0]
        if r.get("error"):
            raise errors.Unavailable(f"cannot check whether {table} is empty: {r['error']}")
        return bool(r.get("values"))

    async def _fan_out_ddl(self, registered, db_path):
        objs = await self._in_thread(
            Database.read_file_internal, db_path,
            "SELECT sql FROM sqlite_schema WHERE type IN ('index', 'trigger') "
            "AND sql IS NOT NULL AND lower(tbl_name) IN (%s)" % ",".join("?" * len(registered)),
            sorted(registered))
        for (sql,) in objs:
            res = await self.svc.router.execute([(sql, None)])
            errs = [r["error"] for r in res if isinstance(r, dict) and r.get("error")]
            if errs:
                raise errors.BadRequest(f"the data's {sql[:120]!r} failed on the shards: "
                                        f"{errs[0]}")

    async def _insert_rows(self, table, db_path, loaded, request_id):
        cols, batches = await self._in_thread(db_files.row_batches, db_path, table)
        collist = ",".join(quote_ident(c) for c in cols)
        one = "(" + ",".join("?" * len(cols)) + ")"
        k = 0
        while True:
            batch = await self._in_thread(next, batches, None)
            if batch is None:
                return
            sql = f"INSERT INTO {quote_ident(table)} ({collist}) VALUES " + ",".join([one] * len(batch))
            rid = f"{request_id}:{table}:{k}"
            params = [v for row in batch for v in row]
            res = await self.svc.router.execute([(sql, params)], request_id=rid)
            applied = self._count_groups(res[0], sql, params) \
                if res and isinstance(res[0], dict) else 0
            # a batch split over groups may apply on some of them and fail on another
            loaded[table.lower()] += applied
            errs = [r["error"] for r in res if isinstance(r, dict) and r.get("error")]
            if errs:
                raise errors.BadRequest(f"inserting rows of {table}: {errs[0]}")
            k += 1


async def load_for(svc, path, fmt, p, spool_dir):
    """The HTTP layer's sharded load (``RouterSQL.load``): the load's answer, or None for
    this node's plain load."""
    sid = getattr(p, "shard_id", None)
    if sid is not None:
        if sid != svc.group:
            raise errors.BadRequest(f"a load with shard_id={sid} must be sent to a member of "
                                    f"group {sid} (GET /shards lists them)")
        return None
    cat = svc.cache.current()
    if not cat.tables:
        return None
    if not svc.leads_default():
        raise svc.not_default_leader()
    job = ShardedLoad(svc, spool_dir)
    try:
        # Each batch's id derives from a fresh one per load: a batch the router retries
        # applies once, and an earlier load's ids never make this one's look like
        # retries. (A client retrying a whole load is refused by the empty-table check.)
        return await job.run(path, fmt, request_id=f"load-{uuid.uuid4().hex}")
    finally:
        job.cleanup()
