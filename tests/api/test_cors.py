"""-http-allow-origin (http/cors.py): rqlite's CORS headers on every response of both HTTP
lanes, OPTIONS preflight answered 200 before routing, and nothing at all when off."""
import re

import pytest

from raftsqlite.http.backend import HTTPConfig
from raftsqlite.http.cors import Cors
from tests.api.fakes import Cluster, FakeNode, FakeStore
from tests.api.test_fastpath import _exchange, _fast_count, _get, _norm, _request

ORIGIN = "https://app.example.com"
EXPECTED = {"access-control-allow-origin": ORIGIN,
            "access-control-allow-methods": "OPTIONS, GET, POST",
            "access-control-allow-headers": "Content-Type"}


def _node():
    cl = Cluster()
    store = FakeStore(cl, "node1")
    cl.leader_id = "node1"
    return store, FakeNode(store)


@pytest.fixture
def cors_on(serve):
    store, node = _node()
    s = serve(node, settings=HTTPConfig(allow_origin=ORIGIN))
    store.member.http_addr = s.addr
    return s


@pytest.fixture
def cors_off(serve):
    store, node = _node()
    s = serve(node)
    store.member.http_addr = s.addr
    return s


def headers(resp):
    head = resp.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head)}


def status(resp):
    return int(resp.split(b" ", 2)[1])


def cors_of(resp):
    return {k: v for k, v in headers(resp).items() if k.startswith("access-control-")}


WRITE = _request(b"/db/execute", b'[["CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY)"]]')
READ = _get(b"/db/query?q=SELECT%201")


@pytest.mark.parametrize("req", [WRITE[0] + WRITE[1], READ], ids=["execute", "query"])
def test_both_lanes_send_rqlites_headers(cors_on, req):
    """The fast lane and Sanic send exactly rqlite's CORS headers, the same bytes."""
    n0 = _fast_count(cors_on)
    fast = _exchange(cors_on.port, [req])[0]
    assert _fast_count(cors_on) == n0 + 1
    slow = _exchange(cors_on.port, [req[:9], req[9:]])[0]
    assert _fast_count(cors_on) == n0 + 1          # the split one went to Sanic
    assert cors_of(fast) == cors_of(slow) == EXPECTED
    assert _norm(fast) == _norm(slow)
    assert status(fast) == 200


def test_errors_and_other_routes_carry_them(cors_on):
    """Error answers (fast lane 400, Sanic 404) and Sanic-only routes carry them too."""
    bad = _exchange(cors_on.port, [b"".join(_request(b"/db/execute", b"[[1"))])[0]
    assert status(bad) == 400 and cors_of(bad) == EXPECTED
    for path in (b"/status", b"/nope", b"/readyz"):
        r = _exchange(cors_on.port, [_get(path)])[0]
        assert cors_of(r) == EXPECTED, (path, r[:300])


@pytest.mark.parametrize("path", [b"/db/execute", b"/db/query", b"/status", b"/nope"])
def test_options_preflight_is_200_empty(cors_on, path):
    """OPTIONS (a browser's preflight) on any path: 200, empty body, the headers."""
    r = _exchange(cors_on.port, [b"OPTIONS %s HTTP/1.1\r\nHost: t\r\nOrigin: %s\r\n"
                                 b"Access-Control-Request-Method: POST\r\n\r\n"
                                 % (path, ORIGIN.encode())])[0]
    assert status(r) == 200 and r.split(b"\r\n\r\n", 1)[1] == b""
    assert cors_of(r) == EXPECTED


def test_status_shows_allow_origin(cors_on):
    """/status says which origin is allowed (rqlite: http.allow_origin)."""
    assert cors_on.http.get("/status").json()["http"]["allow_origin"] == ORIGIN


def test_off_sends_nothing_and_options_is_unchanged(cors_off):
    """Without the flag no Access-Control-* header appears on either lane, and OPTIONS
    is still refused as before (405)."""
    for req in (WRITE[0] + WRITE[1], READ, _get(b"/status")):
        for parts in ([req], [req[:9], req[9:]]):
            r = _exchange(cors_off.port, parts)[0]
            assert not re.search(rb"(?im)^access-control-", r), r[:300]
    r = _exchange(cors_off.port, [b"OPTIONS /db/execute HTTP/1.1\r\nHost: t\r\n\r\n"])[0]
    assert status(r) == 405 and not cors_of(r)
    assert "allow_origin" not in cors_off.http.get("/status").json()["http"]
    assert cors_off.app.ctx.cors is None


def test_with_auth_credentials_are_allowed():
    """With -auth, rqlite also allows the Authorization header and credentials."""
    c = Cors(ORIGIN, auth=True)
    assert c.headers["Access-Control-Allow-Headers"] == "Content-Type, Authorization"
    assert c.headers["Access-Control-Allow-Credentials"] == "true"
    assert b"Access-Control-Allow-Credentials: true\r\n" in c.lines


def test_fast_lane_prerendered_answer_gets_the_same_headers(cors_on):
    """A handler's pre-rendered answer (fastpath.json_ok bytes) and the HTTPResponse it
    stands for leave the CORS protocol as the same bytes, with the headers where Sanic
    puts them (right after the status line)."""
    from sanic.response import HTTPResponse
    from raftsqlite.http.fastpath import CorsFastHttpProtocol, json_ok
    from raftsqlite.http.wire import JSON_CT

    class Tr:
        def __init__(self):
            self.out = []

        def is_closing(self):
            return False

        def write(self, b):
            self.out.append(bytes(b))

    def written(res):
        p = CorsFastHttpProtocol.__new__(CorsFastHttpProtocol)
        p.app, p.transport, p.state = cors_on.app, Tr(), {}
        p._write_response(res)
        return p.transport.out[0]

    body = b'{"results":[{}]}'
    a = written(json_ok(body))
    b = written(HTTPResponse(body, content_type=JSON_CT))
    assert a == b
    assert a.startswith(b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: " + ORIGIN.encode())
    assert a.endswith(b"\r\n\r\n" + body)
