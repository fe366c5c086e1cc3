"""The HTTP fast lane (raftsqlite/http/fastpath.py) answers exactly what Sanic answers,
and hands everything it does not fully understand to Sanic."""
import re
import socket
import time

import pytest


def _recv_responses(s, n, timeout=10.0):
    """Read ``n`` complete Content-Length framed responses from socket ``s``."""
    s.settimeout(timeout)
    data, out = b"", []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        while True:
            h = data.find(b"\r\n\r\n")
            if h < 0:
                break
            m = re.search(rb"(?im)^content-length:\s*(\d+)", data[:h])
            size = int(m.group(1)) if m else 0
            if len(data) < h + 4 + size:
                break
            out.append(data[:h + 4 + size])
            data = data[h + 4 + size:]
        if len(out) >= n:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"got {len(out)} of {n} responses")
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return out


def _exchange(port, parts, n=1, pause=0.05):
    """Send ``parts`` as separate writes (``pause`` between), return ``n`` responses."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, p in enumerate(parts):
            s.sendall(p)
            if i + 1 < len(parts):
                time.sleep(pause)
        return _recv_responses(s, n)


def _request(path, body, extra=b""):
    head = (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n" % (path, extra, len(body)))
    return head, body


def _norm(resp):
    # times and ids (and so the length) differ between two runs of the same statement
    resp = re.sub(rb'"(last_insert_id|time|raft_index|sequence_number)":\s*[0-9.e-]+',
                  b'"\\1":N', resp)
    return re.sub(rb"(?im)^content-length: \d+", b"content-length: N", resp)


def _fast_count(served):
    return served.app.ctx.counters["fast_lane"]


CASES = [
    (b"/db/execute", b'[["CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v)"]]'),
    (b"/db/execute", b'[["INSERT INTO t(v) VALUES(?)", 5]]'),
    (b"/db/execute?timings&pretty", b'[["INSERT INTO t(v) VALUES(?)", "x"]]'),
    (b"/db/execute?transaction", b'[["INSERT INTO t(v) VALUES(1)"], ["INSERT INTO nope VALUES(1)"]]'),
    (b"/db/execute", b'[["INSERT INTO nope(v) VALUES(?)", 5]]'),
    (b"/db/execute", b'[["INSERT INTO t(v) VALUES(?)", 5'),
    (b"/db/execute", b"[]"),
    (b"/db/execute?queue", b'[["INSERT INTO t(v) VALUES(9)"]]'),
    (b"/execute", b'{"query": "INSERT INTO t(v) VALUES(?)", "args": [7]}'),
    (b"/execute", b'{"query": "INSERT INTO nope(v) VALUES(?)", "args": [7]}'),
    (b"/execute", b'{"nope": 1}'),
]


@pytest.mark.parametrize("path,body", CASES)
def test_fast_lane_answers_like_sanic(single, path, body):
    """The same request gives the same bytes (status line, headers, body) whether it
    arrives in one piece (fast lane) or split (Sanic), and only the first uses the lane."""
    head, payload = _request(path, body)
    n0 = _fast_count(single)
    fast = _exchange(single.port, [head + payload])[0]
    assert _fast_count(single) == n0 + 1
    slow = _exchange(single.port, [head, payload])[0]
    assert _fast_count(single) == n0 + 1
    assert _norm(fast) == _norm(slow)


def _get(path, extra=b""):
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path, extra)


READS = [
    b"/db/query?q=SELECT%20*%20FROM%20r%20ORDER%20BY%20id",
    b"/db/query?q=SELECT%20*%20FROM%20r%20WHERE%20id%3D2&level=none",
    b"/db/query?q=SELECT%20v,%20b%20FROM%20r&associative&timings",
    b"/db/query?q=SELECT%20v,%20b%20FROM%20r&pretty&blob_array",
    b"/db/query?q=SELECT%20*%20FROM%20nope",
    b"/db/query?q=SELECT%20*%20FROM%20r&level=bogus",
    b"/db/query?q=%20",
    b"/db/query",
    b"/db/query?q=SELECT%201&freshness=x",
    b"/db/query?q=SELECT+v+FROM+r+WHERE+v%3D%27a%27&level=weak",
    b"/query?q=SELECT%20*%20FROM%20r",
    b"/query?q=SELECT%20*%20FROM%20nope",
]


@pytest.fixture
def with_rows(single):
    single.http.post("/db/execute", [
        "CREATE TABLE IF NOT EXISTS r(id INTEGER PRIMARY KEY, v TEXT, b BLOB)",
        ["INSERT OR REPLACE INTO r(id, v, b) VALUES(?, ?, ?)", 1, "a", [1, 2, 255]],
        ["INSERT OR REPLACE INTO r(id, v, b) VALUES(?, ?, ?)", 2, "b\u00e9", None]])
    return single


@pytest.mark.parametrize("path", READS)
def test_fast_lane_reads_answer_like_sanic(with_rows, path):
    """A GET read gives the same bytes whether it arrives whole (fast lane) or split
    (Sanic), and only the first uses the lane."""
    req = _get(path)
    n0 = _fast_count(with_rows)
    fast = _exchange(with_rows.port, [req])[0]
    assert _fast_count(with_rows) == n0 + 1
    slow = _exchange(with_rows.port, [req[:7], req[7:]])[0]
    assert _fast_count(with_rows) == n0 + 1
    assert _norm(fast) == _norm(slow)


def test_fast_lane_post_query_answers_like_sanic(with_rows):
    """POST /db/query with a JSON body of reads: the same bytes through both lanes."""
    head, body = _request(b"/db/query?level=none",
                          b'[["SELECT v FROM r WHERE id=?", 1], "SELECT COUNT(*) FROM r"]')
    n0 = _fast_count(with_rows)
    fast = _exchange(with_rows.port, [head + body])[0]
    slow = _exchange(with_rows.port, [head, body])[0]
    assert _fast_count(with_rows) == n0 + 1
    assert _norm(fast) == _norm(slow) and b'"values":[["a"]]' in fast


@pytest.mark.parametrize("req", [
    b"GET /db/query?q=SELECT%201 HTTP/1.0\r\nHost: t\r\n\r\n",
    b"GET /db/query?q=SELECT%201 HTTP/1.1\r\nHost: t\r\nConnection: keep-alive \r\n\r\n",
    b"GET /db/query?q=SELECT%20'\xc3\xa9' HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /db/query?q=SELECT%201 HTTP/1.1\r\nHost: t\r\nX-Name: \xc3\xa9\r\n\r\n",
    b"GET /db/query?q=SELECT%201#f HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /db/query/?q=SELECT%201 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /db/query?q=SELECT%201 HTTP/1.1\r\nHost: t\r\n\r\n",
])
def test_reads_the_lane_does_not_own_go_to_sanic(single, req):
    """HTTP/1.0, a Connection other than keep-alive, non-ASCII URLs and headers,
    fragments, other paths and methods are Sanic's: the lane does not count them, and each still gets an answer."""
    n0 = _fast_count(single)
    with socket.create_connection(("127.0.0.1", single.port)) as s:
        s.sendall(req)
        s.settimeout(10)
        got = s.recv(65536)
    assert got.startswith(b"HTTP/1.1 ") or got.startswith(b"HTTP/1.0 ")
    assert _fast_count(single) == n0


