"""SQLite through apsw: the node's database file, its connections and pragmas.

One writer connection, used only by the apply path (one executor thread). Reads use
per-thread read-only connections opened lazily; in WAL mode they never block the
writer and always see a committed state. Snapshots are online-backup copies taken from
a separate read connection inside one read transaction, so the writer keeps going while
a large file is copied. Restore copies pages into the live database through the writer,
so open readers simply see the new state after it commits.

The apsw-owning layer is this module and ``db_exec.py`` (the authorizer and the loops
that run statements on a connection); nothing else imports apsw, and only this module
sets pragmas. Statement results are neutral dicts (see ``db_exec.run_statement``);
nothing here knows HTTP.
"""
import contextlib
import itertools
import os
import random
import threading
import time

import apsw

from raftsqlite import db_ckpt
from raftsqlite.codec import rowid_results
from raftsqlite.codec.model import InsertRun
from raftsqlite.db_exec import (_BAD_PARAMS, TOO_LARGE, _Access, raise_disk_error, run_many,
                                 run_many_recorded, run_many_unreported, run_statement)
from raftsqlite.db_rowids import _MAX_ROWID, PROGRESS_STEPS, RowidCheck
from raftsqlite.db_shapes import CONN_FUNCTIONS, insert_shape, quote_ident
from raftsqlite.sqlrewrite import hide_internal, may_name_schema


_RO = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
_RW = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI


_JULIAN_EPOCH_MS = 210866760000000   # unix epoch expressed in Julian-day milliseconds
_vfs_ids = itertools.count(1)


class _ClockVFS(apsw.VFS):
    """The default VFS with one change: while ``now_ms`` is set, SQLite's idea of "now"
    (CURRENT_TIMESTAMP, 'now', column defaults, triggers) is that instant. The apply path
    sets it to the time carried in each log entry, so every replica computes the same
    values. Everything else is the base VFS."""

    def __init__(self, name):
        self.now_ms = None
        self.name = name
        super().__init__(name, base="")

    def xCurrentTimeInt64(self):
        ms = self.now_ms
        if ms is not None:
            return ms
        return super().xCurrentTimeInt64()


class ReadCancel:
    """Set ``cancelled`` (from any thread) to stop a ``Database.read`` in progress."""

    __slots__ = ("cancelled",)

    def __init__(self):
        self.cancelled = False


class Interrupted(Exception):
    """A read ran past its db_timeout and was interrupted."""


# PROGRESS_STEPS (defined in db_rowids, imported above): the writer's progress handler
# interval; a statement below it never calls into Python.


def budget_error(steps):
    return (f"request not applied: it ran past the write budget of {steps:,} SQLite steps "
            "(the leader's -max-apply-steps), so every member stopped it at the same "
            "point. Split the work into smaller statements (e.g. by key ranges), or raise "
            "-max-apply-steps on the leader (0 = no limit)")


