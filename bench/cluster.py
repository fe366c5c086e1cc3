"""Start and stop a local raftsqlite group for benchmarks: real processes on 127.0.0.1,
free ports, data in a temporary directory, stopped by PID.

Members run as ``sys.executable -m raftsqlite -id ID -data DIR -http ADDR -raft ADDR
[-join HTTPADDR]`` with PYTHONPATH set to the directory holding the ``raftsqlite``
package (this checkout unless ``root`` says otherwise).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from raftsqlite.testing.procs import die_with_parent

from .peers import ProcessGroup, free_ports

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(root: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                  else []))
    return env


def available(root: str = REPO_ROOT) -> tuple[bool, str]:
    """Whether ``python -m raftsqlite`` exists and answers ``--help`` in ``root``."""
    if not os.path.exists(os.path.join(root, "raftsqlite", "__main__.py")):
        return False, f"no runnable raftsqlite node in {root} (raftsqlite/__main__.py missing)"
    try:
        out = subprocess.run([sys.executable, "-m", "raftsqlite", "--help"], cwd=root,
                             env=_env(root), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"python -m raftsqlite --help failed: {e}"
    if out.returncode != 0:
        return False, f"python -m raftsqlite --help exited {out.returncode}: {out.stderr[-300:]}"
    return True, ""


def http(method: str, url: str, body=None, timeout: float = 5.0) -> tuple[int, object]:
    """One request; returns (status, parsed JSON or text). Never raises for HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class RaftsqliteCluster(ProcessGroup):
    def __init__(self, size: int = 3, root: str = REPO_ROOT, workdir: str | None = None,
                 extra_args: tuple = ()):
        self.size, self.root, self.extra_args = size, root, tuple(extra_args)
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="bench-raftsqlite-")
        self.procs: list[subprocess.Popen] = []
        self.http_addrs: list[str] = []
        self.raft_addrs: list[str] = []
        self._logs = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def urls(self) -> list[str]:
        return [f"http://{a}" for a in self.http_addrs]

    def _spawn(self, i: int, join: str | None):
        log = open(os.path.join(self.workdir, f"n{i + 1}.log"), "wb")
        self._logs.append(log)
        cmd = [sys.executable, "-m", "raftsqlite", "-id", f"n{i + 1}",
               "-data", os.path.join(self.workdir, f"n{i + 1}"),
               "-http", self.http_addrs[i], "-raft", self.raft_addrs[i], *self.extra_args]
        if join:
            cmd += ["-join", join]
        self.procs.append(subprocess.Popen(cmd, cwd=self.root, env=_env(self.root), stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           preexec_fn=die_with_parent()))

    def _check_alive(self):
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                raise RuntimeError(f"raftsqlite member n{i + 1} exited with {p.returncode}; "
                                   f"log: {self.log_tail(i)}")

    def _wait(self, cond, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if cond():
                    return
            except (OSError, ValueError, KeyError, TypeError) as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"{what} not reached within {timeout}s (last error: {last}); "
                           f"logs in {self.workdir}")

    def _ready(self, i: int) -> bool:
        return http("GET", self.urls[i] + "/readyz", timeout=2)[0] == 200

    def start(self, timeout: float = 60.0) -> "RaftsqliteCluster":
        ports = free_ports(2 * self.size)
        self.http_addrs = [f"127.0.0.1:{ports[2 * i]}" for i in range(self.size)]
        self.raft_addrs = [f"127.0.0.1:{ports[2 * i + 1]}" for i in range(self.size)]
        try:
            self._spawn(0, None)
            self._wait(lambda: self._ready(0), timeout, "first member ready")
            for i in range(1, self.size):
                self._spawn(i, self.http_addrs[0])
            for i in range(1, self.size):
                self._wait(lambda i=i: self._ready(i), timeout, f"member n{i + 1} ready")
            self._wait(lambda: self.leader_url() is not None, timeout, "a leader")
            self._wait(self._all_members_known, timeout, f"{self.size} members")
        except BaseException:
            self.stop()
            raise
        return self

    def _all_members_known(self) -> bool:
        status, body = http("GET", self.urls[0] + "/nodes", timeout=2)
        if status != 200:
            return True  # cannot tell; /readyz on every member already passed
        nodes = body.get("nodes", body) if isinstance(body, dict) else body
        return len(nodes) >= self.size

    def leader_url(self) -> str | None:
        """HTTP URL of the leader, from /nodes (rqlite shape) or /status."""
        for url in self.urls:
            try:
                status, body = http("GET", url + "/nodes", timeout=2)
            except OSError:
                continue
            if status == 200 and isinstance(body, (dict, list)):
                nodes = body.get("nodes", body) if isinstance(body, dict) else body
                items = nodes.values() if isinstance(nodes, dict) else nodes
                for n in items:
                    if isinstance(n, dict) and n.get("leader"):
                        api = n.get("api_addr") or n.get("http_addr")
                        if api:
                            return api if api.startswith("http") else f"http://{api}"
            status, body = http("GET", url + "/status", timeout=2)
            if status == 200 and isinstance(body, dict):
                store = body.get("store", body)
                leader = store.get("leader") or {}
                lid = leader.get("node_id") if isinstance(leader, dict) else leader
                if lid and lid.startswith("n") and lid[1:].isdigit():
                    idx = int(lid[1:]) - 1
                    if 0 <= idx < self.size:
                        return self.urls[idx]
        return None

    def execute(self, statements: list, timeout: float = 30.0, transaction: bool = False):
        """Run statements through the leader; raises if any statement failed."""
        url = self.leader_url() or self.urls[0]
        path = "/db/execute" + ("?transaction" if transaction else "")
        status, body = http("POST", url + path, statements, timeout=timeout)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"execute failed: HTTP {status}: {str(body)[:300]}")
        errs = [r["error"] for r in body.get("results", []) if "error" in r]
        if errs or "error" in body:
            raise RuntimeError(f"execute failed: {errs or body['error']}")
        return body

    def fill(self, table: str, nrows: int, batch: int = 1000, timeout: float = 120.0):
        """Create ``table(id INTEGER PRIMARY KEY, v TEXT)`` holding ids 1..nrows."""
        self.execute([[f"CREATE TABLE IF NOT EXISTS {table}(id INTEGER PRIMARY KEY, v TEXT)"]])
        deadline = time.monotonic() + timeout
        done = 0
        while done < nrows and time.monotonic() < deadline:
            n = min(batch, nrows - done)
            self.execute([[f"INSERT OR REPLACE INTO {table}(id, v) VALUES(?, ?)", done + i + 1,
                           f"row-{done + i + 1}"] for i in range(n)], transaction=True)
            done += n
        if done < nrows:
            raise TimeoutError(f"filled only {done} of {nrows} rows in {timeout}s")

    def log_tail(self, i: int, n: int = 800) -> str:
        try:
            with open(os.path.join(self.workdir, f"n{i + 1}.log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""
