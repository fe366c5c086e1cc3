"""Pure-Python twin of ``raftsqlite._ccodec``: frames, Raft messages, log records,
entry payloads. It must produce the very same bytes as the compiled module; the byte
layout is specified in ``raftsqlite/codec/FORMAT.md`` and pinned by golden vectors.

Decoders raise only ``DecodeError``: every length is checked against the bytes that
remain before anything is read or allocated, so corrupt input can neither read past
the buffer nor make us allocate what a lying length field asks for.
"""
import struct

from raftsqlite.codec.model import (
    FORMAT_VERSION, FORMAT_VERSION_BULK, BulkStatements, Command, CommandType, ConfChange,
    ConfChangeType, Entry, EntryType, Member, Message, MsgType, Request, SnapshotMeta,
    Statement,
)
from raftsqlite.errors import DecodeError, EncodeError

# ---- constants shared with the compiled module (see FORMAT.md) ------------------------

HEADER_SIZE = 29            # u32 length, u32 crc, u32 group, u8 type, u64 term, u64 index
BODY_HEADER_SIZE = 21       # what ``length`` counts besides the payload
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
ENTRY_FRAME_BASE = 0x40     # frame type of a log record = 0x40 | entry type
MESSAGE_VERSION = 1
CRC_HARDWARE = False       # the twin computes CRC-32C from a table
CONF_CHANGE_VERSION = 1
_MAX_LENGTH = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

_HDR = struct.Struct("<IIIBQQ")
_LEN = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")

# tags of typed statement parameters
T_NULL, T_INT, T_FLOAT, T_TEXT, T_BLOB, T_FALSE, T_TRUE = range(7)
P_NONE, P_POSITIONAL, P_NAMED = range(3)
# request flags: transaction, request_id present, guard present, bulk form (version 2)
R_TX, R_ID, R_GUARD, R_BULK = 1, 2, 4, 8

# presence bits of optional message fields
F_FRM, F_TO, F_LOG_TERM, F_COMMIT, F_ENTRIES, F_REJECT, F_REJECT_HINT, F_CONTEXT, \
    F_SNAPSHOT, F_OFFSET, F_DATA, F_DONE = (1 << i for i in range(12))
_F_ALL = (1 << 12) - 1

_MSG_TYPES = {int(t): t for t in MsgType}
_ENTRY_TYPES = {int(t): t for t in EntryType}
_CMD_TYPES = {int(t): t for t in CommandType}
_CC_TYPES = {int(t): t for t in ConfChangeType}

# ---- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) ----------------------------


def _make_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _make_table()


def crc32c(data, value=0):
    """CRC-32C of ``data``; pass a previous result as ``value`` to continue it."""
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise EncodeError("crc32c: value must be an int in [0, 2**32)")
    try:
        data = memoryview(data).cast("B")
    except TypeError:
        raise EncodeError(f"crc32c: expected a bytes-like object, got {type(data).__name__}")
    table = _CRC_TABLE
    crc = value ^ 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---- frames ----------------------------------------------------------------------------


def _check_u32(v, what):
    if not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
        raise EncodeError(f"{what} must be an int in [0, 2**32), got {v!r}")


def _check_u64(v, what):
    if not isinstance(v, int) or not 0 <= v <= _U64:
        raise EncodeError(f"{what} must be an int in [0, 2**64), got {v!r}")


def _bytes_like(v, what):
    if isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise EncodeError(f"{what} must be bytes, got {type(v).__name__}")


def _frame(group, ftype, term, index, payload):
    _check_u32(group, "group id")
    if not isinstance(ftype, int) or not 0 <= ftype <= 0xFF:
        raise EncodeError(f"frame type must be an int in [0, 256), got {ftype!r}")
    _check_u64(term, "term")
    _check_u64(index, "index")
    length = BODY_HEADER_SIZE + len(payload)
    if length > _MAX_LENGTH:
        raise EncodeError(f"payload too large for one frame ({len(payload)} bytes)")
    body = _HDR.pack(length, 0, group, ftype, term, index)[8:] + payload
    crc = crc32c(body, crc32c(_LEN.pack(length)))
    return _LEN.pack(length) + _LEN.pack(crc) + body


