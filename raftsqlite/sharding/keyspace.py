"""The 64-bit keyspace: shard-key values -> keyspace ids -> half-open ranges -> owners.

A table (more exactly, a colocation group of tables) splits ``[0, 2**64)`` into ranges
``[start, end)``. The ranges always partition the keyspace, so they are stored as one
sorted list of starts (the first is 0; a range ends where the next starts, the last one at
``KEYSPACE_END``) beside a parallel list of owners. That representation cannot express a
gap or an overlap, which is the invariant routing relies on: every key has exactly one
owner.

Hashing itself lives in ``raftsqlite.codec`` (compiled, with a pure twin). This module adds
what the codec deliberately leaves to the router: SQLite type affinity. ``'456'`` stored
into an INTEGER column becomes 456, and ``WHERE id = '456'`` compares as 456, so the router
must hash 456 in both cases.
"""
from bisect import bisect_right

from raftsqlite.errors import BadRequest, EncodeError, RoutingRefused

KEYSPACE_END = 1 << 64          # exclusive end of the last range
_U64_MAX = KEYSPACE_END - 1
_SIGN = 1 << 63
SHARD_FUNCS = ("hash", "range")

_codec = None


def _c():
    # Imported on first use so that the planner and catalog load without the codec
    # (and so a test can choose RAFTSQLITE_PUREPYTHON before the first hash).
    global _codec
    if _codec is None:
        from raftsqlite import codec
        _codec = codec
    return _codec


# ---- SQLite type affinity ---------------------------------------------------------

def affinity_from_decl(decl_type):
    """SQLite's column affinity for a declared type (the rules of datatype3.html 3.1)."""
    t = (decl_type or "").upper()
    if "INT" in t:
        return "integer"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "text"
    if t == "" or "BLOB" in t:
        return "blob"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "real"
    return "numeric"


def _text_to_number(s):
    """SQLite's numeric conversion of text: a well-formed number (spaces allowed around
    it) converts; anything else stays text."""
    t = s.strip(" \t\n\r\f\v")
    if not t:
        return None
    try:
        if all(ch in "+-0123456789" for ch in t):
            v = int(t)
            if -(1 << 63) <= v < (1 << 63):
                return v
            return float(v)
        if t.lower() in ("inf", "+inf", "-inf", "infinity", "nan") or "_" in t:
            return None
        return float(t)
    except ValueError:
        return None


def _real_to_text(f):
    # SQLite renders REAL as "%!.15g": 15 significant digits, always with a '.' or 'e'.
    s = "%.15g" % f
    if "." not in s and "e" not in s and "inf" not in s and "nan" not in s:
        s += ".0"
    return s


def apply_affinity(value, affinity):
    """The value SQLite would store for ``value`` in a column of ``affinity``."""
    if isinstance(value, bool):
        value = int(value)
    if value is None or affinity in (None, "", "blob"):
        return value
    if affinity in ("integer", "numeric"):
        if isinstance(value, str):
            n = _text_to_number(value)
            if n is None:
                return value
            value = n
        if isinstance(value, float) and value.is_integer() and -(2.0 ** 63) <= value < 2.0 ** 63:
            return int(value)
        return value
    if affinity == "real":
        if isinstance(value, str):
            n = _text_to_number(value)
            return value if n is None else float(n)
        if isinstance(value, int):
            return float(value)
        return value
    if affinity == "text":
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return _real_to_text(value)
        return value
    raise BadRequest(f"unknown column affinity {affinity!r}")


def key_id(value, shard_func="hash", affinity=None):
    """Keyspace id (u64) of one shard-key value, after the column's affinity."""
    v = apply_affinity(value, affinity)
    if v is None:
        raise RoutingRefused("the shard key is NULL: a row without a shard key has no shard; "
                             "give the key a value")
    c = _c()
    try:
        return c.keyspace_id(v) if shard_func == "hash" else c.range_key(v)
    except EncodeError as e:
        raise RoutingRefused(f"cannot route shard key {value!r}: {e}") from None


def key_ids(values, shard_func="hash", affinity=None):
    return [key_id(v, shard_func, affinity) for v in values]


def signed(kid):
    """A keyspace id shifted into SQLite's signed int64 (order-preserving), for SQL
    filters such as ``rs_kid('hash', id) >= ?`` evaluated on a shard."""
    return kid - _SIGN


def sql_kid(shard_func, value):
    """The SQLite function a shard registers as ``rs_kid(shard_func, value)``: the signed
    keyspace id of a stored value (values in a column already carry its affinity)."""
    if value is None:
        return None
    c = _c()
    return (c.keyspace_id(value) if shard_func == "hash" else c.range_key(value)) - _SIGN


# ---- ranges -------------------------------------------------------------------------

def check_starts(starts):
    """Raise unless ``starts`` describes a partition of the keyspace."""
    if not starts or starts[0] != 0:
        raise BadRequest("key ranges must start at 0 so that they cover the keyspace")
    prev = -1
    for s in starts:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= _U64_MAX:
            raise BadRequest(f"range start {s!r} is not an int in [0, 2**64)")
        if s <= prev:
            raise BadRequest("range starts must be strictly increasing")
        prev = s


def range_of(starts, i):
    """``(start, end)`` of range ``i``."""
    return starts[i], (starts[i + 1] if i + 1 < len(starts) else KEYSPACE_END)


def ranges(starts):
    return [range_of(starts, i) for i in range(len(starts))]


