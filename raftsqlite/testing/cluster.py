"""LocalCluster: real ``raft-sqlite`` processes on 127.0.0.1, with faults on demand.

Each member listens on its own free ports; when ``proxy`` is on, it advertises the
port of a fault proxy (``-raft-adv``, and ``-http-adv`` for peer HTTP forwarding) so
every connection between members passes through :class:`~.proxy.FaultNetwork`, while
test clients talk to the real HTTP port. The harness can ``kill -9`` a member and
restart it from its data directory, pause it (SIGSTOP/SIGCONT), partition, delay or
drop traffic, and restart every member at once.

Processes are started with ``sys.executable -m raftsqlite`` and a PYTHONPATH naming the
directory that holds the imported ``raftsqlite`` package, so the harness works from a
source tree and from an installed wheel alike. Everything started is stopped by PID
(``stop()``, and an ``atexit`` guard for PIDs a crashed test left behind). Each
member's stdout/stderr go to ``<workdir>/logs/<id>.log``, one header line per start.
"""
from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

import raftsqlite
from raftsqlite import errors

from .procs import die_with_parent, free_port, is_bind_clash  # noqa: F401 (tests import it)
from .proxy import FaultNetwork, Proxy

_STARTED_PIDS: set[int] = set()


def _kill_leftovers() -> None:
    for pid in list(_STARTED_PIDS):
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


atexit.register(_kill_leftovers)


def package_root() -> str:
    """Directory to put on PYTHONPATH so children import this same raftsqlite."""
    return str(Path(raftsqlite.__file__).resolve().parent.parent)


