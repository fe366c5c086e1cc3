# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``raftsqlite.codec.fallback``: identical bytes, identical errors.

Why it looks the way it does:
- encoders write into one growable C buffer with room for the frame header kept in front,
  so a message is built, framed and CRC'd with one copy into the final ``bytes``;
- the model classes use ``__slots__``; reading and writing their slots through the member
  descriptors' offsets (checked at import) avoids attribute lookups and ``__init__`` calls,
  which otherwise dominate decoding of AppendEntries;
- CRC-32C uses the SSE4.2 instruction when the CPU has it and slicing-by-8 tables otherwise.
Every read is checked against the end of the buffer before it happens.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_Check
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_Check, PyBytes_CheckExact,
                            PyBytes_FromStringAndSize, PyBytes_GET_SIZE)
from cpython.dict cimport PyDict_CheckExact, PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.float cimport PyFloat_AsDouble, PyFloat_Check, PyFloat_FromDouble
from cpython.list cimport PyList_Append, PyList_Check, PyList_New, PyList_SET_ITEM
from cpython.long cimport (PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong,
                           PyLong_Check, PyLong_FromLongLong, PyLong_FromUnsignedLongLong)
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport Py_NE, PyObject, PyObject_RichCompareBool
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_Check, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_Check, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove

