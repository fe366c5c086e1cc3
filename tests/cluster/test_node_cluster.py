"""Real raft-sqlite processes on 127.0.0.1: the seed's commands, failover, restarts,
determinism and bad input. Every wait is bounded; every process is stopped by PID."""
import os
import random
import socket
import threading
import time
import urllib.parse

import pytest

from tests.cluster.node_harness import (Cluster, NodeProc, call, execute, free_port, query,
                                        values, wait_for)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

CREATE = "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT, email TEXT)"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}   # what `curl -d` sends


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path), 3, verbatim=True)
    try:
        yield c.start()
    finally:
        c.stop()


def test_seed_readme_commands_answered_from_every_node(cluster):
    """The seed README run as written (node1, then node2 and node3 joining node1; the two
    curl execute examples and the query example): every node answers the same rows."""
    n1 = cluster.nodes[0]
    # the argv is the README's, except for ports when 11000-11002/12000-12002 are taken
    assert n1.argv()[3:9] == ["-id", "node1", "-data", n1.data, "-http",
                              f"127.0.0.1:{n1.http_port}"]
    st, body = call(n1.http, "POST", "/execute", '{"query":"%s"}' % CREATE, headers=FORM)
    assert st == 200 and body == {"last_insert_id": 0, "rows_affected": 0}, body
    st, body = call(n1.http, "POST", "/execute",
                    '{"query":"INSERT INTO users (name, email) VALUES (?, ?)", '
                    '"args":["John Doe", "john@example.com"]}', headers=FORM)
    assert st == 200 and body == {"last_insert_id": 1, "rows_affected": 1}, body
    want = [{"id": 1, "name": "John Doe", "email": "john@example.com"}]
    q = "/query?" + urllib.parse.urlencode({"q": "SELECT * FROM users"})
    for n in cluster.nodes:
        wait_for(lambda: call(n.http, "GET", q) == (200, want), 10, f"rows on {n.node_id}")
    # a follower forwards a write to the leader
    follower = next(n for n in cluster.nodes if not n.is_leader())
    st, body = call(follower.http, "POST", "/execute",
                    '{"query":"INSERT INTO users (name, email) VALUES (?, ?)", '
                    '"args":["Jane", "jane@example.com"]}', headers=FORM)
    assert st == 200 and body["last_insert_id"] == 2, body


def test_determinism_of_random_and_now(cluster):
    """random(), randomblob() and datetime('now') give identical rows on every member,
    also when evaluated during apply (DEFAULT CURRENT_TIMESTAMP, DEFAULT (random()),
    datetime('now') in a trigger)."""
    lead = cluster.leader()
    st, body = execute(lead.http, [
        "CREATE TABLE d (r INTEGER, t TEXT, b BLOB, c TEXT)",
        "INSERT INTO d VALUES (random(), datetime('now'), randomblob(16), CURRENT_TIMESTAMP)",
        "INSERT INTO d SELECT random(), strftime('%f','now'), randomblob(8), date() FROM d"])
    assert st == 200 and all("error" not in r for r in body["results"]), body
    # evaluated during apply, not rewritable: column defaults and trigger bodies
    st, body = execute(lead.http, [
        "CREATE TABLE e (a, ts DEFAULT CURRENT_TIMESTAMP, r DEFAULT (random()))",
        "CREATE TABLE elog (a, at)",
        "CREATE TRIGGER etr AFTER INSERT ON e BEGIN "
        "INSERT INTO elog VALUES (new.a, strftime('%Y-%m-%d %H:%M:%f', 'now')); END",
        "INSERT INTO e(a) VALUES (1)", "INSERT INTO e(a) VALUES (2)"])
    assert st == 200 and all("error" not in r for r in body["results"]), body
    q = ("SELECT d.r, d.t, hex(d.b), d.c, e.ts, e.r, elog.at FROM d, e JOIN elog "
         "ON elog.a = e.a ORDER BY d.rowid, e.a")
    ref = values(lead.http, q, level="strong")
    assert len(ref) == 4
    for n in cluster.nodes:
        wait_for(lambda: values(n.http, q) == ref, 10, f"identical rows on {n.node_id}")


