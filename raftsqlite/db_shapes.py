"""Which plain INSERT texts the apply path may run wholesale, and how (no apsw here: the
caller passes its own way to run internal SQL). See docs/design/store.md, "The bulk form".
"""
import re

from raftsqlite.codec import check_rows, flat_rows

INTERNAL_PREFIX = "_raftsqlite_"

# Pragmas that set state of the connection, not of the database file. Set by a statement,
# the setting would hold on the connection that ran it (every member's writer, or one
# reader thread's connection shared by all clients) and vanish on a restart or a snapshot
# restore, so replicas would apply the same log differently (LIKE, triggers, CHECK
# constraints, row order of INSERT ... SELECT, query plans and so step counts), or it
# would change the process for everyone (memory limits). Reading them is allowed.
STATE_PRAGMAS = frozenset({
    "case_sensitive_like", "recursive_triggers", "reverse_unordered_selects",
    "ignore_check_constraints", "legacy_alter_table", "trusted_schema", "query_only",
    "defer_foreign_keys", "automatic_index", "analysis_limit", "count_changes",
    "full_column_names", "short_column_names", "empty_result_callbacks", "cell_size_check",
    "cache_size", "default_cache_size", "cache_spill", "soft_heap_limit", "hard_heap_limit",
    "threads", "max_page_count", "temp_store", "busy_timeout", "fullfsync",
    "checkpoint_fullfsync", "secure_delete", "schema_version", "legacy_file_format",
})


# SQL functions whose value is the connection's recent history (the previous statement's
# changes, the last rowid inserted, changes since the connection opened), not the
# database's. See uses_connection_state.
# TEMP objects (tables, views, triggers, indexes) live on the connection, not in the file.
_CONN_FN = r"\b(?:total_changes|changes|last_insert_rowid)\s*\("
_CONN_STATE = re.compile(_CONN_FN + r"|\btemp(?:orary)?\b", re.I)
CONN_FUNCTIONS = re.compile(_CONN_FN, re.I)
_conn_state_cache = {}


def uses_connection_state(sql: str) -> bool:
    """Whether ``sql`` calls changes(), total_changes() or last_insert_rowid(), or may
    touch TEMP objects (any word ``temp``/``temporary``; a false alarm costs a little).
    The apply path then runs its request from a reset connection
    (``Database.reset_conn_state``) and drops the TEMP objects it left
    (``Database.drop_temp``), so every member computes the same, whatever ran on its
    writer before, and nothing outlives the request that a restarted member would lack."""
    got = _conn_state_cache.get(sql)
    if got is None:
        if len(_conn_state_cache) > 4096:
            _conn_state_cache.clear()
        got = _conn_state_cache[sql] = _CONN_STATE.search(sql) is not None
    return got


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ``INSERT INTO name(col, ...) VALUES(?, ...)``: one row per execution, no conflict clause,
# no RETURNING, no SELECT. See insert_shape.
_PLAIN_INSERT = re.compile(
    r'\s*INSERT\s+INTO\s+("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_]*)\s*'
    r'\(([^()]*)\)\s*VALUES\s*(\(\s*\?(?:\s*,\s*\?)*\s*\))\s*;?\s*\Z', re.I)
# Rows per multi-row statement (see InsertShape): the gain is flat from ~50 rows up, and
# a bounded count keeps each text short and its bound parameters under SQLite's old
# default limit of 999.
MULTI_ROWS = 100
# Table DDL that makes one multi-row statement differ from one statement per row:
# foreign keys and CHECKs are checked at the end of each statement (a later row of the
# same statement could satisfy them), and conflict clauses may delete rows mid-statement.
_MULTI_UNSAFE_DDL = ("REFERENCES", "CHECK", "ON CONFLICT")