def encode_frame(group, type, term, index, payload):
    """One frame: length, CRC32C, group id, type, term, index, payload."""
    return _frame(group, type, term, index, _bytes_like(payload, "payload"))


def _view(buf):
    if isinstance(buf, bytes):
        return buf
    if isinstance(buf, (bytearray, memoryview)):
        try:
            return bytes(memoryview(buf).cast("B"))
        except TypeError:
            raise DecodeError("buffer is not a contiguous byte buffer")
    raise DecodeError(f"expected a bytes-like object, got {type(buf).__name__}")


def _parse_frame(buf, pos, end, max_frame_size):
    """Validate the frame at ``buf[pos:]``; returns (tuple, frame_end)."""
    if end - pos < 8:
        raise DecodeError(f"truncated frame: {end - pos} bytes, header needs 8")
    (length,) = _LEN.unpack_from(buf, pos)
    if length < BODY_HEADER_SIZE:
        raise DecodeError(f"bad frame length {length} (minimum {BODY_HEADER_SIZE})")
    if 8 + length > max_frame_size:
        raise DecodeError(f"frame of {8 + length} bytes exceeds max_frame_size {max_frame_size}")
    if end - pos < 8 + length:
        raise DecodeError(f"truncated frame: {end - pos} bytes, frame needs {8 + length}")
    _, crc, group, ftype, term, index = _HDR.unpack_from(buf, pos)
    fend = pos + 8 + length
    actual = crc32c(buf[pos + 8:fend], crc32c(buf[pos:pos + 4]))
    if actual != crc:
        raise DecodeError(f"frame CRC mismatch (stored {crc:#010x}, computed {actual:#010x})")
    return (group, ftype, term, index, bytes(buf[pos + HEADER_SIZE:fend])), fend


def decode_frame(buf):
    """Exactly one validated frame -> (group, type, term, index, payload)."""
    buf = _view(buf)
    frame, fend = _parse_frame(buf, 0, len(buf), _MAX_LENGTH + 8)
    if fend != len(buf):
        raise DecodeError(f"{len(buf) - fend} trailing bytes after the frame")
    return frame


