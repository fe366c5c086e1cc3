# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``raftsqlite.codec.hashing``: xxh64 and the shard-key encodings.

``owners_batch`` is the router's hot path (a multi-row INSERT or a rebalance scan maps
thousands of keys at once), so ints take a path that never builds a Python object per
key: the 9 key bytes are built on the stack, hashed, and the range found by binary search
over the boundaries held in a C array.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_Check
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport (PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong,
                           PyLong_Check, PyLong_FromSsize_t, PyLong_FromUnsignedLongLong)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_SIZE
from cpython.unicode cimport PyUnicode_Check
from libc.math cimport floor
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

from raftsqlite.errors import EncodeError

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #define RS_P1 11400714785074694791ULL
    #define RS_P2 14029467366897019727ULL
    #define RS_P3 1609587929392839161ULL
    #define RS_P4 9650029242287828579ULL
    #define RS_P5 2870177450012600261ULL
    static inline uint64_t rs_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t rs_rd64(const uint8_t *p) {
        return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) | ((uint64_t)p[3] << 24) |
               ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) | ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
    }
    static inline uint32_t rs_rd32(const uint8_t *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    static inline uint64_t rs_xround(uint64_t acc, uint64_t lane) {
        acc += lane * RS_P2; acc = rs_rotl64(acc, 31); return acc * RS_P1;
    }
    static inline uint64_t rs_xmerge(uint64_t h, uint64_t v) {
        h ^= rs_xround(0, v); return h * RS_P1 + RS_P4;
    }
    static inline uint64_t rs_xxh64(const uint8_t *p, size_t n, uint64_t seed) {
        const uint8_t *end = p + n;
        uint64_t h;
        if (n >= 32) {
            const uint8_t *limit = end - 32;
            uint64_t v1 = seed + RS_P1 + RS_P2, v2 = seed + RS_P2, v3 = seed, v4 = seed - RS_P1;
            do {
                v1 = rs_xround(v1, rs_rd64(p)); v2 = rs_xround(v2, rs_rd64(p + 8));
                v3 = rs_xround(v3, rs_rd64(p + 16)); v4 = rs_xround(v4, rs_rd64(p + 24));
                p += 32;
            } while (p <= limit);
            h = rs_rotl64(v1, 1) + rs_rotl64(v2, 7) + rs_rotl64(v3, 12) + rs_rotl64(v4, 18);
            h = rs_xmerge(h, v1); h = rs_xmerge(h, v2); h = rs_xmerge(h, v3); h = rs_xmerge(h, v4);
        } else {
            h = seed + RS_P5;
        }
        h += (uint64_t)n;
        while (p + 8 <= end) { h ^= rs_xround(0, rs_rd64(p)); h = rs_rotl64(h, 27) * RS_P1 + RS_P4; p += 8; }
        if (p + 4 <= end) { h ^= (uint64_t)rs_rd32(p) * RS_P1; h = rs_rotl64(h, 23) * RS_P2 + RS_P3; p += 4; }
        while (p < end) { h ^= (*p) * RS_P5; h = rs_rotl64(h, 11) * RS_P1; p++; }
        h ^= h >> 33; h *= RS_P2; h ^= h >> 29; h *= RS_P3; h ^= h >> 32;
        return h;
    }
    """
    uint64_t rs_xxh64(const unsigned char *p, size_t n, uint64_t seed) nogil


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size)
    int PyMemoryView_Check(object o)
    int PyObject_CheckBuffer(object o)
    void PyErr_Clear()
    PyObject **PySequence_Fast_ITEMS(object o)
    ctypedef struct PyObject

DEF SIGN = 0x8000000000000000ULL
DEF TAG_INT = 0x01
DEF TAG_FLOAT = 0x02
DEF TAG_TEXT = 0x03
DEF TAG_BLOB = 0x04


def xxh64(data, seed=0):
    """xxHash64 of ``data`` (bytes-like) with a 64-bit ``seed``; equals xxhash.xxh64."""
    cdef Py_buffer view
    cdef uint64_t s, h
    if not PyLong_Check(seed) or not 0 <= seed <= 0xFFFFFFFFFFFFFFFF:
        raise EncodeError(f"xxh64 seed must be an int in [0, 2**64), got {seed!r}")
    s = PyLong_AsUnsignedLongLong(seed)
    if not PyObject_CheckBuffer(data):
        raise EncodeError(f"xxh64: expected a bytes-like object, got {type(data).__name__}")
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except (BufferError, TypeError, ValueError):
        raise EncodeError("xxh64: not a contiguous byte buffer") from None
    h = rs_xxh64(<const unsigned char *>view.buf, view.len, s)
    PyBuffer_Release(&view)
    return h


cdef inline void put_be64(uint8_t *p, uint64_t v) noexcept:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (56 - 8 * i))


cdef inline uint64_t float_order_bits(double f) noexcept:
    cdef uint64_t u
    memcpy(&u, &f, 8)
    if u & SIGN:
        return ~u
    return u | SIGN


cdef int64_t int_of(object v) except? -1:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow:
        raise EncodeError(f"integer shard key {v} is outside int64")
    return x


cdef object _refuse(object value):
    if value is None:
        raise EncodeError("a shard key cannot be NULL")
    raise EncodeError(f"unsupported shard key type {type(value).__name__}: {value!r}")


cdef inline bint float_is_int(double f) noexcept:
    return f == floor(f) and -9223372036854775808.0 <= f < 9223372036854775808.0


cdef inline bint numeric_key(object value, uint8_t *buf) except -1:
    """Writes the 9-byte key of an int or float into ``buf`` and returns True; False for
    any other type. int 1 and float 1.0 share a key, as SQLite compares them equal."""
    cdef double f
    if PyLong_Check(value):
        buf[0] = TAG_INT
        put_be64(buf + 1, (<uint64_t>int_of(value)) ^ SIGN)
        return True
    if PyFloat_Check(value):
        f = PyFloat_AS_DOUBLE(value)
        if f != f:
            raise EncodeError("a shard key cannot be NaN")
        if float_is_int(f):
            buf[0] = TAG_INT
            put_be64(buf + 1, (<uint64_t>(<int64_t>f)) ^ SIGN)
        else:
            buf[0] = TAG_FLOAT
            put_be64(buf + 1, float_order_bits(f))
        return True
    return False


cdef uint64_t hash_key(object value) except? 0:
    """keyspace_id without building the key bytes as a Python object."""
    cdef uint8_t buf[9]
    cdef double f
    cdef const char *p
    cdef Py_ssize_t n
    cdef uint8_t *tmp
    cdef uint64_t h
    if numeric_key(value, buf):
        return rs_xxh64(buf, 9, 0)
    kb = key_bytes(value)
    return rs_xxh64(<const unsigned char *>PyBytes_AS_STRING(kb), PyBytes_GET_SIZE(kb), 0)


def key_bytes(value):
    """The canonical, type-tagged encoding of a shard-key value (see FORMAT.md)."""
    cdef uint8_t buf[9]
    cdef double f
    cdef const char *p
    cdef Py_ssize_t n
    if numeric_key(value, buf):
        return PyBytes_FromStringAndSize(<char *>buf, 9)
    if PyUnicode_Check(value):
        p = PyUnicode_AsUTF8AndSize(value, &n)
        if p == NULL:
            PyErr_Clear()
            raise EncodeError(f"text shard key is not encodable as UTF-8: {value!r}")
        return b"\x03" + PyBytes_FromStringAndSize(p, n)
    if PyBytes_Check(value) or PyByteArray_Check(value) or PyMemoryView_Check(value):
        return b"\x04" + bytes(value)
    _refuse(value)


def keyspace_id(value):
    """``hash`` sharding: xxh64 (seed 0) of the canonical key bytes -> u64."""
    return PyLong_FromUnsignedLongLong(hash_key(value))


cdef uint64_t prefix8(const uint8_t *p, Py_ssize_t n) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | (p[i] if i < n else 0)
    return v


cdef uint64_t rkey(object value) except? 0:
    cdef double f
    cdef const char *p
    cdef Py_ssize_t n
    if PyLong_Check(value):
        return (<uint64_t>int_of(value)) ^ SIGN
    if PyFloat_Check(value):
        f = PyFloat_AS_DOUBLE(value)
        if f != f:
            raise EncodeError("a shard key cannot be NaN")
        if f < -9223372036854775808.0:
            return 0
        if f >= 9223372036854775808.0:
            return 0xFFFFFFFFFFFFFFFFULL
        return (<uint64_t>(<int64_t>floor(f))) ^ SIGN
    if PyUnicode_Check(value):
        p = PyUnicode_AsUTF8AndSize(value, &n)
        if p == NULL:
            PyErr_Clear()
            raise EncodeError(f"text shard key is not encodable as UTF-8: {value!r}")
        return prefix8(<const uint8_t *>p, n)
    if PyBytes_Check(value):
        return prefix8(<const uint8_t *>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
    if PyByteArray_Check(value) or PyMemoryView_Check(value):
        b = bytes(value)
        return prefix8(<const uint8_t *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    _refuse(value)


def range_key(value):
    """``range`` sharding: an order-preserving u64, non-decreasing within a type class."""
    return PyLong_FromUnsignedLongLong(rkey(value))


cdef int parse_mode(object mode) except -1:
    if mode == "hash":
        return 0
    if mode == "range":
        return 1
    raise EncodeError(f"mode must be 'hash' or 'range', got {mode!r}")


def owners_batch(values, starts, mode="hash"):
    """For each value, the index of the range ``[starts[i], starts[i+1])`` holding its
    keyspace id (``mode`` "hash") or range key (``mode`` "range")."""
    cdef int m = parse_mode(mode)
    cdef Py_ssize_t ns, nv, i, lo, hi, mid
    cdef uint64_t *bounds
    cdef uint64_t k, prev = 0
    cdef PyObject **items
    cdef list out
    try:
        sseq = PySequence_Fast(starts, "starts must be a sequence of range start boundaries")
    except TypeError:
        raise EncodeError("starts must be a sequence of range start boundaries") from None
    ns = PySequence_Fast_GET_SIZE(sseq)
    if ns == 0:
        raise EncodeError("starts must hold at least one range start")
    bounds = <uint64_t *>PyMem_Malloc(ns * sizeof(uint64_t))
    if bounds == NULL:
        raise MemoryError()
    try:
        for i in range(ns):
            s = sseq[i]
            if not PyLong_Check(s) or not 0 <= s <= 0xFFFFFFFFFFFFFFFF:
                raise EncodeError(f"range start {s!r} is not an int in [0, 2**64)")
            bounds[i] = PyLong_AsUnsignedLongLong(s)
            if i and bounds[i] <= prev:
                raise EncodeError("range starts must be strictly increasing")
            prev = bounds[i]
        if bounds[0] != 0:
            raise EncodeError("the first range must start at 0 so that ranges cover the keyspace")
        vseq = PySequence_Fast(values, "values must be iterable")
        nv = PySequence_Fast_GET_SIZE(vseq)
        out = PyList_New(nv)
        items = PySequence_Fast_ITEMS(vseq)
        for i in range(nv):
            v = <object>items[i]
            k = hash_key(v) if m == 0 else rkey(v)
            # largest i with bounds[i] <= k; bounds[0] == 0 so it exists
            lo = 0
            hi = ns
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if bounds[mid] <= k:
                    lo = mid
                else:
                    hi = mid
            r = PyLong_FromSsize_t(lo)
            Py_INCREF(r)
            PyList_SET_ITEM(out, i, r)
        return out
    finally:
        PyMem_Free(bounds)


def keyspace_ids(values, mode="hash"):
    """The keyspace ids (``hash``) or range keys (``range``) of many values."""
    cdef int m = parse_mode(mode)
    return [PyLong_FromUnsignedLongLong(hash_key(v) if m == 0 else rkey(v)) for v in values]
