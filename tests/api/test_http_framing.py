"""Answers to malformed HTTP framing name what was wrong (found by the HTTP fuzzer,
python -m raftsqlite.testing.httpfuzz)."""
import json
import socket

import pytest

pytestmark = pytest.mark.timeout(30)


def _exchange(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


def test_oversized_head_is_not_called_a_large_body(single):
    """Invariant: a 413 for a header block over the head limit says so (and gives that
    limit), in the one JSON error shape; it does not claim the 12-byte body is too large."""
    body = b'["SELECT 1"]'
    got = _exchange(single.port, b"POST /db/query HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000
                    + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert got.startswith(b"HTTP/1.1 413"), got[:300]
    doc = json.loads(got.partition(b"\r\n\r\n")[2])
    assert set(doc) == {"error", "code"}, doc
    assert "head" in doc["error"] and "body" not in doc["error"], doc
    assert str(single.app.config.REQUEST_MAX_HEADER_SIZE) in doc["error"], doc


def test_oversized_body_still_names_the_body_limit(single):
    """Invariant: a Content-Length over the body limit is a 413 naming the body limit."""
    got = _exchange(single.port, b"POST /db/execute HTTP/1.1\r\nHost: x\r\nContent-Length: "
                    + b"%d" % (single.app.ctx.settings.max_body_bytes + 1) + b"\r\n\r\n[")
    assert got.startswith(b"HTTP/1.1 413"), got[:300]
    doc = json.loads(got.partition(b"\r\n\r\n")[2])
    assert "body" in doc["error"] and str(single.app.ctx.settings.max_body_bytes) in doc["error"]
