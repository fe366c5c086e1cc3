"""The replicated state machine: applies committed Raft entries to SQLite.

Called by the Raft driver from one executor thread, never on the event loop.

* One SQLite transaction per ``apply(entries)`` call, holding every entry of the call and
  the last applied index/term (table ``_raftsqlite_meta``), so a crash either keeps all
  of it with its index or none of it, and replay never applies anything twice.
* An EXECUTE entry carries a batch of client requests (group commit). Each request keeps
  its own results; a ``transaction`` request runs in a SAVEPOINT and is rolled back alone
  at its first error; otherwise each statement stands alone (SQLite's statement-level
  atomicity). A request id makes a retried request return its first result: ids and
  results are kept in ``_raftsqlite_requests`` (at least the last ``dedup_keep``),
  replicated like any other row, so every replica answers a retry the same way. The table
  is trimmed after an entry, on a schedule of its seq values (``_trim``), never per apply
  call, so what a retry finds depends on the log alone, not on a replica's batching.
* A statement that rolls back the whole SQLite transaction (``INSERT OR ROLLBACK``,
  ``RAISE(ROLLBACK)``) would undo other requests of the batch: the batch is re-run from
  its start with that request marked failed. Every replica does the same, deterministically.
* Runs of one SQL text inside a request (bulk inserts) skip the per-statement tracing
  once the text is known to return no rows (``_run_fast``); results are identical to the
  statement-at-a-time path (``fast_path=False``), which a differential test checks. A
  request in the bulk form (``BulkStatements``: one text, a parameter matrix) is such a
  run by construction: its text is checked once and its rows go straight to SQLite
  (``_bulk_rest``). Across requests, a run of one-statement requests of one text (group
  commit of single-row writes) goes through one cursor the same way (``_run_singles``),
  with each request's hooks, results and re-run marking exactly as when applied alone.
* QUERY entries (reads at level ``strong``) run inside a savepoint that is always rolled
  back, so nothing a read does can change the database.
* **The write budget.** An EXECUTE or QUERY entry carries the proposing leader's
  ``-max-apply-steps`` (op ``steps``). A request whose user statements run more SQLite VM
  steps than that is not applied: every member stops it at the same point and answers the
  same error, so one statement that loops forever (a recursive CTE without a bound) cannot
  wedge the group; every member would otherwise run it forever, and replay it forever on
  restart. The count is exact only for freshly prepared statements (``Database.budget_begin``),
  so a request first runs as usual; if its count passes the budget, the batch is re-run
  with that request's statements prepared fresh, where the count is the same everywhere.
  Entries without the op (older ones, SYSTEM) have no budget.
* **An inline apply has a deadline** (``apply_bounded``, used by the Raft driver on the
  event loop): past it, the whole apply is undone and ``None`` returned, and the driver
  runs it again on the apply thread. Nothing of it stays, so it cannot make members differ.
* SYSTEM entries dispatch ``(name, args)`` ops to handlers registered by name; they run
  inside the apply transaction (the sharding catalog uses this).
"""
import collections
import threading
import time

from raftsqlite import fsm_load, fsm_runs, fsm_vacuum
from raftsqlite.codec import check_rows
from raftsqlite.codec.model import BulkStatements, CommandType, EntryType, InsertRun
from raftsqlite.db import budget_error
from raftsqlite.db_shapes import INTERNAL_PREFIX
from raftsqlite.errors import (DecodeError, DiskError, OverBudget, RaftSQLiteError,
                               SettingsMismatch)
from raftsqlite.fsm_ops import (  # noqa: F401 - clock_op etc. are imported from fsm too
    CLOCK_OP, STEPS_OP, RESULT_OP, LOAD_STEPS_OP, _LIMIT_OPS, clock_op, steps_op, result_op,
    load_steps_op, _op_int,
    _single_sql, _conn_state, _clock, _dump_result, _load_result, SystemContext,
    _DeadlinePassed, _OverBudget, _TxnLost)
from raftsqlite.group_settings import (META_KEY, RECORD_OP, GroupSettings,
                                       make_record_handler)
from raftsqlite.metrics import LATENCY_BUCKETS, Histogram

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS _raftsqlite_meta (k TEXT PRIMARY KEY, v)",
    "CREATE TABLE IF NOT EXISTS _raftsqlite_requests (seq INTEGER PRIMARY KEY, "
    "request_id BLOB NOT NULL UNIQUE, result BLOB NOT NULL)",
)

