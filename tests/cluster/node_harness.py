"""A small harness for real ``raft-sqlite`` processes on 127.0.0.1 (used by the node's
cluster tests and by bench/node_bench.py). Everything it starts it stops, by PID."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

from raftsqlite.testing.procs import die_with_parent, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def wait_for(cond, timeout, what="condition", interval=0.05):
    """Poll ``cond`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # the condition may fail while nodes start
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


def call(addr, method, path, body=None, *, timeout=10.0, headers=None, raw=False):
    """One HTTP request; returns (status, parsed JSON or text or bytes)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=timeout)
    try:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    if raw:
        return r.status, data
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data.decode("utf-8", "replace")


def execute(addr, statements, *, timeout=10.0, params=""):
    return call(addr, "POST", "/db/execute" + params, statements, timeout=timeout,
                headers={"Content-Type": "application/json"})


def query(addr, sql, *, level="none", timeout=10.0):
    q = urllib.parse.urlencode({"q": sql, "level": level})
    return call(addr, "GET", f"/db/query?{q}", timeout=timeout)


def values(addr, sql, level="none"):
    st, body = query(addr, sql, level=level)
    if st != 200:
        raise AssertionError(f"query failed: {st} {body}")
    r = body["results"][0]
    if "error" in r:
        raise AssertionError(r["error"])
    return r.get("values", [])


class NodeProc:
    def __init__(self, workdir, node_id, http_port, raft_port, join=(), extra=()):
        self.node_id = node_id
        self.data = os.path.join(workdir, node_id)
        self.http_port = http_port
        self.raft_port = raft_port
        self.http = f"127.0.0.1:{http_port}"
        self.join = list(join)
        self.extra = list(extra)
        self.log_path = os.path.join(workdir, f"{node_id}.log")
        self.proc = None

    def argv(self):
        a = [sys.executable, "-m", "raftsqlite", "-id", self.node_id, "-data", self.data,
             "-http", f"127.0.0.1:{self.http_port}", "-raft", f"127.0.0.1:{self.raft_port}"]
        if self.join:
            a += ["-join", ",".join(self.join)]
        return a + self.extra

    def start(self, argv=None):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv or self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                     env=env, cwd=os.path.dirname(self.data),
                                     preexec_fn=die_with_parent())
        log.close()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout=15):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def status(self):
        st, body = call(self.http, "GET", "/status", timeout=3)
        return body if st == 200 else None

    def is_leader(self):
        s = self.status()
        return bool(s and s["store"].get("is_leader"))

    def ready(self):
        st, _ = call(self.http, "GET", "/readyz", timeout=3)
        return st == 200

    def tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""


class Cluster:
    def __init__(self, workdir, n=3, extra=(), verbatim=False):
        self.workdir = workdir
        self.nodes = []
        ports = [(11000 + i, 12000 + i) for i in range(n)]
        if not (verbatim and all(port_free(p) for pair in ports for p in pair)):
            ports = [(free_port(), free_port()) for _ in range(n)]
        self.verbatim = verbatim and ports[0][0] == 11000
        for i, (hp, rp) in enumerate(ports):
            join = [] if i == 0 else [f"localhost:{ports[0][0]}"]
            self.nodes.append(NodeProc(workdir, f"node{i + 1}", hp, rp, join, extra))

    def start(self, timeout=30):
        first = self.nodes[0].start()
        wait_for(first.ready, timeout, "node1 ready")
        for n in self.nodes[1:]:
            n.start()
        for n in self.nodes[1:]:
            wait_for(n.ready, timeout, f"{n.node_id} ready")
        self.wait_members(len(self.nodes), timeout)
        return self

    def wait_members(self, count, timeout=30):
        def ok():
            s = self.leader().status()
            return s and sum(1 for m in s["store"]["members"] if m["voter"]) >= count
        wait_for(ok, timeout, f"{count} voters")

    def leader(self, timeout=15):
        return wait_for(lambda: next((n for n in self.nodes if n.alive() and n.is_leader()),
                                     None), timeout, "a leader")

    def stop(self):
        for n in self.nodes:
            n.kill()

    def logs(self):
        return "\n".join(f"--- {n.node_id}\n{n.tail()}" for n in self.nodes)
