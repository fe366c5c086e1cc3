"""Pure-Python twin of ``raftsqlite._chash``: xxh64 and the shard-key encodings.

A shard key becomes a 64-bit keyspace id, either ``xxh64(key_bytes(v))`` (``hash``
sharding) or ``range_key(v)`` (``range`` sharding, order-preserving). Never Python's
``hash()``: it is salted per process and differs between builds.

Values compare the way SQLite compares them: an int and a float that SQLite holds equal
(``1 == 1.0``) get the same key bytes, so ``WHERE k = 1.0`` routes where ``k = 1`` was
written. SQLite type affinity (``'1'`` stored into an INTEGER column becoming 1) is
the router's job: this module hashes the value it is given.
"""
import math
import struct
from bisect import bisect_right

from raftsqlite.errors import EncodeError

_M = 0xFFFFFFFFFFFFFFFF
P1 = 11400714785074694791
P2 = 14029467366897019727
P3 = 1609587929392839161
P4 = 9650029242287828579
P5 = 2870177450012600261

TAG_INT = 0x01
TAG_FLOAT = 0x02
TAG_TEXT = 0x03
TAG_BLOB = 0x04

_SIGN = 1 << 63
_BE_U64 = struct.Struct(">Q")
_LE_D = struct.Struct("<d")
_LE_Q = struct.Struct("<Q")
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, lane):
    acc = (acc + lane * P2) & _M
    return (_rotl(acc, 31) * P1) & _M


def _merge(h, v):
    h ^= _round(0, v)
    return (h * P1 + P4) & _M


def xxh64(data, seed=0):
    """xxHash64 of ``data`` (bytes-like) with a 64-bit ``seed``; equals xxhash.xxh64."""
    if not isinstance(seed, int) or not 0 <= seed <= _M:
        raise EncodeError(f"xxh64 seed must be an int in [0, 2**64), got {seed!r}")
    try:
        data = bytes(memoryview(data).cast("B"))
    except TypeError:
        raise EncodeError(f"xxh64: expected a bytes-like object, got {type(data).__name__}")
    n = len(data)
    p = 0
    if n >= 32:
        v1 = (seed + P1 + P2) & _M
        v2 = (seed + P2) & _M
        v3 = seed
        v4 = (seed - P1) & _M
        limit = n - 32
        unpack = struct.Struct("<4Q").unpack_from
        while p <= limit:
            a, b, c, d = unpack(data, p)
            v1 = _round(v1, a)
            v2 = _round(v2, b)
            v3 = _round(v3, c)
            v4 = _round(v4, d)
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = (seed + P5) & _M
    h = (h + n) & _M
    while p + 8 <= n:
        (k,) = _LE_Q.unpack_from(data, p)
        h ^= _round(0, k)
        h = (_rotl(h, 27) * P1 + P4) & _M
        p += 8
    if p + 4 <= n:
        k = int.from_bytes(data[p:p + 4], "little")
        h ^= (k * P1) & _M
        h = (_rotl(h, 23) * P2 + P3) & _M
        p += 4
    while p < n:
        h ^= (data[p] * P5) & _M
        h = (_rotl(h, 11) * P1) & _M
        p += 1
    h ^= h >> 33
    h = (h * P2) & _M
    h ^= h >> 29
    h = (h * P3) & _M
    h ^= h >> 32
    return h


def _float_order_bits(f):
    """IEEE-754 bits mapped so that unsigned order equals numeric order."""
    (u,) = _LE_Q.unpack(_LE_D.pack(f))
    return (u ^ _M) if u & _SIGN else (u | _SIGN)


def key_bytes(value):
    """The canonical, type-tagged encoding of a shard-key value (see FORMAT.md)."""
    if value is None:
        raise EncodeError("a shard key cannot be NULL")
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise EncodeError(f"integer shard key {value} is outside int64")
        return bytes((TAG_INT,)) + _BE_U64.pack(value + _SIGN)
    if isinstance(value, float):
        if value != value:
            raise EncodeError("a shard key cannot be NaN")
        if value.is_integer() and -9223372036854775808.0 <= value < 9223372036854775808.0:
            return bytes((TAG_INT,)) + _BE_U64.pack(int(value) + _SIGN)
        return bytes((TAG_FLOAT,)) + _BE_U64.pack(_float_order_bits(value))
    if isinstance(value, str):
        try:
            return bytes((TAG_TEXT,)) + value.encode("utf-8")
        except UnicodeEncodeError:
            raise EncodeError(f"text shard key is not encodable as UTF-8: {value!r}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes((TAG_BLOB,)) + bytes(value)
    raise EncodeError(f"unsupported shard key type {type(value).__name__}: {value!r}")


def keyspace_id(value):
    """``hash`` sharding: xxh64 (seed 0) of the canonical key bytes -> u64."""
    return xxh64(key_bytes(value))


def _prefix8(b):
    return int.from_bytes(b[:8].ljust(8, b"\0"), "big")


def range_key(value):
    """``range`` sharding: an order-preserving u64, non-decreasing within a type class
    (numbers in numeric order, text and blobs by their first 8 bytes)."""
    if value is None:
        raise EncodeError("a shard key cannot be NULL")
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise EncodeError(f"integer shard key {value} is outside int64")
        return value + _SIGN
    if isinstance(value, float):
        if value != value:
            raise EncodeError("a shard key cannot be NaN")
        if value < -9223372036854775808.0:
            return 0
        if value >= 9223372036854775808.0:
            return _M
        return math.floor(value) + _SIGN
    if isinstance(value, str):
        try:
            return _prefix8(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise EncodeError(f"text shard key is not encodable as UTF-8: {value!r}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _prefix8(bytes(value))
    raise EncodeError(f"unsupported shard key type {type(value).__name__}: {value!r}")


def _check_starts(starts):
    try:
        starts = list(starts)
    except TypeError:
        raise EncodeError("starts must be a sequence of range start boundaries")
    if not starts:
        raise EncodeError("starts must hold at least one range start")
    prev = -1
    for s in starts:
        if not isinstance(s, int) or not 0 <= s <= _M:
            raise EncodeError(f"range start {s!r} is not an int in [0, 2**64)")
        if s <= prev:
            raise EncodeError("range starts must be strictly increasing")
        prev = s
    if starts[0] != 0:
        raise EncodeError("the first range must start at 0 so that ranges cover the keyspace")
    return starts


def owners_batch(values, starts, mode="hash"):
    """For each value, the index of the range ``[starts[i], starts[i+1])`` holding its
    keyspace id (``mode`` "hash") or range key (``mode`` "range")."""
    if mode == "hash":
        key = keyspace_id
    elif mode == "range":
        key = range_key
    else:
        raise EncodeError(f"mode must be 'hash' or 'range', got {mode!r}")
    starts = _check_starts(starts)
    return [bisect_right(starts, key(v)) - 1 for v in values]


def keyspace_ids(values, mode="hash"):
    """The keyspace ids (``hash``) or range keys (``range``) of many values."""
    if mode == "hash":
        return [keyspace_id(v) for v in values]
    if mode == "range":
        return [range_key(v) for v in values]
    raise EncodeError(f"mode must be 'hash' or 'range', got {mode!r}")


__all__ = ["xxh64", "key_bytes", "keyspace_id", "range_key", "owners_batch", "keyspace_ids"]