class InsertShape:
    """What ``Database.sequential_insert`` learned about a plain INSERT text: its table,
    and, when the table allows it, the multi-row form of the text: ``head`` + n copies
    of ``tup`` (``width`` parameters each) joined by commas.

    One ``INSERT INTO t(c) VALUES (?,?),(?,?),...`` statement does what the same rows do
    one statement each when every row succeeds, provided nothing in the table is checked
    or evaluated per statement rather than per row: no foreign keys, CHECK constraints
    or conflict clauses (``_MULTI_UNSAFE_DDL``), no triggers (already excluded), and no
    column default that is an expression (only literals: an expression could call
    ``changes()``, which a multi-row statement sees once). When a row fails, the whole
    multi-row statement is undone and the caller runs the rows the exact way. SQLite then
    does in C what executemany does with a Python step per row: about half the CPU."""

    __slots__ = ("table", "head", "tup", "width", "_texts")

    def __init__(self, table, head=None, width=0):
        self.table = table
        self.head = head
        self.width = width
        self.tup = "(" + ",".join("?" * width) + ")" if width else None
        self._texts = {}

    def text(self, m):
        """The multi-row text for ``m`` rows."""
        t = self._texts.get(m)
        if t is None:
            t = self._texts[m] = self.head + ",".join([self.tup] * m)
        return t

    def insert(self, conn, rows):
        """Run every row through multi-row statements of ``MULTI_ROWS`` rows; raises what
        SQLite or the binding raises (the rows before the failing statement ran). The
        last row runs alone, so the connection's ``changes()`` afterwards is 1, as after
        one statement per row (a later statement may read it: a ``DEFAULT (changes())``
        column, ``SELECT changes()``)."""
        execute = conn.cursor().execute
        width = self.width
        step = max(1, min(MULTI_ROWS, 999 // width))
        n = len(rows) - 1
        for s in range(0, n, step):
            execute(self.text(min(step, n - s)), flat_rows(rows, s, min(s + step, n), width))
        if n >= 0:
            execute(self.text(1), flat_rows(rows, n, n + 1, width))

    def fits(self, rows):
        """Every row a list of exactly ``width`` plain values (so the flat parameter
        list lines up with the tuples)."""
        return self.head is not None and check_rows(rows, self.width) < 0
_ROWID_NAMES = frozenset(("rowid", "oid", "_rowid_"))


def _unquote(name):
    name = name.strip()
    if len(name) > 1 and name[0] == '"' and name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name


def insert_shape(sql, internal, clock_pinned=True):
    """An ``InsertShape`` when every execution of ``sql`` (inside the apply transaction,
    nothing else writing) inserts exactly one row whose rowid is the table's largest
    rowid plus one: a plain ``INSERT INTO t(cols) VALUES(?, ...)`` into an ordinary rowid
    table without triggers, not naming its rowid or a primary-key column. Otherwise None.
    ``internal(sql, params)`` runs our own SQL on the writer; ``clock_pinned``: 'now' is
    the entry's instant (the writer's clock VFS), the same for every statement."""
    m = _PLAIN_INSERT.match(sql)
    if m is None:
        return None
    table = _unquote(m.group(1))
    cols = {_unquote(c).lower() for c in m.group(2).split(",")}
    if not table or table.lower().startswith(INTERNAL_PREFIX) or cols & _ROWID_NAMES:
        return None
    q = "SELECT type, sql FROM {} WHERE name = ? COLLATE NOCASE OR (type = 'trigger' " \
        "AND tbl_name = ? COLLATE NOCASE)"
    if internal(q.format("sqlite_temp_schema"), (table, table)):
        return None     # a temp table shadows it, or a temp trigger watches it
    objs = internal(q.format("sqlite_schema"), (table, table))
    if len(objs) != 1 or objs[0][0] != "table":
        return None     # a view, or any trigger
    ddl = " ".join((objs[0][1] or "").upper().split())
    if not ddl.startswith("CREATE TABLE") or "WITHOUT ROWID" in ddl:
        return None
    qt = quote_ident(table)
    multi = not any(k in ddl for k in _MULTI_UNSAFE_DDL)
    for _cid, name, _type, _nn, dflt, pk in internal(f"PRAGMA table_info({qt})"):
        if pk and name.lower() in cols:
            return None
        if dflt is not None and ("(" in dflt or (not clock_pinned and
                                                  "CURRENT" in dflt.upper())):
            multi = False   # an expression, or 'now' not pinned per entry
    if not multi:
        return InsertShape(table)
    return InsertShape(table, f"INSERT INTO {m.group(1)}({m.group(2)}) VALUES ",
                       m.group(3).count("?"))


def storage_class(v) -> str:
    """SQLite's storage class of a value, as rqlite names it in ``types``."""
    if v is None:
        return ""
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "real"
    if isinstance(v, str):
        return "text"
    return "blob"


def fill_types(types, rows):
    """rqlite's rule for a result's ``types``: a column without a declared type takes the
    storage class of its value in the first row. ``types`` is changed in place."""
    if rows and "" in types:
        first = rows[0]
        for i, t in enumerate(types):
            if not t and i < len(first):
                types[i] = storage_class(first[i])
    return types
