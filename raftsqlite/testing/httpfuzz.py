"""Fuzz the HTTP surface of real ``raft-sqlite`` processes (not part of the CI suite)::

    python -m raftsqlite.testing.httpfuzz --seed 1 --duration 120 [--members 3]

Requests are written byte by byte on raw sockets (so a URL, a header block or a body may
be anything: invalid UTF-8, wrong Content-Length, broken chunked framing, a body that
stops half way), to both API families (the seed's and rqlite's), with random methods,
query flags, content types and bodies (huge, deeply nested, not JSON at all). The
product promise checked for every answer:

- never a 500, and no 5xx but the documented 503/504 of cluster state;
- every 4xx/5xx with a body is the one JSON error shape ``{"error", "code"}``;
- an answer within ``--request-timeout`` seconds (a request whose body never arrives
  must be closed by the server, not answered, and must not hold anything up);
- every member still alive and ready after each batch, and the canary table (rows the
  fuzzer wrote at the start, which no fuzzed statement names) unchanged at the end.

The last stdout line is one JSON object (``requests``, ``by_status``, ``violations``,
``seed``); the exit code is 1 when any violation was found. Violations are listed with
the request that caused them (its bytes, repr'd), so each one can be replayed.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter

from .procs import NodeCluster, http

SEED_PATHS = ["/execute", "/query", "/join", "/table/register", "/table/add-to-shard",
              "/table/rebalance", "/table/remove", "/tables", "/table/explain", "/shards",
              "/table/remove-from-shard", "/table/rebalance/status",
              "/table/rebalance/cancel", "/table/split", "/table/move-range"]
RQLITE_PATHS = ["/db/execute", "/db/query", "/db/request", "/db/load", "/db/backup",
                "/nodes", "/leader", "/readyz", "/status", "/remove", "/snapshot"]
INTERNAL_PATHS = ["/shard/call", "/shard/system", "/shard/catalog"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get", "POSTX", ""]
FLAGS = ["pretty", "timings", "transaction", "associative", "blob_array", "queue", "wait",
         "noleader", "nonvoters", "redirect", "sync", "fmt", "level", "freshness",
         "freshness_strict", "timeout", "db_timeout", "q", "ver", "tables", "key", "retries",
         "auto_route", "shard_id", "kind", "after", "poll", "fresh", "compress", "dry_run",
         "table_name", "raw"]
FLAG_VALUES = ["", "none", "weak", "strong", "linearizable", "auto", "1s", "0", "-1",
               "1e308", "nan", "inf", "2", "sql", "csv", "x", "1h", "999999999999999999999",
               "SELECT 1", "store", "store.raft", "%ff%fe", "%00", "true", "false", "0.001ms",
               "\u00e9", "a" * 300]
CTYPES = ["application/json", "text/plain", "application/octet-stream",
          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
          "application/json; charset=latin-1", "application/json; charset=\xff", "", None]
SQL = ["SELECT 1", "SELECT * FROM fz", "CREATE TABLE IF NOT EXISTS fz (k INTEGER PRIMARY KEY, v)",
       "INSERT INTO fz(v) VALUES(?)", "INSERT INTO fz(v) VALUES(:a)", "UPDATE fz SET v = ?",
       "DELETE FROM fz WHERE k > ?", "SELECT ?", "BEGIN", "COMMIT", "ROLLBACK", "nonsense",
       "", ";", "SELECT 1; SELECT 2", "PRAGMA journal_mode=DELETE", "ATTACH 'x' AS y",
       "VACUUM", "SELECT zeroblob(1000000000)", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
       "SELECT x+1 FROM c) SELECT x FROM c LIMIT 5", "SELECT randomblob(?)",
       "CREATE TABLE fz2 (a PRIMARY KEY, b)", "DROP TABLE IF EXISTS fz2",
       "SELECT * FROM sqlite_schema", "SELECT load_extension('x')",
       "INSERT INTO fz(v) VALUES(x'00ff')", "SELECT '\u0000'", "SELECT 1 -- \ud800"]
KEYS = ["query", "args", "id", "node_id", "addr", "raft_addr", "http_addr", "voter",
        "table_name", "shard_key", "shard_func", "colocate_with", "shard_id", "dry_run",
        "at", "key", "start", "end", "move_id", "ops", "statements", "a", ""]


class Req:
    """One raw request: the bytes, and how the fuzzer sends them."""

    def __init__(self, data: bytes, partial: bytes | None = None, what: str = ""):
        self.data = data            # sent whole
        self.partial = partial      # sent after a pause, or never (None: never)
        self.what = what


def _json_value(rng, depth=0):
    r = rng.random()
    if depth > 3 or r < 0.35:
        return rng.choice([None, True, False, 0, -1, 2 ** 63, 2 ** 64 + 1, -2 ** 70, 1.5,
                           1e308, "", "x", rng.choice(SQL), "\u00e9\U0001f600",
                           base64.b64encode(os.urandom(8)).decode(), "node1",
                           "127.0.0.1:1", "shard1", "default", "fz"])
    if r < 0.7:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(KEYS): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _statement(rng):
    sql = rng.choice(SQL)
    r = rng.random()
    if r < 0.3:
        return sql
    if r < 0.6:
        return [sql] + [_json_value(rng, 3) for _ in range(rng.randint(0, 3))]
    if r < 0.8:
        return [sql, {rng.choice(["a", "b", ":a", ""]): _json_value(rng, 3)}]
    return _json_value(rng, 1)


def _body(rng, path) -> bytes:
    r = rng.random()
    if r < 0.05:
        return b""
    if r < 0.1:
        return os.urandom(rng.randint(1, 300))
    if r < 0.14:    # invalid UTF-8 inside what is otherwise JSON
        return b'["SELECT \'' + bytes([rng.randint(0x80, 0xff)]) + b'\'"]'
    if r < 0.17:    # deep nesting
        d = rng.choice([100, 1000, 50_000, 200_000])
        return b"[" * d + b"]" * (d if rng.random() < 0.5 else 0)
    if r < 0.2:     # big: around the default body limit
        n = rng.choice([1 << 20, 8 << 20, 65 << 20])
        return b'["' + b"a" * n + b'"]'
    if r < 0.23:    # many statements
        return json.dumps(["SELECT 1"] * rng.choice([1000, 10_000, 200_000])).encode()
    if r < 0.25:
        return rng.choice([b"NaN", b"[NaN]", b"[Infinity]", b"[1e99999]", b"\xef\xbb\xbf[]",
                           b'{"a":1,"a":2}', b"[\"\\ud800\"]", b"[\"\\u0000\"]", b"[1,]",
                           b"null", b"true", b"0", b'"SELECT 1"', b"[[]]", b"[[null]]"])
    if path == "/db/load":
        return rng.choice([b"SQLite format 3\x00" + os.urandom(rng.randint(0, 5000)),
                           b"CREATE TABLE fzl (a);INSERT INTO fzl VALUES(1);",
                           b"BEGIN TRANSACTION;\nCREATE TABLE fzl(a);\nCOMMIT;\n",
                           b"garbage;", b"\xff\xfe"])
    if path in ("/db/execute", "/db/query", "/db/request", "/execute", "/query"):
        if rng.random() < 0.8:
            return json.dumps([_statement(rng) for _ in range(rng.randint(0, 5))]).encode()
    return json.dumps(_json_value(rng)).encode()


def _query_string(rng) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 5)):
        k = rng.choice(FLAGS)
        if rng.random() < 0.3:
            parts.append(k.encode())
        else:
            v = rng.choice(FLAG_VALUES)
            parts.append(k.encode() + b"=" + v.encode("utf-8", "surrogatepass").replace(b" ", b"+"))
    if rng.random() < 0.05:
        parts.append(bytes([rng.randint(0x80, 0xff)]) + b"=1")
    return b"&".join(parts)


BAD_ARGS = [{"x": [1]}, [[1, 2]], 2 ** 64, -2 ** 64, 1e400, {"": 1}, [{"a": {"b": 1}}], "\ud800",
            {"1": 1, "2": 2}, [None] * 1001]


def make_probe(rng, host: str, marker: str) -> Req:
    """A write batch that inserts ``marker`` rows and carries one bad element: a 4xx
    answer must mean none of it was applied (checked by the caller)."""
    ins = "INSERT INTO probe(m) VALUES(?)"
    good = [[ins, marker] for _ in range(rng.randint(1, 3))]
    bad = rng.choice([[ins, rng.choice(BAD_ARGS)], [ins] + [marker] * rng.randint(2, 4),
                      [], [None], [5], {"q": ins}, [ins, marker, {"a": 1}],
                      ["INSERT INTO probe(m) VALUES(:a)", {"a": rng.choice(BAD_ARGS)}]])
    batch = good + [bad] if rng.random() < 0.5 else [bad] + good
    path = rng.choice(["/db/execute", "/db/request", "/db/execute?transaction",
                       "/db/execute?queue", "/db/execute?queue&wait", "/db/request?transaction"])
    if rng.random() < 0.2:
        path, batch = "/execute", {"query": ins, "args": rng.choice([
            [marker, rng.choice(BAD_ARGS)], rng.choice(BAD_ARGS), {"a": [1]}])}
    body = json.dumps(batch, allow_nan=True).encode("utf-8", "surrogatepass")
    head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    return Req(head + body, None, "probe")


def make_request(rng, host: str) -> Req:
    pool = rng.random()
    path = rng.choice(SEED_PATHS if pool < 0.45 else RQLITE_PATHS if pool < 0.95
                      else INTERNAL_PATHS + ["/nope", "//db//execute", "/db/execute/",
                                             "/db/%65xecute", "/\xe9", "*"])
    method = rng.choice(METHODS) if rng.random() < 0.4 else (
        "GET" if path in ("/query", "/tables", "/shards", "/table/explain", "/nodes",
                          "/leader", "/readyz", "/status", "/db/backup",
                          "/table/rebalance/status", "/shard/catalog")
        else "DELETE" if path == "/remove" else "POST")
    qs = _query_string(rng)
    target = path.encode("utf-8", "surrogatepass") + (b"?" + qs if qs else b"")
    body = _body(rng, path) if method not in ("GET", "HEAD") or rng.random() < 0.2 else b""
    headers = [(b"Host", host.encode())]
    ct = rng.choice(CTYPES)
    if ct is not None:
        headers.append((b"Content-Type", ct.encode("latin-1")))
    framing = rng.random()
    partial = None
    what = "plain"
    if framing < 0.06:
        # chunked, sometimes broken
        chunks = [body[i:i + 4096] for i in range(0, len(body), 4096)] or [b""]
        enc = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks if c)
        enc += rng.choice([b"0\r\n\r\n", b"zz\r\n", b"0\r\n", b"5\r\nab\r\n0\r\n\r\n"])
        headers.append((b"Transfer-Encoding", b"chunked"))
        payload, what = enc, "chunked"
    elif framing < 0.1:
        # Content-Length larger than what is sent: the server must time the body out
        # (or answer an error), never hang a worker forever; we send the rest later.
        cut = rng.randint(0, len(body))
        if rng.random() < 0.5:      # the rest arrives late: a complete request
            headers.append((b"Content-Length", b"%d" % len(body)))
            payload, partial, what = body[:cut], body[cut:], "late-body"
        else:                       # never completes: the server must give up (408)
            headers.append((b"Content-Length", b"%d" % (len(body) + rng.randint(1, 100))))
            payload, partial, what = body[:cut], body[cut:], "stalled-body"
    elif framing < 0.13:
        headers.append((b"Content-Length", rng.choice([b"-1", b"abc", b"1e3", b" 5",
                                                       b"99999999999999999999999", b"0x10"])))
        payload, what = body, "bad-length"
    elif framing < 0.15:
        headers.append((b"Content-Length", b"%d" % len(body)))
        headers.append((b"Content-Length", b"%d" % (len(body) + 1)))
        payload, what = body, "two-lengths"
    elif framing < 0.17:
        headers.append((b"Expect", b"100-continue"))
        headers.append((b"Content-Length", b"%d" % len(body)))
        payload, what = body, "expect"
    elif framing < 0.19:
        headers.append((b"X-Bad", bytes([rng.randint(0x80, 0xff)]) * 3))
        headers.append((b"Content-Length", b"%d" % len(body)))
        payload, what = body, "nonascii-header"
    elif framing < 0.2:
        headers.append((b"X-Big", b"a" * rng.choice([4000, 9000, 70000])))
        headers.append((b"Content-Length", b"%d" % len(body)))
        payload, what = body, "big-header"
    else:
        if method != "GET" or body:
            headers.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    version = b"HTTP/1.1" if rng.random() < 0.95 else rng.choice([b"HTTP/1.0", b"HTTP/2.0",
                                                                 b"HTTP/9", b""])
    head = method.encode() + b" " + target + b" " + version + b"\r\n"
    head += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    return Req(head + payload, partial, what)


async def _read_response(reader, timeout, head_only=False):
    """-> (status, headers dict, body) of one HTTP/1.1 response; (None, {}, b"") when the
    server closed the connection without answering."""
    async def read():
        line = await reader.readline()
        if not line:
            return None, {}, b""
        parts = line.split(b" ", 2)
        status = int(parts[1])
        hdrs = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if status in (100,):
            return await read()
        if status in (204, 304) or head_only:
            return status, hdrs, b""
        if "content-length" in hdrs:
            body = await reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                n = int((await reader.readline()).strip(), 16)
                chunk = await reader.readexactly(n + 2)
                if n == 0:
                    break
                body += chunk[:-2]
        else:
            body = await reader.read()
        return status, hdrs, body
    return await asyncio.wait_for(read(), timeout)


async def send(addr: str, req: Req, timeout: float, partial_pause: float):
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port),
                                                                    limit=1 << 26), 5)
    try:
        try:
            writer.write(req.data)
            await writer.drain()
        except (ConnectionError, OSError):
            pass    # answered (e.g. 413) and closed before the whole body was sent
        if req.partial is not None:
            # A slow client: the rest arrives late (or the server gives up first).
            await asyncio.sleep(partial_pause)
            try:
                writer.write(req.partial)
                await writer.drain()
            except (ConnectionError, OSError):
                return None, {}, b""
        try:
            return await _read_response(reader, timeout, req.data.startswith(b"HEAD "))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            return None, {}, b""
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass


def judge(req: Req, status, hdrs, body) -> str | None:
    """The promise for one answer; the reason it was broken, or None."""
    if status is None:
        return None        # closed without an answer: allowed for broken framing
    if status == 500 or (status >= 500 and status not in (503, 504)):
        return f"status {status}"
    if status >= 400 and body:
        try:
            doc = json.loads(body)
        except ValueError:
            return f"status {status} with a body that is not JSON"
        if not isinstance(doc, dict) or set(doc) != {"error", "code"} \
                or not isinstance(doc["error"], str) or not doc["error"]:
            return f"status {status} not in the one error shape"
    return None


async def probe_rows(addr, marker):
    q = (b"SELECT%20count(*)%20FROM%20probe%20WHERE%20m%3D%27" + marker.encode()
         + b"%27&level=strong")
    data = b"GET /db/query?q=" + q + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, _, body = await send(addr, Req(data), 30, 0)
    if status != 200:
        return None
    return json.loads(body)["results"][0]["values"][0][0]


async def fuzz(addrs, seed: int, duration: float, max_requests: int, concurrency: int,
               request_timeout: float, log=print, probe_share: float = 0.15) -> dict:
    rng = random.Random(seed)
    by_status: Counter = Counter()
    by_what: Counter = Counter()
    violations = []
    n = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    lock = asyncio.Lock()
    stalls, stalls_running = [], [0]
    samples: dict = {}

    async def worker(wid):
        nonlocal n
        wrng = random.Random(rng.random())
        while loop.time() < deadline and n < max_requests:
            n += 1
            addr = wrng.choice(addrs)
            marker = None
            if wrng.random() < probe_share:
                marker = f"m{seed}-{n}"
                req = make_probe(wrng, addr, marker)
            else:
                req = make_request(wrng, addr)
            t0 = time.monotonic()
            if req.what == "stalled-body":
                # Answered only after the server's body timeout: judged in the
                # background (a few at a time) so the other workers keep going.
                if stalls_running[0] < 4:
                    stalls_running[0] += 1
                    stalls.append(asyncio.ensure_future(one(req, addr, wrng, t0)))
                continue
            await one(req, addr, wrng, t0, marker)

    async def one(req, addr, wrng, t0, marker=None):
        try:
            try:
                status, hdrs, body = await send(addr, req, request_timeout,
                                                wrng.choice([0.05, 0.5, 2.0]))
                reason = judge(req, status, hdrs, body)
                if req.what == "stalled-body" and status is not None and status != 408 \
                        and reason is None and status < 400:
                    reason = f"an incomplete body was answered {status}"
                if marker and reason is None and isinstance(status, int) \
                        and 400 <= status < 500:
                    rows = await probe_rows(addr, marker)
                    by_what[f"probe-{status}"] += 1
                    if rows:
                        reason = f"answered {status} yet applied {rows} row(s)"
                elif marker and isinstance(status, int):
                    by_what[f"probe-{status}"] += 1
            except asyncio.TimeoutError:
                status, body, reason = "timeout", b"", f"no answer in {request_timeout}s"
            except (ConnectionRefusedError, OSError) as e:
                status, body, reason = "refused", b"", f"cannot connect: {e}"
        finally:
            if req.what == "stalled-body":
                stalls_running[0] -= 1
        by_status[str(status)] += 1
        by_what[req.what] += 1
        if status is None:
            by_what[f"no-answer:{req.what}"] += 1
        key = f"{status}:{req.what}"
        if status in (None, 503, 504, "timeout") and len(samples.get(key, ())) < 3:
            samples.setdefault(key, []).append((repr(req.data[:300]), repr(body[:300])))
        if isinstance(status, int) and status < 300 and b" /db/load" in req.data[:20]:
            by_what["load_ok"] += 1     # a load may legitimately replace the canary
        if reason:
            async with lock:
                violations.append({"reason": reason, "addr": addr,
                                   "seconds": round(time.monotonic() - t0, 2),
                                   "request": repr(req.data[:600]),
                                   "request_len": len(req.data),
                                   "partial": None if req.partial is None
                                   else len(req.partial),
                                   "answer": repr(body[:400])})
                log(f"VIOLATION {reason}: {req.data[:200]!r} -> {body[:200]!r}")

    await asyncio.gather(*[worker(i) for i in range(concurrency)])
    await asyncio.gather(*stalls)
    return {"requests": n, "by_status": dict(by_status), "by_framing": dict(by_what),
            "violations": violations, "samples": samples}


def _canary(addr):
    s, b = http("POST", f"http://{addr}/db/execute",
                [["CREATE TABLE IF NOT EXISTS canary (k INTEGER PRIMARY KEY, v TEXT)"],
                 ["CREATE TABLE IF NOT EXISTS probe (m TEXT)"],
                 ["INSERT INTO canary(v) VALUES('a'),('b'),('c')"]])
    assert s == 200, b


def _canary_rows(addr):
    s, b = http("GET", f"http://{addr}/db/query?level=strong&q="
                       "SELECT%20k,v%20FROM%20canary%20ORDER%20BY%20k")
    return s, json.loads(b)["results"][0].get("values") if s == 200 else b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftsqlite.testing.httpfuzz")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--request-timeout", type=float, default=90.0,
                   help="seconds an answer may take (Sanic's own body timeout is 60 s)")
    p.add_argument("--batch", type=float, default=15.0,
                   help="seconds between liveness checks of every member")
    p.add_argument("--workdir", default=None)
    p.add_argument("--samples", action="store_true",
                   help="print up to 3 requests per (status, framing) that got no answer, "
                        "a 503 or a 504")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = a.workdir or tempfile.mkdtemp(prefix="raftsqlite-httpfuzz-")
    os.makedirs(workdir, exist_ok=True)
    cluster = NodeCluster(a.members, workdir).start()
    out = {"seed": seed, "workdir": workdir, "requests": 0, "by_status": Counter(),
           "by_framing": Counter(), "samples": {},
           "violations": [], "loads_ok": 0}
    try:
        _canary(cluster.leader())
        before = _canary_rows(cluster.leader())
        end = time.monotonic() + a.duration
        i = 0
        while time.monotonic() < end and out["requests"] < a.max_requests:
            res = asyncio.run(fuzz(cluster.http, seed * 1000 + i,
                                   min(a.batch, end - time.monotonic()),
                                   a.max_requests - out["requests"], a.concurrency,
                                   a.request_timeout, log=lambda m: print(m, file=sys.stderr)))
            i += 1
            out["requests"] += res["requests"]
            out["by_status"].update(res["by_status"])
            out["by_framing"].update(res["by_framing"])
            for k, v in res["samples"].items():
                out["samples"].setdefault(k, []).extend(v[:3 - len(out["samples"].get(k, []))])
            out["violations"] += res["violations"]
            out["loads_ok"] += res["by_framing"].get("load_ok", 0)
            for proc, addr in zip(cluster.procs, cluster.http):
                if proc.poll() is not None:
                    out["violations"].append({"reason": f"member {addr} exited "
                                                        f"(code {proc.returncode})"})
                    raise SystemExit(1)
                try:
                    s, b = http("GET", f"http://{addr}/readyz", timeout=10)
                except OSError as e:
                    s, b = None, repr(e)
                if s != 200:
                    out["violations"].append({"reason": f"member {addr} not ready after "
                                                        f"batch {i}: {s} {b!r}"})
            print(f"batch {i}: {out['requests']} requests, {len(out['violations'])} "
                  f"violations, statuses {dict(out['by_status'])}", file=sys.stderr)
        after = _canary_rows(cluster.leader())
        if after != before and not out["loads_ok"]:
            out["violations"].append({"reason": f"canary changed: {before} -> {after}"})
    finally:
        cluster.stop()
    out["by_status"] = dict(out["by_status"])
    out["by_framing"] = dict(out["by_framing"])
    if a.samples:
        print(json.dumps(out["samples"], indent=1))
    for v in out["violations"][:30]:
        print(json.dumps(v)[:1500])
    print(json.dumps({k: out[k] for k in ("requests", "by_status", "by_framing", "loads_ok", "seed",
                                                 "workdir")}
                     | {"violations": len(out["violations"])}))
    return 1 if out["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
