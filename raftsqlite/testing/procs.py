"""Real raft-sqlite processes for tests and benchmarks: started on 127.0.0.1 on free ports,
stopped by PID (never by name)."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

# The checkout (or site-packages) holding the raftsqlite package: members run from there.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stop_procs(procs, timeout: float = 15.0, *, shared_deadline: bool = False) -> None:
    """SIGTERM every process in ``procs`` still running, then wait for each; one still
    alive when its wait ends is killed. The graceful signal goes to all first so members
    shut down in parallel. Each process waits up to ``timeout`` seconds, or with
    ``shared_deadline`` all of them share one ``timeout`` (at least 0.1 s each)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()) if shared_deadline else timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


_PR_SET_PDEATHSIG = 1
_libc = None


def die_with_parent(sig=signal.SIGTERM):
    """A ``preexec_fn`` for Popen: the child receives ``sig`` when its parent dies, even
    by SIGKILL or a runner's timeout (Linux ``PR_SET_PDEATHSIG``), so no member outlives
    the harness that started it. None (no effect) elsewhere, and off the main thread:
    the signal fires when the *thread* that forked ends, which for a worker thread would
    be long before the harness is done."""
    global _libc
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    if _libc is None:
        import ctypes
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    parent = os.getpid()

    def preexec():
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:      # the parent died before the line above
            os.kill(os.getpid(), sig)
    return preexec


_handed_out = set()
_rng = random.Random()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port():
    """A port on 127.0.0.1 that was free a moment ago, chosen below the kernel's
    ephemeral range and never twice in this process. A port from ``bind(0)`` is an
    ephemeral one, which any outgoing connection (a member dialling a peer, a test
    client) may take as its local port before the process meant to listen there binds
    it ("address already in use" at a nemesis start); below that range only listeners
    compete, and the harness retries a first start on a clash (``is_bind_clash``)."""
    low = _ephemeral_low()
    if low > 2048:
        lo = max(1024, low - 12000)
        for _ in range(200):
            port = _rng.randrange(lo, low)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        _handed_out.add(port)
        return port


def is_bind_clash(log_text: str) -> bool:
    """Whether a member's log says it could not listen because the port was taken."""
    t = log_text.lower()
    return "address already in use" in t or "errno 98" in t


def http(method, url, body=None, timeout=10, ctype="application/json"):
    """One request; ``body`` is sent as is when bytes, else as JSON. Returns (status, raw
    body); an HTTP error status is returned, not raised."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class NodeCluster:
    """``n`` raft-sqlite processes (``python -m raftsqlite``) on 127.0.0.1, each joining the
    first; every one started here is stopped here, by PID. Logs stay in ``workdir``."""

    def __init__(self, n, workdir, cwd=ROOT, extra_args=()):
        self.n, self.workdir, self.cwd = n, workdir, cwd
        self.extra_args = list(extra_args)   # appended to every member's command line
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
            cmd += self.extra_args
            log = open(os.path.join(self.workdir, f"node{i + 1}.log"), "wb")
            self.procs.append(subprocess.Popen(cmd, cwd=self.cwd, stdout=log, stderr=log,
                                               preexec_fn=die_with_parent()))
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
