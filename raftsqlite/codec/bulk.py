"""The hot loops of a 1000-row bulk request, pure-Python twin of ``raftsqlite._cbulk``.

A bulk request (``[["INSERT ... VALUES(?, ?)", a, b], ...]``) costs its node a few Python
operations per row at every step: scanning the parsed JSON, checking the values, making
one result dict per row, rendering them. The compiled twin does each of these in one C
loop; this module is the reference it must match (tests/unit/test_bulk_twins.py feeds
both the same inputs). Nothing here knows HTTP or SQLite; the callers keep the
wording of every error, so these functions only say yes, no, or where.
"""

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

# A string whose first character is one of these may be an ``x'..'`` BLOB literal once
# stripped (rqlite's BLOB-as-string form): it needs the caller's conversion.
HEX_START = ("x", "X", " ", "\t", "\n", "\r")


def scan_rows(doc):
    """``doc``: a parsed request body (a list). -> ``(sql, rows)`` when every item is a
    list ``[sql, v1, ..., vk]`` (k >= 1, one k for all) with one SQL text, and every value
    is plain: None, a bool, an int in int64, a float, or a str that cannot be a hex
    BLOB literal; ``rows[i]`` is a new list ``doc[i][1:]``. -> None otherwise (the
    caller's general path converts or refuses what is unusual)."""
    if type(doc) is not list or not doc:
        return None
    first = doc[0]
    if type(first) is not list or len(first) < 2:
        return None
    width = len(first)
    sql = first[0]
    if type(sql) is not str:
        return None
    rows = []
    append = rows.append
    lo, hi = INT64_MIN, INT64_MAX
    for item in doc:
        if type(item) is not list or len(item) != width:
            return None
        s = item[0]
        if s is not sql and (type(s) is not str or s != sql):
            return None
        row = item[1:]
        for v in row:
            tv = type(v)
            if tv is str:
                if v[:1] in HEX_START:
                    return None
            elif tv is int:
                if not lo <= v <= hi:
                    return None
            elif v is not None and tv is not float and tv is not bool:
                return None
        append(row)
    return sql, rows


def take_rows(doc):
    """``scan_rows``' verdict without copying: -> ``(sql, doc)`` where every item of
    ``doc`` lost its first element (the SQL text) in place, so ``doc`` is now the rows;
    -> None with ``doc`` untouched. For a body parsed just for this (nobody else holds
    it): 1000 row lists fewer to make and free per request."""
    got = scan_rows(doc)
    if got is None:
        return None
    for item in doc:
        del item[0]
    return got[0], doc


def check_rows(rows, width):
    """-> -1 when ``rows`` is a list of lists of ``width`` values, each None, a bool, an
    int in int64, a float, a str or bytes (exact types); else the index of the first row
    that is not (the caller looks at it closely: it may still be fine, e.g. a bytearray)."""
    if type(rows) is not list:
        return 0
    lo, hi = INT64_MIN, INT64_MAX
    for i, row in enumerate(rows):
        if type(row) is not list or len(row) != width:
            return i
        for v in row:
            t = type(v)
            if t is str or v is None or t is float or t is bytes or t is bool \
                    or (t is int and lo <= v <= hi):
                continue
            return i
    return -1


def flat_rows(rows, start, stop, width):
    """The values of ``rows[start:stop]`` in one list, row by row (the parameters of one
    multi-row statement). Every row must be a list of ``width`` values: ValueError
    otherwise (the values would not line up with the statement's tuples)."""
    lo = max(start, 0)
    out = []
    extend = out.extend
    for row in rows[lo:max(min(stop, len(rows)), lo)]:
        if type(row) is not list or len(row) != width:
            raise ValueError(f"bulk rows must be lists of {width} values")
        extend(row)
    return out


def rowid_results(first, n, t):
    """The results of ``n`` statements that each inserted one row, rowids ``first``,
    ``first + 1``, ...: ``{"last_insert_id": rowid, "rows_affected": 1, "time": t}``."""
    return [{"last_insert_id": rid, "rows_affected": 1, "time": t}
            for rid in range(first, first + n)]


def render_rowid_run(first, n):
    """rqlite's JSON for those results (no timings): ``[{"last_insert_id":first,
    "rows_affected":1},...]`` as bytes, compact separators; a rowid of 0 is omitted, as
    rqlite omits every zero field (a table whose rowids are negative can give one)."""
    return ("[" + ",".join(['{"last_insert_id":%d,"rows_affected":1}' % rid if rid
                            else '{"rows_affected":1}'
                            for rid in range(first, first + n)]) + "]").encode("ascii")
