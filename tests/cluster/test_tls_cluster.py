"""TLS on the HTTP API and between nodes, on one real 3-node cluster (docs/design/tls.md).

The cluster runs with every TLS flag rqlite has: HTTPS with client certificates
(``-http-verify-client``) and a TLS Raft transport with client certificates
(``-node-verify-client``), certificates made at test time by ``openssl``. Writes through
a follower are forwarded over TLS, ``redirect`` points at an https:// leader, the HTTP
fast lane serves requests over TLS, pyrqlite works over https, plaintext and
wrong-CA clients are refused without harm, and a late member catches up by snapshot
over the TLS transport.
"""
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from raftsqlite.testing.procs import ROOT, die_with_parent, free_port, stop_procs
from raftsqlite.testing.tlscerts import make_certs

pytestmark = pytest.mark.timeout(180)

SNAP = 40     # -snapshot-threshold: a late member needs a snapshot to catch up


class TLSCluster:
    def __init__(self, workdir, certs):
        self.workdir, self.certs = str(workdir), certs
        self.procs, self.addrs, self.raft = [], [], []
        self.ctx = ssl.create_default_context(cafile=certs["ca"])
        self.ctx.load_cert_chain(certs["cert"], certs["key"])

    def tls_args(self, cert=None, key=None, ca=None):
        c = self.certs
        cert, key, ca = cert or c["cert"], key or c["key"], ca or c["ca"]
        return ["-http-cert", cert, "-http-key", key, "-http-ca-cert", ca,
                "-http-verify-client", "-node-cert", cert, "-node-key", key,
                "-node-ca-cert", ca, "-node-verify-client"]

    def spawn(self, name, join=None, tls=None, extra=()):
        addr, raft = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        cmd = [sys.executable, "-m", "raftsqlite", "-id", name, "-data",
               os.path.join(self.workdir, name), "-http", addr, "-raft", raft,
               "-snapshot-threshold", str(SNAP), "-raft-opt", "snapshot_trailing=5",
               "-raft-opt", "segment_bytes=16384",
               *(tls if tls is not None else self.tls_args()), *extra]
        if join:
            cmd += ["-join", join]
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             preexec_fn=die_with_parent())
        self.procs.append(p)
        return p, addr

    def log(self, name):
        with open(os.path.join(self.workdir, f"{name}.log"), errors="replace") as f:
            return f.read()

    def start(self, n=3):
        for i in range(n):
            p, addr = self.spawn(f"n{i + 1}", join=self.addrs[0] if self.addrs else None)
            self.addrs.append(addr)
            wait(lambda: self.req("GET", addr, "/readyz")[0] == 200, 60, f"{addr} ready", p)
        wait(lambda: len(self.req("GET", self.addrs[0], "/nodes")[1]) == n, 60, "members")
        return self

    def req(self, method, addr, path, body=None, timeout=10):
        """HTTPS request with our client certificate; (status, parsed body, headers)."""
        data = json.dumps(body).encode() if body is not None else None
        r = urllib.request.Request(f"https://{addr}{path}", data=data, method=method,
                                   headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.ctx),
                                             _NoRedirect())
        try:
            with opener.open(r, timeout=timeout) as resp:
                st, raw, hdrs = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            st, raw, hdrs = e.code, e.read(), e.headers
        try:
            return st, json.loads(raw), hdrs
        except ValueError:
            return st, raw, hdrs

    def leader(self):
        def find():
            for a in self.addrs:
                try:
                    st, doc, _ = self.req("GET", a, "/status", timeout=3)
                except OSError:
                    continue
                if st == 200 and doc["store"]["raft"]["state"] == "Leader":
                    return a
            return None
        return wait(find, 30, "a leader")

    def stop(self):
        stop_procs(self.procs, 15)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


def wait(cond, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode} waiting for {what}")
        try:
            v = cond()
            if v:
                return v
        except (OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last!r})")


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    c = TLSCluster(d, make_certs(d / "certs"))
    try:
        c.start(3)
        st, _, _ = c.req("POST", c.leader(), "/db/execute",
                         ["CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)"])
        assert st == 200
        yield c
    finally:
        c.stop()


def _count(c, addr, level="strong"):
    st, doc, _ = c.req("GET", addr, f"/db/query?level={level}&q=SELECT+COUNT(*)+FROM+t")
    assert st == 200, doc
    return doc["results"][0]["values"][0][0]


