"""-bootstrap-expect on real processes (rqlite's automatic bootstrapping) and rqlite's flag
spelling end to end.

Group A (our flag names): three nodes started at once with identical flags (a -join list
of four, -bootstrap-expect 3) form one group; restarted with the same flags they keep it
(no second bootstrap); the 4th node, started later with the same flags, joins it. Group B (rqlite's names: -node-id, -http-addr, -raft-addr, a
positional data dir, http(s):// join addresses, -join-interval) with -auth/-join-as and
TLS on the HTTP API and between nodes: two of three started form nothing and are not
ready; the third arriving forms the group."""
import http.client
import json
import os
import ssl
import time

import pytest

from raftsqlite.config import initial_addresses
from raftsqlite.testing.procs import free_port
from tests.cluster.node_harness import NodeProc, call, wait_for

pytestmark = pytest.mark.timeout(180)

BOOTED = b"bootstrapped the group"
# a slower member may be reached by the group's leader before it bootstraps its own copy
# of the same set: it then skips that (bootstrap.py) and logs this instead
REACHED = b"its leader reached this node first"


def log_bytes(n):
    try:
        with open(n.log_path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def start_group_a(wd, ports, names):
    # every node gets all four addresses, as a StatefulSet of 4 would; the initial members
    # are the first three in sorted order (``ports`` is sorted so: a1..a3)
    join = ",".join(f"127.0.0.1:{hp}" for hp, _ in ports)
    procs = []
    for name, (hp, rp) in zip(names, ports):
        p = NodeProc(wd, name, hp, rp)
        p.argv = (lambda p=p: [*NodeProc.argv(p), "-bootstrap-expect", "3", "-join", join,
                               "-join-interval", "200ms"])
        procs.append(p)
    return procs


def members_view(addr, **kw):
    st, body = call(addr, "GET", "/nodes", timeout=3, **kw)
    assert st == 200, body
    return body


def one_group(nodes, want_voters):
    """Every node lists the same voters, and exactly one of them as leader."""
    views = [members_view(n.http) for n in nodes]
    ids = {frozenset(v) for v in views}
    if len(ids) != 1:
        return False
    (members,) = ids
    v = views[0]
    leaders = [k for k in members if v[k]["leader"]]
    voters = sorted(k for k in members if v[k]["voter"])
    return len(leaders) == 1 and voters == sorted(want_voters)


@pytest.fixture(scope="module")
def group_a(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("bootexpect"))
    ports = sorted((free_port(), free_port()) for _ in range(4))
    assert initial_addresses([f"127.0.0.1:{hp}" for hp, _ in ports], 3) == \
        [f"127.0.0.1:{hp}" for hp, _ in ports[:3]]
    nodes = start_group_a(wd, ports, ["a1", "a2", "a3", "a4"])
    try:
        for n in nodes[:3]:             # at once, identical flags but for id/addresses
            n.start()
        yield nodes
    except Exception:
        raise
    finally:
        for n in nodes:
            n.kill()


def _dump(nodes):
    return "\n".join(f"--- {n.node_id}\n{n.tail(25)}" for n in nodes)


def test_three_started_at_once_form_one_group(group_a):
    """Invariant: N nodes started concurrently with -bootstrap-expect N and the same -join
    list form exactly one group: one leader, the N as voters in every node's view, and a
    write made through any node is readable on all of them."""
    nodes = group_a[:3]
    try:
        wait_for(lambda: all(n.ready() for n in nodes), 40, "three ready")
        wait_for(lambda: one_group(nodes, ["a1", "a2", "a3"]), 20, "one group of 3 voters")
        st, body = call(nodes[2].http, "POST", "/db/execute",
                        [["CREATE TABLE t(x)"], ["INSERT INTO t VALUES(42)"]],
                        headers={"Content-Type": "application/json"})
        assert st == 200 and "error" not in json.dumps(body), body
        for n in nodes:
            wait_for(lambda n=n: _rows(n.http) == [[42]], 15, f"the row on {n.node_id}")
        # the catalog sees one healthy default group (sharding works on top of it)
        st, body = call(nodes[0].http, "GET", "/shards", timeout=5)
        assert st == 200 and [g["group"] for g in body["shards"]] == ["default"], body
        wait_for(lambda: call(nodes[1].http, "GET", "/shards", timeout=5)[1]["shards"][0]
                 .get("health") == "ok", 15, "default group healthy")
        # each bootstrapped once, from the same declared set
        plans = {open(os.path.join(n.data, "bootstrap.json")).read() for n in nodes}
        assert len(plans) == 1
        assert all(log_bytes(n).count(BOOTED) + log_bytes(n).count(REACHED) == 1
                   for n in nodes), _dump(nodes)
    except Exception:
        print(_dump(nodes))
        raise


def _rows(addr, **kw):
    st, body = call(addr, "GET", "/db/query?level=none&q=SELECT+x+FROM+t", timeout=3, **kw)
    r = body["results"][0] if st == 200 else {}
    return r.get("values")


def test_restart_with_same_flags_keeps_the_group(group_a):
    """Invariant: restarting every node with the same -bootstrap-expect flags bootstraps
    nothing (a node holding a log ignores them): the same group, the same data, and no
    'bootstrapped' line in the new lives' logs."""
    nodes = group_a[:3]
    for n in nodes:
        n.terminate()
    marks = [len(log_bytes(n)) for n in nodes]
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: all(n.ready() for n in nodes), 40, "three ready again")
        wait_for(lambda: one_group(nodes, ["a1", "a2", "a3"]), 20, "the same group")
        for n in nodes:
            wait_for(lambda n=n: _rows(n.http) == [[42]], 15, f"the row on {n.node_id}")
        for n, m in zip(nodes, marks):
            assert BOOTED not in log_bytes(n)[m:] and REACHED not in log_bytes(n)[m:], \
                n.tail()
    except Exception:
        print(_dump(nodes))
        raise


