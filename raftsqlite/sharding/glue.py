"""Wiring of the catalog and of shard ownership into the FSM (store branch's contract:
``fsm.register_system_handler(name, fn(ctx, args: bytes))`` with ``ctx.execute(sql,
params)`` running internal SQL inside the apply transaction).

Both states live in ``_raftsqlite_meta`` as one orjson blob each, written in the same
SQLite transaction as the op that changed them, so snapshots carry them and replay never
applies an op twice. The in-memory object is only a cache keyed by the stored bytes: the
FSM may roll back and re-run a batch, so every use re-reads the row (a primary-key
lookup) and re-parses only when the bytes differ. Nothing here holds state that the
database does not.

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

from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.ownership import ShardOwnership

META_TABLE = "_raftsqlite_meta"
OWN_KEY = "sharding.ownership"
CATALOG_KEY = "sharding.catalog"
OWN_OPS = ("own.set", "own.set_all", "own.fence", "own.unfence", "own.drop")
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
        # a snapshot replaces the stored ownership without an op (later entries have
        # higher indexes anyway; forgetting is only the cheap belt to that brace)
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
        A coalesced routed call is one entry of many guarded requests, and the ranges and
        fences a guard is checked against change only through ``own.*`` ops, entries of
        their own; so the row is read once per entry, not once per request. The memo
        also lapses whenever this object writes or re-reads other bytes (``_bytes`` is
        no longer the object it was made from): every write of the blob goes through
        here. A re-run of the same entry after a rolled-back batch re-applies the same
        earlier entries, so it sees the same ranges. ``load`` from a reader thread only
        makes the next check read the row again."""
        if index is not None:
            m = self._memo
            if m is not None and m[0] == index and m[1] is self._bytes:
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

    def owns_fn(self, internal):
        """``rs_owns(colocation, value)`` for ``create_function``; reads the state as of
        the connection that runs it (use the reader's own ``internal`` on readers)."""
        return lambda colocation, value: self.load(internal).owns(colocation, value)


class CatalogState(_Blob):
    key = CATALOG_KEY

    def __init__(self, on_change=None):
        super().__init__()
        self.on_change = on_change    # called with the new bytes after each op (apply thread)

    def _fresh(self, b):
        return Catalog.from_bytes(b)

    def _apply(self, ctx, name, args):
        res = super()._apply(ctx, name, args)
        if self.on_change is not None:
            self.on_change(self._bytes)
        return res

    def register(self, fsm):
        for name in CATALOG_OPS:
            fsm.register_system_handler(name, self.handler(name))


def op_args(d):
    """Args bytes for a SYSTEM op."""
    return orjson.dumps(d)
