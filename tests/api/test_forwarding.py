"""Followers forward to the leader (or redirect); no leader answers 503."""
from raftsqlite import errors


def test_follower_forwards_writes_and_reads(trio):
    """A write or a weak read sent to a follower is answered by the leader, byte for byte,
    and the leader's store is the one that ran it."""
    leader, follower, _ = trio
    r = follower.http.post("/db/execute", ["CREATE TABLE t (x)"])
    assert r.status == 200 and r.body == b'{"results":[{}]}'
    assert r.headers["x-rqlite-served-by"] == leader.addr
    r = follower.http.post("/db/execute", [["INSERT INTO t VALUES(?)", 7]])
    assert r.json() == {"results": [{"last_insert_id": 1, "rows_affected": 1}]}
    r = follower.http.get("/db/query?q=SELECT+x+FROM+t")
    assert r.json()["results"][0]["values"] == [[7]]
    assert [c[0] for c in leader.store.calls] == ["execute", "execute", "query"]
    # The follower's store was asked first and refused with NotLeader.
    assert [c[0] for c in follower.store.calls] == ["execute", "execute", "query"]


def test_level_none_reads_locally(trio):
    """level=none is served by the follower itself, never forwarded."""
    leader, follower, _ = trio
    follower.http.post("/db/execute", ["CREATE TABLE t (x)"])
    n = len(leader.store.calls)
    r = follower.http.get("/db/query?q=SELECT+count(*)+FROM+t&level=none")
    assert r.status == 200 and "x-rqlite-served-by" not in r.headers
    assert len(leader.store.calls) == n


def test_redirect_answers_301_with_leader_url(trio):
    """redirect: 301 with Location = the leader's same path and query string."""
    leader, follower, _ = trio
    r = follower.http.post("/db/execute?redirect&timings", ["CREATE TABLE t (x)"])
    assert r.status == 301
    assert r.headers["location"] == f"http://{leader.addr}/db/execute?redirect&timings"
    assert [c[0] for c in leader.store.calls] == []


def test_seed_and_cluster_calls_forward(trio):
    """The seed's /execute, /join, /remove and POST /leader forward from a follower."""
    leader, follower, third = trio
    follower.http.post("/db/execute", ["CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT)"])
    r = follower.http.post("/execute", {"query": "INSERT INTO u(name) VALUES(?)", "args": ["j"]})
    assert r.json() == {"last_insert_id": 1, "rows_affected": 1}
    r = third.http.post("/join", {"node_id": "node4", "raft_addr": "h:4", "http_addr": "h:5"})
    assert r.status == 200, r
    assert any(m.node_id == "node4" for m in leader.store.members())
    r = third.http.req("DELETE", "/remove", {"id": "node4"})
    assert r.status == 200, r
    r = follower.http.post("/leader", {"id": "node3"})
    assert r.status == 200, r
    assert leader.store.cluster.leader_id == "node3"


def test_no_leader_is_503(trio):
    """With no leader known, writes answer 503 'leader not found' in the one error shape."""
    _, follower, _ = trio
    follower.store.cluster.leader_id = None
    r = follower.http.post("/db/execute", ["CREATE TABLE t (x)"])
    assert r.status == 503
    assert r.json() == {"error": "leader not found", "code": "leader_not_found"}
    r = follower.http.post("/db/execute?queue", ["CREATE TABLE t (x)"])
    assert r.status == 503
    assert follower.http.get("/leader").status == 503


def test_forwarding_loop_is_bounded(trio):
    """Two nodes that each name the other as leader never bounce a request forever."""
    a, b, _ = trio
    a.store.cluster.leader_id = "node2"

    # node2 believes node1 leads, node1 believes node2 leads.
    def _need_leader_b():
        raise errors.NotLeader(leader_id="node1", leader_addr=a.addr)
    b.store._need_leader = _need_leader_b
    r = a.http.post("/db/execute", ["CREATE TABLE t (x)"])
    assert r.status == 503 and "forwarded" in r.json()["error"]


def test_unreachable_leader_is_503(trio, serve):
    """A leader that cannot be reached: 503 naming it, never a hang or a 500."""
    leader, follower, _ = trio
    leader.store.member.http_addr = "127.0.0.1:1"
    r = follower.http.post("/db/execute?timeout=2s", ["CREATE TABLE t (x)"])
    assert r.status == 503 and "127.0.0.1:1" in r.json()["error"]
    assert r.json()["code"] == "unreachable"  # nothing was sent: a definite failure


def test_queued_writes_on_follower_reach_leader(trio):
    """Queued writes on a follower are written through the leader."""
    leader, follower, _ = trio
    follower.http.post("/db/execute", ["CREATE TABLE t (x)"])
    r = follower.http.post("/db/execute?queue&wait&timeout=5s", [["INSERT INTO t VALUES(?)", 1]])
    assert r.status == 200, r
    r = leader.http.get("/db/query?q=SELECT+x+FROM+t")
    assert r.json()["results"][0]["values"] == [[1]]