class Database(RowidCheck):
    """The node's SQLite file: one writer, per-thread readers, backup and restore."""

    def __init__(self, path, *, busy_timeout_ms=5000, synchronous="NORMAL",
                 max_result_bytes=0, foreign_keys=False, extensions=(), checkpoint="background"):
        self.path = os.path.abspath(path)
        # "background": WAL checkpoints on a thread of their own, bounded (db_ckpt.py);
        # "inline": SQLite's default, by the committing connection (the apply path).
        if checkpoint not in ("background", "inline"):
            raise ValueError(f"checkpoint must be 'background' or 'inline', not {checkpoint!r}")
        self._ckpt = db_ckpt.Checkpointer(self._open_checkpointer) \
            if checkpoint == "background" else None
        # Group settings (group_settings.py): the same on every member, so every
        # connection of every member enforces foreign keys, and loads the same
        # extension files, alike. ``extensions``: paths of extension files.
        self.foreign_keys = bool(foreign_keys)
        self.extensions = tuple(extensions)
        self.max_result_bytes = max_result_bytes    # 0 = unbounded (db_exec.fetch_more_bounded)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        self._readers = []            # every reader opened, so close() can close them
        self._readers_lock = threading.Lock()
        self._write_access = _Access(self.foreign_keys, track=True)
        self._functions = {}
        self._rowid_init()            # random rowids (db_rowids.RowidCheck)
        # The apply budget (see set_step_budget) and the inline-apply deadline, both
        # enforced by the writer's progress handler on user statements only.
        self.step_budget = 0
        self._result_bound = 0        # rows a write's statements may return (bytes; 0 = any)
        self.result_refused = None    # the error, once a write's rows passed that bound
        self._budget_calls = 0        # progress calls a request may make (0 = no limit)
        self._calls = 0
        self.budget_tripped = False
        self._deadline = None         # time.monotonic() bound of an inline apply, or None
        self.deadline_passed = False
        self.writer = self._open_writer()
        self._rowid_cur = self.writer.cursor()
        self.stats_counters = {"reads": 0, "read_errors": 0, "interrupted": 0,
                               "snapshots": 0, "restores": 0, "inline_reads": 0,
                               "inline_fallbacks": 0, "sequential_runs": 0,
                               "multirow_runs": 0, "targets_learned": 0,
                               "rowid_bound_hits": 0}

    # ---- connections ---------------------------------------------------------------
    def create_function(self, name, nargs, fn, deterministic=True):
        """Register a SQL function on the writer and on every reader (present and future),
        e.g. the sharding layer's keyspace functions."""
        self._functions[name] = (nargs, fn, deterministic)
        with self._readers_lock:
            conns = [self.writer] + list(self._readers)
        for c in conns:
            self._register(c, name, nargs, fn, deterministic)

    @staticmethod
    def _register(conn, name, nargs, fn, deterministic):
        conn.create_scalar_function(name, fn, nargs, deterministic=deterministic)

    def _open_writer(self):
        try:
            self._clock = _ClockVFS(f"raftsqlite-clock-{os.getpid()}-{next(_vfs_ids)}")
            conn = apsw.Connection(self.path, flags=_RW, vfs=self._clock.name)
        except apsw.Error:
            self._clock = None   # no deterministic clock; rewriting still covers most 'now'
            conn = apsw.Connection(self.path, flags=_RW)
        conn.set_busy_timeout(self.busy_timeout_ms)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
        if mode.lower() != "wal":
            raise apsw.CantOpenError(f"could not switch {self.path} to WAL (got {mode})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        if self._ckpt is not None:
            conn.set_wal_hook(self._ckpt.hook)
        else:
            db_ckpt.install_traced(conn)
        self._group_setup(conn)
        conn.authorizer = self._write_access.authorize
        conn.set_progress_handler(self._progress, PROGRESS_STEPS)
        # random()/randomblob() evaluated while applying (in defaults, triggers, or any
        # form the rewriter left alone) come from a generator seeded per log entry; the
        # seeding (a few µs) waits for the first use, as almost no entry calls them
        self._rng = random.Random(0)
        self._rng_seed = None
        conn.create_scalar_function("random", lambda: self._seeded().getrandbits(64) - (1 << 63),
                                    0, deterministic=False)
        conn.create_scalar_function("randomblob", self._randomblob, 1, deterministic=False)
        # total_changes() counts from the request's start (reset_conn_state), not from
        # when this member's connection opened
        self._tc_base = 0
        self._schema_cs = None      # unknown until the first entry
        conn.create_scalar_function("total_changes",
                                    lambda: conn.total_changes() - self._tc_base, 0,
                                    deterministic=False)
        return conn

    def _open_checkpointer(self):
        conn = apsw.Connection(self.path, flags=_RW)
        conn.set_busy_timeout(self.busy_timeout_ms)
        # a checkpoint syncs as its connection's setting says: the writer's
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    def _group_setup(self, conn):
        """The group settings on one connection: foreign keys (readers too, so
        ``PRAGMA foreign_keys`` reads the group's value anywhere) and the extensions.
        Loading is switched on only around our own loads: ``load_extension()`` in SQL
        stays refused."""
        if self.foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
        if self.extensions:
            conn.enable_load_extension(True)
            try:
                for path in self.extensions:
                    try:
                        conn.load_extension(path)
                    except apsw.Error as e:
                        raise apsw.ExtensionLoadingError(
                            f"could not load SQLite extension {path}: {e}") from None
            finally:
                conn.enable_load_extension(False)

    def deferred_fk_violations(self) -> bool:
        """Whether the writer's transaction holds foreign key violations not yet resolved
        (deferred constraints, or any under ``PRAGMA defer_foreign_keys``)."""
        return self.writer.status(apsw.SQLITE_DBSTATUS_DEFERRED_FKS)[0] > 0

    def _randomblob(self, n):
        try:
            n = max(1, int(n))
        except (TypeError, ValueError):
            n = 1
        return self._seeded().getrandbits(8 * n).to_bytes(n, "big")

    def _seeded(self):
        """The generator, seeded for the current entry if this is its first use there."""
        seed = self._rng_seed
        if seed is not None:
            self._rng_seed = None
            self._rng.seed(seed)
        return self._rng

    def set_entry_context(self, index, term, clock_ms=None):
        """Called by the apply path before each entry: the entry's instant (Julian-day
        ms, or None for the real clock) and a random seed derived from its position."""
        if self._clock is not None:
            self._clock.now_ms = clock_ms
        self._rng_seed = index * 1_000_003 + term

    # ---- the apply budget (writer, apply thread) ------------------------------------
    def set_step_budget(self, steps):
        """The current entry's budget of SQLite VM steps per request (0 = none): the
        leader's -max-apply-steps, carried in the entry, so every member uses the same."""
        self.step_budget = steps if steps > 0 else 0
        self.budget_tripped = False
        self._budget_calls = max(1, steps // PROGRESS_STEPS) if steps > 0 else 0

    def reset_conn_state(self):
        """Start a request from a known connection state: changes() and
        last_insert_rowid() 0, total_changes() counting from here. What ran on the writer
        before (the previous request, our own statements, where an apply call began)
        differs between members, so a request that reads these must not see it."""
        self.writer.set_last_insert_rowid(0)
        self.internal("DELETE FROM _raftsqlite_meta WHERE 0")   # changes() = 0
        self._tc_base = self.writer.total_changes()

    def schema_calls_conn_functions(self) -> bool:
        """Whether a table default, trigger or view calls changes(), total_changes() or
        last_insert_rowid() (then every entry starts from a reset connection: what ran
        before it on this member's writer differs between members). Recomputed after a
        schema change on the writer or a restore."""
        acc = self._write_access
        if acc.ddl or self._schema_cs is None:
            # (a schema change is always authorized after the previous one: SQLite
            # prepares a DDL statement again once the schema moved, so the flag is sound)
            acc.ddl = False
            self._schema_cs = any(
                sql and CONN_FUNCTIONS.search(sql)
                for (sql,) in self.internal("SELECT sql FROM sqlite_master"))
        return self._schema_cs

    def drop_temp(self):
        """Drop every TEMP object on the writer: they live on the connection, so one left
        by a request would be there for later requests on this member only until it
        restarts or restores a snapshot (then the replicas would differ)."""
        objs = self.internal("SELECT type, name FROM temp.sqlite_master "
                             "WHERE type IN ('table', 'view', 'trigger')")
        for typ, name in objs:
            if typ == "table" and name.startswith("sqlite_"):
                continue
            self.internal(f"DROP {typ.upper()} IF EXISTS temp.{quote_ident(name)}")

    def set_result_bound(self, max_bytes):
        """The current entry's bound on the rows a write request's statements return
        (RETURNING): the leader's -max-result-bytes, carried in the entry (0 = none)."""
        self._result_bound = max_bytes if max_bytes > 0 else 0

    def budget_begin(self):
        """A request (or a run of one-statement requests) starts: its count starts at 0.

        The count is the number of progress-handler calls during its user statements.
        For a prepared statement reused from the cache, the first call comes after fewer
        than PROGRESS_STEPS steps (SQLite counts steps over the statement's whole life),
        so this count is at least the exact one, floor(steps / PROGRESS_STEPS) per
        statement run, that a freshly prepared statement gives (``fresh``), and at most
        one more per statement run. The state machine uses that: within budget on the
        cached count means within budget exactly; past it, it re-runs the request
        with fresh statements, whose count is the same on every member."""
        self._calls = 0
        self.budget_tripped = False
        self.result_refused = None
        self._rowid_begin()
        # A result's last_insert_id is the connection's last rowid, which for a request
        # that inserts nothing (a DELETE) is whatever ran before on this member's writer
        # (our own bookkeeping rows included), and it is stored with the request id: so
        # each request starts from 0, the same on every member.
        self.writer.set_last_insert_rowid(0)

    def set_apply_deadline(self, deadline):
        """``time.monotonic()`` after which user statements are interrupted (an inline
        apply on the event loop; the state machine then undoes the whole apply), or
        None."""
        self._deadline = deadline
        self.deadline_passed = False

    def _progress(self):
        if self._write_access.internal:
            return False        # our own statements: never counted, never stopped
        d = self._deadline
        if d is not None and time.monotonic() > d:
            self.deadline_passed = True
            return True
        lim = self._budget_calls
        if lim:
            self._calls += 1
            if self._calls > lim:
                self.budget_tripped = True
                return True
        return False

    @staticmethod
    def clock_now_ms() -> int:
        """This machine's "now" in the unit the clock VFS uses."""
        return int(time.time() * 1000) + _JULIAN_EPOCH_MS

    def reader(self):
        """This thread's read-only connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = apsw.Connection(self.path, flags=_RO)
            conn.set_busy_timeout(self.busy_timeout_ms)
            self._group_setup(conn)
            access = _Access(self.foreign_keys)
            conn.authorizer = access.authorize
            for name, (nargs, fn, det) in list(self._functions.items()):
                self._register(conn, name, nargs, fn, det)
            self._local.conn = conn
            self._local.access = access
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self):
        if self._ckpt is not None:
            self._ckpt.close()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for c in readers:
            try:
                c.close(True)
            except apsw.Error:
                pass
        try:
            self.writer.close(True)
        except apsw.Error:
            pass
        if self._clock is not None:
            try:
                self._clock.unregister()
            except apsw.Error:
                pass

    # ---- the writer (apply path only) ---------------------------------------------
    def internal(self, sql, params=None):
        """Run one of our own statements on the writer; may touch _raftsqlite_* tables."""
        acc = self._write_access
        prev, acc.internal = acc.internal, True
        try:
            if params is None:
                return self.writer.execute(sql).fetchall()
            return self.writer.execute(sql, params).fetchall()
        finally:
            acc.internal = prev

    def run_user(self, sql, params=None, fresh=False):
        """Run a client statement on the writer (inside the apply transaction).
        ``fresh``: prepare it anew instead of taking it from the statement cache, so its
        step count (``budget_begin``) is exact."""
        r = run_statement(self.writer, sql, params, self._result_bound, fresh)
        lid = r.get("last_insert_id")
        if lid is not None and lid > self._req_rowmax:
            self._req_rowmax = lid
        self.note_targets(sql, True)
        if self._result_bound and "error" in r and r["error"].startswith(TOO_LARGE):
            # The statement's changes are made by then (RETURNING runs the whole write
            # first): the state machine undoes the request rather than answer an error
            # for a write that was applied.
            self.result_refused = (
                f"request not applied: a statement returned more than "
                f"{self._result_bound:,} bytes of rows (the leader's -max-result-bytes); "
                "return fewer columns or rows (e.g. RETURNING id), or split the write")
        return r

    def run_user_many(self, sql, params_list, out, stop_on_error=False, fk_check=False):
        """Run one SQL text (known to return no rows: a previous execution of it gave a
        write result) once per parameter set, appending to ``out`` exactly the dicts
        ``run_user`` would give. Returns True when ``stop_on_error`` stopped it at a
        failing statement, False when all ran, None when a statement ended the
        transaction (the caller re-runs its batch)."""
        top = [0]
        try:
            return run_many(self.writer, sql, params_list, out, stop_on_error, fk_check, top)
        finally:
            if top[0] > self._req_rowmax:
                self._req_rowmax = top[0]
            self.note_targets(sql, True)

    def run_user_many_recorded(self, sql, params_list, rids, dump, out, first=None):
        """``run_user_many`` (stopping at a failing statement) that also records each
        request's dedup row right after its statement (see ``run_many_recorded``)."""
        top = [0]
        try:
            return run_many_recorded(self.writer, self._write_access, sql, params_list,
                                     rids, dump, out, first, top)
        finally:
            if top[0] > self._req_rowmax:
                self._req_rowmax = top[0]
            self.note_targets(sql, True)

    def last_insert_rowid(self) -> int:
        return self.writer.last_insert_rowid()

    def run_user_unreported(self, sql, rows):
        """``run_many_unreported`` on the writer (see there), through multi-row
        statements when ``sequential_insert`` allows them (``InsertShape``)."""
        try:
            return self._run_unreported(sql, rows)
        finally:
            self.note_targets(sql)

    def _run_unreported(self, sql, rows):
        shape = self.sequential_insert(sql)
        if shape is not None and shape.fits(rows):
            conn = self.writer
            try:
                shape.insert(conn, rows)
            except (apsw.Error, *_BAD_PARAMS) as e:
                raise_disk_error(e, conn)
                return True if conn.in_transaction else None
            self.stats_counters["multirow_runs"] += 1
            return False if conn.in_transaction else None
        return run_many_unreported(self.writer, sql, rows)

    def sequential_insert(self, sql):
        """An ``InsertShape`` when every execution of ``sql`` (inside the apply
        transaction, nothing else writing) inserts exactly one row whose rowid is the
        table's largest rowid plus one (see ``db_shapes.insert_shape``), else None.
        ``run_user_sequential`` relies on it."""
        return insert_shape(sql, self.internal, clock_pinned=self._clock is not None)

    def run_user_sequential(self, sql, shape, rows, first_rowid, out, lazy=False):
        """Rows 1.. of a bulk run whose first row just inserted ``first_rowid``, through
        multi-row statements or executemany, when ``sequential_insert(sql)`` gave
        ``shape`` (an ``InsertShape``): every row then
        inserts one row with rowid = largest + 1, so row k's result is
        ``{"last_insert_id": first_rowid + k, "rows_affected": 1}``. That is proved after
        the fact (every row ran, one change each, and the largest rowid is exactly
        ``first_rowid + len(rows)``, below the limit where SQLite picks random rowids);
        otherwise everything is undone and False is returned (the caller runs the rows
        the exact way). True when the results were appended; None when a row ended the
        whole transaction. ``lazy`` (``out`` an InsertRun with nothing pending): the
        results are left pending in ``out`` instead of built (InsertRun.pending)."""
        conn = self.writer
        n = len(rows)
        last = first_rowid + n
        if last >= _MAX_ROWID:
            return False
        self.internal("SAVEPOINT _raftsqlite_seq")
        t0 = time.perf_counter()
        before = conn.total_changes()
        ok = False
        multi = shape.fits(rows)
        try:
            if multi:
                shape.insert(conn, rows)
            else:
                conn.cursor().executemany(sql, rows)
            ok = (conn.total_changes() - before == n and conn.last_insert_rowid() == last
                  and self.internal(f"SELECT max(rowid) FROM {quote_ident(shape.table)}")
                  == [(last,)])
        except (apsw.Error, *_BAD_PARAMS) as e:
            raise_disk_error(e, conn)
            ok = False
        finally:
            self.note_targets(sql)
        if not conn.in_transaction:
            return None     # a row ended the transaction (the caller re-runs the batch)
        if not ok:
            self.internal("ROLLBACK TO _raftsqlite_seq")
            self.internal("RELEASE _raftsqlite_seq")
            return False
        self.internal("RELEASE _raftsqlite_seq")
        self.stats_counters["sequential_runs"] += 1
        if multi:
            self.stats_counters["multirow_runs"] += 1
        pending = (first_rowid + 1, n, (time.perf_counter() - t0) / n)
        if lazy and type(out) is InsertRun and out.pending is None:
            out.pending = pending
        else:
            out.extend(rowid_results(*pending))
        return True

    def in_transaction(self) -> bool:
        return self.writer.in_transaction

    # ---- reads (reader threads) ----------------------------------------------------
    def read(self, statements, *, transaction=False, db_timeout=None, internal=False,
             cancel=None):
        """Run (sql, params) pairs on this thread's reader; one result dict each. With
        ``transaction`` all statements see one snapshot. ``db_timeout`` (seconds)
        interrupts SQLite when exceeded; so does ``cancel.cancelled`` turning true (a
        ``ReadCancel``: the client went away)."""
        conn = self.reader()
        access = self._local.access
        access.internal = internal
        bounded = bool(db_timeout) or cancel is not None
        if bounded:
            deadline = time.monotonic() + db_timeout if db_timeout else None
            if cancel is None:
                conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
            elif deadline is None:
                conn.set_progress_handler(lambda: cancel.cancelled, 1000)
            else:
                conn.set_progress_handler(
                    lambda: cancel.cancelled or time.monotonic() > deadline, 1000)
        results = []
        try:
            if transaction:
                access.internal = True
                conn.execute("BEGIN")
                access.internal = internal
            try:
                for sql, params in statements:
                    if not internal and may_name_schema(sql):
                        sql = hide_internal(sql)   # the node's tables stay out of sight
                    r = run_statement(conn, sql, params, self.max_result_bytes)
                    if "error" in r:
                        self.stats_counters["read_errors"] += 1
                        if r["error"].startswith("query interrupted"):
                            self.stats_counters["interrupted"] += 1
                    results.append(r)
            finally:
                if transaction:
                    access.internal = True
                    conn.execute("COMMIT" if conn.in_transaction else "SELECT 1")
        finally:
            access.internal = False
            if bounded:
                conn.set_progress_handler(None)
        self.stats_counters["reads"] += len(results)
        return results

    def read_inline(self, statements, *, transaction=False, budget=0.002):
        """Like ``read`` but meant for the event loop thread: SQLite is interrupted once
        ``budget`` seconds pass, and then None is returned so the caller re-runs the read
        on a reader thread. Point reads finish in microseconds, far cheaper than a thread
        hop; a long read costs at most ``budget`` of loop time."""
        conn = self.reader()
        deadline = time.monotonic() + budget
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 500)
        conn.set_busy_timeout(0)    # never sleep on a lock on the loop: fall back instead
        try:
            res = self.read(statements, transaction=transaction)
        finally:
            conn.set_progress_handler(None)
            conn.set_busy_timeout(self.busy_timeout_ms)
        for r in res:
            err = r.get("error", "")
            if err.startswith("query interrupted") or "database is locked" in err:
                self.stats_counters["inline_fallbacks"] += 1
                return None
        self.stats_counters["inline_reads"] += 1
        return res

    def read_internal(self, sql, params=None):
        conn = self.reader()
        access = self._local.access
        access.internal = True
        try:
            return conn.execute(sql, params).fetchall() if params is not None \
                else conn.execute(sql).fetchall()
        finally:
            access.internal = False

    # ---- snapshots -------------------------------------------------------------------
    def backup_to(self, path, flush_bytes=8 << 20):
        """Consistent copy of the database into ``path`` (atomically replaced, fsynced).
        Copies inside one read transaction of a separate connection, so the writer is
        never blocked; the copy is a plain rollback-journal SQLite file.

        The copy is written and flushed ``flush_bytes`` at a time: one fsync of a whole
        1 GB copy at the end queued ~1 GB of writeback in front of the Raft log's
        fdatasync, which then waited 100-200 ms (docs/design/store.md, "Snapshots")."""
        tmp = path + ".tmp"
        for p in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
            if os.path.exists(p):
                os.unlink(p)
        src = apsw.Connection(self.path, flags=_RO)
        try:
            # Pin one WAL snapshot for the whole copy: the backup then steps through it in
            # pieces and never restarts, however many commits the writer makes meanwhile
            # (it only restarts when its source connection starts a new read transaction).
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_schema").fetchall()
            dst = apsw.Connection(tmp, flags=_RW)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                # No journal or syncs of SQLite's own on the temp copy (a crash leaves a temp
                # file that is deleted next time); a small cache makes the backup spill its
                # pages to the file as it goes, so each step leaves ~flush_bytes dirty.
                dst.execute("PRAGMA journal_mode=OFF")
                dst.execute("PRAGMA synchronous=OFF")
                dst.execute("PRAGMA cache_size=-2048")
                page = src.execute("PRAGMA page_size").fetchall()[0][0]
                step = max(16, flush_bytes // page)
                with dst.backup("main", src, "main") as b:
                    while not b.done:
                        b.step(step)
                        os.fdatasync(fd)
                # the copy carries the source's WAL mark; make it a plain file
                dst.execute("PRAGMA journal_mode=DELETE")
                dst.close()
                os.fsync(fd)
            finally:
                os.close(fd)
                dst.close()
            src.execute("COMMIT")
        finally:
            src.close()
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
        self.stats_counters["snapshots"] += 1

    def copy_files_to(self, path):
        """Fast consistent copy for the apply thread only: with no write in progress (the
        caller is the writer's own thread, between transactions) and no other connection
        able to write or checkpoint (readers are read-only), the database file plus its
        WAL *is* a consistent state. Copy both at file speed, then fold the WAL into the
        copy and make it a plain file. About 3x faster than the backup API, which matters
        because the writer waits for it."""
        import shutil
        tmp = path + ".tmp"
        for p in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
            if os.path.exists(p):
                os.unlink(p)
        with self._paused():
            shutil.copyfile(self.path, tmp)
            if os.path.exists(self.path + "-wal"):
                shutil.copyfile(self.path + "-wal", tmp + "-wal")
        dst = apsw.Connection(tmp, flags=_RW)
        try:
            dst.execute("PRAGMA journal_mode=DELETE")   # checkpoints and drops the WAL
        finally:
            dst.close()
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
        self.stats_counters["snapshots"] += 1

    def restore_from(self, path):
        """Replace the whole database by the SQLite file at ``path`` (writer thread).
        Readers keep working and see the new state once it commits."""
        self._schema_cs = None      # the schema may be another one now
        self._rowid_q.clear()
        self._top.clear()
        with self._paused():
            self._restore_from(path)
        self.stats_counters["restores"] += 1

    def _paused(self):
        """No background checkpoint inside: the raw file copy above assumes only the
        writer (this thread) may change the files."""
        return self._ckpt.paused() if self._ckpt is not None else contextlib.nullcontext()

    def _restore_from(self, path):
        src = apsw.Connection(f"file:{os.path.abspath(path)}?immutable=1", flags=_RO)
        try:
            acc = self._write_access
            acc.internal = True
            try:
                with self.writer.backup("main", src, "main") as b:
                    b.step(-1)
            finally:
                acc.internal = False
        finally:
            src.close()
        try:
            # shrink the WAL the restore filled; a reader still in an old snapshot may
            # keep it from finishing, which is harmless (autocheckpoint goes on later)
            self.writer.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.BusyError:
            pass

    @staticmethod
    def read_file_internal(path, sql, params=()):
        """Run one query against another SQLite file (a snapshot), read-only."""
        c = apsw.Connection(f"file:{os.path.abspath(path)}?immutable=1", flags=_RO)
        try:
            return c.execute(sql, params).fetchall()
        finally:
            c.close()

    @staticmethod
    def is_sqlite_file(path) -> bool:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"

    # ---- dumps and checks ----------------------------------------------------------
    def user_objects(self, conn=None):
        """(type, name, tbl_name, sql) of every user schema object, tables first."""
        conn = conn or self.reader()
        rows = _internal_query(conn, "SELECT type, name, tbl_name, sql FROM sqlite_schema "
                               "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                               "AND name NOT LIKE '\\_raftsqlite\\_%' ESCAPE '\\' "
                               "AND sql IS NOT NULL")
        order = {"table": 0, "index": 1, "view": 2, "trigger": 3}
        return sorted(rows, key=lambda r: (order.get(r[0], 4), r[1]))

    def iterdump(self, tables=None, path=None):
        """SQL text that recreates the user tables (or only ``tables``) with their rows,
        one statement per item, from one consistent snapshot. ``path`` dumps another file."""
        conn = apsw.Connection(f"file:{os.path.abspath(path)}?immutable=1", flags=_RO) \
            if path else apsw.Connection(self.path, flags=_RO)
        try:
            if self.extensions:
                # a table may use an extension's collation or virtual-table module
                self._group_setup(conn)
            conn.execute("BEGIN")
            objs = self.user_objects(conn)
            if tables:
                wanted = {t.lower() for t in tables}
                objs = [o for o in objs if o[2].lower() in wanted]
            yield "PRAGMA foreign_keys=OFF;"
            yield "BEGIN TRANSACTION;"
            if self.foreign_keys:
                # -fk: a load of this dump enforces foreign keys (deferred to its end), and
                # a row may only name a table that exists: every table comes first
                for typ, name, tbl, sql in objs:
                    if typ == "table":
                        yield sql + ";"
            for typ, name, tbl, sql in objs:
                if typ != "table":
                    continue
                if sql.upper().startswith("CREATE VIRTUAL TABLE"):
                    if not self.foreign_keys:
                        yield sql + ";"
                    continue
                if not self.foreign_keys:
                    yield sql + ";"
                qname = quote_ident(name)
                for row in conn.execute(f"SELECT * FROM {qname}"):
                    yield f"INSERT INTO {qname} VALUES(" + ",".join(map(sql_literal, row)) + ");"
            for typ, name, tbl, sql in objs:
                if typ != "table":
                    yield sql + ";"
            yield "COMMIT;"
            conn.execute("COMMIT")
        finally:
            conn.close()

    def checksum(self, table) -> str:
        """Order-independent-of-storage digest of a table's rows (sorted by every column),
        for comparing replicas in tests."""
        import hashlib
        h = hashlib.sha256()
        conn = apsw.Connection(self.path, flags=_RO)
        try:
            q = quote_ident(table)
            ncols = len(conn.execute(f"PRAGMA table_info({q})").fetchall())
            order = ",".join(str(i + 1) for i in range(max(ncols, 1)))
            for row in conn.execute(f"SELECT * FROM {q} ORDER BY {order}"):
                h.update(repr(row).encode())
        finally:
            conn.close()
        return h.hexdigest()

    def file_size(self) -> int:
        size = 0
        for p in (self.path, self.path + "-wal"):
            try:
                size += os.path.getsize(p)
            except OSError:
                pass
        return size

    def stats(self) -> dict:
        return dict(self.stats_counters, path=self.path, size_bytes=self.file_size(),
                    fk_constraints="enabled" if self.foreign_keys else "disabled",
                    extensions=[os.path.basename(p) for p in self.extensions],
                    reader_connections=len(self._readers), sqlite_version=apsw.sqlite_lib_version(),
                    checkpoints=self._ckpt.stats() if self._ckpt is not None else "inline")


def _internal_query(conn, sql):
    return conn.execute(sql).fetchall()


def sql_literal(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "NULL"
        if v in (float("inf"), float("-inf")):
            return "1e999" if v > 0 else "-1e999"
        return repr(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "X'" + bytes(v).hex().upper() + "'"
    return "'" + str(v).replace("'", "''") + "'"


def split_sql(text: str):
    """Split SQL text into complete statements (uses SQLite's own completeness check)."""
    return list(iter_sql(text.splitlines(keepends=True)))


def iter_sql(lines):
    """Complete statements from an iterable of lines (a file streams, never held whole)."""
    buf = []
    for line in lines:
        buf.append(line)
        if ";" not in line:
            continue
        chunk = "".join(buf)
        if apsw.complete(chunk):
            s = chunk.strip()
            if s:
                yield s
            buf = []
    rest = "".join(buf).strip()
    if rest:
        yield rest


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
