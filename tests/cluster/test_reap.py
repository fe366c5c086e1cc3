"""Membership housekeeping on real raft-sqlite processes (127.0.0.1): reaping members
that stayed silent (-raft-reap-node-timeout, -raft-reap-read-only-node-timeout) and
-raft-cluster-remove-shutdown. Two groups, each shared by its tests in file order; every
wait is bounded and every process is stopped by PID."""
import os
import signal
import time

import pytest

from tests.cluster.node_harness import NodeProc, call, execute, free_port, values, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

REAP = "2s"
REAP_S = 2.0
# Generous: the timeout counts Raft ticks, and ticks run late on a loaded machine.
REAP_WAIT = 30


def _group(workdir, specs):
    """Start node ``specs[0]`` (it bootstraps), then the others joining it together;
    returns the NodeProcs once the leader lists them all as members."""
    ports = [(free_port(), free_port()) for _ in specs]
    procs = []
    for i, ((nid, extra), (hp, rp)) in enumerate(zip(specs, ports)):
        join = [] if i == 0 else [f"127.0.0.1:{ports[0][0]}"]
        procs.append(NodeProc(workdir, nid, hp, rp, join, extra))
    procs[0].start()
    wait_for(procs[0].ready, 30, "first node ready")
    for p in procs[1:]:
        p.start()
    want = {p.node_id for p in procs}
    wait_for(lambda: _members(_leader(procs)) == want, 60, "every member joined")
    return procs


def _stop(procs):
    for p in procs:
        if p.proc is not None and p.alive():
            try:
                os.kill(p.proc.pid, signal.SIGCONT)
            except OSError:
                pass
        p.kill()


def _leader(procs):
    return wait_for(lambda: next((p for p in procs if p.alive() and p.is_leader()), None),
                    20, "a leader")


def _members(p, voters_only=False):
    s = p.status()
    return {m["node_id"] for m in s["store"]["members"] if m["voter"] or not voters_only}


def _raft(p):
    return p.status()["raft"]


def _write(p, n):
    st, body = execute(p.http, [["INSERT INTO t(v) VALUES (?)", n]], params="?timeout=10s")
    assert st == 200 and "error" not in body["results"][0], body


def _follower(procs, voter=True, exclude=()):
    lead = _leader(procs)
    return next(p for p in procs if p is not lead and p.alive() and p not in exclude
                and (p.node_id in _members(lead, voters_only=True)) == voter)


