"""A member whose Raft log is empty but whose term (or vote) is on disk was a member of a
group: restarted without -join it must wait for its leader, never bootstrap a new group."""
import os
import shutil

import pytest

from raftsqlite.raft.log import RaftLog
from raftsqlite.raft.types import HardState
from tests.cluster.node_harness import Cluster, execute, values, wait_for


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path), n=3)
    try:
        yield c.start()
    finally:
        c.stop()


def test_member_with_empty_log_but_a_term_rejoins_instead_of_bootstrapping(cluster):
    """Invariant: a member restarted (no -join) with an empty log and a durable term starts,
    stays one group with the others, and is caught up by the leader. (The fault suite saw
    such a member, killed right after joining, exit with 'cannot bootstrap, the node has
    voted'.)"""
    leader = cluster.leader()
    st, _ = execute(leader.http, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
                                  ["INSERT INTO t(v) VALUES (?)", "before"]])
    assert st == 200
    victim = next(n for n in cluster.nodes if n is not leader)
    term = victim.status()["store"]["raft"]["term"]
    assert term >= 1
    victim.kill()
    # the state of a member that took part in an election before any entry reached it:
    # no log, no database, only its term and vote
    shutil.rmtree(os.path.join(victim.data, "raft"))
    for f in os.listdir(victim.data):
        if f.startswith("db.sqlite"):
            os.remove(os.path.join(victim.data, f))
    log = RaftLog(os.path.join(victim.data, "raft"))
    log.open()
    log.persist(hard_state=HardState(term=term, vote=leader.node_id, commit=0))
    log.close()
    victim.join = []     # restarted as members restart: no -join
    victim.start()
    wait_for(lambda: values(victim.http, "SELECT v FROM t") == [["before"]], 30,
             f"{victim.node_id} caught up by the leader\n{victim.tail()}")
    assert victim.alive()
    st, _ = execute(cluster.leader().http, [["INSERT INTO t(v) VALUES (?)", "after"]])
    assert st == 200
    wait_for(lambda: values(victim.http, "SELECT v FROM t ORDER BY id") ==
             [["before"], ["after"]], 30, f"{victim.node_id} follows new writes")
    leaders = [n for n in cluster.nodes if n.alive() and n.is_leader()]
    assert len(leaders) == 1, "the restarted member started a group of its own"
