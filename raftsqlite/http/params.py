"""Every request is parsed here, once, into typed objects; handlers never touch raw
query strings or bodies. Anything malformed becomes a ``BadRequest`` (400) or a
``PayloadTooLarge`` (413) with a message that says what was wrong.

Query flags follow rqlite: most are presence-only (``?pretty`` and ``?pretty=false`` both
turn pretty-printing on, as in rqlite), durations use Go's syntax (``500ms``, ``2s``,
``1m30s``). We are stricter than rqlite in one way: an unknown ``level`` is refused
instead of silently meaning ``weak``.
"""
import re
from urllib.parse import parse_qsl

import orjson

from raftsqlite import errors
from raftsqlite.codec import take_rows
from raftsqlite.codec.model import BulkStatements, Statement

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

_HEX_START = ("x", "X", " ", "\t", "\n", "\r")

LEVELS = ("none", "weak", "linearizable", "strong", "auto")

# Flags whose presence alone turns them on (rqlite's HasKey semantics).
PRESENCE_FLAGS = (
    "pretty", "timings", "associative", "blob_array", "transaction", "raft_index",
    "redirect", "noleader", "queue", "wait", "nonvoters", "compress", "sync",
    "freshness_strict", "qualify_columns", "norwrandom", "norwtime", "vacuum",
)

MAX_DURATION = 86400.0
MAX_REQUEST_ID = 256
REQUEST_ID_HEADER = "x-request-id"
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
         "m": 60.0, "h": 3600.0}


def parse_duration(text, name):
    """Go ``time.ParseDuration`` syntax -> seconds (float). Negative durations are refused:
    none of our timeouts means anything below zero."""
    s = text.strip()
    if s in ("0", "+0"):
        return 0.0
    if s.startswith("-"):
        raise errors.BadRequest(f"{name} must not be negative, got {text!r}")
    if s.startswith("+"):
        s = s[1:]
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise errors.BadRequest(f"{name} is not a valid duration: {text!r} "
                                    f"(use e.g. 500ms, 2s, 1m30s)")
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not s:
        raise errors.BadRequest(f"{name} is not a valid duration: {text!r}")
    if not total <= MAX_DURATION:  # also refuses inf and nan
        raise errors.BadRequest(f"{name} is too long: {text!r} (at most 24h)")
    return total


def _unquote_ascii(s):
    """``urllib.parse.unquote(s.replace("+", " "), errors="strict")`` for an ASCII ``s``
    (what ``parse_qsl`` does to each name and value), without its regular expression."""
    if "+" in s:
        s = s.replace("+", " ")
    if "%" not in s:
        return s
    parts = s.split("%")
    out = [parts[0]]
    get = _HEXCHR.get
    for part in parts[1:]:
        c = get(part[:2])
        if c is None:
            return _unquote_bytes(parts)   # a byte >= 0x80 (UTF-8), or a bare %
        out.append(c)
        out.append(part[2:])
    return "".join(out)


def _unquote_bytes(parts):
    out = [parts[0].encode("ascii")]
    for part in parts[1:]:
        b = _HEXBYTE.get(part[:2])
        if b is None:
            out.append(b"%" + part.encode("ascii"))
        else:
            out.append(b)
            out.append(part[2:].encode("ascii"))
    return b"".join(out).decode("utf-8", "strict")


_HEX = "0123456789abcdefABCDEF"
_HEXBYTE = {a + b: bytes.fromhex(a + b) for a in _HEX for b in _HEX}
_HEXCHR = {k: chr(v[0]) for k, v in _HEXBYTE.items() if v[0] < 0x80}


