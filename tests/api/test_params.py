"""Parsing of query flags and request bodies (no sockets)."""
import pytest

from raftsqlite import errors
from raftsqlite.codec.model import Statement
from raftsqlite.http.params import (QueryParams, parse_duration, parse_join, parse_seed_execute,
                                    parse_statements, split_trailing_form)


@pytest.mark.parametrize("text,seconds", [
    ("0", 0.0), ("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0),
    ("1.5s", 1.5), ("250us", 250e-6), ("10µs", 10e-6), ("3ns", 3e-9), ("+1s", 1.0),
])
def test_go_durations(text, seconds):
    """Durations use Go's syntax, as rqlite's flags do."""
    assert parse_duration(text, "timeout") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "1s2", "-1s", "1.2.3s", "ms", "1e9999h",
                                  "25h"])
def test_bad_durations_are_clear_400s(text):
    """A malformed or negative duration is a BadRequest naming the flag."""
    with pytest.raises(errors.BadRequest, match="timeout"):
        parse_duration(text, "timeout")


def test_presence_only_flags():
    """rqlite flags are presence-only: ?pretty and ?pretty=false both turn it on."""
    p = QueryParams("pretty=false&timings&transaction=0")
    assert p.pretty and p.timings and p.transaction
    assert not p.associative and not p.redirect


def test_levels_and_dependent_flags():
    """level is validated; freshness_strict needs freshness; timeout parsed."""
    p = QueryParams("level=NONE&freshness=1s&freshness_strict&timeout=2s&db_timeout=100ms")
    assert (p.level, p.freshness, p.freshness_strict, p.timeout, p.db_timeout) == \
        ("none", 1.0, True, 2.0, 0.1)
    assert QueryParams("").level == "weak"
    with pytest.raises(errors.BadRequest, match="level"):
        QueryParams("level=eventual")
    with pytest.raises(errors.BadRequest, match="freshness_strict requires freshness"):
        QueryParams("freshness_strict")
    with pytest.raises(errors.BadRequest, match="query parameter not set"):
        QueryParams("q=")


def test_statement_forms():
    """Strings, positional and named parameter arrays mix freely; BLOBs as byte arrays or
    x'..' strings; ints beyond int64 become floats (as rqlite)."""
    body = (b'["CREATE TABLE t(x)", ["INSERT INTO t VALUES(?, ?, ?)", 1, "a", null],'
            b' ["INSERT INTO t VALUES(:a, :b)", {"a": [1, 2, 255], "b": "x\'0aff\'"}],'
            b' ["SELECT ?", 9223372036854775808], ["SELECT ?", true, 1.5]]')
    assert parse_statements(body, 100) == [
        Statement("CREATE TABLE t(x)"),
        Statement("INSERT INTO t VALUES(?, ?, ?)", [1, "a", None]),
        Statement("INSERT INTO t VALUES(:a, :b)", {"a": b"\x01\x02\xff", "b": b"\n\xff"}),
        Statement("SELECT ?", [9.223372036854776e18]),
        Statement("SELECT ?", [True, 1.5]),
    ]


@pytest.mark.parametrize("body,match", [
    (b"", "no statements"), (b"[]", "no statements"), (b"{}", "JSON array"),
    (b"[1]", "string or an array"), (b"[[]]", "empty array"), (b"[[1]]", "SQL must be"),
    (b'[["x", {"a": {"b": 1}}]]', "unsupported type"), (b'[["x", [256]]]', "bytes"),
    (b'[["x", 1, {"a": 1}]]', "cannot be mixed"), (b"[", "invalid JSON"),
])
def test_bad_bodies(body, match):
    """Every malformed body is a BadRequest with a message saying what is wrong."""
    with pytest.raises(errors.BadRequest, match=match):
        parse_statements(body, 100)


def test_statement_limit_is_413():
    """More statements than the limit -> PayloadTooLarge (413), with the limit named."""
    with pytest.raises(errors.PayloadTooLarge, match="limit is 2"):
        parse_statements(b'["a", "b", "c"]', 2)