class FrameDecoder:
    """Incremental frame decoding: feed bytes as they arrive, get whole frames out.

    A frame whose length field exceeds ``max_frame_size`` is refused as soon as its
    header arrives, so a peer cannot make us buffer without bound. Frames that precede a
    bad one are still returned; the error is raised by that call if it returned nothing,
    else by the next one. After an error the decoder stays failed (the stream position is
    lost; the connection must close). ``offset`` counts bytes of whole good frames.
    """

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        if not isinstance(max_frame_size, int) or not HEADER_SIZE <= max_frame_size <= _MAX_LENGTH + 8:
            raise EncodeError(f"max_frame_size must be an int in [{HEADER_SIZE}, 2**32+7]")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._error = None
        self.frames = 0
        self.offset = 0   # stream bytes consumed by whole frames

    @property
    def failed(self):
        """True once a bad frame was seen (even if its error is not raised yet)."""
        return self._error is not None

    @property
    def pending(self):
        """Bytes buffered that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data):
        """Bytes in, whole validated frames out: a list of
        (group, type, term, index, payload) tuples, possibly empty."""
        if self._error is not None:
            raise DecodeError(self._error)
        try:
            self._buf += memoryview(data).cast("B")
        except TypeError:
            raise DecodeError(f"feed: expected a bytes-like object, got {type(data).__name__}")
        buf = self._buf
        out = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 8:
                (length,) = _LEN.unpack_from(buf, pos)
                if length < BODY_HEADER_SIZE or 8 + length > self.max_frame_size:
                    _parse_frame(buf, pos, end, self.max_frame_size)  # raises the clear error
                if end - pos < 8 + length:
                    break
                frame, pos = _parse_frame(buf, pos, end, self.max_frame_size)
                out.append(frame)
        except DecodeError as e:
            self._error = f"stream failed at offset {self.offset + pos}: {e}"
            self._buf = bytearray()
            self.offset += pos
            self.frames += len(out)
            if out:
                return out  # deliver the good frames first; the next feed raises
            raise DecodeError(self._error) from None
        if pos:
            del buf[:pos]
            self.offset += pos
            self.frames += len(out)
        return out

    def stats(self):
        return {"frames": self.frames, "offset": self.offset, "pending": len(self._buf),
                "max_frame_size": self.max_frame_size, "failed": self._error is not None}


# ---- primitive writers / readers -------------------------------------------------------


def _put_varint(out, v):
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _put_u64(out, v, what):
    if not isinstance(v, int) or not 0 <= v <= _U64:
        raise EncodeError(f"{what} must be an int in [0, 2**64), got {v!r}")
    _put_varint(out, v)


def _put_bytes(out, b):
    _put_varint(out, len(b))
    out += b


def _put_str(out, s, what):
    if not isinstance(s, str):
        raise EncodeError(f"{what} must be str, got {type(s).__name__}")
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError(f"{what} is not encodable as UTF-8: {s!r}")
    _put_bytes(out, b)


def _put_bool(out, v, what):
    if v is True:
        out.append(1)
    elif v is False:
        out.append(0)
    else:
        raise EncodeError(f"{what} must be a bool, got {v!r}")


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, pos=0, end=None):
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def u8(self):
        if self.pos >= self.end:
            raise DecodeError("truncated: expected 1 more byte")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def varint(self):
        result = 0
        shift = 0
        buf, pos, end = self.buf, self.pos, self.end
        while True:
            if pos >= end:
                raise DecodeError("truncated varint")
            b = buf[pos]
            pos += 1
            if shift == 63 and b > 1:
                raise DecodeError("varint overflows 64 bits")
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
        self.pos = pos
        return result

    def count(self):
        """A count of items that each take at least one byte: bounded by what remains."""
        n = self.varint()
        if n > self.end - self.pos:
            raise DecodeError(f"count {n} exceeds the {self.end - self.pos} bytes left")
        return n

    def raw(self, n):
        if n > self.end - self.pos:
            raise DecodeError(f"truncated: need {n} bytes, {self.end - self.pos} left")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def bytes_(self):
        return bytes(self.raw(self.varint()))

    def str_(self):
        try:
            return self.raw(self.varint()).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("invalid UTF-8 in text field")

    def bool_(self):
        v = self.u8()
        if v > 1:
            raise DecodeError(f"bad bool byte {v}")
        return v == 1

    def i64(self):
        return _I64.unpack(self.raw(8))[0]

    def f64(self):
        return _F64.unpack(self.raw(8))[0]

    def done(self, what):
        if self.pos != self.end:
            raise DecodeError(f"{self.end - self.pos} trailing bytes after {what}")


# ---- Raft messages and log records -----------------------------------------------------


def _entry_type(t):
    if not isinstance(t, int) or int(t) not in _ENTRY_TYPES:
        raise EncodeError(f"unknown entry type {t!r}")
    return int(t)


def _put_members(out, members):
    if not isinstance(members, (list, tuple)):
        raise EncodeError("snapshot members must be a list of Member")
    _put_varint(out, len(members))
    for m in members:
        if not isinstance(m, Member):
            raise EncodeError(f"snapshot member must be Member, got {type(m).__name__}")
        _put_str(out, m.node_id, "member node_id")
        _put_str(out, m.raft_addr, "member raft_addr")
        _put_str(out, m.http_addr, "member http_addr")
        _put_bool(out, m.voter, "member voter")


def _message_body(msg):
    if not isinstance(msg, Message):
        raise EncodeError(f"expected a Message, got {type(msg).__name__}")
    mask = 0
    if msg.frm != "":
        mask |= F_FRM
    if msg.to != "":
        mask |= F_TO
    if msg.log_term != 0:
        mask |= F_LOG_TERM
    if msg.commit != 0:
        mask |= F_COMMIT
    if msg.entries:
        mask |= F_ENTRIES
    if msg.reject is True:
        mask |= F_REJECT
    elif msg.reject is not False:
        raise EncodeError(f"reject must be a bool, got {msg.reject!r}")
    if msg.reject_hint != 0:
        mask |= F_REJECT_HINT
    if msg.context != b"":
        mask |= F_CONTEXT
    if msg.snapshot is not None:
        mask |= F_SNAPSHOT
    if msg.offset != 0:
        mask |= F_OFFSET
    if msg.data != b"":
        mask |= F_DATA
    if msg.done is True:
        mask |= F_DONE
    elif msg.done is not False:
        raise EncodeError(f"done must be a bool, got {msg.done!r}")
    out = bytearray((MESSAGE_VERSION,))
    _put_varint(out, mask)
    if mask & F_FRM:
        _put_str(out, msg.frm, "frm")
    if mask & F_TO:
        _put_str(out, msg.to, "to")
    if mask & F_LOG_TERM:
        _put_u64(out, msg.log_term, "log_term")
    if mask & F_COMMIT:
        _put_u64(out, msg.commit, "commit")
    if mask & F_ENTRIES:
        entries = msg.entries
        if not isinstance(entries, (list, tuple)):
            raise EncodeError("entries must be a list of Entry")
        _put_varint(out, len(entries))
        for e in entries:
            if not isinstance(e, Entry):
                raise EncodeError(f"entries must hold Entry objects, got {type(e).__name__}")
            out.append(_entry_type(e.type))
            _put_u64(out, e.term, "entry term")
            _put_u64(out, e.index, "entry index")
            _put_bytes(out, _bytes_like(e.data, "entry data"))
    if mask & F_REJECT_HINT:
        _put_u64(out, msg.reject_hint, "reject_hint")
    if mask & F_CONTEXT:
        _put_bytes(out, _bytes_like(msg.context, "context"))
    if mask & F_SNAPSHOT:
        s = msg.snapshot
        if not isinstance(s, SnapshotMeta):
            raise EncodeError(f"snapshot must be SnapshotMeta or None, got {type(s).__name__}")
        _put_u64(out, s.index, "snapshot index")
        _put_u64(out, s.term, "snapshot term")
        _put_members(out, s.members)
    if mask & F_OFFSET:
        _put_u64(out, msg.offset, "offset")
    if mask & F_DATA:
        _put_bytes(out, _bytes_like(msg.data, "data"))
    return out


def encode_message(msg, group=0):
    """A Raft message as one frame (frame type = message type)."""
    body = _message_body(msg)
    t = msg.type
    if not isinstance(t, int) or int(t) not in _MSG_TYPES:
        raise EncodeError(f"unknown message type {t!r}")
    return _frame(group, int(t), msg.term, msg.index, bytes(body))


def _decode_message_body(mtype, term, index, payload):
    t = _MSG_TYPES.get(mtype)
    if t is None:
        raise DecodeError(f"frame type {mtype} is not a Raft message")
    r = _Reader(payload)
    v = r.u8()
    if v != MESSAGE_VERSION:
        raise DecodeError(f"unsupported message version {v}")
    mask = r.varint()
    if mask & ~_F_ALL:
        raise DecodeError(f"unknown message field bits {mask & ~_F_ALL:#x}")
    m = Message(t, term=term, index=index)
    if mask & F_FRM:
        m.frm = r.str_()
    if mask & F_TO:
        m.to = r.str_()
    if mask & F_LOG_TERM:
        m.log_term = r.varint()
    if mask & F_COMMIT:
        m.commit = r.varint()
    if mask & F_ENTRIES:
        n = r.count()
        entries = m.entries
        for _ in range(n):
            et = _ENTRY_TYPES.get(r.u8())
            if et is None:
                raise DecodeError("unknown entry type in message")
            eterm = r.varint()
            eindex = r.varint()
            entries.append(Entry(eterm, eindex, et, r.bytes_()))
    if mask & F_REJECT:
        m.reject = True
    if mask & F_REJECT_HINT:
        m.reject_hint = r.varint()
    if mask & F_CONTEXT:
        m.context = r.bytes_()
    if mask & F_SNAPSHOT:
        sindex = r.varint()
        sterm = r.varint()
        n = r.count()
        members = []
        for _ in range(n):
            members.append(Member(r.str_(), r.str_(), r.str_(), r.bool_()))
        m.snapshot = SnapshotMeta(sindex, sterm, members)
    if mask & F_OFFSET:
        m.offset = r.varint()
    if mask & F_DATA:
        m.data = r.bytes_()
    if mask & F_DONE:
        m.done = True
    r.done("message")
    return m


def decode_message(buf):
    """One frame -> (group, Message)."""
    group, mtype, term, index, payload = decode_frame(buf)
    return group, _decode_message_body(mtype, term, index, payload)


def _unpack_frame(frame):
    if not isinstance(frame, tuple) or len(frame) != 5:
        raise DecodeError("a frame is a (group, type, term, index, payload) tuple")
    group, ftype, term, index, payload = frame
    if not (isinstance(group, int) and isinstance(ftype, int) and isinstance(term, int)
            and isinstance(index, int) and 0 <= group <= 0xFFFFFFFF and 0 <= ftype <= 255
            and 0 <= term <= _U64 and 0 <= index <= _U64):
        raise DecodeError("frame tuple fields out of range")
    return group, ftype, term, index, _view(payload)


def message_from_frame(frame):
    """A frame tuple from ``FrameDecoder.feed`` -> (group, Message)."""
    group, mtype, term, index, payload = _unpack_frame(frame)
    return group, _decode_message_body(mtype, term, index, payload)


def encode_entry(entry, group=0):
    """A log record as one frame: frame type 0x40|entry type, payload = entry.data."""
    if not isinstance(entry, Entry):
        raise EncodeError(f"expected an Entry, got {type(entry).__name__}")
    return _frame(group, ENTRY_FRAME_BASE | _entry_type(entry.type), entry.term, entry.index,
                  _bytes_like(entry.data, "entry data"))


def _entry_from(ftype, term, index, payload):
    et = _ENTRY_TYPES.get(ftype - ENTRY_FRAME_BASE) if ftype >= ENTRY_FRAME_BASE else None
    if et is None:
        raise DecodeError(f"frame type {ftype:#x} is not a log entry")
    return Entry(term, index, et, bytes(payload))


def decode_entry(buf):
    """One frame -> (group, Entry)."""
    group, ftype, term, index, payload = decode_frame(buf)
    return group, _entry_from(ftype, term, index, payload)


def entry_from_frame(frame):
    """A frame tuple from ``FrameDecoder.feed`` -> (group, Entry)."""
    group, ftype, term, index, payload = _unpack_frame(frame)
    return group, _entry_from(ftype, term, index, payload)


# ---- entry payloads: commands ----------------------------------------------------------


def _put_value(out, v):
    if v is None:
        out.append(T_NULL)
    elif v is True:
        out.append(T_TRUE)
    elif v is False:
        out.append(T_FALSE)
    elif isinstance(v, int):
        if not -0x8000000000000000 <= v <= 0x7FFFFFFFFFFFFFFF:
            raise EncodeError(f"integer parameter {v} is outside int64")
        out.append(T_INT)
        out += _I64.pack(v)
    elif isinstance(v, float):
        out.append(T_FLOAT)
        out += _F64.pack(v)
    elif isinstance(v, str):
        out.append(T_TEXT)
        _put_str(out, v, "text parameter")
    elif isinstance(v, (bytes, bytearray, memoryview)):
        out.append(T_BLOB)
        _put_bytes(out, bytes(v))
    else:
        raise EncodeError(f"unsupported parameter type {type(v).__name__}: {v!r}")


def _put_statement(out, st):
    if not isinstance(st, Statement):
        raise EncodeError(f"statements must be Statement objects, got {type(st).__name__}")
    _put_str(out, st.sql, "sql")
    p = st.params
    if p is None:
        out.append(P_NONE)
    elif isinstance(p, (list, tuple)):
        out.append(P_POSITIONAL)
        _put_varint(out, len(p))
        for v in p:
            _put_value(out, v)
    elif isinstance(p, dict):
        out.append(P_NAMED)
        _put_varint(out, len(p))
        for k, v in p.items():
            _put_str(out, k, "parameter name")
            _put_value(out, v)
    else:
        raise EncodeError(f"params must be None, a list or a dict, got {type(p).__name__}")


def _put_bulk(out, bs):
    """Version 2's bulk form: one SQL text, then a matrix of positional parameters."""
    _put_str(out, bs.sql, "sql")
    rows = bs.rows
    if not isinstance(rows, (list, tuple)) or not rows:
        raise EncodeError("bulk statements need a non-empty list of parameter rows")
    first = rows[0]
    if not isinstance(first, (list, tuple)) or not first:
        raise EncodeError("bulk parameter rows must be non-empty lists")
    ncols = len(first)
    _put_varint(out, ncols)
    _put_varint(out, len(rows))
    for row in rows:
        if not isinstance(row, (list, tuple)) or len(row) != ncols:
            raise EncodeError(f"bulk parameter rows must all be lists of {ncols} values")
        for v in row:
            _put_value(out, v)