def parse_query(query_string):
    """The first value of each key, as ``parse_qsl(keep_blank_values=True,
    max_num_fields=256, errors="strict")`` gives them (a ``ValueError`` or
    ``UnicodeDecodeError`` as it raises them). Query strings that reach us are ASCII
    (HTTP servers refuse others), and for those the split is done here directly."""
    if not query_string.isascii():
        pairs = parse_qsl(query_string, keep_blank_values=True, max_num_fields=256,
                          errors="strict")
        raw = {}
        for k, v in pairs:
            raw.setdefault(k, v)
        return raw
    if query_string.count("&") >= 256:
        raise ValueError("Max number of fields exceeded")
    raw = {}
    for part in query_string.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        k = _unquote_ascii(k)
        v = _unquote_ascii(v)
        if k not in raw:
            raw[k] = v
    return raw


class QueryParams:
    """The query-string flags of one request, typed. Unknown keys are ignored, as
    rqlite ignores them (clients add their own).

    What an absent key means is a class attribute below, so a request sets only what it
    names (most name nothing, or one or two flags)."""

    level = "weak"
    freshness = timeout = db_timeout = linearizable_timeout = None
    q = None
    ver = ""
    fmt = "binary"
    tables = None
    key = ""
    retries = 0
    auto_route = False
    shard_id = None
    request_id = None
    # set by a handler that renders the write results with wire.render_results and
    # nothing else (Store.execute's lazy_results); never from the query string
    lazy_results = False

    def __init__(self, query_string=""):
        self.query_string = query_string
        if not query_string:
            self.raw = {}
            return
        try:
            raw = parse_query(query_string)
        except (ValueError, UnicodeDecodeError) as e:
            raise errors.BadRequest(f"malformed query string: {e}") from None
        self.raw = raw
        for k in raw:
            if k in _PRESENCE:
                setattr(self, k, True)

        level = raw.get("level")
        if level is not None:
            level = level.strip().lower() or "weak"
            if level not in LEVELS:
                raise errors.BadRequest(
                    f"level must be one of {', '.join(LEVELS)}, got {level!r}")
            self.level = level

        for name in _DURATIONS:
            v = raw.get(name)
            if v is not None:
                setattr(self, name, parse_duration(v, name))
        if self.freshness_strict and self.freshness is None:
            raise errors.BadRequest("freshness_strict requires freshness")
        if self.timeout == 0:
            self.timeout = None

        q = raw.get("q")
        if q is not None:
            if q.strip() == "":
                raise errors.BadRequest("query parameter not set")
            self.q = q
        if "ver" in raw:
            self.ver = raw["ver"]
        fmt = raw.get("fmt")
        if fmt is not None:
            fmt = fmt.strip().lower()
            if fmt not in ("", "binary", "sql", "sqlite"):
                raise errors.BadRequest(f"fmt must be binary or sql, got {fmt!r}")
            self.fmt = "sql" if fmt == "sql" else "binary"
        t = raw.get("tables")
        if t is not None:
            tables = [x.strip() for x in t.split(",") if x.strip()]
            self.tables = tables or None
        if "key" in raw:
            self.key = raw["key"]
        r = raw.get("retries")
        if r is not None:
            try:
                self.retries = int(r)
            except ValueError:
                raise errors.BadRequest(f"retries is not a valid integer: {r!r}") from None
        # The seed's API says auto_route=true; a value is meaningful there.
        ar = raw.get("auto_route")
        if ar is not None:
            self.auto_route = ar.strip().lower() not in ("false", "0", "no", "off")
        sid = raw.get("shard_id")
        if sid and sid.strip():
            self.shard_id = sid.strip()
        self.set_request_id(raw.get("request_id"))

    def set_request_id(self, rid):
        """A client's id for a write (``request_id`` query parameter or ``X-Request-Id``
        header; the parameter wins): a retried write with the same id is applied once and
        answers with its first result. 1-256 bytes of UTF-8."""
        if rid is None or self.request_id is not None:
            return
        rid = rid.strip()
        if not rid:
            return
        if len(rid.encode("utf-8", "surrogatepass")) > MAX_REQUEST_ID:
            raise errors.BadRequest(f"request_id is too long (at most {MAX_REQUEST_ID} bytes)")
        self.request_id = rid

    def apply_form_flags(self, flags):
        """Flags that came in the body's trailing form part (the seed's README)."""
        ar = flags.get("auto_route")
        if ar is not None:
            self.auto_route = ar.strip().lower() not in ("false", "0", "no", "off")
        sid = flags.get("shard_id")
        if sid and sid.strip():
            self.shard_id = sid.strip()

    def _duration(self, name):
        v = self.raw.get(name)
        if v is None:
            return None
        return parse_duration(v, name)


