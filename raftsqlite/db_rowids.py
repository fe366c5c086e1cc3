"""The writer's check against SQLite's random rowids (a mixin of ``db.Database``).

Once a rowid table holds rowid 2^63-1, SQLite gives a new row without a rowid a random
one from its process-wide generator, which differs between members. A request that
leaves that rowid in a table it wrote is refused instead, on every member alike
(docs/design/store.md, "Random rowids"). What each SQL text writes comes from the
authorizer (``db_exec._Access``), noted per text; the check is one lookup per table
written, skipped while an upper bound of the table's largest rowid proves the answer.
"""
from raftsqlite.db_exec import _BAD_PARAMS, SQL_ERROR
from raftsqlite.db_shapes import _PLAIN_INSERT, _ROWID_NAMES, _unquote, quote_ident

# The writer's progress handler runs every this many SQLite VM steps (db.py). A statement
# below it never calls into Python, so the apply budget costs nothing on ordinary writes.
PROGRESS_STEPS = 10_000

_MAX_ROWID = (1 << 63) - 1


def rowid_error(table):
    if table.lower() == "sqlite_sequence":
        return (f"request not applied: it would leave {_MAX_ROWID} (the largest rowid) as an "
                "AUTOINCREMENT counter in sqlite_sequence, after which every insert into "
                "that table fails. Use smaller values")
    return (f"request not applied: it would leave rowid {_MAX_ROWID} (the largest) in table "
            f"{table}; SQLite then gives new rows of that table random rowids, which the "
            "members of the group would choose differently. Use smaller rowids (INTEGER "
            "PRIMARY KEY values)")