def test_bad_input_on_seed_endpoints(cluster):
    """Malformed JSON, wrong types, unknown fields, huge bodies, SQL errors and refused
    statements get a clear 4xx (or an error result); nothing changes; the node serves on."""
    lead = cluster.leader()
    st, _ = call(lead.http, "POST", "/execute", '{"query":"%s"}' % CREATE, headers=FORM)
    assert st == 200
    bad = ['{"query": ', '[]', '{"query": 5}', '{"query": "SELECT 1", "args": "x"}',
           '{"nope": "x"}', '{"query": "INSERT INTO nope VALUES (1)"}',
           '{"query": "ATTACH \'/tmp/x.db\' AS x"}', '{"query": "PRAGMA journal_mode=DELETE"}',
           '{"query": "INSERT INTO users (name) VALUES (?)", "args": [{"a": 1}]}',
           '\xff\xfe', '{"query": "SELECT * FROM _raftsqlite_meta"}']
    for b in bad:
        st, body = call(lead.http, "POST", "/execute", b.encode("utf-8", "surrogateescape")
                        if isinstance(b, str) else b, headers=FORM)
        assert 400 <= st < 500, (b, st, body)
        assert "error" in body, (b, body)
    assert _huge_body_status(lead.http_port, 70 << 20) == 413
    for q in ["SELEC 1", "SELECT * FROM nope", ""]:
        st, body = call(lead.http, "GET", "/query?" + urllib.parse.urlencode({"q": q}))
        assert 400 <= st < 500 and "error" in body, (q, st, body)
    assert values(lead.http, "SELECT count(*) FROM users", level="strong") == [[0]]
    assert lead.ready()