@dataclass
class Member:
    id: str
    http_port: int
    raft_port: int
    data_dir: Path
    log_path: Path
    raft_proxy: Proxy | None = None
    http_proxy: Proxy | None = None
    proc: subprocess.Popen | None = None
    paused: bool = False
    starts: int = 0
    join: list = field(default_factory=list)

    @property
    def http_addr(self) -> str:
        """The real HTTP address: what test clients use (never proxied)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    @property
    def raft_adv(self) -> str:
        return self.raft_proxy.addr if self.raft_proxy else f"127.0.0.1:{self.raft_port}"

    @property
    def http_adv(self) -> str:
        return self.http_proxy.addr if self.http_proxy else self.http_addr

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def available(self) -> bool:
        """Running and not paused: may answer requests."""
        return self.alive and not self.paused


class NodeCannotStart(errors.RaftSQLiteError):
    """The node under test exited or never became ready; the message quotes its log."""

    code = "node_cannot_start"


class LocalCluster:
    """A group of ``size`` real members. Use as ``async with LocalCluster(3) as c:``.

    ``extra_args`` are appended to every member's command line; ``shard`` starts the
    members as shard group ``shard`` (issue #8 item 4: a sharded topology is several
    LocalClusters, the shard groups joining through the default group's members via
    ``join``).
    """

    def __init__(self, size: int = 3, workdir: str | Path | None = None, *,
                 proxy: bool = True, proxy_http: bool = True, seed: int | None = None,
                 extra_args=(), env: dict | None = None, prefix: str = "n",
                 shard: str | None = None, join: list | None = None,
                 start_timeout: float = 30.0, python: str = sys.executable,
                 network: FaultNetwork | None = None, pythonpath: str | None = None):
        if size < 1:
            raise errors.ConfigError(f"cluster size must be >= 1, got {size}")
        self.size = size
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="raftsqlite-cluster-"))
        self.proxy = proxy
        self.proxy_http = proxy and proxy_http
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.shard = shard
        self.external_join = list(join or [])
        self.start_timeout = start_timeout
        self.python = python
        # Which raftsqlite the members run: this one by default; RAFTSQLITE_NODE_PATH
        # (or ``pythonpath``) points the harness at another build or source tree.
        self.pythonpath = pythonpath or os.environ.get("RAFTSQLITE_NODE_PATH") or package_root()
        # A network shared by several groups (a sharded topology) is closed by its owner.
        self._own_network = network is None
        self.net = network or FaultNetwork(seed=seed)
        self.members: dict[str, Member] = {}
        self.session: aiohttp.ClientSession | None = None
        self.counters = {"starts": 0, "kills": 0, "pauses": 0, "restarts_all": 0,
                         "members_added": 0, "members_removed": 0, "members_readded": 0}
        self.prefix = prefix
        #: Members removed from the group (stopped; kept for their logs and stats).
        self.retired: list[Member] = []
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        for i in range(size):
            self._new_member(f"{prefix}{i + 1}")

    def _new_member(self, mid: str) -> Member:
        m = self.members[mid] = Member(mid, free_port(), free_port(), self.workdir / mid,
                                       self.workdir / "logs" / f"{mid}.log")
        return m

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> "LocalCluster":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> Member:
        """Start the first member, wait until it leads, then join the others one by one."""
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5),
            connector=aiohttp.TCPConnector(limit=64, force_close=True))
        if self.proxy:
            for m in self.members.values():
                m.raft_proxy = await self.net.add_proxy(m.id, m.raft_port, kind="raft")
                if self.proxy_http:
                    m.http_proxy = await self.net.add_proxy(m.id, m.http_port, kind="http")
        try:
            ms = list(self.members.values())
            first = ms[0]
            first.join = list(self.external_join)
            await self.start_new_member(first)
            await self.wait_for_leader(timeout=self.start_timeout, quorum=1)
            await self.after_first(first)
            for m in ms[1:]:
                m.join = list(self.external_join) or [first.http_addr]
                await self.start_new_member(m)
            await self.wait_members(timeout=self.start_timeout)
            return await self.wait_for_leader(timeout=self.start_timeout)
        except BaseException:
            await self.stop()
            raise

    async def start_new_member(self, m: Member, attempts: int = 4) -> None:
        """First start of ``m``, until ready. A port picked free can still be taken by
        another process before the member binds it; nobody knows a member's address
        before its first start, so on such a clash it starts again, from an empty data
        directory, on new ports (its proxies forward to them)."""
        for i in range(attempts):
            try:
                await self.start_member(m)
                await self.wait_ready(m)
                return
            except NodeCannotStart:
                if (i == attempts - 1 or m.starts != 1 or m.alive
                        or not is_bind_clash(self.log_tail(m, 60))):
                    raise
            m.http_port, m.raft_port = free_port(), free_port()
            for p, port in ((m.raft_proxy, m.raft_port), (m.http_proxy, m.http_port)):
                if p is not None:
                    p.upstream_port = port
            shutil.rmtree(m.data_dir, ignore_errors=True)
            m.starts = 0
            self.counters["port_clash_retries"] = self.counters.get("port_clash_retries", 0) + 1

    async def after_first(self, first: Member) -> None:
        """Hook run once the first member leads, before the others start."""

    def argv(self, m: Member) -> list[str]:
        args = [self.python, "-m", "raftsqlite", "-id", m.id, "-data", str(m.data_dir),
                "-http", m.http_addr, "-raft", f"127.0.0.1:{m.raft_port}",
                "-http-adv", m.http_adv, "-raft-adv", m.raft_adv]
        if self.shard:
            args += ["-shard", self.shard]
        if m.join and m.starts == 0:
            args += ["-join", ",".join(m.join)]
        return args + self.extra_args

    async def start_member(self, m: Member) -> None:
        if m.alive:
            return
        for p in (m.raft_proxy, m.http_proxy):
            if p is not None:
                try:
                    await p.up()
                except OSError as e:
                    raise NodeCannotStart(f"{m.id}: its proxy port {p.listen_port} was "
                                          f"taken while it was down: {e}") from None
        m.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = self.pythonpath + (os.pathsep + env["PYTHONPATH"]
                                               if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        argv = self.argv(m)
        with open(m.log_path, "ab") as log:
            log.write(f"\n=== start #{m.starts + 1} at {time.time():.3f}: "
                      f"{' '.join(argv)}\n".encode())
            log.flush()
            m.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=str(self.workdir), start_new_session=True,
                                      preexec_fn=die_with_parent())
        _STARTED_PIDS.add(m.proc.pid)
        self.net.pids[m.id] = m.proc.pid
        m.paused = False
        m.starts += 1
        self.counters["starts"] += 1

    async def wait_ready(self, m: Member, timeout: float | None = None) -> None:
        """Until the member's HTTP API answers ``/status`` (a leader is not required)."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if not m.alive:
                raise NodeCannotStart(f"{m.id} exited with {m.proc.returncode if m.proc else None}"
                                      f"; its log ({m.log_path}) ends:\n{self.log_tail(m)}")
            if await self.status(m) is not None:
                return
            await asyncio.sleep(0.1)
        raise NodeCannotStart(f"{m.id} did not answer /status within "
                              f"{timeout or self.start_timeout}s; its log ({m.log_path}) "
                              f"ends:\n{self.log_tail(m)}")

    async def stop(self) -> None:
        """Stop every member by PID (SIGTERM, then SIGKILL), then the proxies."""
        for m in self.retired:
            self.kill(m)
        for m in self.members.values():
            if m.alive:
                try:
                    if m.paused:
                        os.kill(m.pid, signal.SIGCONT)
                    m.proc.terminate()
                except OSError:
                    pass
        deadline = time.monotonic() + 10
        for m in self.members.values():
            if m.proc is None:
                continue
            while m.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait(5)
            _STARTED_PIDS.discard(m.proc.pid)
            m.paused = False
        if self._own_network:
            await self.net.close()
        if self.session is not None:
            await self.session.close()
            self.session = None

    def cleanup(self) -> None:
        """Remove the work directory if the harness created it."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- membership ----------------------------------------------------------------------
    async def node_ids(self, via: Member, timeout: float = 3.0) -> set[str] | None:
        """The voters ``via`` lists in ``/nodes`` (None if it did not answer)."""
        if not via.available or self.session is None:
            return None
        try:
            async with self.session.get(f"{via.url}/nodes?ver=2",
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                doc = await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        nodes = doc.get("nodes", doc) if isinstance(doc, dict) else doc
        if isinstance(nodes, dict):
            nodes = [dict(v, id=k) for k, v in nodes.items()]
        if not isinstance(nodes, list):
            return None
        return {n.get("id") for n in nodes if isinstance(n, dict) and n.get("voter", True)}

    async def remove_member(self, m: Member, timeout: float = 30.0, stop: bool = True) -> dict:
        """``DELETE /remove`` of ``m`` through the other members (retried: an answer lost
        to a fault leaves the outcome unknown) until the leader no longer lists it;
        then ``m`` is retired and, if ``stop``, killed (-9); else it keeps running (as
        a node an operator has not shut down yet) until :meth:`stop_retired`.
        -> {"attempts", "seconds"}."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        attempts = 0
        others = [o for o in self.members.values() if o.id != m.id]
        while True:
            leader = await self.current_leader()
            if leader is not None and leader.id != m.id:
                ids = await self.node_ids(leader)
                if ids is not None and m.id not in ids:
                    break
            via = [o for o in others if o.available] or others
            o = via[attempts % len(via)]
            attempts += 1
            try:
                async with self.session.delete(
                        f"{o.url}/remove", data=f'{{"id": "{m.id}"}}',
                        headers={"Content-Type": "application/json"},
                        timeout=aiohttp.ClientTimeout(total=5)) as r:
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise errors.Timeout(f"{m.id} still a member {timeout}s after DELETE /remove "
                                     f"(logs in {self.workdir / 'logs'})")
            await asyncio.sleep(0.2)
        if stop:
            self.kill(m)
        del self.members[m.id]
        self.retired.append(m)
        self.counters["members_removed"] += 1
        return {"attempts": attempts, "seconds": round(time.monotonic() - t0, 2)}

    def stop_retired(self) -> None:
        for m in self.retired:
            self.resume(m)
            self.kill(m)

    async def _join(self, m: Member, timeout: float) -> None:
        m.join = [o.http_addr for o in self.members.values() if o.id != m.id and o.available]
        m.starts = 0
        if self.proxy:
            m.raft_proxy = m.raft_proxy or await self.net.add_proxy(m.id, m.raft_port,
                                                                    kind="raft")
            if self.proxy_http:
                m.http_proxy = m.http_proxy or await self.net.add_proxy(m.id, m.http_port,
                                                                        kind="http")
        await self.start_new_member(m)
        deadline = time.monotonic() + timeout
        while True:
            leader = await self.current_leader()
            ids = await self.node_ids(leader) if leader is not None else None
            if ids is not None and m.id in ids:
                return
            if time.monotonic() > deadline:
                raise errors.Timeout(f"{m.id} not a voter {timeout}s after its -join "
                                     f"(logs in {self.workdir / 'logs'})")
            await asyncio.sleep(0.2)

    async def add_member(self, timeout: float = 30.0) -> Member:
        """A fresh member (new id, ports, empty data directory) joins with ``-join``
        through the current members; returns once the leader lists it as a voter."""
        n = len(self.members) + len(self.retired) + 1
        while f"{self.prefix}{n}" in self.members or any(r.id == f"{self.prefix}{n}"
                                                         for r in self.retired):
            n += 1
        m = self._new_member(f"{self.prefix}{n}")
        await self._join(m, timeout)
        self.counters["members_added"] += 1
        return m

    async def readd_member(self, m: Member, timeout: float = 30.0) -> Member:
        """Bring a removed member back under its old id with a wiped data directory
        (a replaced machine), joining with ``-join``."""
        self.retired.remove(m)
        self.kill(m)
        shutil.rmtree(m.data_dir, ignore_errors=True)
        self.members[m.id] = m
        await self._join(m, timeout)
        self.counters["members_readded"] += 1
        return m

    async def transfer_leadership(self, to: Member | None, via: Member) -> int | None:
        """``POST /leader`` (to ``to``, or to any member when None) through ``via``;
        returns the HTTP status (None if there was no answer)."""
        body = f'{{"id": "{to.id}"}}' if to is not None else "{}"
        try:
            async with self.session.post(f"{via.url}/leader", data=body,
                                         headers={"Content-Type": "application/json"},
                                         timeout=aiohttp.ClientTimeout(total=5)) as r:
                await r.read()
                return r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None

    # -- faults --------------------------------------------------------------------------
    def kill(self, m: Member) -> None:
        """``kill -9``: the process loses everything it had not made durable."""
        if not m.alive:
            return
        os.kill(m.pid, signal.SIGKILL)
        m.proc.wait(10)
        _STARTED_PIDS.discard(m.proc.pid)
        self.net.pids[m.id] = None
        m.paused = False
        self.counters["kills"] += 1
        for p in (m.raft_proxy, m.http_proxy):
            if p is not None:
                p.down()                # refused while dead; its connections are gone

    async def restart(self, m: Member, wait: bool = True) -> None:
        """Start a stopped member again from its data directory (no ``-join``)."""
        if m.alive:
            self.resume(m)
            return
        await self.start_member(m)
        if wait:
            await self.wait_ready(m)

    def pause(self, m: Member) -> None:
        if m.alive and not m.paused:
            os.kill(m.pid, signal.SIGSTOP)
            m.paused = True
            self.counters["pauses"] += 1

    def resume(self, m: Member) -> None:
        if m.alive and m.paused:
            os.kill(m.pid, signal.SIGCONT)
            m.paused = False

    async def restart_all(self) -> None:
        """``kill -9`` every member at once, then start them all again."""
        for m in self.members.values():
            self.kill(m)
        self.counters["restarts_all"] += 1
        for m in self.members.values():
            await self.start_member(m)
        for m in self.members.values():
            await self.wait_ready(m)

    async def heal(self) -> None:
        """Undo every fault: network rules cleared, paused resumed, dead restarted."""
        self.net.heal()
        for m in self.members.values():
            self.resume(m)
        for m in self.members.values():
            if not m.alive:
                await self.restart(m, wait=False)
        for m in self.members.values():
            await self.wait_ready(m)

    # -- observation ---------------------------------------------------------------------
    async def status(self, m: Member, timeout: float = 2.0) -> dict | None:
        if not m.available or self.session is None:
            return None
        try:
            async with self.session.get(f"{m.url}/status",
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status != 200:
                    return None
                return await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    @staticmethod
    def leader_view(doc: dict | None) -> tuple[bool, str | None]:
        """(this member says it leads, the leader id it knows) from a /status document."""
        if not doc:
            return False, None
        store = doc.get("store") or {}
        raft = store.get("raft") or {}
        state = str(raft.get("state", "")).lower()
        leader = store.get("leader") or {}
        lid = leader.get("node_id") or leader.get("id") if isinstance(leader, dict) else None
        return state == "leader", lid or None

    async def current_leader(self, quorum: int | None = None) -> Member | None:
        """The member that says it leads and that ``quorum`` members (a majority of the
        cluster by default) name as leader, itself included."""
        docs = await asyncio.gather(*(self.status(m, 1.0) for m in self.members.values()))
        claims, votes = [], {}
        for m, doc in zip(self.members.values(), docs):
            leads, lid = self.leader_view(doc)
            if leads:
                claims.append(m.id)
            if lid:
                votes[lid] = votes.get(lid, 0) + 1
        quorum = quorum or len(self.members) // 2 + 1
        for mid in claims:
            if max(votes.get(mid, 0), 1) >= quorum:
                return self.members[mid]
        return None

    async def wait_for_leader(self, timeout: float = 20.0, quorum: int | None = None) -> Member:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = await self.current_leader(quorum)
            if leader is not None:
                return leader
            for m in self.members.values():
                if m.proc is not None and not m.alive and m.starts and m.proc.returncode \
                        not in (None, -signal.SIGKILL):
                    raise NodeCannotStart(f"{m.id} exited with {m.proc.returncode}; log "
                                          f"({m.log_path}) ends:\n{self.log_tail(m)}")
            await asyncio.sleep(0.1)
        raise errors.Timeout(f"no leader agreed by a majority within {timeout}s "
                             f"(logs in {self.workdir / 'logs'})")

    async def wait_members(self, timeout: float = 30.0) -> None:
        """Until the leader lists every member of this cluster (joins have completed)."""
        deadline = time.monotonic() + timeout
        want = set(self.members)
        seen: set = set()
        while time.monotonic() < deadline:
            for m in self.members.values():
                if not m.available:
                    continue
                try:
                    async with self.session.get(f"{m.url}/nodes?ver=2&nonvoters") as r:
                        doc = await r.json(content_type=None)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    continue
                nodes = doc.get("nodes", doc) if isinstance(doc, dict) else doc
                if isinstance(nodes, dict):
                    nodes = [dict(v, id=k) for k, v in nodes.items()]
                seen = {n.get("id") for n in nodes if isinstance(n, dict)
                        and n.get("voter", True)}
                if want <= seen:
                    return
            await asyncio.sleep(0.2)
        raise errors.Timeout(f"members {sorted(want - seen)} did not join within {timeout}s "
                             f"(logs in {self.workdir / 'logs'})")

    def log_tail(self, m: Member, lines: int = 30) -> str:
        try:
            with open(m.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(m.log_path) - 16384))
                return b"\n".join(fh.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def copy_logs(self, dest: str | Path) -> Path:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for m in self.members.values():
            if m.log_path.exists() and m.log_path.resolve() != (dest / m.log_path.name).resolve():
                shutil.copy(m.log_path, dest / m.log_path.name)
        return dest

    def stats(self) -> dict:
        return {**self.counters, "members": {m.id: {"pid": m.pid, "alive": m.alive,
                                                     "paused": m.paused, "starts": m.starts,
                                                     "http": m.http_addr, "raft_adv": m.raft_adv}
                                              for m in self.members.values()},
                "retired": [m.id for m in self.retired],
                "network": self.net.stats()}