def test_fourth_node_with_same_flags_joins(group_a):
    """Invariant: a node started later with the same flags (its address is in the -join
    list, after the N initial ones) joins the existing group; it never bootstraps."""
    nodes = group_a
    try:
        nodes[3].start()
        wait_for(lambda: one_group(nodes, ["a1", "a2", "a3", "a4"]), 40, "4 voters")
        wait_for(lambda: _rows(nodes[3].http) == [[42]], 15, "the row on a4")
        assert BOOTED not in log_bytes(nodes[3]) and REACHED not in log_bytes(nodes[3])
        assert not os.path.exists(os.path.join(nodes[3].data, "bootstrap.json"))
    except Exception:
        print(_dump(nodes))
        raise


# ---- group B: rqlite's spelling, -auth/-join-as, TLS, two of three ----------------------
USERS = [{"username": "node", "password": "node-pw", "perms": ["all"]},
         {"username": "*", "perms": ["status", "ready"]}]
NODE_AUTH = {"Authorization": "Basic bm9kZTpub2RlLXB3"}     # node:node-pw


def scall(ctx, addr, method, path, body=None, headers=None):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=3, context=ctx)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers or {})
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data.decode("utf-8", "replace")


def test_rqlite_spelling_tls_auth_two_of_three_then_third(tmp_path):
    """Invariants: (1) with two of three -bootstrap-expect 3 nodes up there is no group:
    neither is ready, neither holds a log, and neither declared a set it could not
    complete; (2) the third arriving forms one group of three; (3) all of this with
    rqlite's flag names and positional data dir, HTTPS and node TLS, and -auth/-join-as
    (the nodes' /notify calls carry the node identity)."""
    from raftsqlite.testing.certs import TLSFiles
    wd = str(tmp_path)
    tls = TLSFiles(wd)
    ctx = ssl.create_default_context(cafile=tls.ca[0])
    auth = os.path.join(wd, "auth.json")
    with open(auth, "w") as f:
        json.dump(USERS, f)
    ports = [(free_port(), free_port()) for _ in range(3)]
    # rqlite's forms of -join: https:// with a trailing slash, and a bare host:port
    join = ",".join([f"https://127.0.0.1:{ports[0][0]}/", f"127.0.0.1:{ports[1][0]}",
                     f"https://127.0.0.1:{ports[2][0]}"])
    nodes = []
    for i, (hp, rp) in enumerate(ports):
        n = NodeProc(wd, f"b{i + 1}", hp, rp)
        n.argv = (lambda n=n, hp=hp, rp=rp: [
            *NodeProc.argv(n)[:3], "-node-id", n.node_id, "-http-addr", f"127.0.0.1:{hp}",
            "-raft-addr", f"127.0.0.1:{rp}", "-bootstrap-expect", "3", "-join", join,
            "-join-interval", "200ms", "-auth", auth, "-join-as", "node",
            *tls.node_flags(verify_client=False), n.data])
        nodes.append(n)

    def ready(n):
        try:
            return scall(ctx, n.http, "GET", "/readyz")[0] == 200
        except OSError:
            return False

    def notify(n):
        st, body = scall(ctx, n.http, "POST", "/notify", {}, NODE_AUTH)
        assert st == 200, body
        return body
    try:
        for n in nodes[:2]:
            n.start()
        wait_for(lambda: all(notify(n) for n in nodes[:2]), 40, "two nodes answering")
        # a few of their rounds (every 200 ms) pass without a group
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            for n in nodes[:2]:
                info = notify(n)
                assert info["fresh"] and info["plan"] is None and info["leader"] is None
                assert not ready(n)
            time.sleep(0.2)
        nodes[2].start()
        wait_for(lambda: all(ready(n) for n in nodes), 40, "three ready")

        def group():
            views = [scall(ctx, n.http, "GET", "/nodes", headers=NODE_AUTH)[1] for n in nodes]
            return all(sorted(v) == ["b1", "b2", "b3"] and all(m["voter"] for m in v.values())
                       and sum(m["leader"] for m in v.values()) == 1 for v in views)
        wait_for(group, 20, "one group of three")
        st, body = scall(ctx, nodes[0].http, "POST", "/db/execute",
                         [["CREATE TABLE t(x)"], ["INSERT INTO t VALUES(7)"]],
                         {"Content-Type": "application/json", **NODE_AUTH})
        assert st == 200 and "error" not in json.dumps(body), body
        for n in nodes:
            wait_for(lambda n=n: scall(ctx, n.http, "GET",
                                       "/db/query?level=none&q=SELECT+x+FROM+t",
                                       headers=NODE_AUTH)[1]["results"][0].get("values")
                     == [[7]], 15, f"the row on {n.node_id}")
        # the positional directory is the data dir
        assert all(os.path.exists(os.path.join(n.data, "bootstrap.json")) for n in nodes)
        # anonymous callers may not ask: /notify needs the join permission
        assert scall(ctx, nodes[0].http, "POST", "/notify", {})[0] == 401
    except Exception:
        print(_dump(nodes))
        raise
    finally:
        for n in nodes:
            n.kill()


