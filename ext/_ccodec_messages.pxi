# Included by _ccodec.pyx (one compiled module; split only to keep files short).
# Twin: raftsqlite/codec/fallback.py; layout: raftsqlite/codec/FORMAT.md.

# ---- Raft messages ---------------------------------------------------------------------

cdef int w_members(Writer *w, object members) except -1:
    if not (PyList_Check(members) or PyTuple_Check(members)):
        raise EncodeError("snapshot members must be a list of Member")
    w_varint(w, len(members))
    for m in members:
        if not isinstance(m, Member):
            raise EncodeError(f"snapshot member must be Member, got {type(m).__name__}")
        w_str(w, _get(m, MB_ID, "node_id"), "member node_id")
        w_str(w, _get(m, MB_RAFT, "raft_addr"), "member raft_addr")
        w_str(w, _get(m, MB_HTTP, "http_addr"), "member http_addr")
        v = _get(m, MB_VOTER, "voter")
        if v is True:
            w_u8(w, 1)
        elif v is False:
            w_u8(w, 0)
        else:
            raise EncodeError(f"member voter must be a bool, got {v!r}")
    return 0


cdef int w_entries(Writer *w, object entries) except -1:
    if not (PyList_Check(entries) or PyTuple_Check(entries)):
        raise EncodeError("entries must be a list of Entry")
    w_varint(w, len(entries))
    for e in entries:
        if not isinstance(e, Entry):
            raise EncodeError(f"entries must hold Entry objects, got {type(e).__name__}")
        w_u8(w, <uint8_t>small_of(_get(e, E_TYPE, "type"), ENTRY_TYPES, "entry type"))
        w_varint(w, u64_of(_get(e, E_TERM, "term"), "entry term"))
        w_varint(w, u64_of(_get(e, E_INDEX, "index"), "entry index"))
        w_pybytes(w, _get(e, E_DATA, "data"), "entry data")
    return 0


cdef Py_ssize_t estimate_entries(object entries):
    cdef Py_ssize_t total = 0
    cdef PyObject *d
    if PyList_Check(entries):
        for e in <list>entries:
            if isinstance(e, Entry):
                d = rs_get(<PyObject *>e, E_DATA)
                if d != NULL and PyBytes_Check(<object>d):
                    total += PyBytes_GET_SIZE(<object>d) + 24
    return total


cdef int w_message_body(Writer *w, object msg) except -1:
    cdef uint64_t mask = 0
    frm = _get(msg, M_FRM, "frm")
    to = _get(msg, M_TO, "to")
    log_term = _get(msg, M_LOG_TERM, "log_term")
    commit = _get(msg, M_COMMIT, "commit")
    entries = _get(msg, M_ENTRIES, "entries")
    reject = _get(msg, M_REJECT, "reject")
    hint = _get(msg, M_REJECT_HINT, "reject_hint")
    context = _get(msg, M_CONTEXT, "context")
    snapshot = _get(msg, M_SNAPSHOT, "snapshot")
    offset = _get(msg, M_OFFSET, "offset")
    data = _get(msg, M_DATA, "data")
    done = _get(msg, M_DONE, "done")
    if _neq(frm, EMPTY_STR):
        mask |= F_FRM
    if _neq(to, EMPTY_STR):
        mask |= F_TO
    if _neq(log_term, ZERO):
        mask |= F_LOG_TERM
    if _neq(commit, ZERO):
        mask |= F_COMMIT
    if entries:
        mask |= F_ENTRIES
    if reject is True:
        mask |= F_REJECT
    elif reject is not False:
        raise EncodeError(f"reject must be a bool, got {reject!r}")
    if _neq(hint, ZERO):
        mask |= F_REJECT_HINT
    if _neq(context, EMPTY_BYTES):
        mask |= F_CONTEXT
    if snapshot is not None:
        mask |= F_SNAPSHOT
    if _neq(offset, ZERO):
        mask |= F_OFFSET
    if _neq(data, EMPTY_BYTES):
        mask |= F_DATA
    if done is True:
        mask |= F_DONE
    elif done is not False:
        raise EncodeError(f"done must be a bool, got {done!r}")
    w_u8(w, 1)
    w_varint(w, mask)
    if mask & F_FRM:
        w_str(w, frm, "frm")
    if mask & F_TO:
        w_str(w, to, "to")
    if mask & F_LOG_TERM:
        w_varint(w, u64_of(log_term, "log_term"))
    if mask & F_COMMIT:
        w_varint(w, u64_of(commit, "commit"))
    if mask & F_ENTRIES:
        w_entries(w, entries)
    if mask & F_REJECT_HINT:
        w_varint(w, u64_of(hint, "reject_hint"))
    if mask & F_CONTEXT:
        w_pybytes(w, context, "context")
    if mask & F_SNAPSHOT:
        if not isinstance(snapshot, SnapshotMeta):
            raise EncodeError(f"snapshot must be SnapshotMeta or None, got {type(snapshot).__name__}")
        w_varint(w, u64_of(_get(snapshot, S_INDEX, "index"), "snapshot index"))
        w_varint(w, u64_of(_get(snapshot, S_TERM, "term"), "snapshot term"))
        w_members(w, _get(snapshot, S_MEMBERS, "members"))
    if mask & F_OFFSET:
        w_varint(w, u64_of(offset, "offset"))
    if mask & F_DATA:
        w_pybytes(w, data, "data")
    return 0