def encode_command(cmd):
    """An entry payload: format version byte, command type, requests, ops."""
    if not isinstance(cmd, Command):
        raise EncodeError(f"expected a Command, got {type(cmd).__name__}")
    t = cmd.type
    if not isinstance(t, int) or int(t) not in _CMD_TYPES:
        raise EncodeError(f"unknown command type {t!r}")
    out = bytearray((FORMAT_VERSION, int(t)))
    bulk = False
    reqs = cmd.requests
    if not isinstance(reqs, (list, tuple)):
        raise EncodeError("requests must be a list of Request")
    _put_varint(out, len(reqs))
    for rq in reqs:
        if not isinstance(rq, Request):
            raise EncodeError(f"requests must hold Request objects, got {type(rq).__name__}")
        rid = rq.request_id
        flags = 0
        if rq.transaction is True:
            flags |= 1
        elif rq.transaction is not False:
            raise EncodeError(f"transaction must be a bool, got {rq.transaction!r}")
        if rid is not None:
            if not isinstance(rid, (bytes, bytearray, memoryview)):
                raise EncodeError(f"request_id must be bytes or None, got {type(rid).__name__}")
            flags |= 2
        guard = rq.guard
        if guard is not None:
            if not isinstance(guard, (bytes, bytearray, memoryview)):
                raise EncodeError(f"guard must be bytes or None, got {type(guard).__name__}")
            flags |= 4
        sts = rq.statements
        if type(sts) is BulkStatements:
            flags |= R_BULK
            bulk = True
        out.append(flags)
        if rid is not None:
            _put_bytes(out, bytes(rid))
        if guard is not None:
            _put_bytes(out, bytes(guard))
        if flags & R_BULK:
            _put_bulk(out, sts)
            continue
        if not isinstance(sts, (list, tuple)):
            raise EncodeError("statements must be a list of Statement")
        _put_varint(out, len(sts))
        for st in sts:
            _put_statement(out, st)
    if bulk:
        out[0] = FORMAT_VERSION_BULK
    ops = cmd.ops
    if not isinstance(ops, (list, tuple)):
        raise EncodeError("ops must be a list of (name, args) pairs")
    _put_varint(out, len(ops))
    for op in ops:
        if not isinstance(op, (list, tuple)) or len(op) != 2:
            raise EncodeError(f"an op must be a (name, args) pair, got {op!r}")
        _put_str(out, op[0], "op name")
        _put_bytes(out, _bytes_like(op[1], "op args"))
    return bytes(out)


