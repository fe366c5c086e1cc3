"""What a shard knows about itself, and the check it runs on every routed statement.

Each shard group replicates (in its own FSM, via SYSTEM ops ``own.*``) the ranges it owns
per colocation group, the ranges fenced for a move, and the colocation epoch. A router
sends with every routed request a **guard**: for each table it touches, the epoch the
router believed and the keyspace ids of the keys it routed on (or "all of it" for a
scatter). The shard's FSM checks the guard inside the apply transaction, before the
statements run, so the check is ordered with fences and switches in the shard's own log:

- a key outside the owned ranges            -> ``Moved`` (retryable: refresh, re-route)
- a scatter with a different colocation epoch -> ``Moved`` (the router's set of shards
  may be missing one that gained a range, or include one that lost it)
- a write to a fenced range (scatter: any fence) -> ``Fenced`` (retryable: wait)

Key-bound statements do not compare epochs: owning the key is what makes the write
correct, and a move always fences the source before the catalog switches, so a router
that is ahead of the shard meets ``Fenced`` until the shard catches up.
"""
import struct

import orjson

from raftsqlite.errors import (BadRequest, CoordinatorFenced, DecodeError, Fenced, Moved,
                               RaftSQLiteError, StaleCatalog)
from raftsqlite.sharding import keyspace as ks

OP_PREFIX = "own."
GUARD_MAGIC = b"G\x01"
_ALL = 0xFFFFFFFF
_HDR = struct.Struct(">H")
_ITEM = struct.Struct(">QI")
_ONE = struct.Struct(">QIQ")


class GuardItem:
    __slots__ = ("table", "epoch", "kids")

    def __init__(self, table, epoch, kids=None):
        self.table = table
        self.epoch = epoch
        self.kids = None if kids is None else list(kids)  # None: every row of the shard

    def __eq__(self, o):
        return isinstance(o, GuardItem) and (self.table, self.epoch, self.kids) == (o.table, o.epoch, o.kids)

    def __repr__(self):
        return f"GuardItem({self.table!r}, {self.epoch}, {self.kids!r})"


def encode_guard(items):
    """Guard bytes: magic+version, count, then per table: name, epoch, key count
    (0xFFFFFFFF for a scatter) and the u64 keyspace ids."""
    if len(items) == 1:
        it = items[0]
        kids = it.kids
        if kids is not None and len(kids) == 1:     # one table, one key: the commonest
            name = it.table.encode("utf-8")
            return b"".join((b"G\x01\x00\x01", _HDR.pack(len(name)), name,
                             _ONE.pack(it.epoch, 1, kids[0])))
    out = [GUARD_MAGIC, _HDR.pack(len(items))]
    for it in items:
        name = it.table.encode("utf-8")
        out.append(_HDR.pack(len(name)))
        out.append(name)
        kids = it.kids
        out.append(_ITEM.pack(it.epoch, _ALL if kids is None else len(kids)))
        if kids:
            out.append(struct.pack(f">{len(kids)}Q", *kids))
    return b"".join(out)


# The default group's guard: the catalog ``schema_version`` a *default* plan was made
# with (sharding.md "Catalog guard"). Own magic, so a shard never mistakes it for
# ownership items, and 10 bytes, so the unsharded hot path pays next to nothing.
CATALOG_GUARD_MAGIC = b"C\x01"
_CAT = struct.Struct(">2sQ")
_catalog_guards = {}


def catalog_guard(schema_version):
    """Guard bytes for a call to the default group planned at ``schema_version``."""
    g = _catalog_guards.get(schema_version)
    if g is None:
        if len(_catalog_guards) > 64:
            _catalog_guards.clear()
        g = _catalog_guards[schema_version] = _CAT.pack(CATALOG_GUARD_MAGIC, schema_version)
    return g


def is_catalog_guard(buf):
    return buf[:2] == CATALOG_GUARD_MAGIC


def decode_catalog_guard(buf):
    """-> the schema version; raises ``DecodeError``."""
    if len(buf) != _CAT.size or buf[:2] != CATALOG_GUARD_MAGIC:
        raise DecodeError("not a catalog guard (bad magic, version or length)")
    return _CAT.unpack(bytes(buf))[1]


def check_catalog_version(planned, schema_version):
    """The default group's check of a default plan: refuse (``StaleCatalog``, nothing
    runs; the router refreshes, plans again and retries) when table registrations changed
    after the plan was made, because the statement may name a table that is sharded now
    and would land in the default group's template table."""
    if planned < schema_version:
        e = StaleCatalog(f"this statement was planned with catalog schema version {planned}, "
                         f"but table registrations changed since (now {schema_version}): "
                         "a table it names may be sharded now; plan again with a fresh catalog")
        e.router_version = planned
        e.schema_version = schema_version
        raise e


