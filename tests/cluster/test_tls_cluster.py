"""A 3-node group with TLS on the HTTP API and between nodes (mutual TLS on both), as real
processes. Certificates are made at test time with the openssl CLI (raftsqlite.testing.certs)."""
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import urllib.parse

import pytest

from raftsqlite.testing.certs import OPENSSL, TLSFiles
from raftsqlite.testing.procs import free_port
from tests.cluster.node_harness import NodeProc, wait_for

pytestmark = pytest.mark.skipif(not shutil.which(OPENSSL) and not os.path.exists(OPENSSL),
                                reason="needs the openssl CLI")


def https(addr, method, path, body=None, *, ctx, timeout=10.0):
    """One HTTPS request -> (status, headers, parsed JSON or raw bytes)."""
    host, port = addr.split("://")[-1].rsplit(":", 1)
    c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout)
    try:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        try:
            data = json.loads(data) if data else data
        except ValueError:
            pass
        return r.status, dict(r.getheaders()), data
    finally:
        c.close()


class TLSGroup:
    def __init__(self, workdir, files, n=3, extra=()):
        self.files = files
        self.workdir = workdir
        self.ctx = files.client_context()
        self.nodes = []
        first = None
        for i in range(n):
            hp, rp = free_port(), free_port()
            join = [] if i == 0 else [first]
            node = NodeProc(workdir, f"t{i + 1}", hp, rp, join,
                            files.node_flags() + list(extra))
            self.nodes.append(node)
            first = first or node.http

    def call(self, node, method, path, body=None, **kw):
        return https(node.http, method, path, body, ctx=self.ctx, **kw)

    def ready(self, node):
        try:
            return self.call(node, "GET", "/readyz", timeout=3)[0] == 200
        except OSError:
            return False

    def status(self, node):
        st, _, body = self.call(node, "GET", "/status", timeout=3)
        return body if st == 200 else None

    def leader(self):
        def find():
            for n in self.nodes:
                if n.alive():
                    try:
                        s = self.status(n)
                    except OSError:
                        continue
                    if s and s["store"].get("is_leader"):
                        return n
        return wait_for(find, 15, "a leader")

    def start(self):
        self.nodes[0].start()
        wait_for(lambda: self.ready(self.nodes[0]), 30, "t1 ready")
        for n in self.nodes[1:]:
            n.start()
        for n in self.nodes[1:]:
            wait_for(lambda: self.ready(n), 30, f"{n.node_id} ready")
        wait_for(lambda: sum(m["voter"] for m in self.status(self.leader())["store"]["members"])
                 == len(self.nodes), 30, "all voters")
        return self

    def stop(self):
        for n in self.nodes:
            n.terminate(5)

    def logs(self):
        return "\n".join(f"--- {n.node_id}\n{n.tail()}" for n in self.nodes)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return TLSFiles(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def group(tmp_path_factory, files):
    # small snapshots, so a member added later must catch up from a snapshot
    g = TLSGroup(str(tmp_path_factory.mktemp("tlsgroup")), files,
                 extra=["-snapshot-threshold", "20", "-raft-opt", "snapshot_trailing=5",
                        "-raft-opt", "segment_bytes=1024"])
    try:
        g.start()
        st, _, res = g.call(g.leader(), "POST", "/db/execute",
                            [["CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"]])
        assert st == 200 and "error" not in res["results"][0], res
        yield g
    except BaseException:
        print(g.logs())
        raise
    finally:
        g.stop()


def _follower(g):
    lead = g.leader()
    return lead, next(n for n in g.nodes if n is not lead and n.alive())


def test_writes_through_leader_and_follower_and_linearizable_read(group):
    """Invariant: with TLS everywhere a write through the leader, and one through a
    follower (forwarded to the leader over HTTPS with the node's client certificate),
    are both committed, and a linearizable read (a quorum round over TLS Raft
    connections) sees them; /nodes advertises https:// api addresses."""
    lead, fol = _follower(group)
    st, _, r1 = group.call(lead, "POST", "/db/execute", [["INSERT INTO kv VALUES (1, 'lead')"]])
    st2, _, r2 = group.call(fol, "POST", "/db/execute", [["INSERT INTO kv VALUES (2, 'fol')"]])
    assert st == 200 and r1["results"][0].get("rows_affected") == 1, r1
    assert st2 == 200 and r2["results"][0].get("rows_affected") == 1, r2
    q = "/db/query?level=linearizable&q=" + urllib.parse.quote("SELECT k, v FROM kv ORDER BY k")
    st, _, res = group.call(fol, "GET", q)
    assert st == 200, res
    assert [1, "lead"] in res["results"][0]["values"] and [2, "fol"] in res["results"][0]["values"]
    st, _, nodes = group.call(fol, "GET", "/nodes")
    assert st == 200 and all(v["api_addr"].startswith("https://127.0.0.1:")
                             for v in nodes.values()), nodes
    assert all(v["reachable"] for v in nodes.values()), nodes


def test_redirect_location_is_https(group):
    """Invariant: a follower asked with ``redirect`` answers 301 with an https:// Location
    naming the leader's HTTPS address."""
    lead, fol = _follower(group)
    st, headers, _ = group.call(fol, "POST", "/db/execute?redirect",
                                [["INSERT INTO kv VALUES (3, 'r')"]])
    loc = {k.lower(): v for k, v in headers.items()}.get("location", "")
    assert st == 301 and loc == f"https://{lead.http}/db/execute?redirect", (st, headers)


def test_fast_lane_answers_over_tls(group):
    """Invariant: over TLS the HTTP fast lane (fastpath.py) still serves the hot routes:
    its counter grows by the number of point reads sent on one keep-alive connection."""
    lead = group.leader()
    before = group.status(lead)["http"]["counters"].get("fast_lane", 0)
    host, port = lead.http.rsplit(":", 1)
    c = http.client.HTTPSConnection(host, int(port), context=group.ctx, timeout=10)
    try:
        for i in range(5):
            c.request("GET", "/db/query?q=" + urllib.parse.quote("SELECT COUNT(*) FROM kv"))
            r = c.getresponse()
            assert r.status == 200 and b"values" in r.read()
    finally:
        c.close()
    after = group.status(lead)["http"]["counters"].get("fast_lane", 0)
    assert after - before >= 5, (before, after)


def test_fast_lane_takes_writes_over_tls(group):
    """Invariant: a hot write over TLS (one INSERT sent in one TLS write, as wrk, Go and
    aiohttp clients send it) is served by the fast lane: its counter grows by one per
    write. (Python's http.client writes a POST's head and body as two TLS records; the
    lane then sees a partial request and leaves it to Sanic, which answers the same.)"""
    lead = group.leader()
    host, port = lead.http.rsplit(":", 1)
    before = group.status(lead)["http"]["counters"].get("fast_lane", 0)
    body = json.dumps([["INSERT INTO kv(v) VALUES(?)", "fast"]]).encode()
    raw = (f"POST /db/execute HTTP/1.1\r\nHost: {lead.http}\r\nContent-Type: "
           f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as s0:
        with group.ctx.wrap_socket(s0, server_hostname=host) as s:
            for _ in range(3):
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
    after = group.status(lead)["http"]["counters"].get("fast_lane", 0)
    assert after - before == 3, (before, after)


def test_pyrqlite_over_https(group):
    """Invariant: an unmodified rqlite client (pyrqlite) works over https with an ssl
    context carrying the CA and a client certificate."""
    import pyrqlite.dbapi2 as dbapi2
    lead = group.leader()
    host, port = lead.http.rsplit(":", 1)
    conn = dbapi2.connect(host=host, port=int(port), scheme="https", ssl_context=group.ctx)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO kv VALUES (?, ?)", (10, "pyrqlite"))
        cur.execute("SELECT v FROM kv WHERE k = ?", (10,))
        assert cur.fetchone()[0] == "pyrqlite"
    finally:
        conn.close()


def _plain_exchange(addr, data):
    s = socket.create_connection(tuple([addr.rsplit(":", 1)[0], int(addr.rsplit(":", 1)[1])]),
                                 timeout=10)
    try:
        s.sendall(data)
        try:
            return s.recv(1024)
        except (ConnectionResetError, socket.timeout):
            return b""
    finally:
        s.close()


def test_plaintext_and_bad_handshakes_fail_cleanly(group):
    """Invariant: a plaintext HTTP request to the HTTPS port, plaintext bytes to the TLS
    Raft port, and an HTTPS client without a client certificate (mutual TLS) are each
    refused without an HTTP answer, and every node keeps serving afterwards."""
    lead = group.leader()
    for n in group.nodes:
        got = _plain_exchange(n.http, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP/1.1 200" not in got
        got = _plain_exchange(f"127.0.0.1:{n.raft_port}", b"\x00" * 64 + b"hello raft\r\n")
        assert b"HTTP" not in got
    no_cert = group.files.client_context(with_cert=False)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
        https(lead.http, "GET", "/status", ctx=no_cert, timeout=5)
    for n in group.nodes:
        assert n.alive() and group.ready(n)
    st, _, res = group.call(lead, "POST", "/db/execute", [["INSERT INTO kv VALUES (20, 'ok')"]])
    assert st == 200 and res["results"][0].get("rows_affected") == 1, res


@pytest.mark.parametrize("kind,shard", [("all", None), ("cert", None), ("cert", "shard9"),
                                        ("all", "shard9")])
def test_node_whose_certificate_the_group_refuses_fails_fast(group, tmp_path, kind, shard):
    """Invariant: a node presenting a certificate of another CA is refused by the members
    (under TLS 1.3 only after its own handshake completed, as a dropped connection), and
    one trusting another CA refuses theirs. Neither heals by retrying: the node, a
    default-group member joining or a shard node reading the catalog, exits well before
    -join-timeout with an error naming the refusal and the verification error, and the
    group is unaffected."""
    import time
    flags = group.files.node_flags(rogue_cert=kind == "cert", rogue=kind == "all")
    rogue = NodeProc(str(tmp_path), "rogue2", free_port(), free_port(), [group.nodes[0].http],
                     flags + ["-join-timeout", "60"] + (["-shard", shard] if shard else []))
    t0 = time.monotonic()
    rogue.start()
    try:
        rc = rogue.proc.wait(30)
    except subprocess.TimeoutExpired:
        rogue.kill()
        raise AssertionError("the rogue node kept retrying: " + rogue.tail())
    out = rogue.tail()
    assert rc != 0 and time.monotonic() - t0 < 30, (rc, out)
    if kind == "cert":
        assert "refused this node's certificate" in out, out
        assert "unable to get local issuer certificate" in out, out  # named by own_check
    else:
        assert "rejected the peer's certificate" in out, out
    if shard:
        assert "catalog" in out, out
    lead = group.leader()
    assert sorted(m["node_id"] for m in group.status(lead)["store"]["members"]) == \
        sorted(n.node_id for n in group.nodes)
    st, _, res = group.call(lead, "POST", "/db/execute", [["INSERT OR REPLACE INTO kv VALUES (30, 'x')"]])
    assert st == 200 and res["results"][0].get("rows_affected") == 1, res


def test_new_member_catches_up_from_a_snapshot_over_tls(group):
    """Invariant: after enough writes that the leader compacted its log, a new member
    joining over TLS restores the leader's snapshot streamed on the TLS Raft connection
    and then holds every committed row."""
    lead = group.leader()
    # 3 MB, so the snapshot crosses the TLS connection as several chunks
    st, _, res = group.call(lead, "POST", "/db/execute", [[
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 3) "
        "INSERT INTO kv SELECT 100 + x, zeroblob(1048576) FROM c"]], timeout=30)
    assert st == 200 and res["results"][0].get("rows_affected") == 3, res
    for b in range(30):   # single-row entries push the log past the snapshot threshold
        group.call(lead, "POST", "/db/execute", [[f"INSERT INTO kv VALUES ({200 + b}, 's')"]])
    wait_for(lambda: group.status(lead)["raft"]["log"]["first_index"] > 2, 30,
             "a snapshot on the leader and a compacted log")
    st, _, cnt = group.call(lead, "GET", "/db/query?level=strong&q=" +
                            urllib.parse.quote("SELECT COUNT(*) FROM kv"))
    want = cnt["results"][0]["values"][0][0]
    hp, rp = free_port(), free_port()
    extra = group.files.node_flags() + ["-snapshot-threshold", "20"]
    node = NodeProc(group.workdir, "t4", hp, rp, [lead.http], extra)
    group.nodes.append(node)
    node.start()
    wait_for(lambda: group.ready(node), 30, "t4 ready")

    def has_all():
        st, _, r = group.call(node, "GET", "/db/query?level=none&q=" +
                              urllib.parse.quote("SELECT COUNT(*) FROM kv"), timeout=3)
        return st == 200 and r["results"][0].get("values", [[0]])[0][0] >= want
    wait_for(has_all, 30, "t4 caught up")
    raft = group.status(node).get("raft", {})
    assert raft.get("snapshots_received", 0) >= 1, raft


def test_sharded_insert_and_select_with_node_tls(group):
    """Invariant: a shard group member started with node TLS joins through the TLS default
    group, and the router sends an insert on a sharded table to it and reads it back
    (the router's shard calls are HTTPS with client certificates)."""
    lead = group.leader()
    hp, rp = free_port(), free_port()
    shard = NodeProc(group.workdir, "s1", hp, rp, [lead.http],
                     group.files.node_flags() + ["-shard", "shard1"])
    group.nodes.append(shard)
    shard.start()
    wait_for(lambda: group.ready(shard), 30, "s1 ready")
    call = group.call
    st, _, r = call(lead, "POST", "/db/execute",
                    [["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"]])
    assert st == 200 and "error" not in r["results"][0], r
    st, _, r = call(lead, "POST", "/table/register",
                    {"table_name": "users", "shard_key": "id", "shard_func": "hash"})
    assert st == 200, r
    st, _, r = call(lead, "POST", "/table/add-to-shard",
                    {"table_name": "users", "shard_id": "shard1"})
    assert st == 200, r
    st, _, r = call(lead, "POST", "/table/rebalance", {"table_name": "users"})
    assert st == 200, r
    st, _, r = call(lead, "POST", "/db/execute", [["INSERT INTO users VALUES (7, 'seven')"]])
    assert st == 200 and r["results"][0].get("rows_affected") == 1, r
    q = urllib.parse.quote("SELECT name FROM users WHERE id = 7")
    st, _, r = call(lead, "GET", "/db/query?level=strong&q=" + q)
    assert st == 200 and r["results"][0].get("values") == [["seven"]], r
    st, _, r = call(shard, "GET", "/db/query?level=none&shard_id=shard1&q=" +
                    urllib.parse.quote("SELECT COUNT(*) FROM users"))
    assert st == 200 and r["results"][0]["values"][0][0] == 1, r
    # A cluster-wide backup taken on a default-group member streams shard1's database
    # from the shard member over HTTPS (sharding/backup.py via client.Client.stream).
    st, _, dump = call(lead, "GET", "/db/backup?fmt=sql", timeout=60)
    assert st == 200, dump
    text = dump.decode() if isinstance(dump, bytes) else str(dump)
    assert "'seven'" in text, text[-2000:]


def test_shell_and_rebalance_over_mutual_tls(group, capsys):
    """Invariant: ``raft-sqlite shell`` with rqlite shell's client flags (-c CA, -d client
    certificate, -k key) works against a -http-verify-client node (writes, then reads
    them back); without the client certificate it fails with exit 1 and an error, not a
    hang; ``raft-sqlite rebalance`` with the same flags gets the node's own answer (an
    unknown table) where without them it cannot connect."""
    import io

    from raftsqlite.commands import shell
    from raftsqlite.sharding import rebalance_cli
    lead = group.leader()
    host, port = lead.http.split("://")[-1].rsplit(":", 1)
    ca, (cert, key) = group.files.ca[0], group.files.client
    base = ["-H", host, "-p", port, "-s", "https", "-c", ca]
    out = io.StringIO()
    script = ("CREATE TABLE IF NOT EXISTS sh_tls (id INTEGER PRIMARY KEY, v TEXT)\n"
              "INSERT INTO sh_tls VALUES (1, 'over-mtls')\nSELECT v FROM sh_tls\n")
    rc = shell.main(base + ["-d", cert, "-k", key], stdin=io.StringIO(script), stdout=out)
    assert rc == 0 and "over-mtls" in out.getvalue(), out.getvalue()
    out = io.StringIO()
    rc = shell.main(base, stdin=io.StringIO("SELECT 1\n"), stdout=out)
    assert rc == 1 and "ERR!" in out.getvalue(), out.getvalue()
    assert shell.main(base + ["-d", cert], stdin=io.StringIO(""), stdout=io.StringIO()) == 2
    capsys.readouterr()
    rc = rebalance_cli.main(["no_such_table", "--dry-run", "--host", lead.http,
                             "-c", ca, "-d", cert, "-k", key])
    err = capsys.readouterr().err
    assert rc == 2 and "no_such_table" in err and "cannot reach" not in err, err
    rc = rebalance_cli.main(["no_such_table", "--dry-run", "--host", lead.http, "-c", ca])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach" in err, err