def encode_message(msg, group=0):
    """A Raft message as one frame (frame type = message type)."""
    cdef Writer w
    cdef uint32_t g
    cdef int mt
    cdef uint64_t term, index
    if not isinstance(msg, Message):
        raise EncodeError(f"expected a Message, got {type(msg).__name__}")
    entries = _get(msg, M_ENTRIES, "entries")
    w_init(&w, 256 + estimate_entries(entries))
    try:
        w.n = HDR
        w_message_body(&w, msg)
        mt = small_of(_get(msg, M_TYPE, "type"), MSG_TYPES, "message type")
        g = u32_of(group, "group id")
        term = u64_of(_get(msg, M_TERM, "term"), "term")
        index = u64_of(_get(msg, M_INDEX, "index"), "index")
        return finish_frame(&w, g, <uint8_t>mt, term, index)
    finally:
        PyMem_Free(w.p)


cdef object new_message(object mtype, object term, object index):
    m = rs_new(P_Message)
    _set(m, M_TYPE, mtype)
    _set(m, M_FRM, EMPTY_STR)
    _set(m, M_TO, EMPTY_STR)
    _set(m, M_TERM, term)
    _set(m, M_LOG_TERM, ZERO)
    _set(m, M_INDEX, index)
    _set(m, M_COMMIT, ZERO)
    _set(m, M_ENTRIES, [])
    _set(m, M_REJECT, False)
    _set(m, M_REJECT_HINT, ZERO)
    _set(m, M_CONTEXT, EMPTY_BYTES)
    _set(m, M_SNAPSHOT, None)
    _set(m, M_OFFSET, ZERO)
    _set(m, M_DATA, EMPTY_BYTES)
    _set(m, M_DONE, False)
    return m


cdef object new_entry(object etype, object term, object index, object data):
    e = rs_new(P_Entry)
    _set(e, E_TERM, term)
    _set(e, E_INDEX, index)
    _set(e, E_TYPE, etype)
    _set(e, E_DATA, data)
    return e


cdef object decode_message_body(int mtype, uint64_t term, uint64_t index,
                                const uint8_t *p, Py_ssize_t n):
    cdef Reader r
    cdef uint64_t mask
    cdef Py_ssize_t i, count
    cdef list entries
    t = MSG_TYPES[mtype]
    if t is None:
        raise DecodeError(f"frame type {mtype} is not a Raft message")
    r.p = p
    r.pos = 0
    r.end = n
    if r_u8(&r) != 1:
        raise DecodeError(f"unsupported message version {p[0]}")
    mask = r_varint(&r)
    if mask & ~(<uint64_t>F_ALL):
        raise DecodeError(f"unknown message field bits {mask & ~(<uint64_t>F_ALL):#x}")
    m = new_message(t, PyLong_FromUnsignedLongLong(term), PyLong_FromUnsignedLongLong(index))
    if mask & F_FRM:
        _set(m, M_FRM, r_str(&r))
    if mask & F_TO:
        _set(m, M_TO, r_str(&r))
    if mask & F_LOG_TERM:
        _set(m, M_LOG_TERM, r_u64(&r))
    if mask & F_COMMIT:
        _set(m, M_COMMIT, r_u64(&r))
    if mask & F_ENTRIES:
        count = r_count(&r)
        entries = PyList_New(count)
        for i in range(count):
            et = ENTRY_TYPES[r_u8(&r)]
            if et is None:
                raise DecodeError("unknown entry type in message")
            eterm = r_u64(&r)
            eindex = r_u64(&r)
            e = new_entry(et, eterm, eindex, r_bytes(&r))
            Py_INCREF(e)
            PyList_SET_ITEM(entries, i, e)
        _set(m, M_ENTRIES, entries)
    if mask & F_REJECT:
        _set(m, M_REJECT, True)
    if mask & F_REJECT_HINT:
        _set(m, M_REJECT_HINT, r_u64(&r))
    if mask & F_CONTEXT:
        _set(m, M_CONTEXT, r_bytes(&r))
    if mask & F_SNAPSHOT:
        s = rs_new(P_SnapshotMeta)
        _set(s, S_INDEX, r_u64(&r))
        _set(s, S_TERM, r_u64(&r))
        count = r_count(&r)
        members = []
        for i in range(count):
            mb = rs_new(P_Member)
            _set(mb, MB_ID, r_str(&r))
            _set(mb, MB_RAFT, r_str(&r))
            _set(mb, MB_HTTP, r_str(&r))
            _set(mb, MB_VOTER, r_bool(&r))
            members.append(mb)
        _set(s, S_MEMBERS, members)
        _set(m, M_SNAPSHOT, s)
    if mask & F_OFFSET:
        _set(m, M_OFFSET, r_u64(&r))
    if mask & F_DATA:
        _set(m, M_DATA, r_bytes(&r))
    if mask & F_DONE:
        _set(m, M_DONE, True)
    r_done(&r, "message")
    return m


