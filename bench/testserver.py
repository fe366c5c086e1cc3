"""A minimal HTTP/1.1 server that checks the shape of the driver's requests.

It is not a peer and stands in for no database: it exists so the load driver can be
tested (and its own ceiling measured) without a cluster. Every request body is parsed
and validated; a malformed one gets a 400, so a driver that sends garbage fails its test.

    python -m bench.testserver --port 0     # prints "PORT <n>" once listening
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
from urllib.parse import parse_qs, urlsplit

_OK_EXEC = b'{"results":[{"last_insert_id":1,"rows_affected":1}]}'


def _respond(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}
    return (f"HTTP/1.1 {status} {reason.get(status, 'X')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def handle(method: str, target: str, body: bytes) -> tuple[int, bytes]:
    """Validate one request; return (status, body)."""
    u = urlsplit(target)
    try:
        if method == "POST" and u.path == "/db/execute":
            stmts = json.loads(body)
            if not isinstance(stmts, list) or not stmts:
                raise ValueError("body must be a non-empty JSON array")
            for s in stmts:
                if not (isinstance(s, list) and s and isinstance(s[0], str)):
                    raise ValueError("each statement must be [sql, params...]")
            return 200, b'{"results":[' + b",".join(
                [b'{"last_insert_id":1,"rows_affected":1}'] * len(stmts)) + b"]}"
        if method == "GET" and u.path == "/db/query":
            qs = parse_qs(u.query)
            if "q" not in qs or not qs["q"][0].upper().startswith("SELECT"):
                raise ValueError("missing or non-SELECT q")
            return 200, b'{"results":[{"columns":["v"],"types":["text"],"values":[["x"]]}]}'
        if method == "POST" and u.path in ("/v3/kv/put", "/v3/kv/range"):
            req = json.loads(body)
            key = base64.b64decode(req["key"], validate=True)
            if not key.isdigit():
                raise ValueError("key is not decimal digits")
            if u.path == "/v3/kv/put":
                base64.b64decode(req["value"], validate=True)
            return 200, b'{"header":{"revision":"1"}}'
        if u.path == "/fail":
            return 500, b'{"error":"asked to fail"}'
        if u.path == "/apperr":
            return 200, b'{"results":[{"error":"no such table: t"}]}'
        if u.path == "/":
            return 200, b"{}"
        return 404, b'{"error":"not found"}'
    except (ValueError, KeyError, TypeError) as e:
        return 400, json.dumps({"error": f"bad request: {e}"}).encode()


async def _serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].decode().split(" ", 2)
            length = 0
            for h in lines[1:]:
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            body = await reader.readexactly(length) if length else b""
            status, out = handle(method, target, body)
            writer.write(_respond(status, out))
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _main(host: str, port: int):
    server = await asyncio.start_server(_serve_conn, host, port, limit=1 << 22)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main(argv=None):
    p = argparse.ArgumentParser(description="request-validating HTTP server for driver tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_main(a.host, a.port))
    os._exit(0)


if __name__ == "__main__":
    main()