def _get_value(r):
    tag = r.u8()
    if tag == T_NULL:
        return None
    if tag == T_INT:
        return r.i64()
    if tag == T_FLOAT:
        return r.f64()
    if tag == T_TEXT:
        return r.str_()
    if tag == T_BLOB:
        return r.bytes_()
    if tag == T_FALSE:
        return False
    if tag == T_TRUE:
        return True
    raise DecodeError(f"unknown parameter tag {tag}")


def _get_bulk(r):
    sql = r.str_()
    ncols = r.varint()
    nrows = r.varint()
    if ncols < 1 or nrows < 1:
        raise DecodeError("a bulk request needs at least one row of at least one value")
    if ncols * nrows > r.end - r.pos:
        raise DecodeError(f"bulk matrix of {nrows}x{ncols} values exceeds the "
                          f"{r.end - r.pos} bytes left")
    rng = range(ncols)
    return BulkStatements(sql, [[_get_value(r) for _ in rng] for _ in range(nrows)])


def decode_command(buf):
    r = _Reader(_view(buf))
    v = r.u8()
    if v != FORMAT_VERSION and v != FORMAT_VERSION_BULK:
        raise DecodeError(f"unsupported command format version {v}")
    known = 15 if v == FORMAT_VERSION_BULK else 7
    t = _CMD_TYPES.get(r.u8())
    if t is None:
        raise DecodeError("unknown command type")
    requests = []
    for _ in range(r.count()):
        flags = r.u8()
        if flags & ~known:
            raise DecodeError(f"unknown request flags {flags:#x}")
        rid = r.bytes_() if flags & R_ID else None
        guard = r.bytes_() if flags & R_GUARD else None
        if flags & R_BULK:
            requests.append(Request(_get_bulk(r), bool(flags & R_TX), rid, guard))
            continue
        statements = []
        for _ in range(r.count()):
            sql = r.str_()
            kind = r.u8()
            if kind == P_NONE:
                params = None
            elif kind == P_POSITIONAL:
                params = [_get_value(r) for _ in range(r.count())]
            elif kind == P_NAMED:
                n = r.count()
                params = {}
                for _ in range(n):
                    k = r.str_()
                    params[k] = _get_value(r)
                if len(params) != n:
                    raise DecodeError("duplicate named parameter")
            else:
                raise DecodeError(f"unknown params kind {kind}")
            statements.append(Statement(sql, params))
        requests.append(Request(statements, bool(flags & 1), rid, guard))
    ops = []
    for _ in range(r.count()):
        name = r.str_()
        ops.append((name, r.bytes_()))
    r.done("command")
    return Command(t, requests, ops)