# A rebalance coordinator's fencing token (rebalance.md "Fencing tokens"): the move id
# and the token the catalog gave this coordinator when it took the move over
# (``catalog.move_claim``). Its internal writes to the source and the target carry it in
# place of an ownership guard (they must bypass ownership: the target does not own the
# range yet); the shard refuses a token older than the newest it has seen for the move.
TOKEN_GUARD_MAGIC = b"T\x01"
_TOK = struct.Struct(">2sQH")


def token_guard(move, token):
    m = str(move).encode("utf-8")
    return _TOK.pack(TOKEN_GUARD_MAGIC, int(token), len(m)) + m


def is_token_guard(buf):
    return buf[:2] == TOKEN_GUARD_MAGIC


def decode_token_guard(buf):
    """-> (move id, token); raises ``DecodeError``."""
    buf = bytes(buf)
    try:
        magic, token, n = _TOK.unpack_from(buf, 0)
        if magic != TOKEN_GUARD_MAGIC or len(buf) != _TOK.size + n:
            raise DecodeError("not a fencing-token guard (bad magic, version or length)")
        return buf[_TOK.size:].decode("utf-8"), token
    except (struct.error, UnicodeDecodeError) as e:
        raise DecodeError(f"fencing-token guard malformed: {e}") from None


def decode_guard(buf):
    buf = bytes(buf)
    if buf[:2] != GUARD_MAGIC:
        raise DecodeError("not a routing guard (bad magic or version)")
    try:
        (n,) = _HDR.unpack_from(buf, 2)
        p = 4
        items = []
        for _ in range(n):
            (ln,) = _HDR.unpack_from(buf, p)
            p += 2
            if p + ln > len(buf):
                raise DecodeError("routing guard truncated")
            name = buf[p:p + ln].decode("utf-8")
            p += ln
            epoch, cnt = _ITEM.unpack_from(buf, p)
            p += _ITEM.size
            kids = None
            if cnt != _ALL:
                if p + 8 * cnt > len(buf):
                    raise DecodeError("routing guard truncated")
                kids = list(struct.unpack_from(f">{cnt}Q", buf, p))
                p += 8 * cnt
            items.append(GuardItem(name, epoch, kids))
    except (struct.error, UnicodeDecodeError) as e:
        raise DecodeError(f"routing guard malformed: {e}") from None
    if p != len(buf):
        raise DecodeError("routing guard has trailing bytes")
    return items