def decode_message(buf):
    """One frame -> (group, Message)."""
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
        return (rs_le32(p + 8),
                decode_message_body(p[12], rs_le64(p + 13), rs_le64(p + 21), p + HDR, size - HDR))
    finally:
        PyBuffer_Release(&view)


cdef int unpack_frame(object frame, uint32_t *group, int *ftype, uint64_t *term,
                      uint64_t *index) except -1:
    if not PyTuple_Check(frame) or len(frame) != 5:
        raise DecodeError("a frame is a (group, type, term, index, payload) tuple")
    g, t, tm, ix, _ = frame
    try:
        if not (PyLong_Check(g) and PyLong_Check(t) and PyLong_Check(tm) and PyLong_Check(ix)):
            raise OverflowError
        group[0] = u32_of(g, "group")
        if not 0 <= t <= 255:
            raise OverflowError
        ftype[0] = t
        term[0] = PyLong_AsUnsignedLongLong(tm)
        index[0] = PyLong_AsUnsignedLongLong(ix)
    except (OverflowError, EncodeError):
        raise DecodeError("frame tuple fields out of range") from None
    return 0


def message_from_frame(frame):
    """A frame tuple from ``FrameDecoder.feed`` -> (group, Message)."""
    cdef Py_buffer view
    cdef uint32_t group
    cdef int ftype
    cdef uint64_t term, index
    unpack_frame(frame, &group, &ftype, &term, &index)
    _get_input(frame[4], &view)
    try:
        return (group, decode_message_body(ftype, term, index, <const uint8_t *>view.buf, view.len))
    finally:
        PyBuffer_Release(&view)


# ---- log records -----------------------------------------------------------------------

def encode_entry(entry, group=0):
    """A log record as one frame: frame type 0x40|entry type, payload = entry.data."""
    cdef Writer w
    cdef int et
    cdef uint32_t g
    cdef uint64_t term, index
    if not isinstance(entry, Entry):
        raise EncodeError(f"expected an Entry, got {type(entry).__name__}")
    et = small_of(_get(entry, E_TYPE, "type"), ENTRY_TYPES, "entry type")
    data = _bytes_like(_get(entry, E_DATA, "data"), "entry data")
    g = u32_of(group, "group id")
    term = u64_of(_get(entry, E_TERM, "term"), "term")
    index = u64_of(_get(entry, E_INDEX, "index"), "index")
    w_init(&w, HDR + PyBytes_GET_SIZE(data))
    try:
        w.n = HDR
        w_raw(&w, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return finish_frame(&w, g, <uint8_t>(0x40 | et), term, index)
    finally:
        PyMem_Free(w.p)


cdef object entry_from(int ftype, uint64_t term, uint64_t index, const uint8_t *p,
                       Py_ssize_t n):
    et = ENTRY_TYPES[ftype - 0x40] if ftype >= 0x40 else None
    if et is None:
        raise DecodeError(f"frame type {ftype:#x} is not a log entry")
    return new_entry(et, PyLong_FromUnsignedLongLong(term), PyLong_FromUnsignedLongLong(index),
                     PyBytes_FromStringAndSize(<const char *>p, n))


def decode_entry(buf):
    """One frame -> (group, Entry)."""
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
        return (rs_le32(p + 8), entry_from(p[12], rs_le64(p + 13), rs_le64(p + 21), p + HDR,
                                           size - HDR))
    finally:
        PyBuffer_Release(&view)


def entry_from_frame(frame):
    """A frame tuple from ``FrameDecoder.feed`` -> (group, Entry)."""
    cdef Py_buffer view
    cdef uint32_t group
    cdef int ftype
    cdef uint64_t term, index
    unpack_frame(frame, &group, &ftype, &term, &index)
    _get_input(frame[4], &view)
    try:
        return (group, entry_from(ftype, term, index, <const uint8_t *>view.buf, view.len))
    finally:
        PyBuffer_Release(&view)