for _f in PRESENCE_FLAGS:
    setattr(QueryParams, _f, False)
_PRESENCE = frozenset(PRESENCE_FLAGS)
# parsed in this order (the first bad one is the one reported)
_DURATIONS = ("freshness", "timeout", "db_timeout", "linearizable_timeout")


# ---- statements -----------------------------------------------------------------------

def _value(v, where):
    """One JSON parameter value -> a Python value the codec carries (None, int64, float,
    str, bytes, bool)."""
    t = type(v)
    if t is str:
        b = _parse_hex_literal(v)
        return v if b is None else b
    if t is int:
        if INT64_MIN <= v <= INT64_MAX:
            return v
        return float(v)  # rqlite: a number that is not an int64 is a float64
    if v is None or t is float or t is bool:
        return v
    if t is list:
        # A byte array: every element an integer 0..255.
        for e in v:
            if type(e) is not int or not 0 <= e <= 255:
                raise errors.BadRequest(
                    f"unsupported type in {where}: arrays must hold bytes (integers 0-255)")
        return bytes(v)
    raise errors.BadRequest(f"unsupported type {t.__name__} in {where}")


def _parse_hex_literal(s):
    """``x'0a0b'`` (rqlite's BLOB-as-string form) -> bytes; anything else -> None (a
    plain string)."""
    t = s.strip()
    if len(t) < 3 or t[0] not in "xX" or t[1] != "'" or t[-1] != "'":
        return None
    try:
        return bytes.fromhex(t[2:-1]) if len(t) % 2 == 1 else None
    except ValueError:
        return None


def make_statement(sql, params, where="statement"):
    """SQL text plus a list of JSON values (positional, or dicts of named values) ->
    ``Statement``. Positional and named parameters cannot be mixed in one statement."""
    if type(sql) is not str:
        raise errors.BadRequest(f"{where}: the SQL must be a string")
    if not params:
        return Statement(sql, None)
    positional, named = [], None
    for p in params:
        if type(p) is dict:
            if named is None:
                named = {}
            for k, v in p.items():
                named[k] = _value(v, f"{where} parameter {k!r}")
        else:
            positional.append(_value(p, f"{where} parameter {len(positional) + 1}"))
    if named is not None and positional:
        raise errors.BadRequest(f"{where}: positional and named parameters cannot be mixed")
    return Statement(sql, named if named is not None else positional)


def _loads(body):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise errors.BadRequest(f"invalid JSON body: {e}") from None