from raftsqlite.codec.model import (
    FORMAT_VERSION as _FORMAT_VERSION, FORMAT_VERSION_BULK as _FORMAT_VERSION_BULK,
    BulkStatements, Command, CommandType, ConfChange, ConfChangeType, Entry, EntryType,
    Member, Message, MsgType, Request, SnapshotMeta, Statement,
)
from raftsqlite.errors import DecodeError, EncodeError

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size)
    int PyMemoryView_Check(object o)
    void PyErr_Clear()
    PyObject *PyErr_Occurred()

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #include "structmember.h"

    static uint32_t rs_crc_tab[8][256];
    static int rs_crc_hw = 0;

    static inline uint32_t rs_le32(const uint8_t *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    static inline uint64_t rs_le64(const uint8_t *p) {
        return (uint64_t)rs_le32(p) | ((uint64_t)rs_le32(p + 4) << 32);
    }
    static inline void rs_put32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
    }
    static inline void rs_put64(uint8_t *p, uint64_t v) {
        rs_put32(p, (uint32_t)v); rs_put32(p + 4, (uint32_t)(v >> 32));
    }

    static uint32_t rs_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
        while (n && ((uintptr_t)p & 7)) { crc = rs_crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8); n--; }
        while (n >= 8) {
            uint32_t one = crc ^ rs_le32(p), two = rs_le32(p + 4);
            crc = rs_crc_tab[7][one & 0xff] ^ rs_crc_tab[6][(one >> 8) & 0xff] ^
                  rs_crc_tab[5][(one >> 16) & 0xff] ^ rs_crc_tab[4][one >> 24] ^
                  rs_crc_tab[3][two & 0xff] ^ rs_crc_tab[2][(two >> 8) & 0xff] ^
                  rs_crc_tab[1][(two >> 16) & 0xff] ^ rs_crc_tab[0][two >> 24];
            p += 8; n -= 8;
        }
        while (n--) crc = rs_crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        return crc;
    }

    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <nmmintrin.h>
    __attribute__((target("sse4.2")))
    static uint32_t rs_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
        uint64_t c = crc;
        while (n >= 8) { uint64_t w; memcpy(&w, p, 8); c = _mm_crc32_u64(c, w); p += 8; n -= 8; }
        crc = (uint32_t)c;
        while (n--) crc = _mm_crc32_u8(crc, *p++);
        return crc;
    }
    #define RS_HAVE_HW 1
    #else
    static uint32_t rs_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) { return rs_crc32c_sw(crc, p, n); }
    #define RS_HAVE_HW 0
    #endif

    static void rs_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            rs_crc_tab[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int k = 1; k < 8; k++)
                rs_crc_tab[k][i] = (rs_crc_tab[k - 1][i] >> 8) ^ rs_crc_tab[0][rs_crc_tab[k - 1][i] & 0xff];
    #if RS_HAVE_HW
        __builtin_cpu_init();
        rs_crc_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    #endif
    }

    /* crc is the running (inverted) register, as in the Castagnoli definition. */
    static inline uint32_t rs_crc32c_update(uint32_t crc, const uint8_t *p, size_t n) {
        return rs_crc_hw ? rs_crc32c_hw(crc, p, n) : rs_crc32c_sw(crc, p, n);
    }

    /* Offset of a __slots__ member in instances, or -1 if the descriptor is not a plain
       object slot (then the module refuses to import and the twin is used instead). */
    static Py_ssize_t rs_slot_offset(PyObject *descr) {
        if (Py_TYPE(descr) != &PyMemberDescr_Type) return -1;
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
        return m->offset;
    }
    #define RS_SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))
    static inline PyObject *rs_get(PyObject *o, Py_ssize_t off) { return RS_SLOT(o, off); }
    static inline void rs_set(PyObject *o, Py_ssize_t off, PyObject *v) {
        PyObject *old = RS_SLOT(o, off);
        Py_INCREF(v);
        RS_SLOT(o, off) = v;
        Py_XDECREF(old);
    }
    static inline PyObject *rs_new(PyObject *t) {
        return ((PyTypeObject *)t)->tp_alloc((PyTypeObject *)t, 0);
    }
    """
    void rs_crc_init()
    int rs_crc_hw
    uint32_t rs_crc32c_update(uint32_t crc, const uint8_t *p, size_t n) nogil
    uint32_t rs_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) nogil
    uint32_t rs_le32(const uint8_t *p) nogil
    uint64_t rs_le64(const uint8_t *p) nogil
    void rs_put32(uint8_t *p, uint32_t v) nogil
    void rs_put64(uint8_t *p, uint64_t v) nogil
    Py_ssize_t rs_slot_offset(PyObject *descr)
    PyObject *rs_get(PyObject *o, Py_ssize_t off)
    void rs_set(PyObject *o, Py_ssize_t off, PyObject *v)
    object rs_new(PyObject *t)

rs_crc_init()

# ---- constants (same values as the twin) ------------------------------------------------

HEADER_SIZE = 29
BODY_HEADER_SIZE = 21
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
ENTRY_FRAME_BASE = 0x40
MESSAGE_VERSION = 1
CONF_CHANGE_VERSION = 1
CRC_HARDWARE = bool(rs_crc_hw)

DEF HDR = 29
DEF BODY_HDR = 21
DEF MAX_LENGTH = 0xFFFFFFFF

cdef enum:
    T_NULL = 0
    T_INT = 1
    T_FLOAT = 2
    T_TEXT = 3
    T_BLOB = 4
    T_FALSE = 5
    T_TRUE = 6

cdef enum:
    F_FRM = 1 << 0
    F_TO = 1 << 1
    F_LOG_TERM = 1 << 2
    F_COMMIT = 1 << 3
    F_ENTRIES = 1 << 4
    F_REJECT = 1 << 5
    F_REJECT_HINT = 1 << 6
    F_CONTEXT = 1 << 7
    F_SNAPSHOT = 1 << 8
    F_OFFSET = 1 << 9
    F_DATA = 1 << 10
    F_DONE = 1 << 11
    F_ALL = (1 << 12) - 1

cdef int FORMAT_V = _FORMAT_VERSION
cdef int FORMAT_V_BULK = _FORMAT_VERSION_BULK

# enum members by value, so decoding returns MsgType.APPEND, not 1
cdef list MSG_TYPES = [None] * 256
for _t in MsgType:
    MSG_TYPES[int(_t)] = _t
cdef list ENTRY_TYPES = [None] * 256
for _t in EntryType:
    ENTRY_TYPES[int(_t)] = _t
cdef list CMD_TYPES = [None] * 256
for _t in CommandType:
    CMD_TYPES[int(_t)] = _t
cdef list CC_TYPES = [None] * 256
for _t in ConfChangeType:
    CC_TYPES[int(_t)] = _t

cdef PyObject *P_Entry = <PyObject *>Entry
cdef PyObject *P_Message = <PyObject *>Message
cdef PyObject *P_SnapshotMeta = <PyObject *>SnapshotMeta
cdef PyObject *P_Member = <PyObject *>Member
cdef PyObject *P_Statement = <PyObject *>Statement
cdef PyObject *P_Request = <PyObject *>Request
cdef PyObject *P_BulkStatements = <PyObject *>BulkStatements
cdef PyObject *P_Command = <PyObject *>Command
cdef PyObject *P_ConfChange = <PyObject *>ConfChange


cdef Py_ssize_t _off(cls, str name) except -1:
    cdef Py_ssize_t off = rs_slot_offset(<PyObject *>cls.__dict__[name])
    if off < 0:
        raise ImportError(f"{cls.__name__}.{name} is not a plain __slots__ member; "
                          "the compiled codec needs the model classes as declared")
    return off


cdef Py_ssize_t E_TERM = _off(Entry, "term"), E_INDEX = _off(Entry, "index")
cdef Py_ssize_t E_TYPE = _off(Entry, "type"), E_DATA = _off(Entry, "data")
cdef Py_ssize_t M_TYPE = _off(Message, "type"), M_FRM = _off(Message, "frm")
cdef Py_ssize_t M_TO = _off(Message, "to"), M_TERM = _off(Message, "term")
cdef Py_ssize_t M_LOG_TERM = _off(Message, "log_term"), M_INDEX = _off(Message, "index")
cdef Py_ssize_t M_COMMIT = _off(Message, "commit"), M_ENTRIES = _off(Message, "entries")
cdef Py_ssize_t M_REJECT = _off(Message, "reject"), M_REJECT_HINT = _off(Message, "reject_hint")
cdef Py_ssize_t M_CONTEXT = _off(Message, "context"), M_SNAPSHOT = _off(Message, "snapshot")
cdef Py_ssize_t M_OFFSET = _off(Message, "offset"), M_DATA = _off(Message, "data")
cdef Py_ssize_t M_DONE = _off(Message, "done")
cdef Py_ssize_t S_INDEX = _off(SnapshotMeta, "index"), S_TERM = _off(SnapshotMeta, "term")
cdef Py_ssize_t S_MEMBERS = _off(SnapshotMeta, "members")
cdef Py_ssize_t MB_ID = _off(Member, "node_id"), MB_RAFT = _off(Member, "raft_addr")
cdef Py_ssize_t MB_HTTP = _off(Member, "http_addr"), MB_VOTER = _off(Member, "voter")
cdef Py_ssize_t ST_SQL = _off(Statement, "sql"), ST_PARAMS = _off(Statement, "params")
cdef Py_ssize_t RQ_STS = _off(Request, "statements"), RQ_TX = _off(Request, "transaction")
cdef Py_ssize_t RQ_ID = _off(Request, "request_id"), RQ_GUARD = _off(Request, "guard")
cdef Py_ssize_t BS_SQL = _off(BulkStatements, "sql"), BS_ROWS = _off(BulkStatements, "rows")
cdef Py_ssize_t C_TYPE = _off(Command, "type"), C_REQS = _off(Command, "requests")
cdef Py_ssize_t C_OPS = _off(Command, "ops")
cdef Py_ssize_t CC_TYPE = _off(ConfChange, "type"), CC_ID = _off(ConfChange, "node_id")
cdef Py_ssize_t CC_RAFT = _off(ConfChange, "raft_addr"), CC_HTTP = _off(ConfChange, "http_addr")

cdef object EMPTY_BYTES = b""
cdef object EMPTY_STR = ""
cdef object ZERO = 0


cdef inline object _get(object o, Py_ssize_t off, str name):
    cdef PyObject *v = rs_get(<PyObject *>o, off)
    if v == NULL:
        raise EncodeError(f"{type(o).__name__}.{name} is not set")
    return <object>v


cdef inline void _set(object o, Py_ssize_t off, object v):
    rs_set(<PyObject *>o, off, <PyObject *>v)


# ---- buffers ---------------------------------------------------------------------------

cdef extern from "Python.h":
    int PyObject_CheckBuffer(object o)


cdef int _get_buf(object o, Py_buffer *view, object exc, str what) except -1:
    """A contiguous byte view of ``o``, or ``exc`` (EncodeError/DecodeError)."""
    if not PyObject_CheckBuffer(o):
        raise exc(f"{what}: expected a bytes-like object, got {type(o).__name__}")
    try:
        PyObject_GetBuffer(o, view, PyBUF_SIMPLE)
    except (BufferError, TypeError, ValueError):
        raise exc(f"{what}: not a contiguous byte buffer") from None
    return 0


cdef int _get_input(object o, Py_buffer *view) except -1:
    """Decoder input: bytes, bytearray or memoryview only (as in the twin)."""
    if not (PyBytes_Check(o) or PyByteArray_Check(o) or PyMemoryView_Check(o)):
        raise DecodeError(f"expected a bytes-like object, got {type(o).__name__}")
    return _get_buf(o, view, DecodeError, "decode")


# ---- CRC -------------------------------------------------------------------------------


def crc32c(data, value=0):
    """CRC-32C of ``data``; pass a previous result as ``value`` to continue it."""
    cdef Py_buffer view
    cdef uint32_t crc
    if not PyLong_Check(value) or not 0 <= value <= 0xFFFFFFFF:
        raise EncodeError("crc32c: value must be an int in [0, 2**32)")
    crc = (<uint32_t>PyLong_AsUnsignedLongLong(value)) ^ 0xFFFFFFFFu
    _get_buf(data, &view, EncodeError, "crc32c")
    crc = rs_crc32c_update(crc, <const uint8_t *>view.buf, view.len)
    PyBuffer_Release(&view)
    return crc ^ 0xFFFFFFFFu


def _crc32c_sw(data, value=0):
    """The table-driven CRC-32C, for testing it against the hardware path."""
    cdef Py_buffer view
    cdef uint32_t crc = (<uint32_t>PyLong_AsUnsignedLongLong(value)) ^ 0xFFFFFFFFu
    _get_buf(data, &view, EncodeError, "crc32c")
    crc = rs_crc32c_sw(crc, <const uint8_t *>view.buf, view.len)
    PyBuffer_Release(&view)
    return crc ^ 0xFFFFFFFFu


# ---- writer ----------------------------------------------------------------------------

cdef struct Writer:
    uint8_t *p
    Py_ssize_t n
    Py_ssize_t cap


cdef int w_init(Writer *w, Py_ssize_t cap) except -1:
    w.p = <uint8_t *>PyMem_Malloc(cap)
    if w.p == NULL:
        raise MemoryError()
    w.n = 0
    w.cap = cap
    return 0


cdef int w_grow(Writer *w, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = w.cap * 2
    cdef uint8_t *p
    if cap < w.n + need:
        cap = w.n + need
    p = <uint8_t *>PyMem_Realloc(w.p, cap)
    if p == NULL:
        raise MemoryError()
    w.p = p
    w.cap = cap
    return 0


cdef inline int w_u8(Writer *w, uint8_t v) except -1:
    if w.n + 1 > w.cap:
        w_grow(w, 1)
    w.p[w.n] = v
    w.n += 1
    return 0


cdef inline int w_varint(Writer *w, uint64_t v) except -1:
    if w.n + 10 > w.cap:
        w_grow(w, 10)
    while v > 0x7F:
        w.p[w.n] = <uint8_t>((v & 0x7F) | 0x80)
        w.n += 1
        v >>= 7
    w.p[w.n] = <uint8_t>v
    w.n += 1
    return 0


cdef inline int w_raw(Writer *w, const void *src, Py_ssize_t n) except -1:
    if w.n + n > w.cap:
        w_grow(w, n)
    if n:
        memcpy(w.p + w.n, src, n)
    w.n += n
    return 0


cdef inline int w_bytes(Writer *w, const void *src, Py_ssize_t n) except -1:
    w_varint(w, <uint64_t>n)
    return w_raw(w, src, n)


cdef int w_str(Writer *w, object s, str what) except -1:
    cdef Py_ssize_t n
    cdef const char *p
    if not PyUnicode_Check(s):
        raise EncodeError(f"{what} must be str, got {type(s).__name__}")
    p = PyUnicode_AsUTF8AndSize(s, &n)
    if p == NULL:
        PyErr_Clear()
        raise EncodeError(f"{what} is not encodable as UTF-8: {s!r}")
    return w_bytes(w, p, n)


cdef inline object _bytes_like(object b, str what):
    if PyBytes_Check(b):
        return b
    if PyByteArray_Check(b) or PyMemoryView_Check(b):
        return bytes(b)
    raise EncodeError(f"{what} must be bytes, got {type(b).__name__}")


cdef inline int w_pybytes(Writer *w, object b, str what) except -1:
    b = _bytes_like(b, what)
    return w_bytes(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef uint64_t u64_of(object v, str what) except? 0xFFFFFFFFFFFFFFFFULL:
    if not PyLong_Check(v):
        raise EncodeError(f"{what} must be an int in [0, 2**64), got {v!r}")
    try:
        return PyLong_AsUnsignedLongLong(v)
    except OverflowError:
        raise EncodeError(f"{what} must be an int in [0, 2**64), got {v!r}") from None


cdef int small_of(object v, list table, str what) except -1:
    """An enum-like int that must be a known member of ``table``."""
    cdef int overflow = 0
    cdef long long x
    if PyLong_Check(v):
        x = PyLong_AsLongLongAndOverflow(v, &overflow)
        if not overflow and 0 <= x < 256 and table[x] is not None:
            return <int>x
    raise EncodeError(f"unknown {what} {v!r}")


cdef inline bint _neq(object v, object default) except -1:
    if v is default:
        return False
    return PyObject_RichCompareBool(v, default, Py_NE)


cdef object finish_frame(Writer *w, uint32_t group, uint8_t ftype, uint64_t term,
                         uint64_t index):
    """Fill the header reserved at the front of ``w`` and return the frame."""
    cdef Py_ssize_t length = w.n - 8
    cdef uint32_t crc
    if length > MAX_LENGTH:
        raise EncodeError(f"payload too large for one frame ({w.n - HDR} bytes)")
    rs_put32(w.p, <uint32_t>length)
    rs_put32(w.p + 8, group)
    w.p[12] = ftype
    rs_put64(w.p + 13, term)
    rs_put64(w.p + 21, index)
    crc = rs_crc32c_update(0xFFFFFFFFu, w.p, 4)
    crc = rs_crc32c_update(crc, w.p + 8, <size_t>length) ^ 0xFFFFFFFFu
    rs_put32(w.p + 4, crc)
    return PyBytes_FromStringAndSize(<char *>w.p, w.n)


cdef uint32_t u32_of(object v, str what) except? 0xFFFFFFFFu:
    cdef uint64_t x
    if PyLong_Check(v):
        try:
            x = PyLong_AsUnsignedLongLong(v)
        except OverflowError:
            pass
        else:
            if x <= 0xFFFFFFFFu:
                return <uint32_t>x
    raise EncodeError(f"{what} must be an int in [0, 2**32), got {v!r}")


def encode_frame(group, type, term, index, payload):
    """One frame: length, CRC32C, group id, type, term, index, payload."""
    cdef Writer w
    cdef uint32_t g
    cdef uint64_t t, i
    cdef uint8_t ft
    payload = _bytes_like(payload, "payload")
    g = u32_of(group, "group id")
    if not PyLong_Check(type) or not 0 <= type <= 0xFF:
        raise EncodeError(f"frame type must be an int in [0, 256), got {type!r}")
    ft = <uint8_t>PyLong_AsUnsignedLongLong(type)
    t = u64_of(term, "term")
    i = u64_of(index, "index")
    w_init(&w, HDR + PyBytes_GET_SIZE(payload))
    try:
        w.n = HDR
        w_raw(&w, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
        return finish_frame(&w, g, ft, t, i)
    finally:
        PyMem_Free(w.p)


# ---- frame parsing ---------------------------------------------------------------------

cdef Py_ssize_t frame_size(const uint8_t *p, Py_ssize_t avail, uint64_t max_size,
                           bint need_all) except -1:
    """Size of the frame at ``p`` once its header is checked; 0 when more bytes are
    needed and ``need_all`` is false. Raises DecodeError for a bad or oversized header."""
    cdef uint64_t length
    if avail < 8:
        if need_all:
            raise DecodeError(f"truncated frame: {avail} bytes, header needs 8")
        return 0
    length = rs_le32(p)
    if length < BODY_HDR:
        raise DecodeError(f"bad frame length {length} (minimum {BODY_HDR})")
    if 8 + length > max_size:
        raise DecodeError(f"frame of {8 + length} bytes exceeds max_frame_size {max_size}")
    if <uint64_t>avail < 8 + length:
        if need_all:
            raise DecodeError(f"truncated frame: {avail} bytes, frame needs {8 + length}")
        return 0
    return <Py_ssize_t>(8 + length)


cdef int check_crc(const uint8_t *p, Py_ssize_t size) except -1:
    cdef uint32_t stored = rs_le32(p + 4)
    cdef uint32_t crc = rs_crc32c_update(0xFFFFFFFFu, p, 4)
    crc = rs_crc32c_update(crc, p + 8, <size_t>(size - 8)) ^ 0xFFFFFFFFu
    if crc != stored:
        raise DecodeError(f"frame CRC mismatch (stored {stored:#010x}, computed {crc:#010x})")
    return 0


cdef tuple frame_tuple(const uint8_t *p, Py_ssize_t size):
    return (rs_le32(p + 8), p[12], rs_le64(p + 13), rs_le64(p + 21),
            PyBytes_FromStringAndSize(<const char *>p + HDR, size - HDR))


def decode_frame(buf):
    """Exactly one validated frame -> (group, type, term, index, payload)."""
    cdef Py_buffer view
    cdef Py_ssize_t size
    cdef const uint8_t *p
    _get_input(buf, &view)
    try:
        p = <const uint8_t *>view.buf
        size = frame_size(p, view.len, <uint64_t>MAX_LENGTH + 8, True)
        check_crc(p, size)
        if size != view.len:
            raise DecodeError(f"{view.len - size} trailing bytes after the frame")
        return frame_tuple(p, size)
    finally:
        PyBuffer_Release(&view)


cdef class FrameDecoder:
    """Incremental frame decoding: feed bytes as they arrive, get whole frames out.

    A frame whose length field exceeds ``max_frame_size`` is refused as soon as its
    header arrives, so a peer cannot make us buffer without bound. Frames that precede a
    bad one are still returned; the error is raised by that call if it returned nothing,
    else by the next one. After an error the decoder stays failed (the stream position is
    lost; the connection must close). ``offset`` counts bytes of whole good frames.
    """

    cdef unsigned char *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _max
    cdef readonly object max_frame_size
    cdef readonly unsigned long long frames
    cdef readonly unsigned long long offset
    cdef object _error

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        if not PyLong_Check(max_frame_size) or not HDR <= max_frame_size <= MAX_LENGTH + 8:
            raise EncodeError(f"max_frame_size must be an int in [{HDR}, 2**32+7]")
        self.max_frame_size = max_frame_size
        self._max = max_frame_size
        self._error = None
        self.frames = 0
        self.offset = 0

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def failed(self):
        """True once a bad frame was seen (even if its error is not raised yet)."""
        return self._error is not None

    @property
    def pending(self):
        """Bytes buffered that do not yet form a whole frame."""
        return self._len

    cdef int _append(self, const uint8_t *src, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef uint8_t *nb
        if self._len + n > self._cap:
            cap = max(self._cap * 2, self._len + n, 4096)
            nb = <uint8_t *>PyMem_Realloc(self._buf, cap)
            if nb == NULL:
                raise MemoryError()
            self._buf = nb
            self._cap = cap
        memcpy(self._buf + self._len, src, n)
        self._len += n
        return 0

    def feed(self, data):
        """Bytes in, whole validated frames out: a list of
        (group, type, term, index, payload) tuples, possibly empty."""
        cdef Py_buffer view
        cdef uint8_t *nb
        cdef Py_ssize_t pos = 0, size
        cdef list out = []
        if self._error is not None:
            raise DecodeError(self._error)
        _get_buf(data, &view, DecodeError, "feed")
        try:
            self._append(<const uint8_t *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        try:
            while True:
                size = frame_size(self._buf + pos, self._len - pos, <uint64_t>self._max, False)
                if size == 0:
                    break
                check_crc(self._buf + pos, size)
                out.append(frame_tuple(self._buf + pos, size))
                pos += size
        except DecodeError as e:
            self._error = f"stream failed at offset {self.offset + <unsigned long long>pos}: {e}"
            self._len = 0
            self.offset += <unsigned long long>pos
            self.frames += len(out)
            if out:
                return out  # deliver the good frames first; the next feed raises
            raise DecodeError(self._error) from None
        if pos:
            memmove(self._buf, self._buf + pos, self._len - pos)
            self._len -= pos
            self.offset += <unsigned long long>pos
            self.frames += len(out)
            if self._cap > 1 << 20 and self._len < self._cap // 4:
                # a burst of big frames must not pin a big buffer forever
                nb = <uint8_t *>PyMem_Realloc(self._buf, max(self._len, 4096))
                if nb != NULL:
                    self._buf = nb
                    self._cap = max(self._len, 4096)
        return out

    def stats(self):
        return {"frames": self.frames, "offset": self.offset, "pending": self._len,
                "max_frame_size": self.max_frame_size, "failed": self._error is not None}


# ---- reader ----------------------------------------------------------------------------

cdef struct Reader:
    const uint8_t *p
    Py_ssize_t pos
    Py_ssize_t end


cdef inline int r_u8(Reader *r) except -1:
    if r.pos >= r.end:
        raise DecodeError("truncated: expected 1 more byte")
    r.pos += 1
    return r.p[r.pos - 1]


cdef inline uint64_t r_varint(Reader *r) except? 0xFFFFFFFFFFFFFFFFULL:
    cdef uint64_t result = 0, b
    cdef int shift = 0
    while True:
        if r.pos >= r.end:
            raise DecodeError("truncated varint")
        b = r.p[r.pos]
        r.pos += 1
        if shift == 63 and b > 1:
            raise DecodeError("varint overflows 64 bits")
        result |= (b & 0x7F) << shift
        if not (b & 0x80):
            return result
        shift += 7


cdef inline Py_ssize_t r_count(Reader *r) except -1:
    cdef uint64_t n = r_varint(r)
    if n > <uint64_t>(r.end - r.pos):
        raise DecodeError(f"count {n} exceeds the {r.end - r.pos} bytes left")
    return <Py_ssize_t>n


cdef inline Py_ssize_t r_len(Reader *r) except -1:
    cdef uint64_t n = r_varint(r)
    if n > <uint64_t>(r.end - r.pos):
        raise DecodeError(f"truncated: need {n} bytes, {r.end - r.pos} left")
    return <Py_ssize_t>n


cdef inline object r_bytes(Reader *r):
    cdef Py_ssize_t n = r_len(r)
    r.pos += n
    if n == 0:
        return EMPTY_BYTES
    return PyBytes_FromStringAndSize(<const char *>r.p + r.pos - n, n)


cdef inline object r_str(Reader *r):
    cdef Py_ssize_t n = r_len(r)
    r.pos += n
    try:
        return PyUnicode_DecodeUTF8(<const char *>r.p + r.pos - n, n, NULL)
    except UnicodeDecodeError:
        raise DecodeError("invalid UTF-8 in text field") from None


cdef inline object r_bool(Reader *r):
    cdef int v = r_u8(r)
    if v > 1:
        raise DecodeError(f"bad bool byte {v}")
    return v == 1


cdef inline object r_u64(Reader *r):
    return PyLong_FromUnsignedLongLong(r_varint(r))


cdef int r_done(Reader *r, str what) except -1:
    if r.pos != r.end:
        raise DecodeError(f"{r.end - r.pos} trailing bytes after {what}")
    return 0


include "_ccodec_messages.pxi"
include "_ccodec_commands.pxi"
