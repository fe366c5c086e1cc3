"""A member restarted under new addresses (a new IP after a reschedule) finds its group again
by itself, with or without -join."""
import pytest

from tests.cluster.node_harness import Cluster, call, execute, values, wait_for
from raftsqlite.testing.procs import free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("addr")), n=3)
    try:
        yield c.start()
    finally:
        c.stop()


def test_member_restarted_with_new_addresses_and_no_join_rejoins(cluster):
    """Invariant: a member restarted without -join on new HTTP and Raft ports is listed by
    the leader under the new addresses and applies writes made after its restart. (Before,
    the others kept sending to the old address and it never heard its leader again.)"""
    leader = cluster.leader()
    st, body = execute(leader.http, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
                                     ["INSERT INTO t(v) VALUES (?)", "before"]])
    assert st == 200, body
    victim = next(n for n in cluster.nodes if n is not leader)
    wait_for(lambda: len(values(victim.http, "SELECT id FROM t")) == 1, 15, "victim caught up")
    victim.terminate()
    victim.http_port, victim.raft_port = free_port(), free_port()
    victim.http = f"127.0.0.1:{victim.http_port}"
    victim.join = []
    victim.start()

    def listed():
        st, nodes = call(cluster.leader().http, "GET", "/nodes?ver=2")
        me = next((m for m in nodes["nodes"] if m["id"] == victim.node_id), None)
        return st == 200 and me and me["addr"] == f"127.0.0.1:{victim.raft_port}" \
            and me["api_addr"].endswith(victim.http) and me["voter"]
    wait_for(listed, 30, "the leader to list the new addresses")
    st, body = execute(cluster.leader().http, [["INSERT INTO t(v) VALUES (?)", "after"]])
    assert st == 200 and "error" not in body["results"][0], body
    wait_for(lambda: [r[0] for r in values(victim.http, "SELECT v FROM t ORDER BY id")]
             == ["before", "after"], 30, "the moved member to apply the new write")


def test_http_request_on_the_raft_port_is_named_as_such(cluster):
    """Invariant: an HTTP request sent to a member's Raft port (an operator giving -join or a
    load balancer the wrong address) is closed, logged as a warning that says which address
    to use, and the member keeps serving."""
    import socket
    n = cluster.nodes[0]
    with socket.create_connection(("127.0.0.1", n.raft_port), timeout=5) as s:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        while s.recv(4096):   # the member closes the connection
            pass
    wait_for(lambda: "HTTP request reached the Raft port" in n.tail(20), 10, "the warning")
    assert n.ready()
