"""Real raft-sqlite processes on 127.0.0.1 for the end-to-end client tests. Everything
started here is stopped here, by PID."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from raftsqlite.testing.procs import stop_procs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=10, ctype="application/json"):
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def node_available():
    try:
        import raftsqlite.node  # noqa: F401
        import raftsqlite.raft.driver  # noqa: F401
        return True
    except ImportError:
        return False


class LocalCluster:
    def __init__(self, n, workdir):
        self.n, self.workdir = n, workdir
        self.procs, self.http = [], []

    def start(self, timeout=60):
        first = None
        for i in range(self.n):
            addr = f"127.0.0.1:{free_port()}"
            cmd = [sys.executable, "-m", "raftsqlite", "-id", f"node{i + 1}",
                   "-data", os.path.join(self.workdir, f"node{i + 1}"), "-http", addr,
                   "-raft", f"127.0.0.1:{free_port()}"]
            if first:
                cmd += ["-join", first]
            log = open(os.path.join(self.workdir, f"node{i + 1}.log"), "wb")
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log))
            self.http.append(addr)
            first = first or addr
            self._wait(lambda: http("GET", f"http://{addr}/readyz", timeout=2)[0] == 200,
                       timeout, f"{addr} ready")
        self._wait(lambda: len(json.loads(http("GET", f"http://{first}/nodes")[1])) == self.n,
                   timeout, "all members listed")
        return self

    def _wait(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"node exited (code {p.returncode}); logs in "
                                       f"{self.workdir}")
            try:
                if cond():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.workdir}")

    def leader(self):
        _, body = http("GET", f"http://{self.http[0]}/leader")
        return json.loads(body)["api_addr"].split("://", 1)[1]

    def follower(self):
        lead = self.leader()
        return next(a for a in self.http if a != lead)

    def stop(self):
        stop_procs(self.procs, 15)
