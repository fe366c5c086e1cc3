"""Reusable HTTP load driver: ``wrk`` with generated Lua scripts, or a built-in asyncio
driver when ``wrk`` is missing.

Both drivers keep a fixed number of keep-alive connections busy for a fixed duration
(and never more than ``max_requests`` requests), and report throughput, latency
percentiles (p50/p90/p99/p99.9), errors, and their own CPU use. On a 2-core machine the
driver competes with the servers for CPU, so a run whose driver used most of a core is
flagged ``driver_bound``: its throughput is a floor, not the server's ceiling.

A workload is one object that can describe its requests both ways (a Lua ``req``
function for wrk, and a Python ``request`` method for the asyncio driver), so the two
drivers send the same kind of traffic.

    python -m bench.driver http://127.0.0.1:4001 --workload insert -c 64 -d 5
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import quote, urlsplit

from raftsqlite.testing.procs import die_with_parent

WRK = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)

#: a driver process above this share of one core per thread is treated as the bottleneck
DRIVER_BOUND_FRACTION = 0.8
#: hard caps so that no load loop can run away
DEFAULT_MAX_REQUESTS = 5_000_000
REQUEST_TIMEOUT_S = 10.0

_PAD = "x" * 100


def _lua_str(s: str) -> str:
    """A Lua long-bracket literal that cannot be closed by ``s`` itself."""
    level = 0
    while ("]" + "=" * level + "]") in s:
        level += 1
    eq = "=" * level
    return f"[{eq}[{s}]{eq}]"


def _http_request(method: str, path: str, host: str, body: bytes | None = None,
                  content_type: str = "application/json") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body is not None:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


# --------------------------------------------------------------------------- workloads

class Workload:
    """What one request looks like. Subclasses define ``lua_req`` (a Lua function
    ``req(tid, n)`` returning ``wrk.format(...)``) and ``request(cid, n, host)``."""

    name = "workload"
    #: rows written (or read) per request, so that rows/s can be derived
    rows_per_request = 1
    #: whether a 2xx body containing an ``"error"`` key counts as an error
    check_body = True

    def lua_req(self) -> str:
        raise NotImplementedError

    def request(self, cid: int, n: int, host: str) -> bytes:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"workload": self.name, "rows_per_request": self.rows_per_request}


class RqliteInsert(Workload):
    """One single-row parameterized INSERT per ``POST /db/execute``; ~100-byte values."""

    name = "insert"

    def __init__(self, table: str = "bench", value_size: int = 100):
        self.sql = f"INSERT INTO {table}(v) VALUES(?)"
        self.pad = "x" * max(0, value_size - 16)

    def lua_req(self) -> str:
        prefix = json.dumps([[self.sql, ""]])[:-3]  # '[["INSERT ...", "'
        return f"""
local PREFIX = {_lua_str(prefix)}
local PAD = {_lua_str(self.pad)}
local HDR = {{["Content-Type"] = "application/json"}}
function req(tid, n)
  return wrk.format("POST", "/db/execute", HDR, PREFIX .. tid .. "-" .. n .. "-" .. PAD .. '"]]')
end
"""

    def request(self, cid, n, host):
        body = json.dumps([[self.sql, f"{cid}-{n}-{self.pad}"]]).encode()
        return _http_request("POST", "/db/execute", host, body)


class RqliteBulk(Workload):
    """``rows`` parameterized single-row INSERTs in one ``POST /db/execute`` request
    (one transaction on the server when ``transaction`` is set)."""

    name = "bulk"

    def __init__(self, table: str = "bench", rows: int = 1000, value_size: int = 100,
                 transaction: bool = True):
        self.rows_per_request = rows
        sql = f"INSERT INTO {table}(v) VALUES(?)"
        pad = "b" * value_size
        self.body = json.dumps([[sql, f"{i}-{pad}"] for i in range(rows)]).encode()
        self.path = "/db/execute" + ("?transaction" if transaction else "")

    def lua_req(self) -> str:
        return f"""
local BODY = {_lua_str(self.body.decode())}
local HDR = {{["Content-Type"] = "application/json"}}
function req(tid, n)
  return wrk.format("POST", "{self.path}", HDR, BODY)
end
"""

    def request(self, cid, n, host):
        return _http_request("POST", self.path, host, self.body)


class RqliteQuery(Workload):
    """Point read by primary key at a consistency level, keys uniform in 1..nrows."""

    name = "query"

    def __init__(self, table: str = "bench", nrows: int = 1000, level: str = "none"):
        self.nrows = max(1, int(nrows))
        self.level = level
        self.prefix = "/db/query?q=" + quote(f"SELECT v FROM {table} WHERE id=")
        self.name = f"query_{level}"

    def lua_req(self) -> str:
        return f"""
