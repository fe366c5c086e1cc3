"""Statements on an apsw connection: the access rules every connection enforces (the
authorizer) and the loops that run SQL and turn it into neutral result dicts.

Part of the apsw-owning layer with ``db.py`` (which owns the connections, snapshots and
dumps): only these two modules import apsw, and only ``db.py`` sets pragmas on the node's
database. Nothing here knows HTTP, Raft or the FSM; ``Database`` in db.py is the way in.
"""
import os
import time
from itertools import islice

import apsw

from raftsqlite.db_shapes import INTERNAL_PREFIX, STATE_PRAGMAS, fill_types

# Pragmas a user statement may not run: they change durability or the file format
# underneath replication, or let SQL rewrite the schema table directly.
_DENIED_PRAGMAS = frozenset({
    "journal_mode", "synchronous", "wal_checkpoint", "wal_autocheckpoint",
    "writable_schema", "locking_mode", "mmap_size", "temp_store_directory",
    "data_store_directory", "journal_size_limit",
})

_TABLE_OPS = None


def _table_ops():
    global _TABLE_OPS
    if _TABLE_OPS is None:
        names = ("CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE",
                 "CREATE_TEMP_TRIGGER", "CREATE_TRIGGER", "DELETE", "DROP_INDEX",
                 "DROP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER",
                 "DROP_TRIGGER", "INSERT", "READ", "UPDATE", "ALTER_TABLE", "ANALYZE",
                 "CREATE_VIEW", "DROP_VIEW", "CREATE_TEMP_VIEW", "DROP_TEMP_VIEW",
                 "CREATE_VTABLE", "DROP_VTABLE")
        _TABLE_OPS = frozenset(getattr(apsw, "SQLITE_" + n) for n in names)
    return _TABLE_OPS


_DDL_OPS = None


def _ddl_ops():
    global _DDL_OPS
    if _DDL_OPS is None:
        _DDL_OPS = frozenset(getattr(apsw, "SQLITE_" + n) for n in (
            "CREATE_INDEX", "CREATE_TABLE", "CREATE_TRIGGER", "CREATE_VIEW", "CREATE_VTABLE",
            "DROP_INDEX", "DROP_TABLE", "DROP_TRIGGER", "DROP_VIEW", "DROP_VTABLE",
            "ALTER_TABLE"))
    return _DDL_OPS


class _Access:
    """Per-connection switch: internal statements (ours) may touch _raftsqlite_* tables
    and run transaction control; user statements may not. ``fk``: the group's foreign
    key setting, which a user's ``PRAGMA foreign_keys=...`` may restate but not change
    (it is a group setting, group_settings.py: changed on one connection it would apply
    the log differently there, and be lost on a restart or snapshot restore)."""

    __slots__ = ("internal", "fk", "ddl", "gen", "written", "prepared", "plain")

    def __init__(self, fk=False, track=False):
        self.internal = False
        self.fk = fk
        self.ddl = False    # set when a schema change is prepared (Database watches it)
        self.gen = 0        # counts schema changes prepared (never reset)
        # On the writer (``track``): the tables a user statement prepared since the last
        # look inserts into or updates (trigger bodies included, as SQLite prepares them
        # with the statement), and whether anything was prepared at all (a statement
        # from the cache calls nothing; Database.note_targets keeps what each text
        # writes, see "Random rowids" in store.md).
        self.written = set() if track else None
        self.prepared = False
        self.plain = True   # no UPDATE, DELETE or trigger body among those prepares

    def authorize(self, op, p1, p2, dbname, trigger):
        if op in _ddl_ops():
            self.ddl = True
            self.gen += 1
        if self.internal:
            return apsw.SQLITE_OK
        w = self.written
        if w is not None:
            self.prepared = True
            if (op == apsw.SQLITE_INSERT or op == apsw.SQLITE_UPDATE) and p1:
                if p1[:7].lower() == "sqlite_":
                    # the schema, or sqlite_sequence (the AUTOINCREMENT counters, checked
                    # too: one at 2^63-1 makes the table's next insert fail)
                    self.plain = False
                    if p1.lower() == "sqlite_sequence":
                        w.add((dbname or "main", "sqlite_sequence"))
                else:
                    w.add((dbname or "main", p1))
                    if op == apsw.SQLITE_UPDATE or trigger:
                        self.plain = False
            elif op == apsw.SQLITE_DELETE:
                self.plain = False
        if op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
            return apsw.SQLITE_DENY
        if op in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
            return apsw.SQLITE_DENY
        if op == apsw.SQLITE_PRAGMA:
            name = (p1 or "").lower()
            if name in _DENIED_PRAGMAS or (p2 is not None and name in STATE_PRAGMAS) \
                    or name == "optimize":
                return apsw.SQLITE_DENY
            if name == "foreign_keys" and p2 is not None \
                    and _truth(p2) is not self.fk:
                return apsw.SQLITE_DENY
            return apsw.SQLITE_OK
        if op == apsw.SQLITE_ANALYZE:
            # A plain ANALYZE visits every table: ours are skipped, not refused (their
            # statistics would differ between members: our meta rows are replaced per
            # apply call, so their rowids, which sqlite_stat4 samples, do)
            if p1 and p1.lower().startswith(INTERNAL_PREFIX):
                return apsw.SQLITE_IGNORE
            return apsw.SQLITE_OK
        if op in _table_ops():
            for p in (p1, p2):
                if p and p.lower().startswith(INTERNAL_PREFIX):
                    return apsw.SQLITE_DENY
        return apsw.SQLITE_OK


