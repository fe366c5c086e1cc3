"""Wiring of the catalog and of shard ownership into the FSM (store branch's contract:
``fsm.register_system_handler(name, fn(ctx, args: bytes))`` with ``ctx.execute(sql,
params)`` running internal SQL inside the apply transaction).

Both states live in ``_raftsqlite_meta`` as one orjson blob each, written in the same
SQLite transaction as the op that changed them, so snapshots carry them and replay never
applies an op twice. The in-memory object is only a cache keyed by the stored bytes: the
FSM may roll back and re-run a batch, so a use re-reads the row (a primary-key lookup)
and re-parses only when the bytes differ. The one exception is ``ShardState.check`` on
the apply thread, which keeps what it read until this object writes the row, a snapshot
is restored, or the entry index goes back (see there). Nothing here holds state that
the database does not.

Usage (node wiring)::

    shard = ShardState(group_name)                # on every node
    shard.register(fsm)                           # own.* ops
    db.create_function("rs_kid", 2, keyspace.sql_kid)         # on writer and readers
    db.create_function("rs_owns", 2, shard.owns_fn(db.internal))
    # in the FSM, before a routed request's savepoint (guard bytes travel with it):
    shard.check(ctx_or_db.internal, guard, write=True)        # raises Moved / Fenced
    catalog = CatalogState(on_change=...)         # on default-group nodes
    catalog.register(fsm)                         # catalog.* ops
"""
import orjson

from raftsqlite.errors import BadRequest

from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.ownership import (ShardOwnership, catalog_guard,
                                          check_catalog_version, decode_catalog_guard,
                                          decode_token_guard)

META_TABLE = "_raftsqlite_meta"
OWN_KEY = "sharding.ownership"
CATALOG_KEY = "sharding.catalog"
OWN_OPS = ("own.set", "own.set_all", "own.fence", "own.unfence", "own.drop", "own.claim",
           "own.release")
CATALOG_OPS = tuple("catalog." + n[4:] for n in dir(Catalog) if n.startswith("_op_"))


def _read(internal, key):
    rows = internal(f"SELECT v FROM {META_TABLE} WHERE k = ?", (key,))
    return bytes(rows[0][0]) if rows and rows[0][0] is not None else b""


def _write(internal, key, b):
    internal(f"INSERT OR REPLACE INTO {META_TABLE}(k, v) VALUES (?, ?)", (key, b))


class _Blob:
    key = ""

    def __init__(self):
        self._bytes = None
        self._obj = None

    def _fresh(self, b):
        raise NotImplementedError

    def load(self, internal):
        """The state as stored now (cached while the stored bytes do not change)."""
        b = _read(internal, self.key)
        if b != self._bytes:
            self._obj = self._fresh(b)
            self._bytes = b
        return self._obj

    def _apply(self, ctx, name, args):
        b = _read(ctx.execute, self.key)
        obj = self._fresh(b)          # a private copy: the cache changes only once stored
        res = obj.apply(name, args)   # raises on a bad op: the FSM rolls the op back
        nb = obj.to_bytes()
        _write(ctx.execute, self.key, nb)
        self._bytes, self._obj = nb, obj
        return res

    def handler(self, name):
        return lambda ctx, args: self._apply(ctx, name, args)