def test_members_with_different_fk_settings_never_form_a_group(tmp_path):
    """Two nodes started at once with -bootstrap-expect 2, one with -fk: neither
    bootstraps. The one that sees the other's settings stops with a message naming both
    (group_settings.py); the other (which may find it already gone) gives up at its
    -bootstrap-expect-timeout. No group forms whose members would apply the log
    differently."""
    ports = sorted((free_port(), free_port()) for _ in range(2))
    join = ",".join(f"127.0.0.1:{hp}" for hp, _ in ports)
    procs = []
    for i, (hp, rp) in enumerate(ports):
        p = NodeProc(str(tmp_path), f"f{i + 1}", hp, rp)
        extra = ["-fk"] if i == 0 else []
        p.argv = (lambda p=p, extra=extra: [*NodeProc.argv(p), "-bootstrap-expect", "2",
                                            "-join", join, "-join-interval", "200ms",
                                            "-bootstrap-expect-timeout", "8", *extra])
        procs.append(p)
    try:
        for p in procs:
            p.start()
        wait_for(lambda: all(not p.alive() for p in procs), 60, "both nodes to stop")
        outs = [log_bytes(p) for p in procs]
        named = [o for o in outs
                 if b"foreign keys enforced (-fk)" in o and b"not enforced" in o]
        assert named, outs[0][-800:] + outs[1][-800:]
        for p, out in zip(procs, outs):
            assert BOOTED not in out and REACHED not in out
            assert p.proc.returncode != 0
    finally:
        for p in procs:
            p.kill()
