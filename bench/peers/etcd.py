"""A 3-member etcd cluster on loopback, data in a temporary directory, fsync on (etcd
always fsyncs its WAL; 3.4 has no switch to turn that off). Writes go through etcd's
HTTP/JSON gateway (``POST /v3/kv/put``) so they are measured by the same HTTP driver as
raftsqlite.

    with EtcdCluster(3) as c:
        url = c.leader_url()
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from raftsqlite.testing.procs import die_with_parent

from . import ProcessGroup, free_ports

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)


def available() -> tuple[bool, str]:
    if ETCD is None:
        return False, "etcd is not installed (Debian package etcd-server); etcd peer skipped"
    return True, ""


def version() -> str | None:
    if ETCD is None:
        return None
    try:
        out = subprocess.run([ETCD, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0].split(":", 1)[1].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def _post(url: str, body: dict, timeout: float = 2.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class EtcdCluster(ProcessGroup):
    stop_timeout = 10.0

    def __init__(self, size: int = 3, workdir: str | None = None):
        ok, why = available()
        if not ok:
            raise FileNotFoundError(why)
        self.size = size
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="bench-etcd-")
        self.procs: list[subprocess.Popen] = []
        self.client_urls: list[str] = []
        self._logs = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        ports = free_ports(2 * self.size)
        names = [f"m{i}" for i in range(self.size)]
        peer = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(self.size)]
        self.client_urls = [f"http://127.0.0.1:{ports[2 * i]}" for i in range(self.size)]
        initial = ",".join(f"{n}={u}" for n, u in zip(names, peer))
        token = f"bench-{os.getpid()}-{int(time.time())}"
        for i, name in enumerate(names):
            log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
            self._logs.append(log)
            cmd = [ETCD, "--name", name, "--data-dir", os.path.join(self.workdir, name),
                   "--listen-client-urls", self.client_urls[i],
                   "--advertise-client-urls", self.client_urls[i],
                   "--listen-peer-urls", peer[i], "--initial-advertise-peer-urls", peer[i],
                   "--initial-cluster", initial, "--initial-cluster-state", "new",
                   "--initial-cluster-token", token,
                   "--logger", "zap", "--log-level", "warn"]
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True,
                                               preexec_fn=die_with_parent()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"etcd member exited with {dead[0].returncode}; "
                                   f"logs in {self.workdir}")
            try:
                self.leader_url()
                # A put through the gateway proves the whole write path is up.
                _post(self.leader_url() + "/v3/kv/put",
                      {"key": "cmVhZHk=", "value": "MQ=="}, timeout=2)
                return self
            except (OSError, ValueError, KeyError, RuntimeError):
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"etcd cluster not ready within {timeout}s")

    def leader_url(self) -> str:
        """Client URL of the current leader (asked of each member in turn)."""
        for url in self.client_urls:
            try:
                st = _post(url + "/v3/maintenance/status", {}, timeout=1)
            except (OSError, ValueError):
                continue
            if st.get("leader") and st["leader"] == st.get("header", {}).get("member_id"):
                return url
        raise RuntimeError("no etcd leader yet")