class ShardState(_Blob):
    key = OWN_KEY

    def __init__(self, group):
        super().__init__()
        self.group = group
        self._memo = None     # (entry index, _bytes then, ShardOwnership) of the last check
        self._wcache = None   # (stored bytes, ShardOwnership) parsed on the apply thread

    def _fresh(self, b):
        o = ShardOwnership.from_bytes(b) if b else ShardOwnership()
        o.group = o.group or self.group
        return o

    def register(self, fsm):
        for name in OWN_OPS:
            fsm.register_system_handler(name, self.handler(name))
        # a snapshot replaces the stored ownership without an op: the check memo, which
        # outlives entries, must go (check relies on this)
        listen = getattr(fsm, "add_restore_listener", None)
        if listen is not None:
            listen(self.forget)

    def forget(self):
        self._memo = None

    def _apply(self, ctx, name, args):
        self._memo = None
        return super()._apply(ctx, name, args)

    def check(self, internal, guard, write=True, index=None):
        """Raise ``Moved``/``Fenced`` unless ``guard`` (bytes) may run here now.

        ``index``: the log index of the entry being applied (``SystemContext.index``).
        The ranges and fences a guard is checked against change only through ``own.*``
        ops (entries of their own, whose ``_apply`` drops the memo), ``take_token`` (which
        replaces ``_bytes``) and snapshot restores (``forget``); the row is therefore read
        again only after one of those, not once per request or per entry. The memo also
        lapses whenever ``load`` re-reads other bytes (``_bytes`` is no longer the object
        it was made from), so a reader thread's load only makes the next check read the
        row again. It holds only while indexes do not go back: a batch the FSM rolls back
        is re-run from its first entry, at or below the memo's index, so the re-run reads
        the row again and every ``own.*`` op in it drops the memo once more."""
        if index is not None:
            m = self._memo
            if m is not None and m[0] <= index and m[1] is self._bytes:
                m[2].check(guard, write=write)
                return
            lapse = self._bytes
            b = _read(internal, self.key)
            wc = self._wcache      # the apply thread's own parse: no reader can swap it
            if wc is None or wc[0] != b:
                wc = self._wcache = (b, self._fresh(b))
            self._memo = (index, lapse, wc[1])
            wc[1].check(guard, write=write)
            return
        self.load(internal).check(guard, write=write)

    def take_token(self, internal, guard, record=True):
        """A coordinator's request with a fencing-token guard: raise ``CoordinatorFenced``
        if a newer coordinator of that move was seen; otherwise remember the token (in
        the apply transaction, like an op: ``record`` only where ``internal`` is it)."""
        move, token = decode_token_guard(guard)
        if self.load(internal).token_is_new(move, token) and record:   # raises if refused
            o = self._fresh(_read(internal, self.key))
            o.take_token(move, token)
            nb = o.to_bytes()
            _write(internal, self.key, nb)
            self._bytes, self._obj = nb, o

    def owns_fn(self, internal):
        """``rs_owns(colocation, value)`` for ``create_function``; reads the state as of
        the connection that runs it (use the reader's own ``internal`` on readers)."""
        return lambda colocation, value: self.load(internal).owns(colocation, value)


class CatalogState(_Blob):
    key = CATALOG_KEY

    def __init__(self, on_change=None):
        super().__init__()
        self.on_change = on_change    # called with the new bytes after each op (apply thread)
        # An upper bound of the stored catalog's schema_version: the highest any parsed
        # or applied copy had (it only grows in the catalog). A call planned at least at
        # this version passes the catalog check with one integer compare; below it, the
        # check reads the stored catalog, so a batch re-run (fsm.py) or a rolled-back op
        # can only make the check slower, never wrong.
        self.schema_hint = 0
        self._hint_guard = catalog_guard(0)   # the guard at the hint: passes on equality

    def _raise_hint(self, v):
        if v > self.schema_hint:
            self.schema_hint = v
            self._hint_guard = catalog_guard(v)

    def _fresh(self, b):
        c = Catalog.from_bytes(b)
        self._raise_hint(c.schema_version)
        return c

    def _apply(self, ctx, name, args):
        if name == "catalog.register_table":
            _refuse_rows_in_template(ctx, args)
        res = super()._apply(ctx, name, args)
        self._raise_hint(self._obj.schema_version)
        if self.on_change is not None:
            self.on_change(self._bytes)
        return res

    def check(self, internal, guard):
        """Raise ``StaleCatalog`` if ``guard`` (``ownership.catalog_guard``) was planned
        before a table registration this state holds. Exact where it runs: inside the
        apply transaction (``ctx.execute``), in log order with the catalog ops."""
        if guard == self._hint_guard:     # the common case: a router that is current
            return
        planned = decode_catalog_guard(guard)
        if planned >= self.schema_hint:
            return
        check_catalog_version(planned, self.load(internal).schema_version)

    def register(self, fsm):
        for name in CATALOG_OPS:
            fsm.register_system_handler(name, self.handler(name))


def _refuse_rows_in_template(ctx, args):
    """The HTTP handler refuses to register a table with rows in the default group, but
    it reads before it proposes: a write applied in between would stay in the template
    table, invisible to routed reads. Checked again here, in log order, where nothing
    can come in between (every replica sees the same rows at this index)."""
    try:
        a = orjson.loads(args) if isinstance(args, (bytes, bytearray, memoryview)) else args
        name = str(a["table"]).lower()
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return                       # Catalog.apply gives the clear error
    if not ctx.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND lower(name) = ?",
                       (name,)):
        return
    q = '"' + name.replace('"', '""') + '"'
    if ctx.execute(f"SELECT 1 FROM {q} LIMIT 1"):
        raise BadRequest(f"table {name} has rows in the default group (written just before "
                         "its registration); registering it would hide them from routed "
                         "queries. What to do: move the rows out, then register it again")


def op_args(d):
    """Args bytes for a SYSTEM op."""
    return orjson.dumps(d)
