"""Losing the majority for good: ``raft-sqlite recover`` turns one stopped member into its
group's only voter, keeping every acknowledged write. Also: one process per data directory."""
import json
import os
import subprocess
import sys

import pytest

from tests.cluster.node_harness import (ROOT, Cluster, NodeProc, call, execute, values,
                                        wait_for)
from raftsqlite.testing.procs import free_port


def _cli(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "raftsqlite", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _log_files(data):
    """The member's durable state: Raft state, snapshot meta, log segments, database (not
    the preallocated spare, which opening a log may drop)."""
    out = {}
    for d, _, files in os.walk(data):
        for f in files:
            p = os.path.join(d, f)
            if f == "next-segment" or f == "LOCK" or "/recycle" in p:
                continue
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


@pytest.fixture(scope="module")
def lost(tmp_path_factory):
    """A 3-member group with acknowledged rows whose every member was then killed."""
    c = Cluster(str(tmp_path_factory.mktemp("recover")), n=3)
    try:
        c.start()
        leader = c.leader()
        st, body = execute(leader.http, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
        assert st == 200, body
        acked = []
        for i in range(40):
            st, body = execute(c.nodes[i % 3].http, [["INSERT INTO t(v) VALUES (?)", f"r{i}"]])
            assert st == 200 and "error" not in body["results"][0], body
            acked.append(body["results"][0]["last_insert_id"])
        wait_for(lambda: all(len(values(n.http, "SELECT id FROM t")) == 40 for n in c.nodes),
                 20, "every member to apply the rows")
        # the lock: a second process on a live member's data directory is refused
        n1 = c.nodes[0]
        r = _cli("recover", "-id", "node1", "-data", n1.data)
        assert r.returncode == 1 and "in use by another raft-sqlite process" in r.stderr, r
        dup = NodeProc(c.workdir, "node1", free_port(), free_port())
        dup.log_path = os.path.join(c.workdir, "dup.log")
        dup.start()
        dup.proc.wait(30)
        assert dup.proc.returncode == 1, dup.tail()
        assert "in use by another raft-sqlite process (pid %d)" % n1.proc.pid in dup.tail()
        assert n1.ready() and len(values(n1.http, "SELECT id FROM t")) == 40
        for n in c.nodes:
            n.kill()
        yield c, acked
    finally:
        c.stop()


def test_recover_dry_run_changes_nothing_and_names_the_plan(lost):
    """Invariant: without -force nothing on disk changes, and the plan names the members that
    would be removed."""
    c, _ = lost
    n1 = c.nodes[0]
    before = _log_files(n1.data)
    r = _cli("recover", "-id", "node1", "-data", n1.data, "-json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["done"] is False
    assert sorted(plan["removed"]) == ["node2", "node3"]
    assert plan["new_term"] == plan["term"] + 1
    assert {m["id"] for m in plan["members"]} == {"node1", "node2", "node3"}
    assert _log_files(n1.data) == before
    r = _cli("recover", "-id", "nodeX", "-data", n1.data)
    assert r.returncode == 1 and "not a member of the last configuration" in r.stderr, r


def test_peers_json_is_refused_with_a_pointer_to_recover(lost, tmp_path):
    """Invariant: a node whose data dir holds rqlite's peers.json does not start silently
    ignoring it; it says what to run instead, and leaves the data alone."""
    c, _ = lost
    n3 = c.nodes[2]
    pj = os.path.join(n3.data, "raft", "peers.json")
    with open(pj, "w") as f:
        json.dump([{"id": "node3", "address": n3.http, "non_voter": False}], f)
    try:
        n3.start()
        n3.proc.wait(30)
        assert n3.proc.returncode == 1
        assert "raft-sqlite recover -id node3" in n3.tail(5)
    finally:
        os.remove(pj)


def test_recovered_member_leads_alone_keeps_every_acked_row_and_takes_new_members(lost):
    """Invariant: after recover -force on one member of a group that lost its majority, that
    member elects itself, holds every acknowledged row, takes writes, and a new member joining
    it with an empty data directory catches up; the lost members are no longer listed."""
    c, acked = lost
    n1 = c.nodes[0]
    r = _cli("recover", "-id", "node1", "-data", n1.data, "-force")
    assert r.returncode == 0, r.stderr
    assert "is the only voter" in r.stdout
    n1.start()
    wait_for(n1.ready, 30, "the recovered member to be ready")
    assert n1.is_leader()
    ids = [r[0] for r in values(n1.http, "SELECT id FROM t ORDER BY id", level="strong")]
    assert ids == sorted(acked)
    st, body = execute(n1.http, [["INSERT INTO t(v) VALUES (?)", "after"]])
    assert st == 200 and "error" not in body["results"][0], body
    st, nodes = call(n1.http, "GET", "/nodes?ver=2")
    assert st == 200 and [m["id"] for m in nodes["nodes"]] == ["node1"], nodes
    n4 = NodeProc(c.workdir, "node4", free_port(), free_port(), join=[n1.http])
    c.nodes.append(n4)
    n4.start()
    wait_for(lambda: len(values(n4.http, "SELECT id FROM t")) == len(acked) + 1, 30,
             "the new member to catch up")
    st, nodes = call(n1.http, "GET", "/nodes?ver=2")
    assert sorted(m["id"] for m in nodes["nodes"]) == ["node1", "node4"], nodes