def encode_conf_change(cc):
    if not isinstance(cc, ConfChange):
        raise EncodeError(f"expected a ConfChange, got {type(cc).__name__}")
    t = cc.type
    if not isinstance(t, int) or int(t) not in _CC_TYPES:
        raise EncodeError(f"unknown conf change type {t!r}")
    out = bytearray((CONF_CHANGE_VERSION, int(t)))
    _put_str(out, cc.node_id, "node_id")
    _put_str(out, cc.raft_addr, "raft_addr")
    _put_str(out, cc.http_addr, "http_addr")
    return bytes(out)


def decode_conf_change(buf):
    r = _Reader(_view(buf))
    v = r.u8()
    if v != CONF_CHANGE_VERSION:
        raise DecodeError(f"unsupported conf change version {v}")
    t = _CC_TYPES.get(r.u8())
    if t is None:
        raise DecodeError("unknown conf change type")
    cc = ConfChange(t, r.str_(), r.str_(), r.str_())
    r.done("conf change")
    return cc


__all__ = [
    "crc32c", "encode_frame", "decode_frame", "FrameDecoder", "encode_message",
    "decode_message", "message_from_frame", "encode_entry", "decode_entry",
    "entry_from_frame", "encode_command", "decode_command", "encode_conf_change",
    "decode_conf_change", "HEADER_SIZE", "DEFAULT_MAX_FRAME_SIZE", "ENTRY_FRAME_BASE",
]