def _truth(v):
    """SQLite's reading of a boolean pragma value (None: not a boolean)."""
    v = v.strip().strip("'\"").lower()
    if v in ("1", "on", "true", "yes"):
        return True
    if v in ("0", "off", "false", "no"):
        return False
    return None


def error_message(exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, apsw.InterruptError):
        return "query interrupted (db_timeout exceeded)"
    if isinstance(exc, apsw.AuthError):
        return f"{msg}: statement refused (internal tables, ATTACH/DETACH, transaction " \
               f"control and durability pragmas are not allowed; foreign_keys is the " \
               f"group's -fk setting and cannot be changed by a statement)"
    return msg or type(exc).__name__


# SQLITE_FULL and SQLITE_IOERR say the disk is full or failing: never a statement's result
# (another member may run the same statement fine, so an error result on this one would
# make the replicas differ). They propagate as DiskFull / DiskError instead: the apply is
# undone and retried by the Raft driver, a read answers HTTP 507 / 503.
_DISK_ERRORS = (apsw.FullError, apsw.IOError)


def raise_disk_error(e, conn=None):
    """Raise ``e`` as the project's disk error if it is one (call in an ``except``).

    SQLITE_FULL has two causes SQLite does not tell apart: no room on a disk, and SQLite's
    own limit (an AUTOINCREMENT table past rowid 2^63-1, or no free random rowid). The
    second is the same on every member, so it must stay a statement's error: taken for a
    full disk, every member would retry that entry for ever. A write that failed for lack
    of room used up what was left (``write`` fills the disk before it fails), so when the
    database's file system and SQLite's temp directory both still have ``LOGICAL_FULL_ROOM``
    free, the failure was not theirs. ``conn``: the connection that failed (its file names
    the database's directory); without it every SQLITE_FULL is the disk's."""
    if isinstance(e, _DISK_ERRORS):
        if conn is not None and isinstance(e, apsw.FullError) and _room_left(conn):
            return
        from raftsqlite.raft.diskerr import classify
        raise classify(e) from e


LOGICAL_FULL_ROOM = 16 << 20


def _room_left(conn):
    from raftsqlite.raft.diskerr import free_bytes
    try:
        dirs = (os.path.dirname(os.path.abspath(conn.filename)), _sqlite_temp_dir())
        for d in dirs:
            free = free_bytes(d)
            if free is None or free < LOGICAL_FULL_ROOM:
                return False
    except (OSError, apsw.Error, TypeError):
        return False
    return True


def _sqlite_temp_dir():
    """The directory SQLite's unix VFS puts temp files in (os_unix.c's unixTempFileDir)."""
    for d in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp",
              "/usr/tmp", "/tmp"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return d
    return "."


