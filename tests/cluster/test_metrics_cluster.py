"""GET /metrics on a real 3-node cluster (one cluster for the module; the last test kills
its leader). Every wait is bounded; every process is stopped by PID."""
import math

import pytest

from tests.cluster.node_harness import Cluster, call, execute, wait_for
from tests.promtext import parse

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

N = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("metrics")), 3)
    try:
        c.start()
        st, body = execute(c.leader().http, [["CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"]])
        assert st == 200, body
        yield c
    finally:
        c.stop()


def scrape(node):
    st, text = call(node.http, "GET", "/metrics", raw=True)
    assert st == 200, text
    return parse(text.decode("utf-8"))


def val(fams, name, **labels):
    return fams[name].value(**labels)


def followers(c, lead):
    return [n for n in c.nodes if n is not lead and n.alive()]


def test_every_member_serves_valid_exposition_text(cluster):
    """The whole /metrics output of each live member is valid exposition text (strict
    parser; also prometheus_client's parser when installed), with the process metrics,
    and no section failed."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        text_string_to_metric_families = None
    for n in cluster.nodes:
        st, raw = call(n.http, "GET", "/metrics", raw=True)
        assert st == 200
        fams = parse(raw.decode("utf-8"))
        assert val(fams, "raftsqlite_scrape_errors_total") == 0
        assert fams["process_resident_memory_bytes"].value() > 0
        assert fams["process_cpu_seconds_total"].value() > 0
        if text_string_to_metric_families is not None:
            names = {f.name for f in text_string_to_metric_families(raw.decode("utf-8"))}
            assert "raftsqlite_raft_term" in names


def test_writes_move_the_leaders_counters_and_followers_catch_up(cluster):
    """After N single-row writes to the leader, one at a time: its applied index rose by
    at least N (each waited-for write is at least one entry), its store and HTTP write
    counters by exactly N, the fsync and apply histograms by at least one observation
    (and /debug/vars gives the applied index and an fsync p50 bound), and every
    follower's applied index reaches the leader's commit index."""
    lead = cluster.leader()
    g = {"group": "default"}
    before = scrape(lead)
    for i in range(N):
        st, body = execute(lead.http, [["INSERT INTO kv(v) VALUES(?)", f"v{i}"]])
        assert st == 200 and "error" not in body["results"][0], body
    after = scrape(lead)
    assert val(after, "raftsqlite_raft_applied_index", **g) \
        >= val(before, "raftsqlite_raft_applied_index", **g) + N
    assert val(after, "raftsqlite_store_writes_total") \
        == val(before, "raftsqlite_store_writes_total") + N
    ok = {"route": "/db/execute", "status": "2xx"}
    assert val(after, "raftsqlite_http_requests_total", **ok) \
        == val(before, "raftsqlite_http_requests_total", **ok) + N
    assert val(after, "raftsqlite_fsm_statements_total") \
        >= val(before, "raftsqlite_fsm_statements_total") + N

    def count(fams, name):
        (v,) = [v for s, lab, v in fams[name].samples if s == name + "_count" and lab == g]
        return v
    assert count(after, "raftsqlite_raft_fsync_duration_seconds") \
        > count(before, "raftsqlite_raft_fsync_duration_seconds")
    assert count(after, "raftsqlite_raft_apply_duration_seconds") \
        > count(before, "raftsqlite_raft_apply_duration_seconds")
    st, dv = call(lead.http, "GET", "/debug/vars?key=raft")
    assert st == 200 and list(dv) == ["raft"], dv
    assert dv["raft"]["applied"] >= val(before, "raftsqlite_raft_applied_index", **g) + N
    assert 0 < dv["raft"]["fsync_p50_le_s"] <= 10 or dv["raft"]["fsync_p50_le_s"] == "+Inf"
    commit = val(after, "raftsqlite_raft_commit_index", **g)
    for f in followers(cluster, lead):
        wait_for(lambda: val(scrape(f), "raftsqlite_raft_applied_index", **g) >= commit,
                 15, f"{f.node_id} applied {commit}")


def test_roles_and_per_peer_replication_lag(cluster):
    """The leader shows is_leader 1 and a replication-lag gauge for each follower (and
    not for itself), which settles at 0 when writes stop; followers show is_leader 0,
    the follower state, and know a leader. Every member counts 3 voters."""
    lead = cluster.leader()
    g = {"group": "default"}
    fl = followers(cluster, lead)
    lm = scrape(lead)
    assert val(lm, "raftsqlite_raft_is_leader", **g) == 1
    assert val(lm, "raftsqlite_raft_state", state="leader", **g) == 1
    peers = {lab["peer"] for _, lab, _ in lm["raftsqlite_raft_replication_lag_entries"].samples}
    assert peers == {f.node_id for f in fl}
    for v in lm["raftsqlite_raft_replication_lag_entries"].values().values():
        assert v >= 0 and math.isfinite(v)

    def settled():
        lag = scrape(lead)["raftsqlite_raft_replication_lag_entries"].values().values()
        return len(lag) == len(fl) and all(v == 0 for v in lag)
    wait_for(settled, 15, "replication lag 0 on every follower")
    for f in fl:
        fm = scrape(f)
        assert val(fm, "raftsqlite_raft_is_leader", **g) == 0
        assert val(fm, "raftsqlite_raft_state", state="follower", **g) == 1
        assert val(fm, "raftsqlite_raft_has_leader", **g) == 1
        assert val(fm, "raftsqlite_raft_voters", **g) == 3
        assert not fm["raftsqlite_raft_replication_lag_entries"].samples
        assert val(fm, "raftsqlite_raft_messages_received_total", **g) > 0


def test_a_followers_forwarded_write_is_counted(cluster):
    """A write sent to a follower is forwarded to the leader: the follower's forwarded
    counter rises by one and the write is counted 2xx on both."""
    lead = cluster.leader()
    f = followers(cluster, lead)[0]
    ok = {"route": "/db/execute", "status": "2xx"}
    fb, lb = scrape(f), scrape(lead)
    st, body = execute(f.http, [["INSERT INTO kv(v) VALUES('fwd')"]])
    assert st == 200, body
    fa, la = scrape(f), scrape(lead)
    assert val(fa, "raftsqlite_http_forwarded_total") == val(fb, "raftsqlite_http_forwarded_total") + 1
    assert val(fa, "raftsqlite_http_requests_total", **ok) \
        == val(fb, "raftsqlite_http_requests_total", **ok) + 1
    assert val(la, "raftsqlite_store_writes_total") == val(lb, "raftsqlite_store_writes_total") + 1


def test_killing_the_leader_raises_the_new_leaders_leader_changes(cluster):
    """After kill -9 of the leader, a new leader is elected and its
    leader_changes_seen counter is higher than before the kill (it saw the new leader:
    itself); it reports is_leader 1 and a replication lag for both other members (the
    dead one included: its growing lag is what an operator alerts on)."""
    g = {"group": "default"}
    old = cluster.leader()
    before = {n.node_id: val(scrape(n), "raftsqlite_raft_leader_changes_seen_total", **g)
              for n in followers(cluster, old)}
    old.kill()
    new = wait_for(lambda: next((n for n in cluster.nodes if n.alive() and n.is_leader()),
                                None), 20, "a new leader")
    assert new is not old

    def counted():
        # is_leader reads the core's role, which can turn before the Ready that counts the
        # leader change is handled: poll the scrape, do not take the first one
        m = scrape(new)
        return m if (val(m, "raftsqlite_raft_leader_changes_seen_total", **g)
                     > before[new.node_id]
                     and val(m, "raftsqlite_raft_is_leader", **g) == 1) else None
    m = wait_for(counted, 10, "the new leader's metrics to count its election")
    assert val(m, "raftsqlite_raft_leader_terms_total", **g) >= 1
    peers = {lab["peer"] for _, lab, _ in m["raftsqlite_raft_replication_lag_entries"].samples}
    assert peers == {n.node_id for n in cluster.nodes if n is not new}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from raftsqlite.sharding.local import LocalCluster
    cl = LocalCluster(str(tmp_path_factory.mktemp("metrics-sharded")), shards=("shard1",))
    try:
        cl.start()
        yield cl
    finally:
        cl.stop()


def test_sharded_nodes_label_their_group_and_count_routed_calls(sharded):
    """On a default node and a shard member: valid exposition; each labels its Raft
    metrics with its own group; writes routed by key to shard1 through the default
    node are counted as single-shard plans and remote group calls there, the plan cache
    counts its hits, and the shard member serves with the same catalog version."""
    from raftsqlite.sharding.local import http
    d, s1 = sharded.addrs["default"], sharded.addrs["shard1"]
    st, res = http("POST", d, "/db/execute",
                   [["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"]])
    assert st == 200, res
    for path, body in (("/table/register",
                        {"table_name": "users", "shard_key": "id", "shard_func": "hash"}),
                       ("/table/add-to-shard", {"table_name": "users", "shard_id": "shard1"}),
                       ("/table/rebalance", {"table_name": "users"})):
        st, res = http("POST", d, path, body)
        assert st == 200, (path, res)

    def get(addr):
        st, text = call(addr, "GET", "/metrics", raw=True)
        assert st == 200
        return parse(text.decode("utf-8"))
    before = get(d)
    n = 20
    for i in range(n):
        st, res = http("POST", d, "/db/execute",
                       [["INSERT INTO users(id, name) VALUES(?, ?)", i * 7919, f"u{i}"]])
        assert st == 200 and "error" not in res["results"][0], res
    after = get(d)
    plan = {"plan": "single"}
    assert val(after, "raftsqlite_router_statements_total", **plan) \
        >= val(before, "raftsqlite_router_statements_total", **plan) + n
    remote = {"target": "remote"}
    assert val(after, "raftsqlite_shard_calls_total", **remote) \
        > val(before, "raftsqlite_shard_calls_total", **remote)
    assert val(after, "raftsqlite_router_plan_cache_hits_total") \
        >= val(before, "raftsqlite_router_plan_cache_hits_total") + n - 1
    assert val(after, "raftsqlite_raft_is_leader", group="default") == 1
    version = val(after, "raftsqlite_catalog_version", group="default")
    sm = wait_for(lambda: (lambda m: m if val(m, "raftsqlite_catalog_version",
                                              group="shard1") == version else None)(get(s1)),
                  15, "shard1 on the default group's catalog version")
    assert val(sm, "raftsqlite_raft_is_leader", group="shard1") == 1
    assert val(sm, "raftsqlite_node_info", node_id="shard1-1", group="shard1",
               voter="true", raft_addr=sm["raftsqlite_node_info"].samples[0][1]["raft_addr"]) == 1
    assert val(sm, "raftsqlite_scrape_errors_total") == 0
    assert "raftsqlite_rebalance_moves_running" in after      # the coordinator's node
