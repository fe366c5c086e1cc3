"""The bulk request's hot loops: the compiled module (``raftsqlite._cbulk``) and its twin
(``raftsqlite.codec.bulk``) give the same answers, and those answers mean what their
callers rely on (the parser's conversions, the store's checks, rqlite's JSON)."""
import copy
import json
import os

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from raftsqlite.codec import bulk as PY
from raftsqlite.codec.model import InsertRun

from impls import compiled_or_none

C = compiled_or_none("raftsqlite._cbulk")
IMPLS = [PY] + ([C] if C is not None else [])
SETTINGS = settings(max_examples=200 * int(os.environ.get("RAFTSQLITE_FUZZ_SCALE", "1")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT64 = (-(1 << 63), (1 << 63) - 1)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 65), 2 ** 65), st.floats(allow_nan=False),
    st.text(max_size=6), st.sampled_from(["x'00'", "X'ab'", " x'0a'", "\tq", "\n", "\r",
                                          "xylophone", "", "é", "\ud7ff"]),
    st.binary(max_size=3), st.integers(INT64[0] - 2, INT64[0] + 2),
    st.integers(INT64[1] - 2, INT64[1] + 2))
_json_scalars = scalars.filter(lambda v: not isinstance(v, bytes) and v == v and
                              v not in (float("inf"), float("-inf")))