def parse_statements(body, max_statements, bulk=False):
    """rqlite's request body: a JSON array whose items are ``"SQL"``,
    ``["SQL", p1, p2, ...]`` or ``["SQL", {"name": v}]``, mixed freely. With ``bulk``
    (writes), a body whose items all run one SQL text with positional parameters comes
    back as one ``BulkStatements`` (the same statements, see codec.model)."""
    if not body or not body.strip():
        raise errors.BadRequest("no statements: the body is empty")
    doc = _loads(body)
    if type(doc) is not list:
        raise errors.BadRequest("invalid request: the body must be a JSON array of statements")
    if not doc:
        raise errors.BadRequest("no statements")
    if len(doc) > max_statements:
        raise errors.PayloadTooLarge(
            f"too many statements: {len(doc)} in one request, the limit is {max_statements}")
    if bulk and len(doc) > 1:
        # the common shape in one compiled pass, the parsed items becoming the rows
        # (doc is ours alone); values needing a conversion (hex strings, byte arrays,
        # huge ints) or a refusal go through _bulk_form, with doc untouched
        scanned = take_rows(doc)
        if scanned is not None:
            return BulkStatements(*scanned)
        b = _bulk_form(doc)
        if b is not None:
            return b
    out = []
    append = out.append
    for i, item in enumerate(doc):
        t = type(item)
        if t is str:
            append(Statement(item, None))
        elif t is list:
            if not item:
                raise errors.BadRequest(f"invalid request: statement {i + 1} is an empty array")
            if len(item) == 1:
                append(make_statement(item[0], (), f"statement {i + 1}"))
                continue
            # Fast path for the common bulk form ["SQL", scalar, scalar, ...]; anything
            # unusual (a dict, an array, a hex string, a huge int) takes the full path.
            sql = item[0]
            params = item[1:]
            if type(sql) is str:
                for v in params:
                    tv = type(v)
                    if tv is str:
                        if v[:1] in _HEX_START:
                            break
                    elif tv is int:
                        if not INT64_MIN <= v <= INT64_MAX:
                            break
                    elif v is not None and tv is not float and tv is not bool:
                        break
                else:
                    append(Statement(sql, params))
                    continue
            append(make_statement(sql, params, f"statement {i + 1}"))
        else:
            raise errors.BadRequest(
                f"invalid request: statement {i + 1} must be a string or an array")
    return out


def _bulk_form(doc):
    """``BulkStatements`` for a body whose items are all ``["SQL", p1, ...]`` with one
    text and one number of positional parameters, else None (then the general path
    parses it, and words any error). Values get the same conversions as in
    ``make_statement``."""
    # Only bodies take_rows (the compiled pass) turned down get here: a hex string, a
    # huge int or a byte array to convert, or something to refuse. Rare, so each value
    # simply takes make_statement's conversion.
    first = doc[0]
    if type(first) is not list or len(first) < 2:
        return None
    width = len(first)
    sql = first[0]
    if type(sql) is not str:
        return None
    rows = []
    append = rows.append
    for item in doc:
        if type(item) is not list or len(item) != width or item[0] != sql:
            return None
        try:
            append([_value(v, "") for v in item[1:]])
        except errors.BadRequest:
            return None   # the general path words the error
    return BulkStatements(sql, rows)


def plain_statement(body):
    """``Content-Type: text/plain``: the body is one SQL text."""
    try:
        sql = body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.BadRequest("the SQL body is not valid UTF-8") from None
    if not sql.strip():
        raise errors.BadRequest("no statements: the body is empty")
    return [Statement(sql, None)]


def request_statements(request, max_statements, *, allow_q=False, q=None, bulk=False):
    """Statements of a /db/* request from whichever form it used (``bulk``: see
    ``parse_statements``)."""
    ctype = request.headers.get("content-type", "")
    body = request.body
    if allow_q and request.method == "GET":
        if q is None:
            raise errors.BadRequest("query parameter not set: use ?q=SELECT...")
        return [Statement(q, None)]
    if ctype.startswith("text/plain"):
        return plain_statement(body)
    if allow_q and q is not None and not body:
        return [Statement(q, None)]
    return parse_statements(body, max_statements, bulk)


# ---- the seed's API -------------------------------------------------------------------

SEED_EXECUTE_FIELDS = frozenset(("query", "args"))


def split_trailing_form(body):
    """The seed's README sends ``-d '{json}' -d 'auto_route=true'``; curl joins the two
    with ``&``, giving ``{json}&auto_route=true``. Split that back into the JSON and the
    form flags, so the README's command works verbatim."""
    b = body.rstrip()
    if not b or b[-1:] in (b"}", b"]"):
        return body, {}
    i = b.rfind(b"}")
    if i < 0 or b[i + 1:i + 2] != b"&":
        return body, {}
    try:
        flags = dict(parse_qsl(b[i + 2:].decode("utf-8"), keep_blank_values=True,
                               max_num_fields=32, errors="strict"))
    except (ValueError, UnicodeDecodeError):
        return body, {}
    return b[:i + 1], flags