def index_of(starts, kid):
    """Index of the one range holding ``kid``."""
    if not 0 <= kid <= _U64_MAX:
        raise BadRequest(f"keyspace id {kid!r} outside [0, 2**64)")
    return bisect_right(starts, kid) - 1


def even_starts(n):
    """Starts of ``n`` equal ranges (the last takes the remainder)."""
    if n < 1:
        raise BadRequest("need at least one range")
    step = KEYSPACE_END // n
    return [i * step for i in range(n)]


def split(starts, owners, at):
    """Split the range holding ``at`` there; both halves keep the owner. A no-op when
    ``at`` already starts a range. Returns new lists."""
    if not isinstance(at, int) or isinstance(at, bool) or not 0 < at <= _U64_MAX:
        raise BadRequest(f"split point {at!r} must be an int in (0, 2**64)")
    i = index_of(starts, at)
    if starts[i] == at:
        return list(starts), list(owners)
    return starts[:i + 1] + [at] + starts[i + 1:], owners[:i + 1] + [owners[i]] + owners[i + 1:]


def merge_adjacent(starts, owners):
    """Join neighbouring ranges with the same owner (the inverse of ``split``)."""
    ns, no = [starts[0]], [owners[0]]
    for s, o in zip(starts[1:], owners[1:]):
        if o != no[-1]:
            ns.append(s)
            no.append(o)
    return ns, no


def assign(starts, owners, start, end, owner):
    """Give ``[start, end)`` to ``owner``, splitting at its bounds if needed."""
    if not 0 <= start < end <= KEYSPACE_END:
        raise BadRequest(f"bad range [{start}, {end})")
    if start > 0:
        starts, owners = split(starts, owners, start)
    if end < KEYSPACE_END:
        starts, owners = split(starts, owners, end)
    owners = list(owners)
    for i in range(index_of(starts, start), len(starts)):
        if starts[i] >= end:
            break
        owners[i] = owner
    return starts, owners


def owned_spans(starts, owners, owner):
    """The ranges of ``owner``, neighbours joined: ``[(start, end), ...]``."""
    out = []
    for i, o in enumerate(owners):
        if o != owner:
            continue
        s, e = range_of(starts, i)
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def span_contains(spans, kid):
    """Is ``kid`` inside one of the sorted, disjoint ``[(start, end)]``?"""
    lo, hi = 0, len(spans)
    while lo < hi:
        mid = (lo + hi) // 2
        s, e = spans[mid]
        if kid < s:
            hi = mid
        elif kid >= e:
            lo = mid + 1
        else:
            return True
    return False


def spans_overlap(a, b):
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def normalise_spans(spans):
    """Sort and join ``[(start, end)]``; validates bounds."""
    out = []
    for s, e in sorted((int(s), int(e)) for s, e in spans):
        if not 0 <= s < e <= KEYSPACE_END:
            raise BadRequest(f"bad range [{s}, {e})")
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return out


def fmt_range(start, end):
    """Vitess-style hex name of a range, e.g. ``-80``, ``80-c0``, ``c0-``."""
    def h(x):
        if x in (0, KEYSPACE_END):
            return ""
        b = f"{x:016x}"
        while b.endswith("00"):
            b = b[:-2]
        return b
    return f"{h(start)}-{h(end)}"


def end_to_json(e):
    """JSON (orjson) stops at 2**64-1, so the keyspace end travels as null."""
    return None if e == KEYSPACE_END else e


def end_from_json(e):
    return KEYSPACE_END if e is None else int(e)


def rebalance_moves(starts, owners, shards):
    """Ranges to move so each shard of ``shards`` owns an equal slice of the keyspace,
    moving as little as possible: shards over their share give away the tail of their
    spans to shards under it. Returns ``(moves, new_starts, new_owners)`` where a move is
    ``{"start", "end", "source", "target"}``. Equal keyspace is equal data for ``hash``;
    for ``range`` a later planner can weigh ranges by row counts instead."""
    if not shards:
        raise BadRequest("a table needs at least one shard to rebalance over")
    starts, owners = list(starts), list(owners)
    shards = list(shards)
    n = len(shards)
    quota = {s: KEYSPACE_END // n + (1 if i < KEYSPACE_END % n else 0) for i, s in enumerate(shards)}
    have = {s: 0 for s in shards}
    for i, o in enumerate(owners):
        s, e = range_of(starts, i)
        have[o] = have.get(o, 0) + (e - s)
    # Shards no longer in the table's placement must give away everything.
    for o in have:
        quota.setdefault(o, 0)
    needy = [s for s in shards if have[s] < quota[s]]
    moves = []
    i = len(starts) - 1
    while i >= 0 and needy:
        s, e = range_of(starts, i)
        src = owners[i]
        excess = have[src] - quota[src]
        if excess <= 0:
            i -= 1
            continue
        tgt = needy[0]
        amount = min(excess, quota[tgt] - have[tgt], e - s)
        cut = e - amount
        if cut > s:
            # The tail [cut, e) moves; range i becomes [s, cut) and is looked at again.
            starts, owners = split(starts, owners, cut)
            owners[i + 1] = tgt
        else:
            owners[i] = tgt
            i -= 1
        moves.append({"start": cut, "end": e, "source": src, "target": tgt})
        have[src] -= amount
        have[tgt] += amount
        if have[tgt] >= quota[tgt]:
            needy.pop(0)
    return moves, starts, owners