def test_writes_through_leader_and_forwarded_by_follower(cl):
    """A write sent to the leader and one sent to a follower (forwarded to the leader
    over the nodes' TLS) are both applied on every member; /nodes advertises https."""
    lead = cl.leader()
    fol = next(a for a in cl.addrs if a != lead)
    before = _count(cl, lead)
    st, doc, _ = cl.req("POST", lead, "/db/execute", [["INSERT INTO t(v) VALUES(?)", "lead"]])
    assert st == 200 and "error" not in doc["results"][0], doc
    st, doc, _ = cl.req("POST", fol, "/db/execute", [["INSERT INTO t(v) VALUES(?)", "fwd"]])
    assert st == 200 and "error" not in doc["results"][0], doc
    assert _count(cl, fol, "linearizable") == before + 2
    for a in cl.addrs:
        wait(lambda: _count(cl, a, "none") == before + 2, 10, f"{a} applied")
    st, nodes, _ = cl.req("GET", lead, "/nodes")
    assert st == 200
    assert all(n["api_addr"].startswith("https://") for n in nodes.values()), nodes


def test_redirect_points_at_https_leader(cl):
    """``redirect`` on a follower answers 301 with an https:// Location of the leader."""
    lead = cl.leader()
    fol = next(a for a in cl.addrs if a != lead)
    st, _, hdrs = cl.req("POST", fol, "/db/execute?redirect",
                         [["INSERT INTO t(v) VALUES(?)", "r"]])
    assert st == 301
    assert hdrs["Location"].startswith(f"https://{lead}/db/execute"), hdrs["Location"]


def test_fast_lane_serves_over_tls(cl):
    """Hot requests over TLS go through the fast lane: its counter grows by the number of
    hot requests sent (6 point reads on one keep-alive TLS connection and one insert
    written in a single TLS write), with correct answers. (http.client writes a POST's
    headers and body in two TLS records, which the lane leaves to Sanic as a partial
    request; hence the single write.)"""
    lead = cl.leader()
    host, port = lead.split(":")

    def fast():
        return cl.req("GET", lead, "/status")[1]["http"]["counters"].get("fast_lane", 0)
    before = fast()
    conn = http.client.HTTPSConnection(host, int(port), context=cl.ctx, timeout=10)
    try:
        for i in range(6):
            conn.request("GET", f"/db/query?q=SELECT+{i}")
            r = conn.getresponse()
            doc = json.loads(r.read())
            assert r.status == 200 and doc["results"][0]["values"] == [[i]], doc
    finally:
        conn.close()
    body = json.dumps([["INSERT INTO t(v) VALUES(?)", "fast"]]).encode()
    raw = (f"POST /db/execute HTTP/1.1\r\nHost: {lead}\r\nContent-Type: application/json"
           f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as s0:
        with cl.ctx.wrap_socket(s0, server_hostname=host) as s:
            s.sendall(raw)
            got = b""
            while b"\r\n\r\n" not in got:
                got += s.recv(65536)
            head, _, rest = got.partition(b"\r\n\r\n")
            n = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                         if ln.lower().startswith(b"content-length:")))
            while len(rest) < n:
                rest += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(rest[:n])["results"][0]["rows_affected"] == 1
    assert fast() - before == 7


def test_pyrqlite_over_https(cl):
    """pyrqlite (scheme https, our CA and client certificate) writes and reads."""
    import pyrqlite.dbapi2 as dbapi2
    host, port = cl.leader().split(":")
    conn = dbapi2.connect(scheme="https", host=host, port=int(port), ssl_context=cl.ctx)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO t(v) VALUES(?)", ("pyrqlite",))
        cur.execute("SELECT v FROM t WHERE v = ?", ("pyrqlite",))
        assert cur.fetchone()[0] == "pyrqlite"
    finally:
        conn.close()


def _raw_exchange(addr, payload, timeout=5.0):
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        try:
            while len(got) < 65536:
                b = s.recv(4096)
                if not b:
                    break
                got += b
        except ConnectionResetError:
            pass
        return got


