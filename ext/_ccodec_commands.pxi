# Included by _ccodec.pyx (one compiled module; split only to keep files short).
# Twin: raftsqlite/codec/fallback.py; layout: raftsqlite/codec/FORMAT.md.

# ---- entry payloads: commands ----------------------------------------------------------

cdef int w_value(Writer *w, object v) except -1:
    cdef int overflow = 0
    cdef long long x
    cdef double d
    cdef uint8_t buf[8]
    if v is None:
        return w_u8(w, T_NULL)
    if v is True:
        return w_u8(w, T_TRUE)
    if v is False:
        return w_u8(w, T_FALSE)
    if PyLong_Check(v):
        x = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow:
            raise EncodeError(f"integer parameter {v} is outside int64")
        w_u8(w, T_INT)
        rs_put64(buf, <uint64_t>x)
        return w_raw(w, buf, 8)
    if PyFloat_Check(v):
        d = PyFloat_AsDouble(v)
        w_u8(w, T_FLOAT)
        memcpy(&x, &d, 8)
        rs_put64(buf, <uint64_t>x)
        return w_raw(w, buf, 8)
    if PyUnicode_Check(v):
        w_u8(w, T_TEXT)
        return w_str(w, v, "text parameter")
    if PyBytes_Check(v) or PyByteArray_Check(v) or PyMemoryView_Check(v):
        w_u8(w, T_BLOB)
        return w_pybytes(w, v, "blob parameter")
    raise EncodeError(f"unsupported parameter type {type(v).__name__}: {v!r}")


cdef int w_statement(Writer *w, object st) except -1:
    if not isinstance(st, Statement):
        raise EncodeError(f"statements must be Statement objects, got {type(st).__name__}")
    w_str(w, _get(st, ST_SQL, "sql"), "sql")
    p = _get(st, ST_PARAMS, "params")
    if p is None:
        return w_u8(w, 0)
    if PyList_Check(p) or PyTuple_Check(p):
        w_u8(w, 1)
        w_varint(w, len(p))
        for v in p:
            w_value(w, v)
        return 0
    if isinstance(p, dict):
        w_u8(w, 2)
        w_varint(w, len(p))
        for k, v in (p.items() if not PyDict_CheckExact(p) else (<dict>p).items()):
            w_str(w, k, "parameter name")
            w_value(w, v)
        return 0
    raise EncodeError(f"params must be None, a list or a dict, got {type(p).__name__}")


cdef int w_bulk(Writer *w, object bs) except -1:
    """Version 2's bulk form: one SQL text, then a matrix of positional parameters."""
    cdef Py_ssize_t ncols
    w_str(w, _get(bs, BS_SQL, "sql"), "sql")
    rows = _get(bs, BS_ROWS, "rows")
    if not (PyList_Check(rows) or PyTuple_Check(rows)) or len(rows) == 0:
        raise EncodeError("bulk statements need a non-empty list of parameter rows")
    first = rows[0]
    if not (PyList_Check(first) or PyTuple_Check(first)) or len(first) == 0:
        raise EncodeError("bulk parameter rows must be non-empty lists")
    ncols = len(first)
    w_varint(w, <uint64_t>ncols)
    w_varint(w, <uint64_t>len(rows))
    for row in rows:
        if not (PyList_Check(row) or PyTuple_Check(row)) or len(row) != ncols:
            raise EncodeError(f"bulk parameter rows must all be lists of {ncols} values")
        for v in row:
            w_value(w, v)
    return 0


