"""Rows, keys and checksums of a rebalance move (rebalance.py): the pure helpers the
coordinator uses to name, select, hash and compare a range's rows. No I/O, no state.

Split from rebalance.py (which keeps the workflow) so each stays under ~800 lines."""
import hashlib

from raftsqlite.errors import BadRequest
from raftsqlite.sharding import keyspace as ks

CHANGES = "_rs_changes"
_SIGN = 1 << 63
_U64 = (1 << 64) - 1


def _tag(v):
    if v is None:
        return b"n"
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return b"i" + str(v).encode()
    if isinstance(v, float):
        return b"f" + repr(v).encode()
    if isinstance(v, str):
        return b"t" + v.encode("utf-8", "surrogatepass")
    return b"b" + bytes(v)


def row_hash(row):
    """64-bit hash of one row's values (type-tagged, so 1, 1.0 and '1' differ)."""
    h = hashlib.blake2b(digest_size=8)
    for v in row:
        t = _tag(v)
        h.update(len(t).to_bytes(4, "big"))
        h.update(t)
    return int.from_bytes(h.digest(), "big")


class Checksum:
    """Row count and an order-independent sum of row hashes (mod 2**64)."""

    __slots__ = ("rows", "sum")

    def __init__(self, rows=0, s=0):
        self.rows, self.sum = rows, s

    def add(self, row):
        self.rows += 1
        self.sum = (self.sum + row_hash(row)) & _U64

    def __eq__(self, o):
        return (self.rows, self.sum) == (o.rows, o.sum)

    def to_json(self):
        return {"rows": self.rows, "sum": f"{self.sum:016x}"}


def key_to_json(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"b": bytes(v).hex()}
    return v


def key_from_json(v):
    if isinstance(v, dict):
        return bytes.fromhex(v["b"])
    return v


def _q(name):
    return '"' + str(name).replace('"', '""') + '"'


def _rows(res):
    r = res[0] if isinstance(res, list) else res
    if "error" in r:
        raise BadRequest(f"rebalance statement failed: {r['error']}")
    return r.get("values") or []


def _check(results):
    for r in results:
        if "error" in r:
            raise BadRequest(f"rebalance statement failed: {r['error']}")
    return results


class _Range:
    """SQL filter for ``[start, end)`` of a shard function over a key column."""

    def __init__(self, func, key, start, end):
        self.func, self.key, self.start, self.end = func, key, start, end

    def where(self):
        k = f"rs_kid('{self.func}', {_q(self.key)})"
        sql, params = f"{k} >= ?", [self.start - _SIGN]
        if self.end < ks.KEYSPACE_END:
            sql += f" AND {k} < ?"
            params.append(self.end - _SIGN)
        return sql, params

    def contains(self, value):
        if value is None:
            return False
        return self.start <= ks.sql_kid(self.func, value) + _SIGN < self.end


def _sort_key(v):
    # SQLite's order of types: NULL < numbers < text < blob
    if v is None:
        return (0, 0)
    if isinstance(v, (int, float)):
        return (1, v)
    if isinstance(v, str):
        return (2, v)
    return (3, bytes(v))


def _union(a, b):
    out = {t: set(k) for t, k in (a or {}).items()}
    for t, k in (b or {}).items():
        out.setdefault(t, set()).update(k)
    return out
