"""/nodes, /leader, /readyz, /status, /remove, /snapshot, /join."""
from raftsqlite.http.cluster import REQUIRED_STATUS_KEYS, go_duration


def test_nodes_legacy_and_v2(trio):
    """/nodes: a map by id (legacy) or {"nodes": [...]} with ver=2, sorted by id, with
    rqlite's fields; non-voters only with nonvoters."""
    leader, follower, third = trio
    third.store.member.voter = False
    legacy = follower.http.get("/nodes").json()
    assert sorted(legacy) == ["node1", "node2"]
    n1 = legacy["node1"]
    assert n1["api_addr"] == f"http://{leader.addr}" and n1["addr"] == "node1:raft"
    assert n1["leader"] is True and n1["reachable"] is True and n1["voter"] is True
    assert list(n1)[:7] == ["id", "api_addr", "addr", "version", "voter", "reachable", "leader"]
    assert legacy["node2"]["leader"] is False
    v2 = follower.http.get("/nodes?ver=2&nonvoters").json()
    assert [n["id"] for n in v2["nodes"]] == ["node1", "node2", "node3"]
    assert v2["nodes"][2]["voter"] is False


def test_nodes_reports_unreachable_member(trio):
    """A member whose API does not answer is listed as unreachable with an error."""
    leader, follower, third = trio
    third.store.member.http_addr = "127.0.0.1:1"
    doc = leader.http.get("/nodes?timeout=2s").json()
    assert doc["node3"]["reachable"] is False and doc["node3"]["error"]


def test_leader_get(trio):
    """GET /leader describes the leader as /nodes does."""
    _, follower, _ = trio
    doc = follower.http.get("/leader").json()
    assert doc["id"] == "node1" and doc["leader"] is True


def test_readyz(single):
    """readyz: text lines as rqlite; 503 without leader or when the store is not ready;
    noleader only checks the node."""
    h = single.http
    r = h.get("/readyz")
    assert (r.status, r.text) == (200, "[+]node ok\n[+]leader ok\n[+]store ok")
    assert h.get("/readyz?sync").text.endswith("[+]sync ok")
    single.store.is_ready = False
    assert h.get("/readyz").status == 503
    single.store.cluster.leader_id = None
    r = h.get("/readyz")
    assert (r.status, r.text) == (503, "[+]node ok\n[+]leader does not exist")
    r = h.get("/readyz?noleader")
    assert (r.status, r.text) == (200, "[+]node ok")


def test_status_has_rqlite_keys_and_our_sections(single):
    """/status carries every rqlite key clients read, plus node.stats() sections and the
    HTTP layer's own; ?key= selects a sub-document."""
    h = single.http
    doc = h.get("/status").json()
    for key in REQUIRED_STATUS_KEYS:
        d = doc
        for k in key.split("."):
            assert k in d, f"/status lacks {key}"
            d = d[k]
    assert doc["store"]["raft"]["state"] == "Leader"
    assert doc["raft"] == {"term": 1}            # from node.stats()
    assert doc["store"]["calls"] >= 0            # node.stats()["store"] merged in
    assert "counters" in doc["http"] and "queue" in doc["http"]
    assert h.get("/status?key=store.raft.state").json() == "Leader"
    assert h.get("/status?key=store.nothing").json() == {}


def test_remove_snapshot_join(single):
    """remove needs {"id"}; an unknown id is 404; snapshot and join reach the store."""
    h = single.http
    r = h.post("/join", {"node_id": "n2", "raft_addr": "h:2", "http_addr": "h:3",
                         "voter": False})
    assert r.json() == {"node_id": "n2", "raft_addr": "h:2", "http_addr": "h:3", "voter": False}
    assert h.req("DELETE", "/remove", {"id": "n2"}).status == 200
    r = h.req("DELETE", "/remove", {"id": "n2"})
    assert r.status == 404 and r.json()["code"] == "not_found"
    r = h.req("DELETE", "/remove", {"idx": "n2"})
    assert r.status == 400 and "unknown field" in r.json()["error"]
    assert h.post("/snapshot").status == 200
    assert single.store.calls[-1][0] == "snapshot"


def test_go_duration_strings():
    """time_s renders like Go's Duration.String()."""
    assert go_duration(0.0015) == "1.5ms"
    assert go_duration(2.0) == "2s"
    assert go_duration(42e-9) == "42ns"


def test_extra_blueprints_and_error_shape(serve):
    """node.http_blueprints are served, and their errors use the one error shape."""
    from sanic import Blueprint
    from sanic.response import json as sjson

    from raftsqlite import errors
    from tests.api.fakes import Cluster, FakeNode, FakeStore

    def tables():
        bp = Blueprint("tables_test")

        @bp.get("/tables")
        async def list_tables(request):
            return sjson({"tables": [], "node": request.app.ctx.node_id()})

        @bp.post("/table/register")
        async def register(request):
            raise errors.RoutingRefused("cannot shard this table")
        return bp

    cl = Cluster()
    st = FakeStore(cl, "n1")
    cl.leader_id = "n1"
    node = FakeNode(st)
    node.http_blueprints = [tables]
    s = serve(node)
    assert s.http.get("/tables").json() == {"tables": [], "node": "n1"}
    r = s.http.post("/table/register", {})
    assert r.status == 400 and r.json() == {"error": "cannot shard this table",
                                            "code": "routing_refused"}
