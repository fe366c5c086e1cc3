"""-auto-vacuum-int: the group's leader VACUUMs through the log on schedule; every member
compacts, and the schedule survives a change of leader."""
import pytest

from tests.cluster.node_harness import Cluster, execute, values, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("autovac")), n=3, extra=["-auto-vacuum-int", "1s"])
    try:
        yield c.start()
    finally:
        c.stop()


def _free(n):
    return values(n.http, "PRAGMA freelist_count")[0][0]


def test_scheduled_vacuum_compacts_every_member_and_survives_failover(cluster):
    """Invariant: with -auto-vacuum-int 1s, pages freed by a DELETE are returned on every
    member within a few intervals, by VACUUMs the leader runs through the log (counted in
    its /status); a new leader knows from the replicated state when the last one ran."""
    leader = cluster.leader()
    st, body = execute(leader.http, ["CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)"])
    assert st == 200, body
    st, body = execute(leader.http, [["INSERT INTO big(v) VALUES (?)", "x" * 2000]
                                     for _ in range(500)])
    assert st == 200 and "error" not in body["results"][0], body
    st, body = execute(leader.http, ["DELETE FROM big"])
    assert st == 200, body
    wait_for(lambda: all(_free(n) == 0 for n in cluster.nodes), 20,
             "every member's free pages to be returned by a scheduled VACUUM")
    av = wait_for(lambda: leader.status().get("auto_vacuum"), 10, "auto_vacuum in /status")
    assert av["runs"] >= 1 and av["interval_s"] == 1.0 and av["failures"] == 0, av
    for n in cluster.nodes:   # every member holds the leader's instant of the last one
        assert n.status()["auto_vacuum"]["last_vacuum_age_s"] is not None
    leader.kill()
    new = cluster.leader()
    assert new is not leader
    st, body = execute(new.http, [["INSERT INTO big(v) VALUES (?)", "y" * 2000]
                                  for _ in range(300)])
    assert st == 200
    st, body = execute(new.http, ["DELETE FROM big"])
    assert st == 200
    wait_for(lambda: _free(new) == 0 and new.status()["auto_vacuum"]["runs"] >= 1, 20,
             "the new leader to keep the schedule")