class ShardOwnership:
    """The replicated self-knowledge of one shard group. Deterministic: ``apply`` is
    called by the FSM with the same ops in the same order on every member."""

    def __init__(self, group=""):
        self.group = group
        self.cols = {}     # colocation -> {"epoch", "shard_func", "tables", "ranges", "fenced"}
        self.tokens = {}   # running move id -> newest coordinator fencing token seen for it
        # The newest token of a move that ended here (``own.release``): a move with no
        # entry in ``tokens`` is accepted only with a newer token, so the entry of an
        # ended move can go while its old coordinators stay refused (rebalance.md).
        self.floor = 0
        self._by_table = {}
        self._by_name = {}   # the same, keyed by the UTF-8 bytes a guard carries

    # ---- state --------------------------------------------------------------------------
    def _reindex(self):
        self._by_table = {t: c for c, g in self.cols.items() for t in g["tables"]}
        self._by_name = {t.encode("utf-8"): c for t, c in self._by_table.items()}

    def to_bytes(self):
        d = {"group": self.group, "cols": {
            c: {"epoch": g["epoch"], "shard_func": g["shard_func"], "tables": g["tables"],
                "ranges": [[s, ks.end_to_json(e)] for s, e in g["ranges"]],
                "fenced": [[s, ks.end_to_json(e)] for s, e in g["fenced"]]}
            for c, g in self.cols.items()}}
        if self.tokens:
            d["tokens"] = self.tokens     # absent when empty: older states keep their bytes
        if self.floor:
            d["floor"] = self.floor
        return orjson.dumps(d, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, b):
        o = cls()
        if b:
            d = orjson.loads(b)
            o.group = d.get("group", "")
            o.tokens = {str(k): int(v) for k, v in d.get("tokens", {}).items()}
            o.floor = int(d.get("floor", 0))
            for c, g in d["cols"].items():
                o.cols[c] = {"epoch": g["epoch"], "shard_func": g["shard_func"],
                             "tables": list(g["tables"]),
                             "ranges": [(s, ks.end_from_json(e)) for s, e in g["ranges"]],
                             "fenced": [(s, ks.end_from_json(e)) for s, e in g["fenced"]]}
            o._reindex()
        return o

    def apply(self, op, args=None):
        """Apply an ``own.*`` SYSTEM op; returns a JSON-able result or raises (no change)."""
        name = op[len(OP_PREFIX):] if op.startswith(OP_PREFIX) else op
        fn = getattr(self, "_op_" + name, None)
        if fn is None:
            raise BadRequest(f"unknown ownership op {op!r}")
        if isinstance(args, (bytes, bytearray, memoryview)):
            try:
                args = orjson.loads(args) if len(args) else {}
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"ownership op {op}: arguments are not JSON: {e}") from None
        before = self.to_bytes()
        try:
            res = fn(args or {})
        except RaftSQLiteError:
            self.__dict__.update(ShardOwnership.from_bytes(before).__dict__)
            raise
        except (KeyError, TypeError, ValueError) as e:
            self.__dict__.update(ShardOwnership.from_bytes(before).__dict__)
            raise BadRequest(f"ownership op {op}: bad arguments ({type(e).__name__}: {e})") from None
        self._reindex()
        return res or {}

    @staticmethod
    def encode_op(name, **args):
        return OP_PREFIX + name, orjson.dumps(args)

    def _set_one(self, cname, a):
        cur = self.cols.get(cname)
        if cur is not None and a["epoch"] < cur["epoch"]:
            return False  # an older view arriving late (a retried proposal): keep the newer
        fenced = cur["fenced"] if cur is not None else []
        ranges = ks.normalise_spans((s, ks.end_from_json(e)) for s, e in a["ranges"])
        if a.get("shard_func", "hash") not in ks.SHARD_FUNCS:
            raise BadRequest(f"bad shard_func {a.get('shard_func')!r}")
        self.cols[cname] = {"epoch": int(a["epoch"]), "shard_func": a.get("shard_func", "hash"),
                            "tables": sorted(str(t).lower() for t in a["tables"]),
                            "ranges": ranges,
                            "fenced": [f for f in fenced if _inside(f, ranges)]}
        return True

    def _op_set(self, a):
        """``{colocation, epoch, shard_func, tables, ranges}``: this shard's view of one
        colocation group, as ``Catalog.ownership_for`` computes it."""
        return {"applied": self._set_one(a["colocation"], a)}

    def _op_set_all(self, a):
        """``{"group", "cols": Catalog.ownership_for(group)}``; colocation groups that are
        absent are dropped (their epoch must have moved on in the catalog)."""
        if a.get("group"):
            self.group = a["group"]
        applied = {c: self._set_one(c, g) for c, g in a["cols"].items()}
        for c in [c for c in self.cols if c not in a["cols"]]:
            del self.cols[c]
        return {"applied": applied}

    def token_is_new(self, move, token):
        """Whether a coordinator's fencing token for ``move`` must be recorded; raise
        ``CoordinatorFenced`` when it is refused: older than the newest seen for the move,
        or, for a move with no entry, not newer than ``floor`` (the move ended here, or
        another one did after this token was given: its coordinator claims again).
        Changes nothing."""
        cur = self.tokens.get(move)
        if cur is None:
            if token <= self.floor:
                raise CoordinatorFenced(
                    f"move {move}: coordinator token {token} is not newer than token "
                    f"{self.floor} of a move that ended on shard {self.group or '?'}: this "
                    "move ended here, or its coordinator must claim it again")
            return True
        if token < cur:
            raise CoordinatorFenced(
                f"move {move}: coordinator token {token} is older than token {cur} seen by "
                f"shard {self.group or '?'}: a newer coordinator took the move over")
        return token > cur

    def take_token(self, move, token):
        """A coordinator's fencing token for ``move``: refuse it (``CoordinatorFenced``,
        see ``token_is_new``), else remember it. -> whether the state changed."""
        if self.token_is_new(move, token):
            self.tokens[move] = token
            return True
        return False

    def _token(self, a):
        # fence/unfence sent by a move's coordinator carry its token (optional otherwise)
        if a.get("token") is not None:
            self.take_token(str(a["move"]), int(a["token"]))

    def _op_claim(self, a):
        """``{move, token}``: a coordinator taking a move over announces its token, so
        from here on every request of an older coordinator of that move is refused."""
        return {"changed": self.take_token(str(a["move"]), int(a["token"]))}

    def _op_release(self, a):
        """``{move, token}``: the move ended (done, or rolled back and cleaned) and its
        coordinator is finishing: forget its entry, raise ``floor`` to its token, so the
        state stays one integer however many moves ran, and every request of this or an
        older coordinator of the move is still refused. A repeat (the entry is gone) is a
        no-op; an older coordinator's release is refused like its other requests."""
        move, token = str(a["move"]), int(a["token"])
        cur = self.tokens.get(move)
        if cur is None:
            return {"released": False}
        self.token_is_new(move, token)        # raises for an older coordinator
        del self.tokens[move]
        self.floor = max(self.floor, token)
        return {"released": True}

    def _op_fence(self, a):
        self._token(a)
        g = self._col(a["colocation"])
        span = (int(a["start"]), ks.end_from_json(a.get("end")))
        g["fenced"] = ks.normalise_spans(g["fenced"] + [span])

    def _op_unfence(self, a):
        self._token(a)
        g = self._col(a["colocation"])
        s, e = int(a["start"]), ks.end_from_json(a.get("end"))
        g["fenced"] = [f for f in g["fenced"] if not (f[0] >= s and f[1] <= e)]

    def _op_drop(self, a):
        self.cols.pop(a["colocation"], None)

    def _col(self, c):
        if c not in self.cols:
            raise BadRequest(f"this shard holds no colocation group {c!r}")
        return self.cols[c]

    # ---- the check --------------------------------------------------------------------
    def check(self, guard, write=True):
        """Raise ``Moved`` or ``Fenced`` unless every item of ``guard`` (bytes or a list
        of ``GuardItem``) may run here now. Reads pass ``write=False`` (fences do not
        stop reads: the source still holds the rows until the switch)."""
        if isinstance(guard, (bytes, bytearray, memoryview)):
            if type(guard) is bytes and self._check_one_key(guard, write):
                return
            items = decode_guard(guard)
        else:
            items = guard
        for it in items:
            cname = self._by_table.get(it.table)
            if cname is None:
                raise _moved(f"shard {self.group or '?'} holds no part of table {it.table}",
                             it, None)
            g = self.cols[cname]
            if it.kids is None:
                if it.epoch != g["epoch"]:
                    raise _moved(f"routing epoch {it.epoch} for {it.table} is not this shard's "
                                 f"epoch {g['epoch']}: the table's ranges changed", it, g["epoch"])
                if write and g["fenced"]:
                    raise _fenced(f"part of {it.table} is fenced for a move; retry shortly", it)
                continue
            for kid in it.kids:
                if not ks.span_contains(g["ranges"], kid):
                    raise _moved(f"shard {self.group or '?'} does not own keyspace id {kid:016x} "
                                 f"of {it.table} (shard epoch {g['epoch']}, router epoch {it.epoch})",
                                 it, g["epoch"])
                if write and g["fenced"] and ks.span_contains(g["fenced"], kid):
                    raise _fenced(f"keyspace id {kid:016x} of {it.table} is fenced for a move; "
                                  "retry shortly", it)

    def _check_one_key(self, buf, write):
        """The commonest guard, one table and one key, checked without decoding it into
        objects: True when it passes; False when it is not that shape or does not pass
        (the full check then decodes it and raises the exact error)."""
        if len(buf) < 26 or buf[:4] != b"G\x01\x00\x01":
            return False
        ln = (buf[4] << 8) | buf[5]
        if len(buf) != 26 + ln or buf[14 + ln:18 + ln] != b"\x00\x00\x00\x01":
            return False
        cname = self._by_name.get(buf[6:6 + ln])
        if cname is None:
            return False
        g = self.cols.get(cname)
        if g is None:
            return False
        kid = int.from_bytes(buf[18 + ln:], "big")
        if not ks.span_contains(g["ranges"], kid):
            return False
        return not (write and g["fenced"] and ks.span_contains(g["fenced"], kid))

    def owns(self, colocation, value):
        """``rs_owns(colocation, value)`` for SQL: does this shard own the stored key?
        Lets a scatter read skip rows a move has copied in but not yet switched."""
        g = self.cols.get(colocation)
        if g is None or value is None:
            return 0
        return 1 if ks.span_contains(g["ranges"], ks.sql_kid(g["shard_func"], value) + (1 << 63)) else 0

    def stats(self):
        return {"group": self.group, "colocations": {
            c: {"epoch": g["epoch"], "ranges": [ks.fmt_range(*r) for r in g["ranges"]],
                "fenced": [ks.fmt_range(*r) for r in g["fenced"]], "tables": g["tables"]}
            for c, g in self.cols.items()},
            # running moves holding a fencing token here; ended ones leave only the floor
            "moves_claimed": len(self.tokens), "token_floor": self.floor}


def _inside(span, spans):
    return any(s <= span[0] and span[1] <= e for s, e in spans)


def _moved(msg, item, shard_epoch):
    e = Moved(msg)
    e.table = item.table
    e.router_epoch = item.epoch
    e.shard_epoch = shard_epoch
    return e


def _fenced(msg, item):
    e = Fenced(msg)
    e.table = item.table
    return e