def _still_members(procs, want, seconds):
    """Every live member keeps listing ``want`` for ``seconds`` (nothing is reaped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for p in procs:
            if p.alive():
                got = _members(p)
                assert got == want, f"{p.node_id} lists {got}, expected {want}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def reaping(tmp_path_factory):
    """3 voters and a read replica, every member with both reap timeouts at 2 s."""
    flags = ["-raft-reap-node-timeout", REAP, "-raft-reap-read-only-node-timeout", REAP]
    procs = _group(str(tmp_path_factory.mktemp("reap")),
                   [("node1", flags), ("node2", flags), ("node3", flags),
                    ("reader1", flags + ["-non-voter"])])
    lead = _leader(procs)
    st, body = execute(lead.http, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"])
    assert st == 200, body
    try:
        yield procs
    finally:
        _stop(procs)


def test_paused_member_and_leader_change_reap_nobody(reaping):
    """Invariants: a member paused (SIGSTOP) for less than the timeout is not reaped; a
    leader change restarts the clock, so the new leader reaps no live member (the
    replica and the paused voter included) however long the run."""
    procs = reaping
    want = {p.node_id for p in procs}
    paused = _follower(procs)
    os.kill(paused.proc.pid, signal.SIGSTOP)
    time.sleep(0.4 * REAP_S)
    os.kill(paused.proc.pid, signal.SIGCONT)
    lead = _leader(procs)
    to = next(p for p in procs if p is not lead and p is not paused
              and p.node_id in _members(lead, voters_only=True))
    st, _ = call(lead.http, "POST", "/leader", {"id": to.node_id})
    assert st == 200
    wait_for(lambda: to.is_leader(), 15, "the transfer")
    _still_members(procs, want, 2 * REAP_S + 1)
    for p in procs:
        r = _raft(p)
        assert r["reaped_voters"] == 0 and r["reaped_non_voters"] == 0, (p.node_id, r)


def test_killed_read_replica_is_reaped(reaping):
    """Invariant: a non-voter silent past -raft-reap-read-only-node-timeout is removed by
    the leader; the voters stay."""
    procs = reaping
    reader = procs[3]
    reader.kill()
    lead = _leader(procs)
    wait_for(lambda: "reader1" not in _members(_leader(procs)), REAP_WAIT, "reader1 reaped")
    assert _members(_leader(procs)) == {"node1", "node2", "node3"}
    assert sum(_raft(p)["reaped_non_voters"] for p in procs[:3]) == 1
    assert lead.alive()


def test_killed_voter_is_reaped_and_writes_go_on(reaping):
    """Invariants: a voter silent past -raft-reap-node-timeout is removed (one WARNING
    line naming it and its silence, counted in /status and /metrics); /nodes shows the two
    left; writes are accepted and reach both."""
    procs = reaping
    victim = _follower(procs)
    victim.kill()
    live = [p for p in procs[:3] if p is not victim]
    wait_for(lambda: victim.node_id not in _members(_leader(live)), REAP_WAIT,
             f"{victim.node_id} reaped")
    lead = _leader(live)
    st, nodes = call(lead.http, "GET", "/nodes?nonvoters")
    assert st == 200 and set(nodes) == {p.node_id for p in live}, nodes
    for i in range(5):
        _write(lead, i)
    for p in live:
        wait_for(lambda: values(p.http, "SELECT count(*) FROM t") == [[5]], 10,
                 f"writes on {p.node_id}")
    reaper = next(p for p in live if _raft(p)["reaped_voters"] == 1)
    last = _raft(reaper)["last_reaped"]
    assert last["node_id"] == victim.node_id and last["voter"] is True
    assert last["silent_s"] >= REAP_S
    assert f"reaped voter {victim.node_id}" in open(reaper.log_path).read()
    st, text = call(reaper.http, "GET", "/metrics")
    assert 'raftsqlite_raft_members_reaped_total{group="default",kind="voter"} 1' in text


def test_reaped_voter_that_comes_back_knows_and_disrupts_nothing(reaping):
    """Invariants: the reaped voter restarted (with its data, without -join) is not a
    member again; its campaigns move no term and depose no leader; its /status says it
    was removed and its /readyz answers 503 saying so; the group keeps taking writes."""
    procs = reaping
    gone = next(p for p in procs[:3] if not p.alive())
    live = [p for p in procs[:3] if p.alive()]
    lead = _leader(live)
    term = _raft(lead)["term"]
    gone.join = []
    gone.start()
    wait_for(lambda: gone.status() is not None, 30, "the reaped node answers")
    wait_for(lambda: gone.status()["store"]["removed"], 20, "it knows it was removed")
    st, text = call(gone.http, "GET", "/readyz")
    assert st == 503 and "removed" in text, (st, text)
    assert _leader(live) is lead and _raft(lead)["term"] == term
    assert _members(lead) == {p.node_id for p in live}
    _write(lead, 100)
    assert _raft(lead)["term"] == term
    # restarted with -join it is added back, catches up, and is no longer "removed"
    gone.terminate()
    gone.join = [lead.http]
    gone.start()
    wait_for(lambda: gone.node_id in _members(_leader(live), voters_only=True), 30,
             "the reaped node joined again")
    wait_for(lambda: gone.ready() and not gone.status()["store"]["removed"], 20,
             "it is a ready member again")
    wait_for(lambda: values(gone.http, "SELECT count(*) FROM t") == [[6]], 10,
             "it caught up")


@pytest.fixture(scope="module")
def leaving(tmp_path_factory):
    """4 voters and a read replica; node1-3 leave their group on SIGTERM, node4 does not;
    only the read-only reap timeout is set."""
    leave = ["-raft-cluster-remove-shutdown", "-raft-reap-read-only-node-timeout", REAP]
    procs = _group(str(tmp_path_factory.mktemp("leave")),
                   [("node1", leave), ("node2", leave), ("node3", leave),
                    ("node4", ["-raft-reap-read-only-node-timeout", REAP]),
                    ("reader1", ["-non-voter"])])
    st, body = execute(_leader(procs).http, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"])
    assert st == 200, body
    try:
        yield procs
    finally:
        _stop(procs)


def test_sigterm_without_the_flag_keeps_membership_and_voters_are_not_reaped(leaving):
    """Invariants: without -raft-cluster-remove-shutdown a SIGTERM changes no membership;
    with only the read-only timeout set, a silent replica is reaped and a silent voter is
    not."""
    procs = leaving
    node4, reader = procs[3], procs[4]
    if node4.is_leader():
        st, _ = call(node4.http, "POST", "/leader", {"id": "node1"})
        assert st == 200
        wait_for(lambda: procs[0].is_leader(), 15, "node1 leads")
    node4.terminate()
    assert not node4.alive()
    reader.kill()
    assert "node4" in _members(_leader(procs[:3]), voters_only=True)
    wait_for(lambda: "reader1" not in _members(_leader(procs[:3])), REAP_WAIT,
             "reader1 reaped")
    _still_members(procs[:3], {"node1", "node2", "node3", "node4"}, REAP_S + 1)
    assert all(_raft(p)["reaped_voters"] == 0 for p in procs[:3])
    # node4 comes back: a member all along, it catches up and votes again
    node4.start()
    wait_for(node4.ready, 30, "node4 back")


def test_sigterm_with_the_flag_removes_a_follower_then_the_leader(leaving):
    """Invariants: with -raft-cluster-remove-shutdown, a follower on SIGTERM leaves the
    group before exiting, and so does a leader (it hands leadership over first); each
    exit stays within the bound; the two members left keep accepting writes."""
    procs = leaving
    flagged = procs[:3]
    voters = procs[:4]
    lead = _leader(voters)
    if lead is procs[3]:
        st, _ = call(lead.http, "POST", "/leader", {"id": "node1"})
        assert st == 200
        lead = wait_for(lambda: procs[0] if procs[0].is_leader() else None, 15, "node1 leads")
    follower = next(p for p in flagged if p is not lead)
    t0 = time.monotonic()
    follower.terminate(timeout=20)
    took = time.monotonic() - t0
    assert not follower.alive() and took < 12, took
    left = [p for p in voters if p is not follower]
    assert _members(_leader(left)) == {p.node_id for p in left}
    _write(_leader(left), 1)
    assert "removed itself from its group" in open(follower.log_path).read()
    lead = _leader(left)
    assert lead in flagged
    t0 = time.monotonic()
    lead.terminate(timeout=20)
    took = time.monotonic() - t0
    assert not lead.alive() and took < 12, took
    left = [p for p in left if p is not lead]
    new = _leader(left)
    wait_for(lambda: _members(new) == {p.node_id for p in left}, 10, "two members left")
    _write(new, 2)
    for p in left:
        wait_for(lambda: values(p.http, "SELECT count(*) FROM t") == [[2]], 10,
                 f"writes on {p.node_id}")
    text = open(lead.log_path).read()
    assert "removed itself from its group" in text
    assert "hand-over before leaving failed" not in text    # it handed leadership over
