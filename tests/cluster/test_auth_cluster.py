"""-auth on real processes: one 3-node default group started with -auth and -join-as
(so joining with the node identity is exercised by the fixture itself), plus one shard
group member, shared by the module. `*` holds status and ready, as rqlite's docs suggest,
so the harness's probes need no credentials."""
import base64
import json
import os
import time
import urllib.parse

import pytest

from tests.cluster.node_harness import Cluster, NodeProc, call, wait_for
from raftsqlite.testing.procs import free_port

pytestmark = pytest.mark.timeout(180)

USERS = [{"username": "node", "password": "node-pw", "perms": ["all"]},
         {"username": "app", "password": "app-pw", "perms": ["execute", "query"]},
         {"username": "ro", "password": "ro-pw", "perms": ["query"]},
         {"username": "*", "perms": ["status", "ready"]}]


def auth(user, pw):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


APP, RO, NODE = auth("app", "app-pw"), auth("ro", "ro-pw"), auth("node", "node-pw")


def execute(addr, stmts, headers=None, path="/db/execute"):
    return call(addr, "POST", path, stmts,
                headers={"Content-Type": "application/json", **(headers or {})})


def query(addr, sql, headers=None, **flags):
    q = urllib.parse.urlencode({"q": sql, **flags})
    return call(addr, "GET", f"/db/query?{q}", headers=headers)


def count(addr, table, headers=APP, **flags):
    st, body = query(addr, f"SELECT COUNT(*) FROM {table}", headers, level="strong", **flags)
    assert st == 200, body
    r = body["results"][0]
    return r["values"][0][0] if "values" in r else r


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("auth"))
    path = os.path.join(wd, "auth.json")
    with open(path, "w") as f:
        json.dump(USERS, f)
    extra = ["-auth", path, "-join-as", "node"]
    cl = Cluster(wd, 3, extra=extra)
    shard = None
    try:
        cl.start(timeout=40)
        shard = NodeProc(wd, "s1", free_port(), free_port(), join=[cl.nodes[0].http],
                         extra=extra + ["-shard", "shard1"]).start()

        def shard_ok():
            st, body = call(cl.nodes[0].http, "GET", "/shards", timeout=3)
            return st == 200 and any(g["group"] == "shard1" and g.get("health") == "ok"
                                     for g in body["shards"])
        wait_for(shard_ok, 40, "shard1 in the catalog, healthy")
        yield {"cluster": cl, "shard": shard, "auth": path, "dir": wd}
    except Exception:
        print(cl.logs(), shard.tail() if shard else "")
        raise
    finally:
        if shard is not None:
            shard.kill()
        cl.stop()


def test_no_or_wrong_credentials_change_nothing(env):
    """Without credentials, or with a wrong password, a write is 401 (with
    WWW-Authenticate, the one JSON error shape) on the leader and on a follower, and the
    table it would create does not exist."""
    cl = env["cluster"]
    for n in (cl.leader(), cl.nodes[1]):
        for hdr in ({}, auth("app", "nope"), auth("nobody", "app-pw")):
            st, body = execute(n.http, ["CREATE TABLE nope (x)"], hdr)
            assert st == 401 and body["code"] == "unauthorized", (st, body)
    host, port = cl.leader().http.rsplit(":", 1)
    import http.client
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    c.request("GET", "/db/query?q=SELECT+1")
    r = c.getresponse()
    assert r.status == 401 and r.getheader("WWW-Authenticate", "").startswith("Basic realm=")
    c.close()
    st, body = query(cl.leader().http, "SELECT name FROM sqlite_master WHERE name='nope'", APP,
                     level="strong")
    assert st == 200 and "values" not in body["results"][0], body


def test_query_only_user_cannot_write(env):
    """A user with only `query` reads (200) but cannot execute (401 naming the
    permission), on the leader or through a follower; the table is unchanged."""
    cl = env["cluster"]
    lead = cl.leader().http
    st, body = execute(lead, ["CREATE TABLE ro_t (id INTEGER PRIMARY KEY, v TEXT)",
                              "INSERT INTO ro_t(v) VALUES('a')"], APP)
    assert st == 200 and all("error" not in r for r in body["results"]), body
    for n in cl.nodes:
        st, body = execute(n.http, ["INSERT INTO ro_t(v) VALUES('b')"], RO)
        assert st == 401 and "'execute'" in body["error"], body
        st, body = execute(n.http, [["SELECT 1"]], RO, path="/db/request")
        assert st == 401, body
    assert count(lead, "ro_t", RO) == 1


def test_pyrqlite_follower_and_leader(env):
    """pyrqlite with user/password works against the leader and a follower (whose
    writes are forwarded with the client's credentials); a read-only user's write fails
    and changes nothing."""
    import pyrqlite.dbapi2 as dbapi
    cl = env["cluster"]
    lead = cl.leader()
    follower = next(n for n in cl.nodes if n is not lead)
    conn = dbapi.connect(host="127.0.0.1", port=lead.http_port, user="app", password="app-pw")
    cur = conn.cursor()
    cur.execute("CREATE TABLE py (id INTEGER PRIMARY KEY, name TEXT)")
    cur.execute("INSERT INTO py(name) VALUES(?)", ("leader",))
    conn.close()
    conn = dbapi.connect(host="127.0.0.1", port=follower.http_port, user="app",
                         password="app-pw")
    cur = conn.cursor()
    cur.execute("INSERT INTO py(name) VALUES(?)", ("follower",))
    cur.execute("SELECT name FROM py ORDER BY id")
    assert [r[0] for r in cur.fetchall()] == ["leader", "follower"]
    conn.close()
    conn = dbapi.connect(host="127.0.0.1", port=follower.http_port, user="ro", password="ro-pw")
    with pytest.raises(Exception):
        conn.cursor().execute("INSERT INTO py(name) VALUES('ro')")
    conn.close()
    assert count(lead.http, "py") == 2