def parse_seed_execute(body, max_statements):
    """The seed's ``POST /execute`` body ``{"query": "SQL", "args": [...]}`` -> (statements,
    extra flags from a trailing form part)."""
    json_part, flags = split_trailing_form(body or b"")
    if not json_part or not json_part.strip():
        raise errors.BadRequest('empty body: send {"query": "SQL", "args": [...]}')
    doc = _loads(json_part)
    if type(doc) is not dict:
        raise errors.BadRequest('the body must be a JSON object {"query": "SQL", "args": [...]}')
    unknown = set(doc) - SEED_EXECUTE_FIELDS
    if unknown:
        raise errors.BadRequest(f"unknown field(s): {', '.join(sorted(unknown))} "
                                f"(expected query and args)")
    sql = doc.get("query")
    if type(sql) is not str or not sql.strip():
        raise errors.BadRequest('"query" must be a non-empty SQL string')
    args = doc.get("args")
    if args is None:
        params = []
    elif type(args) is list:
        if len(args) > 1_000_000:
            raise errors.PayloadTooLarge("too many args")
        params = args
    elif type(args) is dict:
        params = [args]
    else:
        raise errors.BadRequest('"args" must be an array (positional) or an object (named)')
    return [make_statement(sql, params, "query")], flags


# ---- cluster endpoints ----------------------------------------------------------------

def parse_json_object(body, what, *, required=(), optional=(), allow_empty=False):
    """A small JSON object body with known fields; unknown fields are refused."""
    if not body or not body.strip():
        if allow_empty:
            return {}
        raise errors.BadRequest(f"{what}: empty body, expected a JSON object")
    doc = _loads(body)
    if type(doc) is not dict:
        raise errors.BadRequest(f"{what}: the body must be a JSON object")
    allowed = set(required) | set(optional)
    unknown = set(doc) - allowed
    if unknown:
        raise errors.BadRequest(f"{what}: unknown field(s) {', '.join(sorted(unknown))}; "
                                f"expected {', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in doc]
    if missing:
        raise errors.BadRequest(f"{what}: missing field(s) {', '.join(missing)}")
    return doc


def parse_join(body):
    """Seed form ``{"node_id", "raft_addr", "http_addr", "voter"}``; rqlite's older form
    ``{"id", "addr", "voter"}`` is accepted too."""
    doc = parse_json_object(body, "join", optional=(
        "node_id", "id", "raft_addr", "addr", "http_addr", "api_addr", "voter"))
    node_id = doc.get("node_id", doc.get("id"))
    raft_addr = doc.get("raft_addr", doc.get("addr"))
    http_addr = doc.get("http_addr", doc.get("api_addr", ""))
    voter = doc.get("voter", True)
    for name, v in (("node_id", node_id), ("raft_addr", raft_addr)):
        if type(v) is not str or not v.strip():
            raise errors.BadRequest(f"join: {name} must be a non-empty string")
    if type(http_addr) is not str:
        raise errors.BadRequest("join: http_addr must be a string")
    if type(voter) is not bool:
        raise errors.BadRequest("join: voter must be true or false")
    return node_id.strip(), raft_addr.strip(), http_addr.strip(), voter


def parse_remove(body):
    doc = parse_json_object(body, "remove", required=("id",))
    node_id = doc["id"]
    if type(node_id) is not str or not node_id.strip():
        raise errors.BadRequest("remove: id must be a non-empty string")
    return node_id.strip()


def parse_leader_post(body):
    doc = parse_json_object(body, "leader", optional=("id",), allow_empty=True)
    to = doc.get("id")
    if to is not None and (type(to) is not str or not to.strip()):
        raise errors.BadRequest("leader: id must be a non-empty string")
    return to.strip() if to else None