class RowidCheck:
    """Needs ``writer``, ``internal``, ``_write_access`` (tracking), ``_progress``,
    ``stats_counters`` and the state ``_rowid_init`` sets."""

    def _rowid_init(self):
        # what each user SQL text writes. A text served from apsw's statement cache (100
        # texts) is almost always here; one that is not (pushed out by 4096 newer texts,
        # or first run by our own code) is learned again from a fresh prepare
        self._targets = {}
        self.req_written = set()      # tables the current request wrote
        self._rowid_q = {}            # (schema, table) -> query of its largest rowid, or ""
        self._rowid_gen = -1
        self.rowid_refused = False
        # (schema, table) -> an upper bound of its largest rowid (see check_rowid_limit),
        # kept while every write to it is a checked request; dropped on anything else
        self._top = {}
        self._req_auto = None         # the one table the request inserted into, single rows
        self._req_rowmax = 0          # the largest rowid its single-row inserts reported
        self._req_unseen = False      # True: one naming the rowid ran where none is reported
        self._tc0 = 0

    def _rowid_begin(self):
        """A request (or a run of one-statement requests) starts."""
        self.rowid_refused = False
        self.req_written.clear()
        self._req_auto = True
        self._req_rowmax = 0
        self._req_unseen = False
        self._tc0 = self.writer.total_changes()

    def note_targets(self, sql, reported=False):
        """After a user text ran on the writer: add the tables it inserts into or updates
        to the request's (``req_written``). SQLite calls the authorizer only when it
        prepares a text, so what a text writes is kept per text (a text served from the
        statement cache was prepared on this connection earlier; if it is no longer
        kept here, a fresh prepare tells again). ``reported``: it ran through ``run_user``, whose result gave its rowid."""
        acc = self._write_access
        tm = self._targets
        if acc.prepared:
            if len(tm) >= 4096:
                del tm[next(iter(tm))]
            t = self._targets_prepared(sql)
        else:
            t = tm.get(sql)
            if t is None:
                t = self._learn_targets(sql)
        written, auto, named = t
        if written:
            self.req_written.update(written)
            ra = self._req_auto
            if ra is not None and ra is not auto:
                self._req_auto = auto if ra is True else None
            if named and not reported:
                self._req_unseen = True

    def _targets_prepared(self, sql):
        """(tables written, the table when ``sql`` only inserts one row into it (see
        ``_single_row_insert``) else None, whether it names the rowid), from what the
        authorizer saw of a prepare."""
        acc = self._write_access
        written = frozenset(acc.written)
        plain = acc.plain
        acc.prepared = False
        acc.plain = True
        acc.written.clear()
        auto = named = None
        if plain and len(written) == 1:
            (key,) = written
            named = self._single_row_insert(sql, key)
            if named is not None:
                auto = key
        t = self._targets[sql] = (written, auto, named)
        return t

    def _single_row_insert(self, sql, key):
        """When ``sql`` is a plain ``INSERT INTO t(cols) VALUES (?, ...)`` into ``key``
        (one row per execution; no trigger, UPDATE or DELETE, known from the authorizer):
        whether it names the rowid or a column that is its alias (False: each row takes
        rowid = largest + 1, or a random one past 2^63-1; True: the row's rowid may be
        given, and the result's last_insert_id reports it). None otherwise."""
        m = _PLAIN_INSERT.match(sql)
        if m is None or _unquote(m.group(1)).lower() != key[1].lower():
            return None
        cols = {_unquote(c).lower() for c in m.group(2).split(",")}
        if cols & _ROWID_NAMES:
            return True
        try:
            info = self.internal(f"PRAGMA {quote_ident(key[0])}.table_xinfo"
                                 f"({quote_ident(key[1])})")
        except SQL_ERROR:
            return None
        ddl = self.internal(f"SELECT sql FROM {quote_ident(key[0])}.sqlite_schema WHERE "
                            "type = 'table' AND name = ? COLLATE NOCASE", (key[1],))
        text = " ".join((ddl[0][0] or "").upper().split()) if ddl else ""
        if not text.startswith("CREATE TABLE") or "AUTOINCREMENT" in text:
            return None     # virtual (its module picks rowids), or its next rowid follows
            #                 its AUTOINCREMENT counter, not its largest rowid
        pks = [r for r in info if r[5]]
        # a lone INTEGER PRIMARY KEY is the rowid (an alias taken for one when it is not,
        # "INTEGER PRIMARY KEY DESC", only makes this more careful)
        return len(pks) == 1 and (pks[0][2] or "").upper() == "INTEGER" \
            and pks[0][1].lower() in cols

    def _learn_targets(self, sql):
        """What ``sql`` writes, from a fresh prepare (only for a text that reached the
        statement cache without our knowing it, e.g. first run by our own code)."""
        acc = self._write_access
        acc.written.clear()
        acc.plain = True
        self.writer.set_progress_handler(None)      # not counted in any budget
        try:
            self.writer.cursor().execute("EXPLAIN " + sql, can_cache=False)
        except (SQL_ERROR, *_BAD_PARAMS):
            pass        # the prepare, and so the authorizer, ran before any binding
        finally:
            self.writer.set_progress_handler(self._progress, PROGRESS_STEPS)
        self.stats_counters["targets_learned"] += 1
        return self._targets_prepared(sql)

    def check_rowid_limit(self):
        """After a request: True (and ``result_refused`` set) when a rowid table it wrote
        holds rowid 2^63-1. SQLite gives any later row without a rowid a random one from
        its process-wide generator, which differs between members, so such a request is
        refused on every member alike (store.md, "Random rowids"). One B-tree lookup per
        table written."""
        acc = self._write_access
        if acc.gen != self._rowid_gen:
            self._rowid_gen = acc.gen
            self._rowid_q.clear()
            self._top.clear()
        w = self.req_written
        auto = self._req_auto
        if auto is not None and auto is not True and not self._req_unseen:
            # The request only inserted single rows into one table, at most n of them,
            # each taking rowid = largest + 1 or one its result reported (the largest of
            # those: r). From an upper bound u of the table's largest rowid, the new
            # largest is at most max(u, r) + n. Below 2^63-1 that is the exact check's
            # answer too, with no query (the bulk and single-row insert paths).
            u = self._top.get(auto)
            if u is not None:
                r = self._req_rowmax
                u = (u if u > r else r) + self.writer.total_changes() - self._tc0
                if u < _MAX_ROWID:
                    self._top[auto] = u
                    self.stats_counters["rowid_bound_hits"] += 1
                    return False
        cur = self._rowid_cur
        for key in w:
            q = self._rowid_q.get(key)
            if q is None:
                q = self._rowid_q[key] = self._rowid_query(*key)
            if not q:
                continue
            prev, acc.internal = acc.internal, True     # ours: never counted in a budget
            try:
                top = cur.execute(q).get
            finally:
                acc.internal = prev
            if top == _MAX_ROWID:
                self.rowid_refused = True
                self.result_refused = rowid_error(key[1])
                return True
            self._top[key] = top or 0
        return False

    def table_at_rowid_limit(self):
        """The first table (or "sqlite_sequence") holding 2^63-1, else None: a check of
        the whole database (after a load, which may bring such rows)."""
        for (name,) in self.internal("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                     "AND name NOT LIKE 'sqlite\\_stat%' ESCAPE '\\'"):
            q = self._rowid_query("main", name)
            if q and self.internal(q)[0][0] == _MAX_ROWID:
                return name
        return None

    def forget_rowid_bounds(self):
        """Drop the upper bounds of check_rowid_limit: the apply transaction (or part of
        it) was rolled back, restored rows may lie above them, or something other than a
        checked request (a SYSTEM op, a restore) wrote."""
        self._top.clear()
        acc = self._write_access     # a statement that raised left its prepare unnoted
        acc.written.clear()
        acc.prepared = False
        acc.plain = True

    def _rowid_query(self, schema, table):
        """The query of a table's largest rowid ("" for a view, a WITHOUT ROWID table, a
        shadow table, or a table whose columns hide every name of its rowid). For a
        virtual table, the largest over its shadow tables (FTS5's content, R-Tree's
        rowid table...: rowid tables its module inserts into, rowids picked the same
        way); shadow tables are checked only so, as their module prepares its statements
        whenever it first needs them, so which user text they were noted under varies."""
        qs, qt = quote_ident(schema), quote_ident(table)
        if table.lower() == "sqlite_sequence":
            return f"SELECT max(seq) FROM {qs}.sqlite_sequence"
        try:
            info = self.internal(f"PRAGMA {qs}.table_list({qt})")
            if not info or info[0][4]:
                return ""
            if info[0][2] == "virtual":
                prefix = table.lower() + "_"
                parts = [q for (_s, name, typ, _n, wr, _st) in
                         self.internal(f"PRAGMA {qs}.table_list")
                         if typ == "shadow" and not wr and name.lower().startswith(prefix)
                         for q in (self._rowid_query_plain(qs, name),) if q]
                if not parts:
                    return ""
                return "SELECT max(m) FROM (" + " UNION ALL ".join(
                    p.replace(") FROM", ") AS m FROM", 1) for p in parts) + ")"
            if info[0][2] != "table":
                return ""
        except SQL_ERROR:
            return ""
        return self._rowid_query_plain(qs, table)

    def _rowid_query_plain(self, qs, table):
        qt = quote_ident(table)
        try:
            cols = {r[1].lower() for r in self.internal(f"PRAGMA {qs}.table_xinfo({qt})")}
        except SQL_ERROR:
            return ""
        for name in ("rowid", "_rowid_", "oid"):
            if name not in cols:
                return f"SELECT max({name}) FROM {qs}.{qt}"
        return ""