@pytest.mark.parametrize("extra", [
    b"Host : t\r\n",                       # a name with white space: another header
    b" X-Fold: 1\r\n",                      # obs-fold style line
    b"X-Request-Id: a\r\nx-request-id: b\r\n",  # the first of a repeated name counts
    b"CONTENT-TYPE:   application/json  \r\n",
])
def test_odd_headers_answer_like_sanic(with_rows, extra):
    """Header lines Sanic reads in its own way (names not stripped, values left-stripped,
    the first value of a name) give the same answer through both lanes."""
    head, body = _request(b"/db/query?level=none", b'["SELECT v FROM r WHERE id=1"]', extra)
    n0 = _fast_count(with_rows)
    fast = _exchange(with_rows.port, [head + body])[0]
    slow = _exchange(with_rows.port, [head, body])[0]
    assert _fast_count(with_rows) == n0 + 1
    assert _norm(fast) == _norm(slow) and fast.startswith(b"HTTP/1.1 200 ")


def test_follower_forwards_reads_through_the_fast_lane(trio):
    """A weak read arriving at a follower through the lane is forwarded to the leader;
    the answer is the one Sanic relays."""
    leader, follower, _ = trio
    _exchange(leader.port, [b"".join(_request(
        b"/db/execute", b'[["CREATE TABLE IF NOT EXISTS f(x)"], ["INSERT INTO f VALUES(7)"]]'))])
    req = _get(b"/db/query?q=SELECT%20x%20FROM%20f&level=weak")
    fast = _exchange(follower.port, [req])[0]
    slow = _exchange(follower.port, [req[:7], req[7:]])[0]
    assert _fast_count(follower) == 1
    assert fast.endswith(b'{"results":[{"columns":["x"],"types":["integer"],"values":[[7]]}]}')
    assert _norm(fast) == _norm(slow)
    assert b"x-rqlite-served-by: " + leader.addr.encode() in fast.lower()