# mostly scalars, so that whole documents of plain values come up often
json_values = st.one_of(*[_json_scalars] * 8, st.lists(st.integers(0, 255), max_size=2),
                        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
SQL = "INSERT INTO t(a, b) VALUES(?, ?)"
SCANNED = []    # whether each generated body took the compiled path (checked below)


@st.composite
def docs(draw):
    """Bodies as orjson parses them: mostly the bulk shape, with every kind of defect."""
    width = draw(st.integers(1, 3))
    n = draw(st.integers(1, 6))
    items = [[SQL] + [draw(json_values) for _ in range(width)] for _ in range(n)]
    k = draw(st.integers(0, 9))
    i = draw(st.integers(0, n - 1))
    if k == 0:
        items[i][0] = "INSERT INTO u VALUES(?)"
    elif k == 1:
        items[i] = items[i][:-1] or ["x"]
    elif k == 2:
        items[i] = SQL
    elif k == 3:
        items[i][0] = 7
    return orjson.loads(json.dumps(items))     # orjson's own types, as params.py sees them


@SETTINGS
@given(docs())
def test_scan_rows_twins_agree_and_mean_the_general_parse(doc):
    """Invariant: both implementations give the same (sql, rows) or None; when not None,
    the rows are exactly the parameters the general parser gives each statement (no
    value needed a conversion), and the input is left untouched."""
    from raftsqlite.http.params import parse_statements
    before = json.dumps(doc)
    outs = [m.scan_rows(doc) for m in IMPLS]
    assert all(o == outs[0] for o in outs)
    assert json.dumps(doc) == before
    got = outs[0]
    SCANNED.append(got is not None)
    if got is not None:
        sql, rows = got
        assert all(type(r) is list for r in rows)
        plain = parse_statements(json.dumps(doc).encode(), 100)
        assert [(s.sql, s.params) for s in plain] == [(sql, r) for r in rows]


@SETTINGS
@given(docs())
def test_take_rows_twins_agree_with_scan_rows(doc):
    """Invariant: take_rows gives scan_rows' answer in both implementations; when it
    accepts, the rows it returns are the body's own items, each without its SQL text
    (nothing copied), and when it refuses, the body is left exactly as it was."""
    from raftsqlite.codec import bulk as pure
    want = pure.scan_rows(copy.deepcopy(doc))
    for m in IMPLS:
        d = copy.deepcopy(doc)
        before = json.dumps(d)
        got = m.take_rows(d)
        assert got == want
        if got is None:
            assert json.dumps(d) == before
        else:
            assert got[1] is d and all(type(r) is list for r in d)


def test_scan_rows_property_was_not_vacuous():
    """The property above saw both outcomes (runs after it in file order)."""
    if SCANNED:
        assert any(SCANNED) and not all(SCANNED)


@SETTINGS
@given(st.lists(st.one_of(st.lists(scalars, max_size=3), st.tuples(scalars), scalars),
                max_size=5), st.integers(-1, 3))
def test_check_rows_twins_agree(rows, width):
    """Invariant: both say -1 (all rows fine) or the same first row to look at, and -1
    only when every row is a list of ``width`` values the codec takes as they are."""
    outs = [m.check_rows(rows, width) for m in IMPLS]
    assert all(o == outs[0] for o in outs)
    if outs[0] == -1:
        for r in rows:
            assert type(r) is list and len(r) == width
            for v in r:
                assert v is None or type(v) in (bool, float, str, bytes) or (
                    type(v) is int and INT64[0] <= v <= INT64[1])


@SETTINGS
@given(st.lists(st.one_of(st.lists(scalars, min_size=2, max_size=2), st.lists(scalars, max_size=3),
                          st.tuples(scalars, scalars)), max_size=6),
       st.integers(-2, 8), st.integers(-2, 8))
def test_flat_rows_twins_agree(rows, start, stop):
    """Invariant: both give the values of rows[start:stop] (bounds clamped) in row order,
    or both refuse with ValueError when a row in that range is not a list of 2."""
    outs = []
    for m in IMPLS:
        try:
            outs.append(m.flat_rows(rows, start, stop, 2))
        except ValueError:
            outs.append("refused")
    assert all(o == outs[0] for o in outs)
    part = rows[max(start, 0):max(min(stop, len(rows)), max(start, 0))]
    if all(type(r) is list and len(r) == 2 for r in part):
        assert outs[0] == [v for r in part for v in r]
    else:
        assert outs[0] == "refused"


@SETTINGS
@given(st.one_of(st.integers(INT64[0], INT64[1] - 100), st.integers(-45, 5)),
       st.integers(0, 40), st.floats(0, 1))
def test_rowid_results_and_their_json_agree(first, n, t):
    """Invariant: the results of a run of n single-row inserts, and rqlite's JSON for them
    as one compiled loop writes it, equal what the general renderer makes of the dicts."""
    from raftsqlite.http import wire
    res = [m.rowid_results(first, n, t) for m in IMPLS]
    assert all(r == res[0] for r in res)
    assert res[0] == [{"last_insert_id": first + k, "rows_affected": 1, "time": t}
                      for k in range(n)]
    raws = [m.render_rowid_run(first, n) for m in IMPLS]
    assert all(r == raws[0] for r in raws)
    generic = [{"last_insert_id": r["last_insert_id"], "rows_affected": 1} if
               r["last_insert_id"] else {"rows_affected": 1} for r in res[0]]
    assert orjson.loads(raws[0]) == generic
    assert raws[0] == orjson.dumps(wire.render_results(res[0]))


def test_insert_run_renders_as_its_dicts_only_while_they_match():
    """Invariant: a response for an InsertRun is byte-identical to the response for the
    same dicts in a plain list; a mark that no longer matches the contents (or timings,
    associative) falls back to reading each dict."""
    from types import SimpleNamespace

    from raftsqlite.http import wire
    p = SimpleNamespace(timings=False, associative=False, raft_index=False, pretty=False)
    for first in (41, -2):      # -2: the run crosses rowid 0, which rqlite omits
        dicts = PY.rowid_results(first, 5, 0.001)
        run = InsertRun(dicts)
        run.first_rowid = first
        assert type(wire.render_results(run)) is wire.RawJSON
        for pretty in (False, True):
            assert wire.dumps(wire.rqlite_body({"results": run}, p), pretty=pretty) == \
                wire.dumps(wire.rqlite_body({"results": list(dicts)}, p), pretty=pretty)
    dicts = PY.rowid_results(41, 5, 0.001)
    run = InsertRun(dicts)
    run.first_rowid = 41
    stale = InsertRun(dicts[:-1] + [{"error": "x", "time": 0.0}])
    stale.first_rowid = 41
    assert b'"error":"x"' in wire.dumps(wire.rqlite_body({"results": stale}, p))
    p.timings = True
    assert b'"time"' in wire.dumps(wire.rqlite_body({"results": run}, p))
    # the json module's fallback (a lone surrogate elsewhere) still renders it
    assert json.loads(wire.dumps({"results": wire.RawJSON(b"[1]"), "e": "\ud800"})) == \
        {"results": [1], "e": "\ud800"}