def test_forwarding_honours_timeout(trio):
    """A forwarded request waits no longer than its timeout for the leader: 504, and the
    follower keeps serving."""
    import time
    leader, follower, _ = trio
    leader.store.delay = 3.0
    t0 = time.monotonic()
    r = follower.http.post("/db/execute?timeout=500ms", ["CREATE TABLE t (x)"])
    assert r.status == 504 and r.json()["code"] == "timeout"
    assert time.monotonic() - t0 < 2.5
    assert follower.http.get("/readyz?noleader").status == 200


def test_backup_noleader_is_local(trio):
    """/db/backup?noleader on a follower is served by the follower itself."""
    leader, follower, _ = trio
    follower.store.cluster.conn.execute("CREATE TABLE k (x)")
    r = follower.http.get("/db/backup?noleader")
    assert r.status == 200 and r.body.startswith(b"SQLite format 3")
    assert "x-rqlite-served-by" not in r.headers
    assert follower.store.calls[-1][0] == "backup"
    assert not any(c[0] == "backup" for c in leader.store.calls)


def test_request_endpoint_forwards_and_associative(trio):
    """/db/request on a follower goes to the leader; associative renders both kinds."""
    leader, follower, _ = trio
    r = follower.http.post("/db/request?associative", [
        "CREATE TABLE a (id INTEGER PRIMARY KEY, n TEXT)", "INSERT INTO a(n) VALUES('x')",
        "SELECT * FROM a"])
    assert r.body == (b'{"results":[{"rows":null},{"last_insert_id":1,"rows_affected":1,'
                      b'"rows":null},{"types":{"id":"integer","n":"text"},'
                      b'"rows":[{"id":1,"n":"x"}]}]}')


def test_load_redirect_before_upload(trio):
    """/db/load?redirect on a follower answers 301 to the leader without loading."""
    leader, follower, _ = trio
    r = follower.http.post("/db/load?redirect", "CREATE TABLE z (x);")
    assert r.status == 301 and r.headers["location"] == f"http://{leader.addr}/db/load?redirect"
    assert not any(c[0] == "load" for c in follower.store.calls + leader.store.calls)


def test_request_id_reaches_the_store_through_a_follower(trio):
    """Invariant: the client's request id (``request_id`` parameter, else ``X-Request-Id``
    header) reaches the leader's store unchanged, also when a follower forwards it; the
    parameter wins over the header; an over-long id is a 400 and nothing runs."""
    leader = trio[0]
    follower = trio[1].http
    r = follower.post("/db/execute?request_id=abc", [["INSERT INTO t(v) VALUES (?)", 1]])
    assert r.status == 200, r
    assert leader.store.calls[-1] == ("execute", {"n": 1, "transaction": False,
                                                  "timeout": None, "request_id": "abc"})
    r = follower.post("/db/execute", [["INSERT INTO t(v) VALUES (?)", 2]],
                      headers={"X-Request-Id": "hdr-1"})
    assert r.status == 200 and leader.store.calls[-1][1]["request_id"] == "hdr-1"
    r = leader.http.post("/db/execute?request_id=p", ["INSERT INTO t(v) VALUES (3)"],
                         headers={"X-Request-Id": "h"})
    assert r.status == 200 and leader.store.calls[-1][1]["request_id"] == "p"
    r = leader.http.post("/db/request", ["INSERT INTO t(v) VALUES (4)"],
                         headers={"X-Request-Id": "req-4"})
    assert r.status == 200 and leader.store.calls[-1][1]["request_id"] == "req-4"
    n = len(leader.store.calls)
    r = leader.http.post("/db/execute?request_id=" + "x" * 300, ["INSERT INTO t(v) VALUES (5)"])
    assert r.status == 400 and "request_id" in r.json()["error"]
    assert len(leader.store.calls) == n


def test_unreachable_candidate_falls_through_to_the_next(trio):
    """A node that does not know the leader names several members to try
    (``NotLeader.alternates``; a shard member forwarding an admin call to the default
    group): one that cannot be reached (nothing was sent) is skipped, and the request
    is answered by the next, once."""
    from raftsqlite.http.forward import alternate
    leader, follower, _ = trio

    def _need_leader():
        raise alternate(errors.NotLeader(), ["127.0.0.1:1", leader.addr])
    follower.store._need_leader = _need_leader
    r = follower.http.post("/db/execute", ["CREATE TABLE t (x)"])
    assert r.status == 200, r
    assert r.headers["x-rqlite-served-by"] == leader.addr
    assert [c[0] for c in leader.store.calls] == ["execute"]
