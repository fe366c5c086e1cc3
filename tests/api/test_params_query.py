"""The query-string parser of QueryParams (params.parse_query, the class defaults) gives
exactly what the parse_qsl-based parser before it gave: the same values, or the same
error, for any query string."""
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings, strategies as st

from raftsqlite import errors
from raftsqlite.http.params import (LEVELS, MAX_REQUEST_ID, PRESENCE_FLAGS, QueryParams,
                                    parse_duration, parse_query)

ATTRS = PRESENCE_FLAGS + ("level", "freshness", "timeout", "db_timeout", "q", "ver", "fmt",
                          "tables", "key", "retries", "auto_route", "shard_id", "raw",
                          "linearizable_timeout", "request_id")


class Reference:
    """The previous QueryParams.__init__, verbatim in behaviour (parse_qsl, every
    attribute set on every instance)."""

    def __init__(self, query_string=""):
        raw = {}
        if query_string:
            try:
                pairs = parse_qsl(query_string, keep_blank_values=True,
                                  max_num_fields=256, errors="strict")
            except (ValueError, UnicodeDecodeError) as e:
                raise errors.BadRequest(f"malformed query string: {e}") from None
            for k, v in pairs:
                raw.setdefault(k, v)
        self.raw = raw
        for f in PRESENCE_FLAGS:
            setattr(self, f, f in raw)
        level = raw.get("level", "weak").strip().lower() or "weak"
        if level not in LEVELS:
            raise errors.BadRequest(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        self.level = level
        for name in ("freshness", "timeout", "db_timeout", "linearizable_timeout"):
            v = raw.get(name)
            setattr(self, name, None if v is None else parse_duration(v, name))
        if self.freshness_strict and self.freshness is None:
            raise errors.BadRequest("freshness_strict requires freshness")
        if self.timeout == 0:
            self.timeout = None
        q = raw.get("q")
        if q is not None and q.strip() == "":
            raise errors.BadRequest("query parameter not set")
        self.q = q
        self.ver = raw.get("ver", "")
        fmt = raw.get("fmt", "").strip().lower()
        if fmt not in ("", "binary", "sql", "sqlite"):
            raise errors.BadRequest(f"fmt must be binary or sql, got {fmt!r}")
        self.fmt = "sql" if fmt == "sql" else "binary"
        tables = [t.strip() for t in raw.get("tables", "").split(",") if t.strip()]
        self.tables = tables or None
        self.key = raw.get("key", "")
        r = raw.get("retries")
        if r is not None:
            try:
                self.retries = int(r)
            except ValueError:
                raise errors.BadRequest(f"retries is not a valid integer: {r!r}") from None
        else:
            self.retries = 0
        ar = raw.get("auto_route")
        self.auto_route = ar is not None and ar.strip().lower() not in ("false", "0", "no", "off")
        sid = raw.get("shard_id")
        self.shard_id = sid.strip() if sid and sid.strip() else None
        self.request_id = None
        rid = raw.get("request_id")
        if rid is not None and rid.strip():
            rid = rid.strip()
            if len(rid.encode("utf-8", "surrogatepass")) > MAX_REQUEST_ID:
                raise errors.BadRequest(
                    f"request_id is too long (at most {MAX_REQUEST_ID} bytes)")
            self.request_id = rid


KEYS = list(PRESENCE_FLAGS) + ["level", "freshness", "timeout", "db_timeout", "q", "ver",
                               "fmt", "tables", "key", "retries", "auto_route", "shard_id",
                               "request_id", "linearizable_timeout", "other", "lev%65l", ""]
VALUE_BITS = ["", "none", "WEAK", "auto", "bogus", "1s", "500ms", "0", "-1s", "x", "sql",
              "binary", "a,b, ,c", "7", "true", "off", "SELECT%20*%20FROM%20t", "%3D", "%",
              "%zz", "%c3%a9", "%c3", "%E2%82%AC", "+", "a+b", "%2B", "%25", "%20", "é", "=",
              "%00", "%7f%80"]


def _compare(qs):
    try:
        ref = Reference(qs)
    except errors.BadRequest as e:
        with pytest.raises(errors.BadRequest) as got:
            QueryParams(qs)
        assert str(got.value) == str(e)
        return
    new = QueryParams(qs)
    for a in ATTRS:
        assert getattr(new, a) == getattr(ref, a), (qs, a)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.booleans(),
                          st.lists(st.sampled_from(VALUE_BITS), max_size=3)), max_size=6),
       st.sampled_from(["&", "&&", "&=&"]))
def test_same_as_the_parse_qsl_parser(items, sep):
    """Invariant: for query strings made of known keys, odd values, escapes (valid,
    invalid, non-ASCII, incomplete UTF-8) and odd separators, every attribute (or the
    error message) equals the previous parser's."""
    qs = sep.join(k + ("=" + "".join(v) if eq or v else "") for k, eq, v in items)
    _compare(qs)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab=&%+2Fc3e9zé;", max_size=40))
def test_parse_query_is_parse_qsl(qs):
    """Invariant: parse_query returns parse_qsl's first value per key, or raises the
    same exception type and message."""
    try:
        pairs = parse_qsl(qs, keep_blank_values=True, max_num_fields=256, errors="strict")
    except (ValueError, UnicodeDecodeError) as e:
        with pytest.raises(type(e)) as got:
            parse_query(qs)
        assert str(got.value) == str(e)
        return
    want = {}
    for k, v in pairs:
        want.setdefault(k, v)
    assert parse_query(qs) == want


@pytest.mark.parametrize("n", [255, 256, 257])
def test_field_limit(n):
    """Invariant: the 256-field limit is parse_qsl's (256 fields pass, 257 do not)."""
    _compare("&".join(["a=1"] * n))


def test_defaults_are_not_shared():
    """Invariant: setting a flag on one instance (the handlers' set_request_id,
    apply_form_flags) never changes another instance or the defaults."""
    a, b = QueryParams(""), QueryParams("")
    a.set_request_id("r1")
    a.apply_form_flags({"auto_route": "true", "shard_id": "s1"})
    assert (b.request_id, b.auto_route, b.shard_id) == (None, False, None)
    assert QueryParams("").request_id is None
