"""Helpers of the state machine (fsm.py): the ops an entry carries besides its requests
(the leader's clock and limits), which requests may run together, the dedup table's rows,
the exceptions its apply loop re-runs on, and what a SYSTEM handler may use."""
import orjson

from raftsqlite.b64json import b64_default, unb64
from raftsqlite.codec.model import BulkStatements, InsertRun
from raftsqlite.db_shapes import uses_connection_state

CLOCK_OP = "clock"
STEPS_OP = "steps"
RESULT_OP = "rbytes"
# A /db/load commit's budget per statement. Not "steps": a member of an older version
# would take that as one budget for the whole load (it never restarts the count there)
# and could stop a load that newer members finish; it answers an unknown op instead
# (an error result of its own, after the load's, changing nothing).
LOAD_STEPS_OP = "lsteps"
_LIMIT_OPS = (CLOCK_OP, STEPS_OP, RESULT_OP, LOAD_STEPS_OP)


def clock_op(ms):
    """The op that carries the proposing leader's instant (Julian-day milliseconds)."""
    return (CLOCK_OP, int(ms).to_bytes(8, "big"))


def steps_op(steps):
    """The op that carries the proposing leader's write budget (SQLite VM steps per
    request; 0 = none)."""
    return (STEPS_OP, int(steps).to_bytes(8, "big"))


def load_steps_op(steps):
    """The op that carries the proposing leader's -max-apply-steps into a load's commit:
    the budget of each of its statements (fsm_load.py)."""
    return (LOAD_STEPS_OP, int(steps).to_bytes(8, "big"))


def result_op(max_bytes):
    """The op that carries the proposing leader's -max-result-bytes: the bound on rows a
    write request's statements return (RETURNING), the same on every member."""
    return (RESULT_OP, int(max_bytes).to_bytes(8, "big"))


def _op_int(ops, op):
    for name, args in ops:
        if name == op and len(args) == 8:
            return int.from_bytes(args, "big")
    return 0


def _single_sql(req):
    """The text of a request that is one statement, without transaction (what
    ``_run_singles`` may run together with its neighbours), else None."""
    sts = req.statements
    if type(sts) is not list or len(sts) != 1 or req.transaction:
        return None
    sql = sts[0].sql
    return None if uses_connection_state(sql) else sql


def _conn_state(req):
    """Whether a statement of ``req`` reads the connection's history (changes(), ...)."""
    sts = req.statements
    if type(sts) is BulkStatements:
        return uses_connection_state(sts.sql)
    for st in sts:
        if uses_connection_state(st.sql):
            return True
    return False


def _clock(ops):
    for name, args in ops:
        if name == CLOCK_OP and len(args) == 8:
            return int.from_bytes(args, "big")
    return None


_IN_SQL = {}
_IN_MAX = 64


def _dedup_lookup(db, rids):
    """{request id: stored result} for those of ``rids`` (distinct bytes) in the table."""
    found = {}
    for k in range(0, len(rids), _IN_MAX):
        part = rids[k:k + _IN_MAX]
        sql = _IN_SQL.get(len(part))
        if sql is None:
            sql = _IN_SQL[len(part)] = ("SELECT request_id, result FROM _raftsqlite_requests "
                                        "WHERE request_id IN (" + ",".join("?" * len(part)) + ")")
        for rid, blob in db.internal(sql, part):
            found[bytes(rid)] = blob
    return found


_WRITE_KEYS = ("last_insert_id", "rows_affected", "time")


def _dump_result(results) -> bytes:
    if type(results) is list and len(results) == 1:
        r = results[0]
        if tuple(r) == _WRITE_KEYS:     # the commonest: one write's result
            return orjson.dumps([{"last_insert_id": r["last_insert_id"],
                                  "rows_affected": r["rows_affected"]}])
    if type(results) is InsertRun:
        results.materialize()
    # "time" differs per replica; stored rows must not, so replicas stay byte-identical
    return orjson.dumps([{k: v for k, v in r.items() if k != "time"} for r in results],
                        default=b64_default)


def _load_result(blob):
    return unb64(orjson.loads(blob))


class _OverBudget(Exception):
    """Requests (their positions) whose count passed the write budget, or whose run
    passed an inline apply's deadline."""

    def __init__(self, keys):
        super().__init__(keys)
        self.keys = keys


class _DeadlinePassed(Exception):
    """An inline apply ran past its deadline; everything it did was undone."""


class _TxnLost(Exception):
    """A user statement ended the SQLite transaction; carries the request's position."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key


class SystemContext:
    """What a SYSTEM handler may use: SQL inside the apply transaction (internal access,
    so it may keep its own ``_raftsqlite_*`` tables), and the entry's index and term."""

    __slots__ = ("_db", "index", "term")

    def __init__(self, db, index, term):
        self._db = db
        self.index = index
        self.term = term

    def execute(self, sql, params=None):
        return self._db.internal(sql, params)

    def run_user(self, sql, params=None):
        """Run a statement with user rights (results as for EXECUTE)."""
        return self._db.run_user(sql, params)

    def run_user_budgeted(self, sql, params=None):
        """``run_user`` within the entry's write budget (op ``lsteps``, 0 = none), counted
        for this statement alone and exactly (prepared fresh, so the count is the same on
        every member). -> (result, True when it ran past the budget and was stopped)."""
        db = self._db
        if not db.step_budget:
            return db.run_user(sql, params), False
        db.budget_begin()
        r = db.run_user(sql, params, fresh=True)
        return r, db.budget_tripped

    def step_budget(self):
        return self._db.step_budget

    def table_at_rowid_limit(self):
        """The first table holding rowid 2^63-1 (or an AUTOINCREMENT counter at it)."""
        return self._db.table_at_rowid_limit()

    def in_transaction(self):
        """False once a statement ended the apply transaction (then raise: the FSM
        re-runs the entry with this op failed)."""
        return self._db.in_transaction()