# Any SQLite error, for modules of the db layer that do not import apsw (db_rowids.py)
SQL_ERROR = apsw.Error

# A missing named parameter raises KeyError from apsw; it must be a statement error
# (the same on every replica), never an exception out of apply, which fail-stops a node.
_BAD_PARAMS = (TypeError, ValueError, OverflowError, KeyError, IndexError)


def _bad_param(e) -> str:
    if isinstance(e, KeyError):
        return f"bad parameter: no value for named parameter {e}"
    return f"bad parameter: {e}"


_CHUNK = 4096


def _value_bytes(row):
    n = 0
    for v in row:
        n += len(v) if isinstance(v, (str, bytes)) else 8
    return n


def fetch_more_bounded(cur, rows, max_bytes):
    """Given ``rows``, the first (up to ``_CHUNK``) rows of ``cur``, append the rest;
    False (stopping early) once their estimated size passes ``max_bytes``.

    Each chunk's size is estimated from up to 8 rows spread over it (text and BLOB
    lengths, 8 bytes per other value), so a query that would return gigabytes stops after
    about ``max_bytes`` of rows instead of filling the node's memory (Python holds each
    row in ~5x its raw size, then the JSON answer once more). A single row is never
    refused (one value is bounded by SQLite's own maximum length)."""
    total = 0
    chunk = rows
    while True:
        k = len(chunk)
        step = max(1, k // 8)
        sample = chunk[::step]
        total += sum(_value_bytes(r) for r in sample) * k // len(sample)
        if total > max_bytes:
            return False
        if k < _CHUNK:
            return True
        chunk = list(islice(cur, _CHUNK))
        if not chunk:
            return True
        rows.extend(chunk)


TOO_LARGE = "result too large"


def too_large(max_bytes):
    size = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes:,} bytes"
    return (f"{TOO_LARGE}: more than {size} of row data (the node's "
            "max_result_bytes); nothing is returned. Add a LIMIT, select fewer columns, or "
            "page through the rows (WHERE key > last key ORDER BY key LIMIT n)")


def run_statement(conn, sql, params=None, max_bytes=0, fresh=False):
    """Run one SQL text on ``conn``; return a neutral result dict:
    write -> {"last_insert_id", "rows_affected"}; read -> {"columns", "types", "values"};
    failure -> {"error"}; always "time" (seconds). Never raises for SQL errors.
    ``max_bytes`` > 0 bounds a read's rows (``fetch_more_bounded``). ``fresh``: bypass
    the statement cache (a newly prepared statement)."""
    t0 = time.perf_counter()
    desc = None

    def trace(cursor, _sql, _bindings):
        nonlocal desc
        d = cursor.description
        if d:
            desc = d
        return True

    before = conn.total_changes()
    try:
        cur = conn.cursor()
        cur.exec_trace = trace
        if fresh:
            cur.execute(sql, params, can_cache=False)
        elif params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        if desc is None:
            rows = []
        elif max_bytes:
            rows = list(islice(cur, _CHUNK))
            if len(rows) > 1 and not fetch_more_bounded(cur, rows, max_bytes):
                cur.close()
                return {"error": too_large(max_bytes), "time": time.perf_counter() - t0}
        else:
            rows = cur.fetchall()
    except apsw.Error as e:
        raise_disk_error(e, conn)
        return {"error": error_message(e), "time": time.perf_counter() - t0}
    except _BAD_PARAMS as e:
        return {"error": _bad_param(e), "time": time.perf_counter() - t0}
    if desc is not None:
        columns = [d[0] for d in desc]
        types = fill_types([(d[1] or "").lower() for d in desc], rows)
        return {"columns": columns, "types": types, "values": [list(r) for r in rows],
                "time": time.perf_counter() - t0}
    changed = conn.total_changes() - before
    return {"last_insert_id": conn.last_insert_rowid() if changed else 0,
            "rows_affected": conn.changes() if changed else 0,
            "time": time.perf_counter() - t0}