local PREFIX = {_lua_str(self.prefix)}
function req(tid, n)
  return wrk.format("GET", PREFIX .. math.random({self.nrows}) .. "&level={self.level}")
end
"""

    def request(self, cid, n, host):
        path = f"{self.prefix}{random.randint(1, self.nrows)}&level={self.level}"
        return _http_request("GET", path, host)


class Mix(Workload):
    """``write_pct`` percent writes, the rest reads, chosen at random per request."""

    def __init__(self, read: Workload, write: Workload, write_pct: int = 10):
        self.read, self.write, self.write_pct = read, write, int(write_pct)
        self.name = f"mix_{100 - self.write_pct}_{self.write_pct}"

    def lua_req(self) -> str:
        r = self.read.lua_req().replace("function req(", "function req_read(")
        w = self.write.lua_req().replace("function req(", "function req_write(")
        # Each part declares its own locals; wrap them so that names cannot clash.
        return f"""
do
{r}
end
do
{w}
end
function req(tid, n)
  if math.random(100) <= {self.write_pct} then return req_write(tid, n) end
  return req_read(tid, n)
end
"""

    def request(self, cid, n, host):
        if random.randint(1, 100) <= self.write_pct:
            return self.write.request(cid, n, host)
        return self.read.request(cid, n, host)


class Rotate(Workload):
    """Request ``n`` of each connection comes from ``parts[n % len(parts)]``: several kinds of
    request through one run (used to check every request builder in one short wrk run)."""

    def __init__(self, parts: list[Workload], name: str = "rotate"):
        self.parts, self.name = list(parts), name
        self.check_body = any(p.check_body for p in self.parts)

    def lua_req(self) -> str:
        blocks = []
        for i, part in enumerate(self.parts):
            body = part.lua_req().replace("function req(", f"function req_{i}(")
            blocks.append(f"do\n{body}\nend")
        table = ", ".join(f"req_{i}" for i in range(len(self.parts)))
        return "\n".join(blocks) + f"""
local PARTS = {{{table}}}
function req(tid, n)
  return PARTS[(n % {len(self.parts)}) + 1](tid, n)
end
"""

    def request(self, cid, n, host):
        return self.parts[n % len(self.parts)].request(cid, n, host)


def _b64_digit_triples() -> list[str]:
    # A 9-digit decimal key is three 3-byte groups, and base64 maps each 3-byte group to
    # 4 characters independently: a 1000-entry table lets Lua base64-encode keys cheaply.
    return [base64.b64encode(f"{i:03d}".encode()).decode() for i in range(1000)]


_LUA_B64KEY = """
local B3 = {%s}
local function b64key(k)
  local a = math.floor(k / 1000000) %% 1000
  local b = math.floor(k / 1000) %% 1000
  local c = k %% 1000
  return B3[a + 1] .. B3[b + 1] .. B3[c + 1]
end
""" % ",".join(f'"{t}"' for t in _b64_digit_triples())


def _etcd_key(num: int) -> str:
    return base64.b64encode(f"{num % 1_000_000_000:09d}".encode()).decode()


class EtcdPut(Workload):
    """etcd v3 ``PUT`` through its HTTP/JSON gateway, ~100-byte values."""

    name = "etcd_put"

    def __init__(self, value_size: int = 100):
        self.value = base64.b64encode(b"v" * value_size).decode()

    def lua_req(self) -> str:
        return _LUA_B64KEY + f"""
local HDR = {{["Content-Type"] = "application/json"}}
function req(tid, n)
  local k = (tid * 100000000 + n) % 1000000000
  return wrk.format("POST", "/v3/kv/put", HDR,
    '{{"key":"' .. b64key(k) .. '","value":"{self.value}"}}')