def test_follower_forwards_through_the_fast_lane(trio):
    """A write arriving at a follower through the lane is forwarded to the leader and
    relayed with the leader's answer, as through Sanic."""
    leader, follower, _ = trio
    head, body = _request(b"/db/execute", b'[["CREATE TABLE IF NOT EXISTS t (x)"]]')
    fast = _exchange(follower.port, [head + body])[0]
    slow = _exchange(follower.port, [head, body])[0]
    assert _fast_count(follower) == 1
    assert fast.endswith(b'{"results":[{}]}')
    assert _norm(fast) == _norm(slow)
    assert b"x-rqlite-served-by: " + leader.addr.encode() in fast.lower()


def test_pipelined_requests_answer_in_order(single):
    """Requests pipelined on one connection (in one write, or a second one sent while the
    first is in flight) are all answered, in order."""
    _exchange(single.port, [b"".join(_request(b"/db/execute", b'[["CREATE TABLE p(v)"]]'))])
    reqs = [b"".join(_request(b"/db/execute", b'[["INSERT INTO p(v) VALUES(%d)"]]' % i))
            for i in range(1, 4)]
    out = _exchange(single.port, [reqs[0] + reqs[1]], n=2)
    assert [b'"last_insert_id":%d' % i in r for i, r in zip((1, 2), out)] == [True, True]
    out = _exchange(single.port, [reqs[2], b"".join(_request(
        b"/db/execute", b'[["INSERT INTO p(v) VALUES(4)"]]'))], n=2, pause=0)
    assert [b'"last_insert_id":%d' % i in r for i, r in zip((3, 4), out)] == [True, True]


@pytest.mark.parametrize("extra", [b"Connection: close\r\n", b"Expect: 100-continue\r\n"])
def test_unusual_requests_go_to_sanic(single, extra):
    """Requests with semantics the lane does not implement are served by Sanic."""
    head, body = _request(b"/db/execute", b'[["CREATE TABLE IF NOT EXISTS u(v)"]]', extra)
    n0 = _fast_count(single)
    expect = extra.startswith(b"Expect")
    out = _exchange(single.port, [head + body], n=2 if expect else 1)
    if expect:
        assert out[0].startswith(b"HTTP/1.1 100 Continue")
    out = out[-1]
    assert out.startswith(b"HTTP/1.1 ") and out.endswith(b'{"results":[{}]}')
    assert _fast_count(single) == n0


@pytest.mark.parametrize("status", [200, 201, 204, 301, 304, 400, 404, 408, 413, 500, 503,
                                    504, 599])
@pytest.mark.parametrize("headers", [None, {"Location": "http://x/y"},
                                     {"X-RQLITE-SERVED-BY": "127.0.0.1:1"}])
def test_response_bytes_are_sanics_format(status, headers):
    """Invariant: the one-step formatting gives exactly the bytes of Sanic's own header
    processing (content-length, connection, alt-svc, the response's headers, content
    type last; none for 204/304), for every status and with extra headers."""
    from sanic.headers import format_http1_response
    from raftsqlite.http import wire
    from raftsqlite.http.fastpath import response_bytes
    body = b'{"results":[]}'
    fast = response_bytes(wire.json_response({"results": []}, status=status,
                                             headers=dict(headers or {})))
    ref = wire.json_response({"results": []}, status=status, headers=dict(headers or {}))
    ref.headers["content-length"] = len(body)
    ref.headers["connection"] = "keep-alive"
    ref.headers["alt-svc"] = ""
    assert fast == format_http1_response(status, ref.processed_headers) + body


@pytest.mark.parametrize("body", [b"", b'{"results":[]}', b"x" * 70000])
def test_json_ok_is_sanics_200_json_answer(body):
    """Invariant: ``json_ok`` (a fast-lane handler's pre-rendered answer) gives exactly the
    bytes Sanic's own header processing gives for a 200 JSON response of that body."""
    from sanic.headers import format_http1_response
    from sanic.response import HTTPResponse
    from raftsqlite.http import wire
    from raftsqlite.http.fastpath import json_ok
    ref = HTTPResponse(body, content_type=wire.JSON_CT)
    ref.headers["content-length"] = len(body)
    ref.headers["connection"] = "keep-alive"
    ref.headers["alt-svc"] = ""
    assert json_ok(body) == format_http1_response(200, ref.processed_headers) + body
