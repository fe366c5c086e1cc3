"""Real raft-sqlite processes: idempotent retries by request id, on-demand snapshots,
freshness from the last leader contact. Every wait is bounded; processes stopped by PID."""
import pytest

from tests.cluster.node_harness import Cluster, call, execute, values, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("writes")), 3)
    try:
        c.start()
        st, body = execute(c.leader().http, ["CREATE TABLE r (id INTEGER PRIMARY KEY, v)"])
        assert st == 200, body
        yield c
    finally:
        c.stop()


def test_retried_write_with_same_request_id_applies_once(cluster):
    """Invariant: a write retried with the same request id (parameter or X-Request-Id
    header, sent to the leader or through a follower) is applied once and every retry
    answers the first result; a different id is a different write."""
    lead = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not lead)
    ins = [["INSERT INTO r(v) VALUES (?)", "once"]]
    st, first = execute(lead.http, ins, params="?request_id=req-1")
    assert st == 200 and first["results"][0]["rows_affected"] == 1, first
    st, again = execute(follower.http, ins, params="?request_id=req-1")
    assert st == 200 and again == first
    st, hdr = call(lead.http, "POST", "/db/execute", ins,
                   headers={"Content-Type": "application/json", "X-Request-Id": "req-1"})
    assert st == 200 and hdr == first
    st, other = execute(lead.http, ins, params="?request_id=req-2")
    assert st == 200 and other["results"][0]["last_insert_id"] != \
        first["results"][0]["last_insert_id"]
    wait_for(lambda: all(values(n.http, "SELECT count(*) FROM r WHERE v = 'once'")
                         == [[2]] for n in cluster.nodes), 10, "every member has 2 rows")


def test_snapshot_on_demand_while_writes_go_on(cluster):
    """Invariant: POST /snapshot takes a snapshot (200) and the log's snapshot index moves
    to at least what was applied before the call; writes succeed right after."""
    lead = cluster.leader()
    for i in range(20):
        assert execute(lead.http, [["INSERT INTO r(v) VALUES (?)", i]])[0] == 200
    applied = lead.status()["store"]["raft"]["applied_index"]
    st, _ = call(lead.http, "POST", "/snapshot")
    assert st == 200
    assert lead.status()["store"]["raft"]["last_snapshot_index"] >= applied
    assert execute(lead.http, [["INSERT INTO r(v) VALUES (?)", "after"]])[0] == 200
    st, _ = call(lead.http, "POST", "/snapshot")
    assert st in (200, 204)


def test_freshness_on_a_follower_uses_last_leader_contact(cluster):
    """Invariant: a follower that hears from its leader answers level=none reads with a
    freshness bound of a few seconds (heartbeats keep its last contact recent)."""
    lead = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not lead)
    st, body = call(follower.http, "GET",
                    "/db/query?level=none&freshness=5s&q=SELECT+count(*)+FROM+r")
    assert st == 200 and "error" not in body["results"][0], body