def test_join_needs_the_node_identity(env):
    """The fixture's members joined with -join-as; a node joining anonymously is refused
    (401) by the members and gives up, never becoming a member."""
    cl = env["cluster"]
    st, body = call(cl.leader().http, "GET", "/status", timeout=5)
    assert sum(1 for m in body["store"]["members"] if m["voter"]) == 3
    # its own file lets it start without -join-as (`*` holds all there); the members'
    # files do not let an anonymous caller join
    own = os.path.join(env["dir"], "open.json")
    with open(own, "w") as f:
        json.dump([{"username": "*", "perms": ["all"]}], f)
    n = NodeProc(env["dir"], "intruder", free_port(), free_port(), join=[cl.nodes[0].http],
                 extra=["-auth", own, "-join-timeout", "2"]).start()
    try:
        wait_for(lambda: not n.alive(), 30, "the node without -join-as to give up")
        assert n.proc.returncode != 0
        assert "401" in n.tail(80), n.tail(80)
    finally:
        n.kill()
    st, body = call(cl.leader().http, "GET", "/status", timeout=5)
    assert all(m["node_id"] != "intruder" for m in body["store"]["members"])


def test_sharded_routing_with_auth(env):
    """With -auth everywhere: a table registered and placed on shard1 through the
    default group, rows written through a follower land on shard1, and routed reads see
    them; the shard node's routed calls use the -join-as identity, and a client's rights
    are checked where it enters."""
    cl, shard = env["cluster"], env["shard"]
    lead = cl.leader().http
    follower = next(n for n in cl.nodes if n.http != lead).http
    st, body = execute(lead, ["CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)"], APP)
    assert st == 200, body
    reg = {"table_name": "kv", "shard_key": "id", "shard_func": "hash"}
    st, body = call(lead, "POST", "/table/register", reg, headers=RO)
    assert st == 401, body
    st, body = call(lead, "POST", "/table/register", reg, headers=APP)
    assert st == 200, body
    st, body = call(lead, "POST", "/table/add-to-shard",
                    {"table_name": "kv", "shard_id": "shard1"}, headers=APP)
    assert st == 200, body
    st, body = call(lead, "POST", "/table/rebalance", {"table_name": "kv"}, headers=APP)
    assert st == 200 and body.get("status") in ("applied", "balanced"), body
    rows = [["INSERT INTO kv(id, v) VALUES(?, ?)", i, f"v{i}"] for i in range(1, 21)]
    st, body = execute(follower, rows, APP)
    assert st == 200 and all("error" not in r for r in body["results"]), body
    st, body = execute(shard.http, [["INSERT INTO kv(id, v) VALUES(99, 'x')"]], RO)
    assert st == 401, body
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if count(shard.http, "kv", shard_id="shard1") == 20:
            break
        time.sleep(0.2)
    assert count(shard.http, "kv", shard_id="shard1") == 20
    for addr in (lead, follower, shard.http):
        assert count(addr, "kv") == 20
    # a split goes through the default group's coordinator (forwarded from a follower
    # with the client's credentials), then routing goes on
    st, body = call(follower, "POST", "/table/split", {"table_name": "kv", "key": 10},
                    headers=RO)
    assert st == 401, body
    st, body = call(follower, "POST", "/table/split", {"table_name": "kv", "key": 10},
                    headers=APP)
    assert st == 200, body
    st, body = execute(shard.http, [["INSERT INTO kv(id, v) VALUES(21, 'v21')"]], APP)
    assert st == 200 and "error" not in body["results"][0], body
    for addr in (lead, shard.http):
        assert count(addr, "kv") == 21
    # the internal route refuses a client without `all`
    st, body = call(shard.http, "POST", "/shard/call", b"{}", headers=APP)
    assert st == 401 and "'all'" in body["error"], body


def test_rebalance_command_sends_credentials(env, capsys):
    """Invariant: ``raft-sqlite rebalance -u USER:PASS`` authenticates: without it the
    node answers 401 and the command says so; with a user holding ``execute`` it gets the
    node's own answer (here: the table is not registered)."""
    from raftsqlite.sharding import rebalance_cli
    lead = env["cluster"].nodes[0].http
    rc = rebalance_cli.main(["no_such_table", "--dry-run", "--host", lead])
    err = capsys.readouterr().err
    assert rc == 2 and "no_such_table" not in err and "auth" in err.lower(), err
    rc = rebalance_cli.main(["no_such_table", "--dry-run", "--host", lead, "-u", "app:app-pw"])
    err = capsys.readouterr().err
    assert rc == 2 and "no_such_table" in err, err