end
"""

    def request(self, cid, n, host):
        body = json.dumps({"key": _etcd_key(cid * 1_000_003 + n), "value": self.value})
        return _http_request("POST", "/v3/kv/put", host, body.encode())


class EtcdRange(Workload):
    """etcd v3 point ``GET`` (range of one key); ``serializable`` reads the local member
    without a quorum round (etcd's analogue of level ``none``)."""

    def __init__(self, nkeys: int = 1000, serializable: bool = False):
        self.nkeys = max(1, int(nkeys))
        self.serializable = serializable
        self.name = "etcd_get_" + ("serializable" if serializable else "linearizable")
        self.extra = ',"serializable":true' if serializable else ""

    def lua_req(self) -> str:
        return _LUA_B64KEY + f"""
local HDR = {{["Content-Type"] = "application/json"}}
function req(tid, n)
  local k = math.random({self.nkeys})
  return wrk.format("POST", "/v3/kv/range", HDR, '{{"key":"' .. b64key(k) .. '"{self.extra}}}')
end
"""

    def request(self, cid, n, host):
        body = '{"key":"%s"%s}' % (_etcd_key(random.randint(1, self.nkeys)), self.extra)
        return _http_request("POST", "/v3/kv/range", host, body.encode())


class Static(Workload):
    """The same request every time (driver self-tests, health endpoints)."""

    def __init__(self, method: str = "GET", path: str = "/", body: bytes | None = None,
                 name: str = "static", check_body: bool = False):
        self.method, self.path, self.body, self.name = method, path, body, name
        self.check_body = check_body

    def lua_req(self) -> str:
        body = "nil" if self.body is None else _lua_str(self.body.decode())
        return f"""
local HDR = {{["Content-Type"] = "application/json"}}
local BODY = {body}
function req(tid, n)
  return wrk.format("{self.method}", {_lua_str(self.path)}, BODY and HDR or nil, BODY)
end
"""

    def request(self, cid, n, host):
        return _http_request(self.method, self.path, host, self.body)


# --------------------------------------------------------------------------- results

@dataclass
class LoadResult:
    driver: str
    workload: str
    connections: int
    duration_s: float
    requests: int
    errors: dict
    rps: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    driver_threads: int
    driver_cpu_s: float
    driver_cpu_frac: float
    driver_bound: bool
    server_cpu_frac: float | None = None
    notes: list = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error_count"] = self.error_count
        return d


def _finish(driver, wl, connections, wall, requests, ok, errors, pct_ms, cpu_s, threads,
            server_cpu_frac=None) -> LoadResult:
    """``requests``: attempts that got an answer or failed on the wire; ``ok``: answered
    with success (2xx, and no ``error`` in the body when the workload checks bodies)."""
    wall = max(wall, 1e-9)
    ok = max(0, ok)
    cpu_frac = cpu_s / wall
    res = LoadResult(
        driver=driver, workload=wl.name, connections=connections, duration_s=round(wall, 3),
        requests=requests, errors=errors, rps=round(ok / wall, 1),
        rows_per_s=round(ok * wl.rows_per_request / wall, 1),
        p50_ms=pct_ms["p50"], p90_ms=pct_ms["p90"], p99_ms=pct_ms["p99"],
        p999_ms=pct_ms["p999"], max_ms=pct_ms["max"], mean_ms=pct_ms["mean"],
        driver_threads=threads, driver_cpu_s=round(cpu_s, 3),
        driver_cpu_frac=round(cpu_frac, 3),
        driver_bound=cpu_frac >= DRIVER_BOUND_FRACTION * threads,
        server_cpu_frac=server_cpu_frac,
    )
    if res.driver_bound:
        res.notes.append(f"driver-bound: the driver used {cpu_frac:.0%} of a core per thread; "
                         "throughput is a lower bound")
    if requests and sum(errors.values()) > 0.01 * requests:
        res.notes.append(f"{sum(errors.values())} of {requests} requests failed: {errors}")
    return res


def percentiles_ms(samples_ns: list[int]) -> dict:
    """Nearest-rank percentiles in milliseconds (0.0 for an empty sample)."""
    if not samples_ns:
        return {k: 0.0 for k in ("p50", "p90", "p99", "p999", "max", "mean")}
    s = sorted(samples_ns)
    n = len(s)

    def rank(p):
        return s[min(n - 1, max(0, int(-(-p * n // 100)) - 1))] / 1e6

    return {"p50": round(rank(50), 3), "p90": round(rank(90), 3), "p99": round(rank(99), 3),
            "p999": round(rank(99.9), 3), "max": round(s[-1] / 1e6, 3),
            "mean": round(sum(s) / n / 1e6, 3)}


def _proc_cpu_s(pids) -> float:
    """User+system CPU seconds consumed so far by ``pids`` (missing ones count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


# --------------------------------------------------------------------------- wrk

_LUA_FRAME = """
local threads = {}
local nthreads = 0
setup = function(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end
init = function(args)
  n = 0
  apperr = 0
  math.randomseed(tid * 7919 + os.time())
end
%(body)s
request = function()
  n = n + 1
  if %(maxreq)d > 0 and n > %(maxreq)d then wrk.thread:stop() end
  return req(tid, n)
end
%(response)s
done = function(summary, latency, requests)
  local ae = 0
  for _, t in ipairs(threads) do ae = ae + (t:get("apperr") or 0) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"err_connect":%%d,"err_read":%%d,' ..
    '"err_write":%%d,"err_status":%%d,"err_timeout":%%d,"err_app":%%d,"p50_us":%%d,' ..
    '"p90_us":%%d,"p99_us":%%d,"p999_us":%%d,"max_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, ae,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""

_LUA_RESPONSE = """
response = function(status, headers, body)
  if status < 300 and body and string.find(body, '"error"', 1, true) then
    apperr = apperr + 1
  end
end
"""


def lua_script(wl: Workload, max_requests_per_thread: int = 0) -> str:
    return _LUA_FRAME % {"body": wl.lua_req(), "maxreq": max_requests_per_thread,
                         "response": _LUA_RESPONSE if wl.check_body else ""}


def run_wrk(base_url: str, wl: Workload, connections: int, duration_s: float,
            threads: int = 1, max_requests: int = DEFAULT_MAX_REQUESTS,
            watch_pids=()) -> LoadResult:
    """Run wrk once. wrk counts whole seconds, so the duration is rounded up."""
    if WRK is None:
        raise FileNotFoundError("wrk is not installed")
    threads = max(1, min(threads, connections))
    secs = max(1, int(-(-duration_s // 1)))
    per_thread = -(-max_requests // threads) if max_requests else 0
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = os.path.join(tmp, "load.lua")
        with open(script, "w") as f:
            f.write(lua_script(wl, per_thread))
        out_path = os.path.join(tmp, "out")
        cmd = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{secs}s",
               "--timeout", f"{int(REQUEST_TIMEOUT_S)}s", "-s", script, base_url]
        srv0 = _proc_cpu_s(watch_pids)
        t0 = time.monotonic()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=die_with_parent())
        # wait4 gives the child's own rusage: the driver's CPU, nothing else's.
        deadline = time.monotonic() + secs + REQUEST_TIMEOUT_S + 20
        try:
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, ru = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.02)
        except BaseException:  # interrupted (SIGTERM from the runner): leave no wrk behind
            proc.kill()
            os.wait4(proc.pid, 0)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        srv_frac = ((_proc_cpu_s(watch_pids) - srv0) / wall) if watch_pids else None
        with open(out_path, "rb") as f:
            text = f.read().decode(errors="replace")
    line = next((l for l in text.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {text[-2000:]}")
    w = json.loads(line[len("WRKJSON "):])
    errors = {k[4:]: w[k] for k in w if k.startswith("err_") and w[k]}
    # wrk's `requests` are completed responses: failed statuses and app errors are among
    # them; connect/read/write/timeout errors are not.
    ok = w["requests"] - w["err_status"] - w["err_app"]
    attempts = w["requests"] + w["err_read"] + w["err_write"] + w["err_timeout"]
    pct = {"p50": w["p50_us"] / 1e3, "p90": w["p90_us"] / 1e3, "p99": w["p99_us"] / 1e3,
           "p999": w["p999_us"] / 1e3, "max": w["max_us"] / 1e3,
           "mean": round(w["mean_us"] / 1e3, 3)}
    res = _finish("wrk", wl, connections, w["duration_us"] / 1e6, attempts, ok, errors, pct,
                  ru.ru_utime + ru.ru_stime, threads,
                  round(srv_frac, 3) if srv_frac is not None else None)
    return res


# --------------------------------------------------------------------------- asyncio

async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(None, 2)[1])
    length, chunked, close = None, False, False
    for h in lines[1:]:
        k, _, v = h.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
        elif k == b"connection" and v.strip().lower() == b"close":
            close = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size + 2))
        body = b"".join(p[:-2] for p in parts)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body, close = await reader.read(), True
    return status, body, close


async def _asyncio_load(host, port, wl, connections, duration_s, max_requests):
    lat: list[int] = []
    errors = {"connect": 0, "read": 0, "status": 0, "timeout": 0, "app": 0}
    sent = [0]
    hosthdr = f"{host}:{port}"
    deadline = time.monotonic() + duration_s

    async def worker(cid):
        reader = writer = None
        n = 0
        while time.monotonic() < deadline and sent[0] < max_requests:
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(host, port), REQUEST_TIMEOUT_S)
                except (OSError, asyncio.TimeoutError):
                    errors["connect"] += 1
                    await asyncio.sleep(0.05)
                    continue
            n += 1
            sent[0] += 1
            t0 = time.perf_counter_ns()
            try:
                writer.write(wl.request(cid, n, hosthdr))
                status, body, close = await asyncio.wait_for(_read_response(reader),
                                                             REQUEST_TIMEOUT_S)
            except asyncio.TimeoutError:
                errors["timeout"] += 1
                writer.close()
                writer = None
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors["read"] += 1
                writer.close()
                writer = None
                continue
            lat.append(time.perf_counter_ns() - t0)
            if status >= 300:
                errors["status"] += 1
            elif wl.check_body and b'"error"' in body:
                errors["app"] += 1
            if close:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(worker(i + 1)) for i in range(connections)]
    done, pending = await asyncio.wait(tasks, timeout=duration_s + REQUEST_TIMEOUT_S + 5)
    for t in pending:
        t.cancel()
    wall = time.monotonic() - t0
    for t in done:
        if t.exception() is not None:
            errors.setdefault("driver", 0)
            errors["driver"] += 1
    return lat, errors, wall


def _new_loop():
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:  # the asyncio driver still works, a bit slower
        return asyncio.new_event_loop()


def run_asyncio(base_url: str, wl: Workload, connections: int, duration_s: float,
                max_requests: int = DEFAULT_MAX_REQUESTS, watch_pids=()) -> LoadResult:
    """Run the built-in driver in this thread (one event loop, one core at most)."""
    u = urlsplit(base_url)
    host, port = u.hostname, u.port or 80
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    srv0 = _proc_cpu_s(watch_pids)
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        lat, errors, wall = runner.run(
            _asyncio_load(host, port, wl, connections, duration_s, max_requests))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    srv_frac = ((_proc_cpu_s(watch_pids) - srv0) / wall) if watch_pids else None
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    errors = {k: v for k, v in errors.items() if v}
    requests = len(lat) + errors.get("timeout", 0) + errors.get("read", 0)
    ok = len(lat) - errors.get("status", 0) - errors.get("app", 0)
    return _finish("asyncio", wl, connections, wall, requests, ok, errors, percentiles_ms(lat),
                   cpu, 1, round(srv_frac, 3) if srv_frac is not None else None)


def run_load(base_url: str, wl: Workload, connections: int, duration_s: float,
             driver: str = "auto", max_requests: int = DEFAULT_MAX_REQUESTS,
             watch_pids=()) -> LoadResult:
    """``driver``: ``wrk``, ``asyncio`` or ``auto`` (wrk when installed)."""
    if driver == "auto":
        driver = "wrk" if WRK else "asyncio"
    if driver == "wrk":
        return run_wrk(base_url, wl, connections, duration_s, max_requests=max_requests,
                       watch_pids=watch_pids)
    if driver == "asyncio":
        return run_asyncio(base_url, wl, connections, duration_s, max_requests=max_requests,
                           watch_pids=watch_pids)
    raise ValueError(f"unknown driver {driver!r} (wrk, asyncio or auto)")


WORKLOADS = {
    "insert": lambda a: RqliteInsert(a.table),
    "bulk": lambda a: RqliteBulk(a.table, a.rows),
    "query": lambda a: RqliteQuery(a.table, a.nrows, a.level),
    "mix": lambda a: Mix(RqliteQuery(a.table, a.nrows, a.level), RqliteInsert(a.table)),
    "etcd_put": lambda a: EtcdPut(),
    "etcd_get": lambda a: EtcdRange(a.nrows, a.level == "none"),
    "static": lambda a: Static("GET", a.path),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="base URL, e.g. http://127.0.0.1:4001")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="insert")
    p.add_argument("-c", "--connections", type=int, default=16)
    p.add_argument("-d", "--duration", type=float, default=5.0)
    p.add_argument("--driver", choices=["auto", "wrk", "asyncio"], default="auto")
    p.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS)
    p.add_argument("--table", default="bench")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--nrows", type=int, default=1000)
    p.add_argument("--level", default="none")
    p.add_argument("--path", default="/")
    a = p.parse_args(argv)
    res = run_load(a.url, WORKLOADS[a.workload](a), a.connections, a.duration, a.driver,
                   a.max_requests)
    print(json.dumps(res.to_dict()))


if __name__ == "__main__":
    main()