def run_many(conn, sql, params_list, out, stop_on_error=False, fk_check=False, top=None):
    """``run_statement`` for each parameter set of a write-shaped SQL text, in a tight
    loop on one cursor (no exec tracer, no per-call setup). See Database.run_user_many.
    ``fk_check``: after each statement that succeeded, stop and return "fk" if it left
    a foreign key violation pending (a deferred constraint). ``top`` (a one-item list):
    raised to the largest rowid a statement reported."""
    return _run_rows(conn, sql, params_list, out, stop_on_error, None, None, None, None,
                     fk_check, top)


_RECORD_SQL = "INSERT INTO _raftsqlite_requests(request_id, result) VALUES (?, ?)"


def run_many_recorded(conn, access, sql, params_list, rids, dump, out, first=None,
                      top=None):
    """``run_many`` with ``stop_on_error``, where after each statement whose request has
    an id (``rids[k]``: bytes or None) that request's dedup row ``(rid, dump([result]))``
    is inserted right away, exactly where running the requests one by one puts it (SQL
    functions such as ``changes()`` and ``last_insert_rowid()`` in the next statement see
    the same values). Returns as ``run_many``; the row of a statement that ended the
    transaction is not inserted (the caller re-runs its batch). ``first`` (a list) gets
    the seq of the first row inserted, if any; ``top`` as for ``run_many``."""
    return _run_rows(conn, sql, params_list, out, True, access, rids, dump, first,
                     top=top)


def _run_rows(conn, sql, params_list, out, stop_on_error, access, rids, dump, first,
              fk_check=False, top=None):
    """The loop of ``run_many`` and ``run_many_recorded`` (``rids`` None: no recording).
    -> True when ``stop_on_error`` stopped it at a failing statement (its error result
    appended), False when every statement ran, None when a statement ended the
    transaction (a failing one's error is appended, a succeeding one's result is not).
    The caller is inside a transaction."""
    cur = conn.cursor()
    execute = cur.execute
    rec = conn.cursor().execute if rids is not None else None
    total = conn.total_changes
    rowid = conn.last_insert_rowid
    changes = conn.changes
    clock = time.perf_counter
    append = out.append
    k = 0
    for params in params_list:
        t0 = clock()
        before = total()
        try:
            # apsw takes None as "no bindings", the same as leaving the argument out
            execute(sql, params)
        except apsw.Error as e:
            raise_disk_error(e, conn)
            r = {"error": error_message(e), "time": clock() - t0}
            append(r)
            if not conn.in_transaction:
                return None
            failed = True
        except _BAD_PARAMS as e:
            r = {"error": _bad_param(e), "time": clock() - t0}
            append(r)
            if not conn.in_transaction:
                return None
            failed = True
        else:
            if not conn.in_transaction:
                return None
            if total() != before:
                lid = rowid()
                r = {"last_insert_id": lid, "rows_affected": changes(),
                     "time": clock() - t0}
                if top is not None and lid > top[0]:
                    top[0] = lid
            else:
                r = {"last_insert_id": 0, "rows_affected": 0, "time": clock() - t0}
            append(r)
            if fk_check and conn.status(apsw.SQLITE_DBSTATUS_DEFERRED_FKS)[0]:
                return "fk"
            if rec is None:
                continue        # run_many: nothing to record, nothing failed
            failed = False
        if rec is not None:
            rid = rids[k]
            k += 1
            if rid:
                access.internal = True
                try:
                    rec(_RECORD_SQL, (rid, dump([r])))
                finally:
                    access.internal = False
                if first is not None and not first:
                    first.append(rowid())
                conn.set_last_insert_rowid(0)   # as the next request starts alone
        if failed and stop_on_error:
            return True
    return False


def run_many_unreported(conn, sql, rows):
    """Run a write-shaped SQL text once per row with SQLite's own loop (executemany), for
    an apply whose per-statement results nobody reads. -> False when every row ran, True
    at the first failing row (the rows before it ran; the caller rolls back), None when a
    statement ended the transaction."""
    try:
        conn.cursor().executemany(sql, rows)
    except (apsw.Error, *_BAD_PARAMS) as e:
        raise_disk_error(e, conn)
        return True if conn.in_transaction else None
    return False if conn.in_transaction else None


