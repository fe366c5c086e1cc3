"""A local sharded cluster of real ``raft-sqlite`` processes (default group + shard
groups, one member each), for ``raft-sqlite demo``, the cluster tests and the benchmark.
Everything it starts it stops, by PID."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from raftsqlite.testing.procs import die_with_parent, free_port

# Fixed ports of ``raft-sqlite demo`` (HTTP, Raft) per group; ``free=True`` picks free ones.
DEMO_PORTS = {"default": (4101, 4102), "shard1": (4111, 4112), "shard2": (4121, 4122)}


def http(method, addr, path, body=None, timeout=30.0):
    """-> (status, decoded JSON or text)."""
    data = None
    headers = {}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def q(sql, **flags):
    return "?" + urllib.parse.urlencode(dict(q=sql, **flags))


class LocalCluster:
    def __init__(self, base_dir, shards=("shard1", "shard2"), free=True, extra_args=(),
                 src=None, log_to_files=True):
        self.base = base_dir
        self.shards = tuple(shards)
        self.free = free
        self.extra = list(extra_args)
        # the nodes run this very package, installed or not
        self.src = src or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.log_to_files = log_to_files
        self.procs = {}     # node name -> Popen
        self.addrs = {}     # group -> HTTP address of its (first) member

    def _ports(self, group):
        if not self.free and group in DEMO_PORTS:
            return DEMO_PORTS[group]
        return free_port(), free_port()

    def start_node(self, name, group, join=None):
        hp, rp = self._ports(group)
        args = [sys.executable, "-m", "raftsqlite", "-id", name, "-data",
                os.path.join(self.base, name), "-http", f"127.0.0.1:{hp}",
                "-raft", f"127.0.0.1:{rp}"] + self.extra
        if group != "default":
            args += ["-shard", group]
        if join:
            args += ["-join", join]
        env = dict(os.environ)
        if self.src:
            env["PYTHONPATH"] = self.src + os.pathsep + env.get("PYTHONPATH", "")
        os.makedirs(self.base, exist_ok=True)
        out = open(os.path.join(self.base, name + ".log"), "w") if self.log_to_files else subprocess.DEVNULL
        self.procs[name] = subprocess.Popen(args, env=env, stdout=out, stderr=out, cwd=self.base,
                                            preexec_fn=die_with_parent())
        addr = f"127.0.0.1:{hp}"
        self.addrs.setdefault(group, addr)
        return addr

    def start(self, timeout=60.0):
        d = self.start_node("default1", "default")
        self.wait_ready(d, timeout)
        for i, s in enumerate(self.shards):
            self.start_node(f"{s}-1", s, join=d)
        self.wait_groups(timeout)
        return self

    def wait_ready(self, addr, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                st, _ = http("GET", addr, "/readyz", timeout=2)
                if st == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"node at {addr} not ready within {timeout}s")

    def wait_groups(self, timeout=60.0):
        """Until /shards lists every shard group with a healthy leader."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                st, body = http("GET", self.addrs["default"], "/shards", timeout=5)
                if st == 200:
                    ok = {g["group"] for g in body["shards"] if g.get("health") == "ok"}
                    last = body
                    if ok >= {"default", *self.shards}:
                        return body
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"shard groups not healthy within {timeout}s: {last}")

    def check_alive(self):
        for n, p in self.procs.items():
            if p.poll() is not None:
                log = os.path.join(self.base, n + ".log")
                tail = open(log).read()[-2000:] if os.path.exists(log) else ""
                raise RuntimeError(f"node {n} exited with {p.returncode}: {tail}")

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def demo(argv=()):
    """``raft-sqlite demo [--free-ports] [--dir DIR] [--rows N]``."""
    import argparse
    import signal
    import tempfile
    ap = argparse.ArgumentParser(prog="raft-sqlite demo", description=(
        "Start a default group and two shard groups (one member each) on this machine, "
        "register a table, load data, show a routed and a scattered query; Ctrl-C stops "
        "everything. Ports (HTTP/Raft): default 4101/4102, shard1 4111/4112, shard2 "
        "4121/4122 (or free ones with --free-ports)."))
    ap.add_argument("--free-ports", action="store_true")
    ap.add_argument("--dir", default="")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--no-wait", action="store_true", help="stop right after the show")
    a = ap.parse_args(list(argv))
    base = a.dir or tempfile.mkdtemp(prefix="raftsqlite-demo-")
    cl = LocalCluster(base, free=a.free_ports)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1) or (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        print(f"starting default group + shard1 + shard2 in {base} ...", flush=True)
        cl.start()
        h = cl.addrs["default"]

        def show(title, method, path, body=None):
            st, res = http(method, h, path, body)
            print(f"\n$ {method} {path}" + (f"  {json.dumps(body)}" if body is not None else ""))
            print(f"  -> {st} {json.dumps(res)[:600]}")
            return res
        print(f"cluster up: {json.dumps(cl.addrs)}")
        show("create", "POST", "/db/execute", ["CREATE TABLE IF NOT EXISTS users "
                                              "(id INTEGER PRIMARY KEY, name TEXT, city TEXT)"])
        show("register", "POST", "/table/register", {"table_name": "users", "shard_key": "id",
                                                     "shard_func": "hash"})
        show("add", "POST", "/table/add-to-shard", {"table_name": "users", "shard_id": "shard1"})
        show("add", "POST", "/table/add-to-shard", {"table_name": "users", "shard_id": "shard2"})
        show("rebalance", "POST", "/table/rebalance", {"table_name": "users"})
        cities = ["Oslo", "Lima", "Pune", "Kobe"]
        for s0 in range(0, a.rows, 200):
            rows = [[i, f"user{i}", cities[i % 4]] for i in range(s0, min(a.rows, s0 + 200))]
            vals = ", ".join("(?, ?, ?)" for _ in rows)
            st, res = http("POST", h, "/db/execute", [[f"INSERT INTO users (id, name, city) VALUES {vals}"]
                                                      + [v for r in rows for v in r]])
            if st != 200:
                raise RuntimeError(f"load failed: {res}")
        print(f"\nloaded {a.rows} rows through the router")
        show("routed", "GET", "/query" + q("SELECT * FROM users WHERE id = 123", auto_route="true"))
        show("explain", "GET", "/table/explain" + q("SELECT * FROM users WHERE id = 123"))
        show("scatter", "GET", "/db/query" + q("SELECT city, COUNT(*) AS n FROM users GROUP BY city ORDER BY n DESC, city"))
        show("explain", "GET", "/table/explain" + q("SELECT city, COUNT(*) AS n FROM users GROUP BY city ORDER BY n DESC, city"))
        for s in cl.shards:
            show("per shard", "GET", "/db/query" + q("SELECT COUNT(*) FROM users", shard_id=s))
        show("shards", "GET", "/shards")
        if a.no_wait:
            return 0
        print(f"\nthe cluster keeps running; try: curl -G http://{h}/query --data-urlencode "
              "\"q=SELECT * FROM users WHERE id=7\" -d auto_route=true\nCtrl-C stops everything.",
              flush=True)
        while True:
            time.sleep(1)
            cl.check_alive()
    except KeyboardInterrupt:
        return 0
    finally:
        print("\nstopping ...", flush=True)
        cl.stop()