def encode_command(cmd):
    """An entry payload: format version byte, command type, requests, ops."""
    cdef Writer w
    cdef uint8_t flags
    cdef bint bulk = False
    if not isinstance(cmd, Command):
        raise EncodeError(f"expected a Command, got {type(cmd).__name__}")
    w_init(&w, 256)
    try:
        w_u8(&w, <uint8_t>FORMAT_V)
        w_u8(&w, <uint8_t>small_of(_get(cmd, C_TYPE, "type"), CMD_TYPES, "command type"))
        reqs = _get(cmd, C_REQS, "requests")
        if not (PyList_Check(reqs) or PyTuple_Check(reqs)):
            raise EncodeError("requests must be a list of Request")
        w_varint(&w, len(reqs))
        for rq in reqs:
            if not isinstance(rq, Request):
                raise EncodeError(f"requests must hold Request objects, got {type(rq).__name__}")
            flags = 0
            tx = _get(rq, RQ_TX, "transaction")
            if tx is True:
                flags |= 1
            elif tx is not False:
                raise EncodeError(f"transaction must be a bool, got {tx!r}")
            rid = _get(rq, RQ_ID, "request_id")
            if rid is not None:
                if not (PyBytes_Check(rid) or PyByteArray_Check(rid) or PyMemoryView_Check(rid)):
                    raise EncodeError(f"request_id must be bytes or None, got {type(rid).__name__}")
                flags |= 2
            guard = _get(rq, RQ_GUARD, "guard")
            if guard is not None:
                if not (PyBytes_Check(guard) or PyByteArray_Check(guard) or PyMemoryView_Check(guard)):
                    raise EncodeError(f"guard must be bytes or None, got {type(guard).__name__}")
                flags |= 4
            sts = _get(rq, RQ_STS, "statements")
            if type(sts) is BulkStatements:
                flags |= 8
                bulk = True
            w_u8(&w, flags)
            if rid is not None:
                w_pybytes(&w, rid, "request_id")
            if guard is not None:
                w_pybytes(&w, guard, "guard")
            if flags & 8:
                w_bulk(&w, sts)
                continue
            if not (PyList_Check(sts) or PyTuple_Check(sts)):
                raise EncodeError("statements must be a list of Statement")
            w_varint(&w, len(sts))
            for st in sts:
                w_statement(&w, st)
        if bulk:
            w.p[0] = <uint8_t>FORMAT_V_BULK
        ops = _get(cmd, C_OPS, "ops")
        if not (PyList_Check(ops) or PyTuple_Check(ops)):
            raise EncodeError("ops must be a list of (name, args) pairs")
        w_varint(&w, len(ops))
        for op in ops:
            if not (PyList_Check(op) or PyTuple_Check(op)) or len(op) != 2:
                raise EncodeError(f"an op must be a (name, args) pair, got {op!r}")
            w_str(&w, op[0], "op name")
            w_pybytes(&w, op[1], "op args")
        return PyBytes_FromStringAndSize(<char *>w.p, w.n)
    finally:
        PyMem_Free(w.p)


cdef object r_value(Reader *r):
    cdef int tag = r_u8(r)
    cdef uint64_t u
    cdef double d
    if tag == T_NULL:
        return None
    if tag == T_INT or tag == T_FLOAT:
        if r.end - r.pos < 8:
            raise DecodeError(f"truncated: need 8 bytes, {r.end - r.pos} left")
        u = rs_le64(r.p + r.pos)
        r.pos += 8
        if tag == T_INT:
            return PyLong_FromLongLong(<int64_t>u)
        memcpy(&d, &u, 8)
        return PyFloat_FromDouble(d)
    if tag == T_TEXT:
        return r_str(r)
    if tag == T_BLOB:
        return r_bytes(r)
    if tag == T_FALSE:
        return False
    if tag == T_TRUE:
        return True
    raise DecodeError(f"unknown parameter tag {tag}")


cdef object r_bulk(Reader *r):
    cdef uint64_t ncols, nrows
    cdef Py_ssize_t i, k, left
    cdef list rows, row
    sql = r_str(r)
    ncols = r_varint(r)
    nrows = r_varint(r)
    if ncols < 1 or nrows < 1:
        raise DecodeError("a bulk request needs at least one row of at least one value")
    left = r.end - r.pos
    if ncols > <uint64_t>left or nrows > <uint64_t>left // ncols:
        raise DecodeError(f"bulk matrix of {nrows}x{ncols} values exceeds the "
                          f"{left} bytes left")
    rows = PyList_New(<Py_ssize_t>nrows)
    for i in range(<Py_ssize_t>nrows):
        row = PyList_New(<Py_ssize_t>ncols)
        for k in range(<Py_ssize_t>ncols):
            pv = r_value(r)
            Py_INCREF(pv)
            PyList_SET_ITEM(row, k, pv)
        Py_INCREF(row)
        PyList_SET_ITEM(rows, i, row)
    bs = rs_new(P_BulkStatements)
    _set(bs, BS_SQL, sql)
    _set(bs, BS_ROWS, rows)
    return bs


