"""-auth over HTTP (in-process apps): 401s in the one error shape with WWW-Authenticate,
the fast lane enforcing it, and forwarding carrying the client's own credentials."""
import json
import socket

import pytest

from raftsqlite.http.auth import Credentials, basic_header
from tests.api.fakes import Cluster, FakeNode, FakeStore
from tests.api.test_fastpath import _recv_responses

ADMIN = basic_header("admin", "a")
READER = basic_header("reader", "r")
WRITER = basic_header("writer", "w")

FILE = [{"username": "admin", "password": "a", "perms": ["all"]},
        {"username": "reader", "password": "r", "perms": ["query"]},
        {"username": "writer", "password": "w", "perms": ["execute", "query"]},
        {"username": "*", "perms": ["status", "ready"]}]


def _node(store, entries=FILE, identity=None):
    n = FakeNode(store)
    n.auth = Credentials.parse(json.dumps(entries).encode())
    n.identity_header = identity
    return n


@pytest.fixture
def guarded(serve):
    cl = Cluster()
    store = FakeStore(cl, "node1")
    cl.leader_id = "node1"
    s = serve(_node(store))
    store.member.http_addr = s.addr
    return s


def _raw(port, req):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(req)
        return _recv_responses(s, 1)[0]


def test_fast_lane_enforces_auth(guarded):
    """A plain keep-alive POST /db/execute (which the fast lane serves) without, or with
    wrong, credentials is refused 401 by the fast lane itself; with them it runs."""
    body = b'["CREATE TABLE t (x)"]'
    before = guarded.app.ctx.counters["fast_lane"]
    for extra in (b"", b"Authorization: " + basic_header("admin", "x").encode() + b"\r\n",
                  b"Authorization: " + READER.encode() + b"\r\n"):
        resp = _raw(guarded.port, b"POST /db/execute HTTP/1.1\r\nHost: t\r\nContent-Type: "
                    b"application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (extra, len(body), body))
        assert resp.startswith(b"HTTP/1.1 401 "), resp
        assert b'www-authenticate: Basic realm="rqlite"' in resp.lower().replace(
            b"basic realm", b"Basic realm")
        assert b'"code":"unauthorized"' in resp
    assert b"'execute' permission" in resp       # the last one: a user lacking the perm
    assert guarded.app.ctx.counters["fast_lane"] == before + 3
    assert guarded.store.calls == []             # nothing ran
    ok = _raw(guarded.port, b"POST /db/execute HTTP/1.1\r\nHost: t\r\nContent-Type: "
              b"application/json\r\nAuthorization: %s\r\nContent-Length: %d\r\n\r\n%s"
              % (WRITER.encode(), len(body), body))
    assert ok.startswith(b"HTTP/1.1 200 "), ok
    assert guarded.app.ctx.counters["fast_lane"] == before + 4


def test_sanic_lane_enforces_auth(guarded):
    """Routes Sanic serves: 401 without credentials, with a wrong password, or lacking the
    permission (message names it); `*` perms need none; /db/request needs both."""
    h = guarded.http
    r = h.post("/db/request", [["SELECT 1"]])
    assert r.status == 401 and r.json()["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == 'Basic realm="rqlite"'
    r = h.post("/db/request", [["SELECT 1"]], headers={"Authorization": READER})
    assert r.status == 401 and "'execute'" in r.json()["error"]
    r = h.post("/db/request", [["SELECT 1"]], headers={"Authorization": WRITER})
    assert r.status == 200, r
    assert h.get("/status").status == 200           # granted to *
    assert h.get("/readyz").status == 200
    r = h.get("/nodes", headers={"Authorization": basic_header("admin", "bad")})
    assert r.status == 200                          # status is *'s: rqlite's AA
    r = h.post("/snapshot", headers={"Authorization": READER})
    assert r.status == 401 and "'snapshot'" in r.json()["error"]
    r = h.get("/db/backup", headers={"Authorization": basic_header("admin", "bad")})
    assert r.status == 401 and "invalid username or password" in r.json()["error"]
    assert h.get("/no/such/route").status == 404    # unknown routes: 404, as rqlite


def test_forward_carries_client_credentials(serve):
    """A follower forwards the client's own Authorization: the leader checks the client's
    rights (here narrower than on the follower) and never the follower's -join-as
    identity, also for an anonymous client."""
    cl = Cluster()
    lenient = [{"username": "reader", "password": "r", "perms": ["query", "execute"]},
               {"username": "admin", "password": "a", "perms": ["all"]},
               {"username": "*", "perms": ["execute"]}]
    served = []
    for i, entries in ((1, FILE), (2, lenient)):
        st = FakeStore(cl, f"node{i}")
        s = serve(_node(st, entries, identity=ADMIN))
        st.member.http_addr = s.addr
        served.append(s)
    cl.leader_id = "node1"
    leader, follower = served
    for hdr in ({"Authorization": READER}, {}):
        r = follower.http.post("/db/execute", ["CREATE TABLE t (x)"], headers=hdr)
        assert r.status == 401, r                    # the leader's answer, relayed
        assert r.headers.get("x-rqlite-served-by") == leader.addr
    assert leader.store.calls == []
    r = follower.http.post("/db/execute", ["CREATE TABLE t (x)"],
                           headers={"Authorization": ADMIN})
    assert r.status == 200, r
    assert [c[0] for c in leader.store.calls] == ["execute"]
