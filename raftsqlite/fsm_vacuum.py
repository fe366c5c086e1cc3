"""VACUUM through the log.

SQLite runs VACUUM only outside a transaction, and the state machine applies entries
inside one (with their applied index), so a VACUUM sent like any write answered "cannot
VACUUM from within a transaction". The store now proposes a request that is one VACUUM
statement as an entry of its own (``Store.execute``), and the state machine applies such
an entry alone: the entries before it are committed first, then VACUUM runs outside any
transaction, then the entry's index (and its request id's result) is recorded.

VACUUM may renumber the rowids of tables without an INTEGER PRIMARY KEY (densely, in rowid
order), from the content alone, so every member applying it at the same point of the log
ends identical. A crash between VACUUM and the recorded index replays it on a database it
already left in that form, which it leaves unchanged.

An entry that holds VACUUM among other requests (not proposed by this version) is applied
as before: the statement fails inside the transaction, the same on every member.
"""
import re
import time

from raftsqlite.codec.model import CommandType, EntryType
from raftsqlite.errors import DecodeError
from raftsqlite.fsm_ops import _clock, _dump_result, _load_result

# ``VACUUM`` or ``VACUUM schema`` (never ``VACUUM INTO``, refused before logging)
_VACUUM = re.compile(r'\s*vacuum(?:\s+(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_]*))?\s*;?\s*\Z', re.I)
LAST_VACUUM_KEY = "last_vacuum_clock"   # _raftsqlite_meta: the clock VFS's ms of the last one
_SMALL = 512    # bytes: a VACUUM entry is tiny; bigger entries are not decoded here


def is_vacuum_sql(sql: str) -> bool:
    return _VACUUM.match(sql) is not None


def is_vacuum(fsm, e) -> bool:
    """Whether entry ``e`` is one request of one VACUUM statement."""
    data = e.data
    if e.type != EntryType.NORMAL or not data or len(data) > _SMALL \
            or b"acuum" not in bytes(data).lower():   # no decoding for the other entries
        return False
    try:
        cmd = fsm._decode_command(e.data)
    except DecodeError:
        return False
    if cmd.type != CommandType.EXECUTE or len(cmd.requests) != 1:
        return False
    sts = cmd.requests[0].statements
    return type(sts) is list and len(sts) == 1 and is_vacuum_sql(sts[0].sql) \
        and not sts[0].params


def apply_vacuum(fsm, e):
    """Apply VACUUM entry ``e`` (``is_vacuum``) alone: -> its result."""
    db = fsm.db
    cmd = fsm._decode_command(e.data)
    req = cmd.requests[0]
    done_at = None
    fsm._current = (e.index, e.term)
    db.set_entry_context(e.index, e.term, _clock(cmd.ops))
    rid = bytes(req.request_id) if req.request_id else None
    try:
        found = rid and db.internal("SELECT result FROM _raftsqlite_requests "
                                    "WHERE request_id = ?", (rid,))
        if found:
            fsm.counters["dedup_hits"] += 1
            results, record = _load_result(found[0][0]), False
        else:
            fsm.counters["requests"] += 1
            fsm.counters["statements"] += 1
            refused = fsm._refusal(req, True)
            if refused is not None:
                results, record = [refused], False
            else:
                # As our own statement: SQLite's VACUUM attaches a scratch database,
                # which user statements may not; its work is bounded by the database's
                # size, so the write budget (meant for runaway statements) does not apply.
                t0 = time.perf_counter()
                try:
                    db.internal("VACUUM")
                    r = {"last_insert_id": 0, "rows_affected": 0,
                         "time": time.perf_counter() - t0}
                except Exception as exc:   # noqa: BLE001 - a SQL error is a result
                    from raftsqlite.raft.diskerr import classify
                    if classify(exc) is not None:
                        raise   # not a result: no room for the copy here; retried
                    r = {"error": f"VACUUM failed: {exc}", "time": time.perf_counter() - t0}
                results, record = [r], bool(rid)
                fsm.counters["vacuums"] += 1
                if "error" not in r and _clock(cmd.ops) is not None:
                    done_at = _clock(cmd.ops)   # the leader's instant, the same everywhere
        db.internal("BEGIN IMMEDIATE")
        try:
            if record:
                fsm._first_seq = None
                db.internal("INSERT INTO _raftsqlite_requests(request_id, result) "
                            "VALUES (?, ?)", (rid, _dump_result(results)))
                fsm._note_seq()
                fsm._trim(1)
            db.internal("INSERT OR REPLACE INTO _raftsqlite_meta(k, v) VALUES "
                        "('applied_index', ?), ('applied_term', ?)", (e.index, e.term))
            if done_at is not None:   # what -auto-vacuum-int counts from (auto_vacuum.py)
                db.internal("INSERT OR REPLACE INTO _raftsqlite_meta(k, v) VALUES "
                            f"('{LAST_VACUUM_KEY}', ?)", (done_at,))
            db.internal("COMMIT")
        except BaseException:
            if db.in_transaction():
                db.internal("ROLLBACK")
            raise
    finally:
        db.set_entry_context(0, 0, None)
    return {"index": e.index, "results": [results]}


def last_vacuum_clock(db):
    """The clock-VFS instant (ms, ``Database.clock_now_ms``'s unit) of the last VACUUM this
    database applied through the log, or None."""
    rows = db.read_internal("SELECT v FROM _raftsqlite_meta WHERE k = ?", (LAST_VACUUM_KEY,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else None