def test_plaintext_and_certless_clients_are_refused_harmlessly(cl):
    """Plaintext HTTP to the TLS API port and garbage to the TLS Raft port are closed
    (never answered in the clear, never hung past the timeout); a TLS client without a
    certificate is refused (-http-verify-client); the node keeps serving."""
    lead = cl.leader()
    got = _raw_exchange(lead, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"HTTP/1.1 200" not in got
    st, doc, _ = cl.req("GET", lead, "/status")
    raft_addr = doc["node"]["raft_addr"]
    got = _raw_exchange(raft_addr, b"\x00" * 64 + b"hello raft\r\n")
    assert got == b"" or not got.startswith(b"\x00")
    nocert = ssl.create_default_context(cafile=cl.certs["ca"])
    host, port = lead.split(":")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        c = http.client.HTTPSConnection(host, int(port), context=nocert, timeout=5)
        c.request("GET", "/status")
        c.getresponse().read()
    st, _, _ = cl.req("POST", lead, "/db/execute", [["INSERT INTO t(v) VALUES(?)", "after"]])
    assert st == 200
    assert all(p.poll() is None for p in cl.procs[:3])


def test_node_with_wrong_ca_cannot_join(cl):
    """A node whose certificate and CA belong to another CA cannot join (its log names
    the certificate failure, it exits); the cluster still has 3 members and writes."""
    c = cl.certs
    p, addr = cl.spawn("bad", join=cl.addrs[0],
                       tls=cl.tls_args(c["other_cert"], c["other_key"], c["other_ca"]),
                       extra=["-join-timeout", "3"])
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("the node with the wrong CA neither joined nor gave up")
    assert p.returncode != 0
    log = cl.log("bad")
    assert "could not join" in log and "certificate" in log.lower(), log[-2000:]
    lead = cl.leader()
    st, nodes, _ = cl.req("GET", lead, "/nodes")
    assert "bad" not in nodes and len(nodes) == 3
    st, _, _ = cl.req("POST", lead, "/db/execute", [["INSERT INTO t(v) VALUES(?)", "ok"]])
    assert st == 200


def test_late_member_catches_up_by_snapshot_over_tls(cl):
    """Past several snapshots (threshold 40), a new member joins and holds every row: it
    was sent a snapshot over the TLS transport (the log before it was compacted)."""
    lead = cl.leader()
    for i in range(3 * SNAP):
        st, _, _ = cl.req("POST", lead, "/db/execute", [["INSERT INTO t(v) VALUES(?)", f"s{i}" + "x" * 400]])
        assert st == 200
    want = _count(cl, lead)
    wait(lambda: cl.req("GET", lead, "/status")[1]["raft"]["log"]["first_index"] > 2, 30,
         "a compacted log on the leader")
    p, addr = cl.spawn("late", join=lead)
    cl.addrs.append(addr)
    wait(lambda: cl.req("GET", addr, "/readyz")[0] == 200, 60, "late ready", p)
    wait(lambda: _count(cl, addr, "none") >= want, 30, "late member caught up", p)
    st, doc, _ = cl.req("GET", addr, "/status")
    assert doc["raft"]["snapshots_received"] >= 1, doc["raft"]


def test_sharded_insert_and_select_over_tls(cl):
    """A shard group (one member, same TLS flags) joins through the default group; an
    insert and a select of a registered table sent to a default member are routed to the
    shard over the nodes' TLS (router call client, catalog), and the rows live there."""
    d = cl.leader()
    p, s1 = cl.spawn("s1", join=d, extra=["-shard", "shard1"])
    wait(lambda: cl.req("GET", s1, "/readyz")[0] == 200, 60, "shard member ready", p)
    wait(lambda: any(g.get("group") == "shard1"
                     for g in cl.req("GET", d, "/shards")[1].get("shards", [])),
         30, "shard1 in the catalog", p)
    st, doc, _ = cl.req("POST", d, "/db/execute",
                        ["CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT)"])
    assert st == 200 and "error" not in doc["results"][0], doc
    for path, body in (("/table/register", {"table_name": "u", "shard_key": "id",
                                            "shard_func": "hash"}),
                       ("/table/add-to-shard", {"table_name": "u", "shard_id": "shard1"}),
                       ("/table/rebalance", {"table_name": "u"})):
        st, doc, _ = cl.req("POST", d, path, body, timeout=30)
        assert st == 200, (path, doc)
    rows = [[i, f"user{i}"] for i in range(1, 21)]
    st, doc, _ = cl.req("POST", d, "/db/execute",
                        [["INSERT INTO u (id, name) VALUES " + ",".join(["(?, ?)"] * 20)]
                         + [v for r in rows for v in r]])
    assert st == 200 and doc["results"][0].get("rows_affected") == 20, doc
    st, doc, _ = cl.req("GET", d, "/db/query?level=strong&q=SELECT+name+FROM+u+WHERE+id=7")
    assert st == 200 and doc["results"][0]["values"] == [["user7"]], doc
    st, doc, _ = cl.req("GET", d, "/db/query?level=strong&shard_id=shard1"
                                  "&q=SELECT+COUNT(*)+FROM+u")
    assert st == 200 and doc["results"][0]["values"][0][0] == 20, doc
    st, doc, _ = cl.req("GET", d, "/db/query?level=strong&shard_id=default"
                                  "&q=SELECT+COUNT(*)+FROM+u")
    assert st == 200 and doc["results"][0]["values"][0][0] == 0, doc
    # a cluster-wide backup streams shard1's database to the default member over TLS
    st, dump, _ = cl.req("GET", d, "/db/backup?fmt=sql", timeout=60)
    assert st == 200, dump
    text = dump.decode() if isinstance(dump, bytes) else str(dump)
    assert text.count("'user") == 20 and "'user7'" in text, text[-2000:]