def test_seed_execute_body_and_curl_form_suffix():
    """The seed's README joins -d '{json}' -d 'auto_route=true' into one body."""
    stmts, flags = parse_seed_execute(
        b'{"query": "INSERT INTO u VALUES(?, ?)", "args": ["456", "Jane"]}&auto_route=true',
        10)
    assert stmts == [Statement("INSERT INTO u VALUES(?, ?)", ["456", "Jane"])]
    assert flags == {"auto_route": "true"}
    assert split_trailing_form(b'{"a": 1}') == (b'{"a": 1}', {})
    with pytest.raises(errors.BadRequest, match="unknown field"):
        parse_seed_execute(b'{"query": "x", "argz": []}', 10)
    with pytest.raises(errors.BadRequest, match="query"):
        parse_seed_execute(b'{"args": []}', 10)


def test_join_forms():
    """Seed form and rqlite's older form both parse; wrong types are refused."""
    assert parse_join(b'{"node_id": "n2", "raft_addr": "h:2", "http_addr": "h:1"}') == \
        ("n2", "h:2", "h:1", True)
    assert parse_join(b'{"id": "n3", "addr": "h:3", "voter": false}') == \
        ("n3", "h:3", "", False)
    with pytest.raises(errors.BadRequest, match="voter"):
        parse_join(b'{"id": "n3", "addr": "h:3", "voter": "no"}')
    with pytest.raises(errors.BadRequest, match="node_id"):
        parse_join(b'{"raft_addr": "h:3"}')


from hypothesis import given, settings
from hypothesis import strategies as st

from raftsqlite.http.params import make_statement

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 65), max_value=2 ** 65),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                     st.sampled_from(["x'00'", " X'ab' ", "x'zz'", "x", "xylophone"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_scalars, max_size=6))
def test_bulk_fast_path_matches_full_path(params):
    """The fast path for ["SQL", scalars...] converts exactly as the full path does."""
    import json
    body = json.dumps([["SELECT 1"] + params]).encode()
    doc = json.loads(body)
    assert parse_statements(body, 10) == [make_statement("SELECT 1", doc[0][1:])]


def test_http_settings_documented_and_validated():
    """Every HTTP setting has help text; a non-positive limit is a ConfigError; node
    config fields (http_<name>, store.max_statements) are picked up."""
    from types import SimpleNamespace

    from raftsqlite.http.backend import HTTPConfig
    assert all(h for _, h in HTTPConfig.help().values())
    with pytest.raises(errors.ConfigError):
        HTTPConfig(max_body_bytes=0)
    cfg = SimpleNamespace(http_max_body_bytes=123, store=SimpleNamespace(max_statements=7),
                          data_dir="/tmp/x")
    s = HTTPConfig.from_node_config(cfg)
    assert (s.max_body_bytes, s.max_statements, s.spool_dir) == (123, 7, "/tmp/x")


_rows_values = st.one_of(_scalars, st.lists(st.integers(0, 255), max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_rows_values, min_size=1, max_size=3), min_size=2, max_size=6),
       st.booleans())
def test_bulk_form_holds_the_same_statements(rows, mixed_texts):
    """Invariant: with ``bulk``, a body of one SQL text is parsed into a BulkStatements
    that stands for exactly the statements the general path gives (same conversions of
    hex strings, huge ints and byte arrays); any other body (texts differ, widths differ)
    parses exactly as without ``bulk``."""
    import json
    from raftsqlite.codec.model import BulkStatements
    body = json.dumps([["INSERT INTO t VALUES(?)" if not (mixed_texts and i == 1) else "X"]
                       + r for i, r in enumerate(rows)]).encode()
    plain = parse_statements(body, 100)
    got = parse_statements(body, 100, bulk=True)
    same_shape = not mixed_texts and len({len(r) for r in rows}) == 1
    if same_shape:
        assert type(got) is BulkStatements and got.sql == "INSERT INTO t VALUES(?)"
        assert list(got) == plain and len(got) == len(plain)
    else:
        assert got == plain


def test_bulk_form_errors_are_the_general_path_errors():
    """A bulk-shaped body with a bad value fails with the general path's message."""
    body = b'[["INSERT INTO t VALUES(?)", 1], ["INSERT INTO t VALUES(?)", {"a": [1.5]}]]'
    with pytest.raises(errors.BadRequest) as plain:
        parse_statements(body, 10)
    with pytest.raises(errors.BadRequest) as bulk:
        parse_statements(body, 10, bulk=True)
    assert str(bulk.value) == str(plain.value)
