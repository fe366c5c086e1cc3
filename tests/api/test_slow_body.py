"""A client that announces a body and stops sending must not hold a connection and a
task for Sanic's RESPONSE_TIMEOUT (an hour): the body wait is bounded like the head's
(REQUEST_TIMEOUT) and answered 408 in the one JSON error shape. Found by the HTTP fuzzer
(python -m raftsqlite.testing.httpfuzz)."""
import json
import socket
import time

import pytest

pytestmark = pytest.mark.timeout(60)


def _send_and_wait(port, data, wait):
    """Send ``data``, then read until the server answers; -> (bytes, seconds, whether
    the server then closed the connection within 3 s)."""
    t0 = time.monotonic()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        got = b""
        try:
            while b"\r\n\r\n" not in got or not _complete(got):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            took = time.monotonic() - t0
            s.settimeout(3)
            closed = s.recv(1) == b""
        except (socket.timeout, ConnectionError):
            took = time.monotonic() - t0
    return got, took, closed


def _complete(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


@pytest.mark.parametrize("request_bytes", [
    b"POST /db/execute HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[\"SELECT",
    b"POST /db/execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[\"SEL",
    b"POST /db/execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    b"POST /db/load HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nCREATE TABLE",
    b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
    b"GET /leader HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab\r\n0\r\n\r\n",
], ids=["execute", "chunked", "chunked-no-last-crlf", "load", "get-with-body",
        "get-chunked-unfinished"])
def test_stalled_body_is_answered_408(single, request_bytes):
    """Invariant: a request whose body stops arriving is answered (408, one JSON error
    shape) within about REQUEST_TIMEOUT of the last byte, not held for RESPONSE_TIMEOUT,
    and its connection is closed; the node keeps serving."""
    single.app.config.REQUEST_TIMEOUT = 0.5
    got, took, closed = _send_and_wait(single.port, request_bytes, 15)
    assert got.startswith(b"HTTP/1.1 408"), (got[:300], took)
    assert took < 10, took
    # and the connection is closed, not held waiting for the rest of the body
    assert closed, "the connection stayed open after the 408"
    doc = json.loads(got.partition(b"\r\n\r\n")[2])
    assert set(doc) == {"error", "code"} and doc["code"] == "timeout", doc
    assert single.http.get("/status").status == 200


def test_slow_but_steady_body_is_not_cut(single):
    """Invariant: the bound is on silence, not on the whole upload: a body that keeps
    arriving (a byte every 0.2 s for 1.2 s, longer than the 0.5 s bound) is served."""
    single.app.config.REQUEST_TIMEOUT = 0.5
    body = b'["SELECT 1"]'
    head = b"POST /db/query HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", single.port), timeout=15) as s:
        s.sendall(head + body[:6])
        for i in range(6, len(body)):
            time.sleep(0.2)
            s.sendall(body[i:i + 1])
        got = b""
        while not (b"\r\n\r\n" in got and _complete(got)):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:300]