cdef object r_command(Reader *r):
    cdef Py_ssize_t nreq, nst, nparam, i, j, k
    cdef int flags, kind, known
    cdef list requests, statements, params_list
    cdef dict params_dict
    v = r_u8(r)
    if v != FORMAT_V and v != FORMAT_V_BULK:
        raise DecodeError(f"unsupported command format version {v}")
    known = 15 if v == FORMAT_V_BULK else 7
    t = CMD_TYPES[r_u8(r)]
    if t is None:
        raise DecodeError("unknown command type")
    nreq = r_count(r)
    requests = PyList_New(nreq)
    for i in range(nreq):
        flags = r_u8(r)
        if flags & ~known:
            raise DecodeError(f"unknown request flags {flags:#x}")
        rid = r_bytes(r) if flags & 2 else None
        guard = r_bytes(r) if flags & 4 else None
        if flags & 8:
            rq = rs_new(P_Request)
            _set(rq, RQ_STS, r_bulk(r))
            _set(rq, RQ_TX, (flags & 1) != 0)
            _set(rq, RQ_ID, rid)
            _set(rq, RQ_GUARD, guard)
            Py_INCREF(rq)
            PyList_SET_ITEM(requests, i, rq)
            continue
        nst = r_count(r)
        statements = PyList_New(nst)
        for j in range(nst):
            sql = r_str(r)
            kind = r_u8(r)
            if kind == 0:
                params = None
            elif kind == 1:
                nparam = r_count(r)
                params_list = PyList_New(nparam)
                for k in range(nparam):
                    pv = r_value(r)
                    Py_INCREF(pv)
                    PyList_SET_ITEM(params_list, k, pv)
                params = params_list
            elif kind == 2:
                nparam = r_count(r)
                params_dict = {}
                for k in range(nparam):
                    name = r_str(r)
                    params_dict[name] = r_value(r)
                if len(params_dict) != nparam:
                    raise DecodeError("duplicate named parameter")
                params = params_dict
            else:
                raise DecodeError(f"unknown params kind {kind}")
            st = rs_new(P_Statement)
            _set(st, ST_SQL, sql)
            _set(st, ST_PARAMS, params)
            Py_INCREF(st)
            PyList_SET_ITEM(statements, j, st)
        rq = rs_new(P_Request)
        _set(rq, RQ_STS, statements)
        _set(rq, RQ_TX, (flags & 1) != 0)
        _set(rq, RQ_ID, rid)
        _set(rq, RQ_GUARD, guard)
        Py_INCREF(rq)
        PyList_SET_ITEM(requests, i, rq)
    ops = []
    for i in range(r_count(r)):
        name = r_str(r)
        ops.append((name, r_bytes(r)))
    r_done(r, "command")
    c = rs_new(P_Command)
    _set(c, C_TYPE, t)
    _set(c, C_REQS, requests)
    _set(c, C_OPS, ops)
    return c


def decode_command(buf):
    cdef Py_buffer view
    cdef Reader r
    _get_input(buf, &view)
    try:
        r.p = <const uint8_t *>view.buf
        r.pos = 0
        r.end = view.len
        return r_command(&r)
    finally:
        PyBuffer_Release(&view)


def encode_conf_change(cc):
    cdef Writer w
    if not isinstance(cc, ConfChange):
        raise EncodeError(f"expected a ConfChange, got {type(cc).__name__}")
    w_init(&w, 64)
    try:
        w_u8(&w, 1)
        w_u8(&w, <uint8_t>small_of(_get(cc, CC_TYPE, "type"), CC_TYPES, "conf change type"))
        w_str(&w, _get(cc, CC_ID, "node_id"), "node_id")
        w_str(&w, _get(cc, CC_RAFT, "raft_addr"), "raft_addr")
        w_str(&w, _get(cc, CC_HTTP, "http_addr"), "http_addr")
        return PyBytes_FromStringAndSize(<char *>w.p, w.n)
    finally:
        PyMem_Free(w.p)


def decode_conf_change(buf):
    cdef Py_buffer view
    cdef Reader r
    _get_input(buf, &view)
    try:
        r.p = <const uint8_t *>view.buf
        r.pos = 0
        r.end = view.len
        v = r_u8(&r)
        if v != 1:
            raise DecodeError(f"unsupported conf change version {v}")
        t = CC_TYPES[r_u8(&r)]
        if t is None:
            raise DecodeError("unknown conf change type")
        cc = rs_new(P_ConfChange)
        _set(cc, CC_TYPE, t)
        _set(cc, CC_ID, r_str(&r))
        _set(cc, CC_RAFT, r_str(&r))
        _set(cc, CC_HTTP, r_str(&r))
        r_done(&r, "conf change")
        return cc
    finally:
        PyBuffer_Release(&view)