def _huge_body_status(port, size):
    """Announce a body of ``size`` bytes, send its start, read the status line (the
    server may answer, and close, before the rest was sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        try:
            s.sendall(b'{"query": "' + b"x" * 65536)
        except OSError:
            pass
        line = s.makefile("rb").readline()
    return int(line.split()[1])


def test_leader_kill_under_write_load_loses_nothing_acknowledged(cluster):
    """kill -9 of the leader under steady writes: writes resume through a new leader
    within a few seconds; every acknowledged write is on every member afterwards; the
    killed node restarts from its data dir and catches up."""
    lead = cluster.leader()
    st, _ = execute(lead.http, ["CREATE TABLE w (v INTEGER PRIMARY KEY, who TEXT)"])
    assert st == 200
    acked, attempted, lock = set(), set(), threading.Lock()
    stop = threading.Event()
    counter = iter(range(1, 10 ** 9))

    def writer(k):
        rng = random.Random(k)
        while not stop.is_set():
            with lock:
                v = next(counter)
                attempted.add(v)
            n = rng.choice([x for x in cluster.nodes if x.alive()])
            try:
                st, body = execute(n.http, [["INSERT INTO w VALUES (?, ?)", v, n.node_id]],
                                   timeout=5)
            except OSError:
                time.sleep(0.05)
                continue
            if st == 200 and "error" not in body["results"][0]:
                with lock:
                    acked.add(v)
            else:
                time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(acked) >= 200, 30, "200 acknowledged writes")
        lead.kill()
        killed_at, before = time.monotonic(), len(acked)
        wait_for(lambda: len(acked) >= before + 100, 20, "writes after the leader kill")
        resumed = time.monotonic() - killed_at
        lead.start()
        wait_for(lambda: len(acked) >= before + 300, 30, "more writes after restart")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert resumed < 10, f"writes resumed only after {resumed:.1f}s"
    new_lead = cluster.leader()
    final = {r[0] for r in values(new_lead.http, "SELECT v FROM w", level="strong")}
    assert acked <= final, f"lost acknowledged writes: {sorted(acked - final)[:10]}"
    assert final <= attempted
    for n in cluster.nodes:
        wait_for(lambda: {r[0] for r in values(n.http, "SELECT v FROM w")} == final, 30,
                 f"{n.node_id} converged")


def test_full_restart_keeps_everything_and_replays_nothing_twice(tmp_path):
    """SIGTERM on the leader exits cleanly and hands leadership over; then all members
    killed (-9) and restarted: every acknowledged row is there exactly once (row counts
    exact), and the group accepts writes again."""
    c = Cluster(str(tmp_path), 3)
    try:
        c.start()
        lead = c.leader()
        execute(lead.http, ["CREATE TABLE r (i INTEGER, pad TEXT)"])
        for i in range(60):
            st, body = execute(lead.http, [["INSERT INTO r VALUES (?, ?)", i, "x" * 100]])
            assert st == 200 and "error" not in body["results"][0]
        for n in c.nodes:
            wait_for(lambda: values(n.http, "SELECT count(*) FROM r") == [[60]], 10, "copies")
        # SIGTERM on the leader: clean exit, leadership handed over (no election wait)
        lead.terminate(20)
        assert lead.proc.returncode == 0, lead.tail()
        t0 = time.monotonic()
        c.leader(10)
        assert time.monotonic() - t0 < 5
        for n in c.nodes:
            n.kill()
        for n in c.nodes:
            n.start()
        lead = c.leader(30)
        assert values(lead.http, "SELECT count(*), sum(i) FROM r", level="strong") == \
            [[60, sum(range(60))]]
        st, body = execute(lead.http, [["INSERT INTO r VALUES (?, ?)", 60, ""]])
        assert st == 200 and "error" not in body["results"][0]
        for n in c.nodes:
            wait_for(lambda: values(n.http, "SELECT count(*) FROM r") == [[61]], 15,
                     f"{n.node_id} after restart")
    finally:
        c.stop()


def test_new_member_catches_up_by_snapshot(tmp_path):
    """A member joining after the log was compacted installs a snapshot (a SQLite file)
    and ends with identical data."""
    extra = ["-snapshot-threshold", "20", "-raft-opt", "snapshot_trailing=5",
             "-raft-opt", "segment_bytes=1024"]
    n1 = NodeProc(str(tmp_path), "node1", free_port(), free_port(), extra=extra).start()
    n2 = None
    try:
        wait_for(n1.ready, 30, "node1 ready")
        execute(n1.http, ["CREATE TABLE big (k INTEGER PRIMARY KEY, b BLOB)"])
        # 52 MB of deterministic data in one statement, then enough entries to compact
        st, body = execute(n1.http, [
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 52) "
            "INSERT INTO big SELECT x, zeroblob(1048576) FROM c"], timeout=60)
        assert st == 200 and body["results"][0]["rows_affected"] == 52, body
        for i in range(40):
            execute(n1.http, [["INSERT INTO big VALUES (?, ?)", 1000 + i, b"x".hex()]])
        wait_for(lambda: n1.status()["raft"]["log"]["first_index"] > 2, 30,
                 "a snapshot on node1 and a compacted log")
        n2 = NodeProc(str(tmp_path), "node2", free_port(), free_port(), join=[n1.http],
                      extra=extra).start()
        wait_for(n2.ready, 60, "node2 ready")
        want = values(n1.http, "SELECT count(*), sum(length(b)) FROM big")
        wait_for(lambda: values(n2.http, "SELECT count(*), sum(length(b)) FROM big") == want,
                 60, "node2 data")
        raft = n2.status().get("raft", {})
        assert raft.get("snapshots_received", 0) >= 1, raft
    finally:
        for n in (n1, n2):
            if n is not None:
                n.kill()


def test_non_voter_read_replica(tmp_path):
    """-non-voter joins as a learner (through the second -join address when the first is
    dead): not counted as a voter, forwards writes, serves local reads, honours freshness."""
    n1 = NodeProc(str(tmp_path), "node1", free_port(), free_port()).start()
    # the first -join address is dead: the node must go on to the next one
    n2 = NodeProc(str(tmp_path), "node2", free_port(), free_port(),
                  join=[f"127.0.0.1:{free_port()}", n1.http], extra=["-non-voter"])
    try:
        wait_for(n1.ready, 30, "node1 ready")
        n2.start()
        wait_for(n2.ready, 30, "replica ready")
        members = {m["node_id"]: m["voter"] for m in n1.status()["store"]["members"]}
        assert members == {"node1": True, "node2": False}
        st, body = execute(n2.http, ["CREATE TABLE t (a)", "INSERT INTO t VALUES (42)"])
        assert st == 200 and body["results"][1]["rows_affected"] == 1, body
        wait_for(lambda: values(n2.http, "SELECT a FROM t") == [[42]], 10, "replica data")
        assert not n2.is_leader()
        q = urllib.parse.urlencode({"q": "SELECT a FROM t", "level": "none",
                                    "freshness": "2s"})
        st, body = call(n2.http, "GET", "/db/query?" + q)
        assert st == 200 and body["results"][0]["values"] == [[42]], body
    finally:
        n1.kill()
        n2.kill()


def test_failed_loads_leave_every_member_intact(cluster):
    """Invariant: /db/load is all-or-nothing on every member: a SQL dump failing at its
    last statement and a truncated SQLite file (both sent to a follower) change nothing
    anywhere; a good file load then replaces the database on every member."""
    lead = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not lead)
    st, body = execute(lead.http, ["CREATE TABLE keep (a)", "INSERT INTO keep VALUES (1), (2)"])
    assert st == 200, body
    st, good = call(lead.http, "GET", "/db/backup", raw=True)
    assert st == 200 and good.startswith(b"SQLite format 3\x00")
    execute(lead.http, ["INSERT INTO keep VALUES (3)"])
    dump = "CREATE TABLE x (a);\n" + "".join(f"INSERT INTO x VALUES ({i});\n" for i in range(200)) \
        + "INSERT INTO nosuch VALUES (1);\n"
    st, body = call(follower.http, "POST", "/db/load", dump, headers={"Content-Type": "text/plain"})
    assert "nosuch" in str(body), (st, body)
    st, body = call(follower.http, "POST", "/db/load", good[:len(good) // 2],
                    headers={"Content-Type": "application/octet-stream"})
    assert st == 400 and "corrupt" in str(body), (st, body)
    execute(lead.http, ["INSERT INTO keep VALUES (4)"])   # a write after: all members hold it
    for n in cluster.nodes:
        wait_for(lambda: values(n.http, "SELECT a FROM keep ORDER BY a") ==
                 [[1], [2], [3], [4]], 10, f"keep intact on {n.node_id}")
        st, body = query(n.http, "SELECT count(*) FROM x")
        assert "no such table" in str(body), (n.node_id, body)
    st, body = call(follower.http, "POST", "/db/load", good,
                    headers={"Content-Type": "application/octet-stream"})
    assert st == 200 and "error" not in str(body), body
    for n in cluster.nodes:
        wait_for(lambda: values(n.http, "SELECT a FROM keep ORDER BY a") == [[1], [2]], 10,
                 f"loaded file on {n.node_id}")


def test_bootstrap_node_restart_and_wiped_data_dir(tmp_path):
    """Invariant: the first (bootstrap) node restarted with its data rejoins its group
    without bootstrapping again (same members, its log kept); with its Raft log gone but
    its database kept it refuses to start with a clear error; with its data dir wiped and
    -join given it rejoins the same group and catches up (no second group)."""
    import shutil
    c = Cluster(str(tmp_path), 3)
    try:
        c.start()
        n1 = c.nodes[0]
        execute(c.leader().http, ["CREATE TABLE w (i INTEGER)", "INSERT INTO w VALUES (1), (2)"])
        for n in c.nodes:
            wait_for(lambda: values(n.http, "SELECT count(*) FROM w") == [[2]], 10, "copies")
        last = n1.status()["store"]["raft"]["last_log_index"]
        n1.terminate(20)
        n1.start()                       # the README's command: no -join
        wait_for(n1.ready, 30, "node1 back")
        s = n1.status()["store"]
        assert sorted(m["node_id"] for m in s["members"]) == ["node1", "node2", "node3"]
        assert s["raft"]["last_log_index"] >= last
        assert values(n1.http, "SELECT count(*) FROM w") == [[2]]
        # the Raft log lost, the database kept: refused with a clear error
        n1.terminate(20)
        shutil.rmtree(os.path.join(n1.data, "raft"))
        n1.start()
        wait_for(lambda: not n1.alive(), 30, "node1 refusing to start")
        assert n1.proc.returncode != 0 and "log was lost" in n1.tail(), n1.tail()
        # wiped and rejoined through another member
        shutil.rmtree(n1.data)
        execute(c.leader().http, ["INSERT INTO w VALUES (3)"])
        n1.start(n1.argv() + ["-join", c.nodes[1].http])
        wait_for(n1.ready, 30, "node1 rejoined")
        wait_for(lambda: values(n1.http, "SELECT count(*) FROM w") == [[3]], 20, "caught up")
        lead = c.leader()
        s = lead.status()["store"]
        assert sorted(m["node_id"] for m in s["members"]) == ["node1", "node2", "node3"]
        st, body = execute(lead.http, ["INSERT INTO w VALUES (4)"])
        assert st == 200, body
        for n in c.nodes:
            wait_for(lambda: values(n.http, "SELECT count(*) FROM w") == [[4]], 15, n.node_id)
    finally:
        c.stop()


def test_sigterm_under_forwarded_write_load_is_quiet(cluster):
    """Invariant: stopping every member with SIGTERM while clients write through the
    leader and through forwarding followers exits cleanly (code 0) and logs no
    traceback and no "exception was never retrieved" (a cancelled request is answered
    503, not logged as a crash)."""
    execute(cluster.leader().http, ["CREATE TABLE q (i INTEGER)"])
    stop = threading.Event()
    sent = [0]

    def writer(n):
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and sent[0] < 20000:
            try:
                execute(n.http, [["INSERT INTO q VALUES (?)", sent[0]]], timeout=3)
            except OSError:
                pass
            sent[0] += 1
    threads = [threading.Thread(target=writer, args=(n,), daemon=True)
               for n in cluster.nodes for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: sent[0] > 50, 15, "writes flowing")
    try:
        for n in cluster.nodes:
            n.terminate(20)
            assert n.proc.returncode == 0, n.tail()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    for n in cluster.nodes:
        with open(n.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        assert "Traceback" not in text and "never retrieved" not in text, (n.node_id, text[-3000:])