# (SQLite also rolls everything back on some errors, e.g. SQLITE_FULL: an AUTOINCREMENT
# table whose rowid reached 2^63-1; the message is the same whichever path ran it)
_ROLLED_BACK = ("statement rolled back the whole transaction (ON CONFLICT ROLLBACK, "
                "RAISE(ROLLBACK), or an error that SQLite answers so, such as a full "
                "AUTOINCREMENT table); this request was not applied")
# What a member reports for a statement whose result nobody reads (see _bulk_rest).
_UNREPORTED = {"last_insert_id": 0, "rows_affected": 0, "time": 0.0, "unreported": True}
# SQLite's own message for an immediate foreign key violation: a deferred one that a
# statement leaves behind fails that statement the same way (see _run_careful).
_FK_FAILED = "FOREIGN KEY constraint failed"
_INTERNAL_REFUSED = (f"statement refers to internal tables ({INTERNAL_PREFIX}*), which only "
                     f"the node itself may touch")


class _FkRerun(Exception):
    """With foreign keys on: a statement outside a transaction request left a deferred
    violation behind. It cannot be undone alone, so the batch is rolled back and re-run
    with that request run statement by statement under savepoints (``_run_careful``)."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key


class FSM:
    # snapshot() copies from its own read transaction: the driver may call it on another
    # thread while applies go on
    snapshot_concurrent = True

    def __init__(self, db, *, dedup_keep=10_000, decode=None, fast_path=True, settings=None):
        self.db = db
        self.fast_path = fast_path   # False: every statement through the reference path
        # -fk (a group setting): statements outside a transaction request are checked for
        # deferred violations one by one, so one-statement requests are not packed
        # into one cursor run (_run_singles), and followers' bulk rows do not take
        # SQLite's own loop (_bulk_rest), which cannot be checked row by row.
        self.fk = bool(getattr(db, "foreign_keys", False))
        self._pack = fast_path and not self.fk
        self.settings = settings if settings is not None else GroupSettings(self.fk)
        # fn(index) -> bool: whether anyone reads the results of the entry at index (its
        # proposer waits on this member). None: always. When nobody does, a bulk request
        # without a request id runs through SQLite's own loop and reports placeholders;
        # the database ends the same (see _bulk_rest).
        self.results_wanted = None
        # True (the store sets it; it builds what its callers need): a proven bulk run's
        # results are left pending in their InsertRun instead of 1000 dicts built here
        self.lazy_results = False
        self.dedup_keep = dedup_keep
        self._trim_every = max(1, dedup_keep // 16)
        self._first_seq = None     # seq of the current entry's first dedup row
        self._decode = decode
        self._handlers = dict(fsm_load.HANDLERS)   # drop_all and the atomic load
        self._handlers[RECORD_OP] = make_record_handler(self.settings)
        self._restore_listeners = []
        self._request_hooks = []
        self._lock = threading.Lock()    # apply/restore never overlap
        self._apply_thread = None
        self._current = (0, 0)
        self._want = True
        self._primed = collections.OrderedDict()     # id(data) -> (data, Command)
        self._primed_lock = threading.Lock()
        for sql in _SCHEMA:
            db.internal(sql)
        self._applied, self._applied_term = self._read_meta()
        self._check_settings()      # a member started with other settings stops here
        self.counters = {"fk_reruns": 0, "entries": 0, "batches": 0, "requests": 0, "statements": 0,
                         "dedup_hits": 0, "txn_reruns": 0, "decode_errors": 0, "primed_applies": 0,
                         "single_runs": 0, "over_budget": 0, "budget_recounts": 0,
                         "result_refused": 0, "rowid_refused": 0, "vacuums": 0,
                         "deadline_undone": 0,
                         "apply_seconds": 0.0, "snapshots": 0, "last_snapshot_seconds": 0.0}
        # One observation per apply() call that applied something (GET /metrics)
        self.apply_hist = Histogram(LATENCY_BUCKETS)

    # ---- contract -------------------------------------------------------------------
    def applied_index(self) -> int:
        return self._applied

    def applied_term(self) -> int:
        return self._applied_term

    def register_system_handler(self, name, fn):
        """``fn(ctx: SystemContext, args: bytes) -> result`` (any JSON-able value);
        raising rolls back that op alone and yields ``{"error": str(exc)}``."""
        self._handlers[name] = fn

    def add_request_hook(self, fn):
        """``fn(ctx: SystemContext, request, write=True)`` runs before each EXECUTE
        request, and with ``write=False`` before each QUERY request (a read through the
        log); raising a RaftSQLiteError (e.g. Moved, Fenced) fails that request alone,
        with ``{"error": message, "code": exc.code}``, before any of its statements run."""
        self._request_hooks.append(fn)

    def add_restore_listener(self, fn):
        """``fn()`` is called after the database was replaced by a snapshot."""
        self._restore_listeners.append(fn)

    def apply_bounded(self, entries, budget_s):
        """``apply`` if it takes at most ``budget_s`` seconds of user statements; else
        everything it did is undone and None is returned (run it again with ``apply``)."""
        db = self.db
        db.set_apply_deadline(time.monotonic() + budget_s)
        try:
            return self.apply(entries, _bounded=True)
        except _DeadlinePassed:
            self.counters["deadline_undone"] += 1
            return None
        finally:
            db.set_apply_deadline(None)

    def apply(self, entries, _bounded=False):
        """One result per entry, same order. Already applied entries (index <= applied
        index) are skipped and yield None. (``_bounded``: called by ``apply_bounded``.)"""
        t0 = time.perf_counter()
        results = [None] * len(entries)
        todo = [(i, e) for i, e in enumerate(entries) if e.index > self._applied]
        if not todo:
            return results
        self._apply_thread = threading.get_ident()
        with self._lock:
            vac = [k for k, (_, e) in enumerate(todo) if fsm_vacuum.is_vacuum(self, e)]
            if vac and _bounded:
                return None     # a VACUUM commits on its own: not undoable, never inline
            if not vac:
                self._apply_txn(todo, results)
            else:
                # A VACUUM entry runs alone, outside the apply transaction (fsm_vacuum.py)
                start = 0
                for k in vac:
                    if k > start:
                        self._apply_txn(todo[start:k], results)
                    pos, e = todo[k]
                    results[pos] = fsm_vacuum.apply_vacuum(self, e)
                    self._applied, self._applied_term = e.index, e.term
                    start = k + 1
                if start < len(todo):
                    self._apply_txn(todo[start:], results)
        c = self.counters
        c["entries"] += len(todo)
        c["batches"] += 1
        dt = time.perf_counter() - t0
        c["apply_seconds"] += dt
        self.apply_hist.observe(dt)
        return results

    def _apply_txn(self, todo, results):
        """Apply ``todo`` [(position, entry)] in one SQLite transaction with their last
        index (re-running it while requests are marked failed or over budget)."""
        poisoned = {}     # request position -> the error it answers instead of running
        exact = set()     # positions to run with freshly prepared statements
        while True:
            db = self.db
            db.internal("BEGIN IMMEDIATE")
            try:
                for pos, e in todo:
                    res, added = self._apply_entry(e, pos, poisoned, exact)
                    results[pos] = res
                    if added:
                        self._trim(added)
                last = todo[-1][1]
                db.internal("INSERT OR REPLACE INTO _raftsqlite_meta(k, v) VALUES "
                            "('applied_index', ?), ('applied_term', ?)",
                            (last.index, last.term))
                db.internal("COMMIT")
            except _TxnLost as lost:
                # SQLite already rolled everything back; re-run without that request
                db.forget_rowid_bounds()
                self.counters["txn_reruns"] += 1
                if db.deadline_passed:
                    raise _DeadlinePassed() from None
                if db.budget_tripped and lost.key[1:2] == ("op",):
                    # a load statement past its budget (counted exactly: fresh statements)
                    poisoned[lost.key] = OverBudget(
                        getattr(lost, "error", None) or budget_error(db.step_budget))
                    self.counters["over_budget"] += 1
                elif db.budget_tripped:   # interrupted by the budget, not the SQL's doing
                    self._over_budget([lost.key], exact, poisoned)
                else:
                    poisoned[lost.key] = _ROLLED_BACK
                continue
            except _OverBudget as ob:
                db.forget_rowid_bounds()
                if db.in_transaction():
                    db.internal("ROLLBACK")
                if db.deadline_passed:
                    raise _DeadlinePassed() from None
                self.counters["txn_reruns"] += 1
                self._over_budget(ob.keys, exact, poisoned)
                continue
            except _FkRerun as rr:
                db.forget_rowid_bounds()
                db.internal("ROLLBACK")
                poisoned[("fk",) + rr.key] = True     # not an error: run it carefully
                self.counters["fk_reruns"] += 1
                continue
            except BaseException:
                db.forget_rowid_bounds()
                if db.in_transaction():
                    db.internal("ROLLBACK")
                raise
            break
        self._applied, self._applied_term = last.index, last.term
        self.db.set_entry_context(0, 0, None)
        self.db.set_step_budget(0)
        self.db.set_result_bound(0)

    def _over_budget(self, keys, exact, poisoned):
        """Requests past the budget: those counted on cached statements are re-run with
        fresh ones (exact count); those already counted exactly are refused."""
        steps = self.db.step_budget
        if self.db.rowid_refused and len(keys) > 1:
            # a run of one-statement requests: which of them wrote the largest rowid is
            # decided with each alone, as when applied one by one
            exact.update(keys)
            self.counters["budget_recounts"] += len(keys)
            return
        for k in keys:
            if self.db.rowid_refused:
                poisoned[k] = self.db.result_refused
                self.counters["rowid_refused"] += 1
            elif self.db.result_refused:
                # the size of rows is the same on every member: no recount needed
                poisoned[k] = self.db.result_refused
                self.counters["result_refused"] += 1
            elif k in exact:
                poisoned[k] = budget_error(steps)
                self.counters["over_budget"] += 1
            else:
                exact.add(k)
                self.counters["budget_recounts"] += 1

    def snapshot(self, path):
        """Consistent copy of the database at some applied index; returns that
        (index, term), read from the copy itself so they always match its contents."""
        t0 = time.perf_counter()
        if threading.get_ident() == self._apply_thread:
            # Called on the apply thread: applies wait for us whatever we do, so take the
            # fastest consistent copy (raw files; nothing can write meanwhile).
            with self._lock:
                self.db.copy_files_to(path)
        else:
            # Another thread: copy from a read transaction while applies go on.
            self.db.backup_to(path)
        self.counters["last_snapshot_seconds"] = time.perf_counter() - t0
        self.counters["snapshots"] += 1
        meta = dict(self.db.read_file_internal(path, "SELECT k, v FROM _raftsqlite_meta"))
        return int(meta.get("applied_index", 0)), int(meta.get("applied_term", 0))

    def restore(self, path, meta):
        """Replace the database by the snapshot file; the applied index becomes
        ``meta.index``."""
        with self._lock:
            self.db.restore_from(path)
            for sql in _SCHEMA:
                self.db.internal(sql)
            self.db.internal("INSERT OR REPLACE INTO _raftsqlite_meta(k, v) VALUES "
                             "('applied_index', ?), ('applied_term', ?)", (meta.index, meta.term))
            self._applied, self._applied_term = meta.index, meta.term
            self._check_settings()
        for fn in self._restore_listeners:
            fn()

    def stats(self) -> dict:
        rec = self.recorded_settings()
        return dict(self.counters, applied_index=self._applied, applied_term=self._applied_term,
                    system_handlers=sorted(self._handlers),
                    group_settings={"local": self.settings.doc(),
                                    "recorded": rec.doc() if rec is not None else None})

    def recorded_settings(self):
        """The group's settings as recorded in the database (group_settings.py), or None
        (nothing recorded yet: a group created before the record existed)."""
        rows = self.db.read_internal("SELECT v FROM _raftsqlite_meta WHERE k = ?",
                                     (META_KEY,))
        return GroupSettings.from_doc(rows[0][0]) if rows else None

    def _check_settings(self):
        rows = self.db.internal("SELECT v FROM _raftsqlite_meta WHERE k = ?", (META_KEY,))
        if rows:
            err = self.settings.mismatch(GroupSettings.from_doc(rows[0][0]))
            if err is not None:
                raise err

    # ---- internals ------------------------------------------------------------------
    def _read_meta(self):
        meta = dict(self.db.internal("SELECT k, v FROM _raftsqlite_meta"))
        return int(meta.get("applied_index", 0)), int(meta.get("applied_term", 0))

    def prime(self, data, cmd):
        """The leader's own proposal: ``data`` is ``encode_command(cmd)``. When decoding
        ``data`` would give back exactly ``cmd`` (an EXECUTE whose requests are all in the
        bulk form with plain values: str, int64, float, bool, None, bytes; its ops
        (name, bytes) tuples), its apply uses ``cmd`` and
        skips decoding 1000 rows again. Only the very same ``data`` object is matched, so
        an entry read back from disk, or any other, is decoded as usual."""
        if cmd.type != CommandType.EXECUTE or not cmd.requests or any(
                type(op) is not tuple or type(op[1]) is not bytes for op in cmd.ops):
            return
        for rq in cmd.requests:
            sts = rq.statements
            if type(sts) is not BulkStatements or type(sts.sql) is not str:
                return
            rows = sts.rows
            if type(rows) is not list or not rows or type(rows[0]) is not list \
                    or check_rows(rows, len(rows[0])) >= 0:
                return
        with self._primed_lock:
            primed = self._primed
            primed[id(data)] = (data, cmd)
            if len(primed) > 64:            # proposals that never applied here
                primed.popitem(last=False)

    def _trim(self, added):
        """After an entry that added ``added`` dedup rows, the first with seq
        ``_first_seq``: when those seqs reached a multiple of ``_trim_every``, keep only
        the last ``dedup_keep`` rows. Never per apply call: replicas cut the log into
        batches differently, and whether a retried id is found must depend on the log
        alone. Seqs are consecutive within an entry (nothing is deleted in between and a
        new row takes max(seq) + 1), so the schedule is a function of the table, the same
        on every replica; the table holds fewer than dedup_keep + _trim_every + one
        entry's rows."""
        first = self._first_seq
        last = first + added - 1
        every = self._trim_every
        if last // every > (first - 1) // every:
            self.db.internal("DELETE FROM _raftsqlite_requests WHERE seq <= ?",
                             (last - self.dedup_keep,))

    def _note_seq(self):
        """Called right after each dedup row insert: remembers the entry's first seq."""
        if self._first_seq is None:
            self._first_seq = self.db.last_insert_rowid()

    def _decode_command(self, data):
        if self._primed:
            with self._primed_lock:
                hit = self._primed.pop(id(data), None)
            if hit is not None and hit[0] is data:
                self.counters["primed_applies"] += 1
                return hit[1]
        if self._decode is None:
            from raftsqlite.codec import decode_command
            self._decode = decode_command
        return self._decode(data)

    def _apply_entry(self, e, pos, poisoned, exact=frozenset()):
        """-> (result, dedup rows added)."""
        if e.type != EntryType.NORMAL or not e.data:
            return None, 0
        try:
            cmd = self._decode_command(e.data)
        except DecodeError as exc:
            self.counters["decode_errors"] += 1
            return {"index": e.index, "error": f"undecodable entry: {exc}"}, 0
        t = cmd.type
        self._current = (e.index, e.term)
        rw = self.results_wanted
        self._want = rw is None or rw(e.index)
        self.db.set_entry_context(e.index, e.term, _clock(cmd.ops))
        self.db.set_step_budget(_op_int(cmd.ops, STEPS_OP) if t != CommandType.SYSTEM
                                else _op_int(cmd.ops, LOAD_STEPS_OP))
        self.db.set_result_bound(_op_int(cmd.ops, RESULT_OP))
        if t == CommandType.EXECUTE:
            if self.db.schema_calls_conn_functions():
                self.db.reset_conn_state()
            out, added = [], 0
            self._first_seq = None
            reqs = cmd.requests
            n = len(reqs)
            ri = 0
            while ri < n:
                req = reqs[ri]
                if self._pack and ri + 1 < n:
                    # Group commit packs many one-statement requests, mostly of one text
                    # (single-row inserts): such a run goes through one cursor.
                    sql = _single_sql(req)
                    if sql is not None and _single_sql(reqs[ri + 1]) == sql \
                            and (pos, ri) not in poisoned and (pos, ri + 1) not in poisoned \
                            and (pos, ri) not in exact and (pos, ri + 1) not in exact \
                            and INTERNAL_PREFIX not in sql.lower():
                        j = ri + 2
                        while j < n and _single_sql(reqs[j]) == sql and (pos, j) not in poisoned \
                                and (pos, j) not in exact:
                            j += 1
                        j, new = self._run_singles(reqs, ri, j, sql, pos, out)
                        added += new
                        ri = j
                        continue
                res, new = self._execute_request(req, poisoned.get((pos, ri)), (pos, ri),
                                                 (pos, ri) in exact,
                                                 self.fk and ("fk", pos, ri) in poisoned)
                out.append(res)
                added += new
                ri += 1
            return {"index": e.index, "results": out}, added
        if t == CommandType.QUERY:
            return {"index": e.index, "results": [
                [{"error": poisoned[(pos, ri)], "time": 0.0}] if (pos, ri) in poisoned
                else self._query_request(r, (pos, ri), (pos, ri) in exact)
                for ri, r in enumerate(cmd.requests)]}, 0
        if t == CommandType.SYSTEM:
            self.db.forget_rowid_bounds()   # its handlers write without the check
            return {"index": e.index, "results": [
                self._system_op(e, n, a, (pos, "op", k)) if (pos, "op", k) not in poisoned
                else _sys_poisoned(poisoned[(pos, "op", k)], n)
                for k, (n, a) in enumerate(cmd.ops) if n not in _LIMIT_OPS]}, 0
        return {"index": e.index, "results": []}, 0

    def _execute_request(self, req, poisoned, key, exact=False, careful=False):
        """``poisoned``: the error this request answers without running, or None.
        ``exact``: run it statement by statement, freshly prepared (the budget's exact
        count). ``careful`` (-fk): one of its statements left a deferred foreign key
        violation; run each under a savepoint (``_run_careful``)."""
        db = self.db
        rid = req.request_id
        if rid:
            row = db.internal("SELECT result FROM _raftsqlite_requests WHERE request_id = ?",
                              (bytes(rid),))
            if row:
                self.counters["dedup_hits"] += 1
                return _load_result(row[0][0]), 0
        self.counters["requests"] += 1
        refused = self._refusal(req, True)
        if poisoned:
            results = [{"error": poisoned, "time": 0.0}]
        elif refused is not None:
            results = [refused]
        else:
            # a bulk request's results are marked by _bulk_rest when it proves them
            results = InsertRun() if type(req.statements) is BulkStatements else []
            txn = req.transaction
            if txn:
                db.internal("SAVEPOINT _raftsqlite_req")
                if self.fk:
                    # a defer_foreign_keys left on by an earlier request of this apply
                    # batch (batches differ per member) must not reach this one
                    db.internal("PRAGMA defer_foreign_keys=OFF")
            db.budget_begin()
            conn_state = _conn_state(req)
            if conn_state:
                db.reset_conn_state()
            if careful:
                failed = self._run_careful(req.statements, key, results, exact)
            elif self.fast_path and not exact:
                failed = self._run_fast(req.statements, txn, key, results, rid)
            else:
                failed = self._run_slow(req.statements, txn, key, results, exact)
            if db.budget_tripped or db.deadline_passed or db.result_refused:
                raise _OverBudget([key])
            self.counters["statements"] += (results.total() if type(results) is InsertRun
                                            else len(results))
            if txn:
                if self.fk and not failed and db.deferred_fk_violations():
                    # the request's transaction would fail to commit: it fails whole
                    results = _fk_failed(results)
                    failed = True
                if failed:
                    db.internal("ROLLBACK TO _raftsqlite_req")
                db.internal("RELEASE _raftsqlite_req")
            if db.req_written and db.check_rowid_limit():
                raise _OverBudget([key])    # undone and refused, as on every member
            if conn_state:
                db.drop_temp()
        if rid and refused is None:
            # A refused request ran nothing: its retry (after the router refreshed, or once
            # this shard applied its new ownership) must run, not replay the refusal.
            db.internal("INSERT INTO _raftsqlite_requests(request_id, result) VALUES (?, ?)",
                        (bytes(rid), _dump_result(results)))
            self._note_seq()
            return results, 1
        return results, 0

    def _run_singles(self, reqs, i, j, sql, pos, out):
        return fsm_runs.run_singles(self, reqs, i, j, sql, pos, out)

    def _run_slow(self, stmts, txn, key, results, fresh=False):
        """One statement at a time through ``Database.run_user`` (the reference path).
        Appends one result per statement run; True when a transaction stopped early.
        ``fresh``: each statement prepared anew (exact budget count)."""
        db = self.db
        for st in stmts:
            if INTERNAL_PREFIX in st.sql.lower():
                r = {"error": _INTERNAL_REFUSED, "time": 0.0}
            else:
                r = db.run_user(st.sql, st.params, fresh)
                if not db.in_transaction():
                    raise _TxnLost(key)
                if self.fk and not txn and "error" not in r and db.deferred_fk_violations():
                    raise _FkRerun(key)
            results.append(r)
            if txn and "error" in r:
                return True
        return False

    def _run_careful(self, stmts, key, results, fresh=False):
        """A request (not a transaction) one of whose statements left a deferred foreign
        key violation (``_FkRerun``): each statement under its own savepoint; one that
        leaves a violation is undone and fails with SQLite's message, as an immediate
        violation does. Every member re-runs the same request so: the request is chosen
        by what the statements do, never by how a member batched the log."""
        db = self.db
        for st in stmts:
            if INTERNAL_PREFIX in st.sql.lower():
                r = {"error": _INTERNAL_REFUSED, "time": 0.0}
            else:
                db.internal("SAVEPOINT _raftsqlite_fk")
                r = db.run_user(st.sql, st.params, fresh)
                if not db.in_transaction():
                    raise _TxnLost(key)
                if "error" not in r and db.deferred_fk_violations():
                    db.internal("ROLLBACK TO _raftsqlite_fk")
                    r = {"error": _FK_FAILED, "time": r["time"]}
                db.internal("RELEASE _raftsqlite_fk")
            results.append(r)
        return False

    def _run_fast(self, stmts, txn, key, results, rid=None):
        """Same results as ``_run_slow``, faster for runs of the same SQL text (a bulk
        insert is one statement with many parameter rows): each run of one text goes
        through ``_run_rows``. A request in the bulk form is one such run."""
        if type(stmts) is BulkStatements:
            return self._run_rows(stmts.sql, stmts.rows, txn, key, results, rid, True)
        n = len(stmts)
        i = 0
        while i < n:
            sql = stmts[i].sql
            j = i + 1
            while j < n and stmts[j].sql == sql:
                j += 1
            if self._run_rows(sql, [s.params for s in stmts[i:j]] if j - i > 1
                              else (stmts[i].params,), txn, key, results, rid, False):
                return True
            i = j
        return False

    def _run_rows(self, sql, rows, txn, key, results, rid, bulk):
        """Run one SQL text once per parameter set in ``rows``, appending one result
        each, exactly as ``_run_slow`` would. True when a transaction stopped early.

        A statement's result shape (rows or not) is fixed by its prepared form, so once
        one execution gave a write result, the rest skip the row-shape tracing and go
        through one cursor in a tight loop (``run_user_many``: SQLite's statement cache
        prepares it once), computing last_insert_id / rows_affected as ``run_statement``
        does. A bulk request first tries two cheaper ways (``_bulk_rest``)."""
        db = self.db
        if INTERNAL_PREFIX in sql.lower():
            refused = {"error": _INTERNAL_REFUSED, "time": 0.0}
            results.extend(dict(refused) for _ in range(1 if txn else len(rows)))
            return bool(txn)
        n = len(rows)
        i = 0
        while i < n:
            r = db.run_user(sql, rows[i])
            if not db.in_transaction():
                raise _TxnLost(key)
            if self.fk and not txn and "error" not in r and db.deferred_fk_violations():
                raise _FkRerun(key)
            results.append(r)
            i += 1
            if "error" in r:
                if txn:
                    return True
                continue
            if "last_insert_id" not in r or i >= n:
                continue        # rows come back (RETURNING, a SELECT): one at a time
            if bulk:
                done = self._bulk_rest(sql, rows, i, r, txn, key, results, rid)
                if done is not None:
                    return done
            stop = db.run_user_many(sql, rows[i:], results, txn, self.fk and not txn)
            if stop is None:        # a statement ended the SQLite transaction
                raise _TxnLost(key)
            if stop == "fk":        # a row left a deferred foreign key violation
                raise _FkRerun(key)
            return stop
        return False

    def _bulk_rest(self, sql, rows, i, r, txn, key, results, rid):
        """Rows ``i..`` of a bulk request whose row ``i - 1`` gave the write result ``r``:
        True/False (as ``_run_rows``) when done here, None when the exact loop must run
        them.

        When nobody reads this entry's results (a follower's apply, ``results_wanted``)
        and no request id records them, the rows run in SQLite's own loop (``executemany``,
        about half the cost per row) and the results are placeholders. A failing row then
        stops it: with ``transaction`` the request is rolled back as on the exact path;
        without, a savepoint undoes the loop and the exact path runs the rows again, so
        the database always ends exactly as on the exact path. When the results are read,
        a plain insert's results are proved wholesale (``run_user_sequential``); the
        request's results are then marked as an ``InsertRun``."""
        db = self.db
        n = len(rows)
        if not self._want and not rid and not self.fk:
            if not txn:
                db.internal("SAVEPOINT _raftsqlite_bulk")
            stop = db.run_user_unreported(sql, rows[i:])
            if stop is None:
                raise _TxnLost(key)
            if not stop:
                if not txn:
                    db.internal("RELEASE _raftsqlite_bulk")
                results.extend([_UNREPORTED] * (n - i))
                return False
            if txn:
                results.append(_UNREPORTED)
                return True
            db.internal("ROLLBACK TO _raftsqlite_bulk")
            db.internal("RELEASE _raftsqlite_bulk")
            return None
        if i == 1 and r["rows_affected"] == 1:
            shape = db.sequential_insert(sql)
            if shape is not None:
                done = db.run_user_sequential(sql, shape, rows[1:], r["last_insert_id"],
                                              results, self.lazy_results and not rid)
                if done is None:
                    raise _TxnLost(key)
                if done:
                    if type(results) is InsertRun and results.total() == n:
                        results.first_rowid = r["last_insert_id"]
                    return False
        return None

    def _refusal(self, req, write, ctx=None):
        """The first request hook's refusal of ``req`` as a result, or None. ``ctx``: a
        SystemContext to share (one per run of requests; hooks only read it)."""
        for hook in self._request_hooks:
            if ctx is None:
                ctx = SystemContext(self.db, self._current[0], self._current[1])
            try:
                if write:
                    hook(ctx, req)
                else:
                    hook(ctx, req, write=False)
            except DiskError:
                raise       # never a result: the apply is undone and retried (diskerr.py)
            except RaftSQLiteError as exc:
                return {"error": str(exc) or exc.code, "code": exc.code, "time": 0.0}
        return None

    def _query_request(self, req, key, exact=False):
        db = self.db
        if req.guard is not None:
            # checked here, in log order, so a read cannot pass a check made before an
            # ownership change it is applied after
            refused = self._refusal(req, False)
            if refused is not None:
                return [refused]
        results = []
        db.internal("SAVEPOINT _raftsqlite_q")
        db.budget_begin()
        if _conn_state(req):
            db.reset_conn_state()
        for st in req.statements:
            if INTERNAL_PREFIX in st.sql.lower():
                r = {"error": _INTERNAL_REFUSED, "time": 0.0}
            else:
                r = db.run_user(st.sql, st.params, exact)
                if not db.in_transaction():
                    # cannot happen for a read; if it does, treat it like a write that
                    # ended the transaction: re-run the batch without it
                    raise _TxnLost(key)
            results.append(r)
            if req.transaction and "error" in r:
                break
        db.internal("ROLLBACK TO _raftsqlite_q")
        db.internal("RELEASE _raftsqlite_q")
        if db.budget_tripped or db.deadline_passed:
            raise _OverBudget([key])
        return results

    def _system_op(self, e, name, args, key=None):
        fn = self._handlers.get(name)
        if fn is None:
            return {"error": f"unknown system op {name!r}"}
        db = self.db
        db.internal("SAVEPOINT _raftsqlite_sys")
        try:
            result = fn(SystemContext(db, e.index, e.term), args)
        except SettingsMismatch:
            raise       # this member applies the log differently: fail-stop (group_settings)
        except Exception as exc:  # a handler's failure is data, the same on every replica
            if _is_disk_error(exc):
                raise   # ...but a full or failing disk is this member's: retried, never data
            if not db.in_transaction():
                # SQLite rolled the whole apply transaction back: re-run without this op
                lost = _TxnLost(key)
                lost.error = str(exc)
                raise lost from None
            db.internal("ROLLBACK TO _raftsqlite_sys")
            result = {"error": str(exc) or type(exc).__name__}
            if isinstance(exc, RaftSQLiteError):
                result["code"] = exc.code   # lets the proposer raise the same class
        else:
            if self.fk and db.deferred_fk_violations():
                # e.g. a load whose rows violate a foreign key (it defers the checks to
                # its end, as a dump inserts tables in name order)
                db.internal("ROLLBACK TO _raftsqlite_sys")
                result = {"error": f"system op {name}: {_FK_FAILED}; it was undone"}
        if self.fk:
            db.internal("PRAGMA defer_foreign_keys=OFF")
        db.internal("RELEASE _raftsqlite_sys")
        return result


def _sys_poisoned(mark, name):
    """The result of a SYSTEM op re-run as failed: its own error when it is one (a load
    past the budget), else that it ended the apply transaction."""
    if isinstance(mark, RaftSQLiteError):
        return {"error": str(mark), "code": mark.code}
    return {"error": f"system op {name} ended the transaction; it was undone"}


def _is_disk_error(exc):
    from raftsqlite.raft.diskerr import classify
    return classify(exc) is not None


def _fk_failed(results):
    """A transaction request's results when its end found a foreign key violation: the
    last statement's result becomes SQLite's error (the commit would have failed)."""
    if type(results) is InsertRun:
        results.materialize()
    out = list(results)
    err = {"error": _FK_FAILED, "time": 0.0}
    if out:
        out[-1] = err
    else:
        out.append(err)
    return out
