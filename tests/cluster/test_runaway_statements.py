"""A statement that never ends, on a real 3-node cluster: a write is refused identically by
every member once it passes the write budget (-max-apply-steps), the event loop keeps
serving meanwhile, a member replaying it after a crash is not wedged, and a read whose
client went away stops using the CPU. One cluster for the module; every wait is bounded;
every process is stopped by PID."""
import os
import socket
import threading
import time
import urllib.parse

import pytest

from tests.cluster.node_harness import Cluster, call, execute, values, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

STEPS = 30_000_000      # a few tenths of a second of SQLite per attempt here
RUNAWAY = ("INSERT INTO t(v) SELECT count(*) FROM (WITH RECURSIVE c(x) AS "
           "(SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c)")
FOREVER_READ = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) "
                "SELECT count(*) FROM c")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("runaway")), 3,
                extra=["-max-apply-steps", str(STEPS)])
    try:
        c.start()
        st, body = execute(c.leader().http, [["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]])
        assert st == 200, body
        yield c
    finally:
        c.stop()


def contents(node):
    return values(node.http, "SELECT id, v FROM t ORDER BY id")


def test_runaway_write_is_refused_everywhere_and_the_loop_keeps_serving(cluster):
    """The runaway request answers the budget error (HTTP 200, per-statement error, as
    rqlite reports SQL errors); its group-committed neighbour is applied; while every
    member works through it, the leader's /status answers promptly; afterwards every
    member holds the same rows and writes go on."""
    lead = cluster.leader()
    out = {}

    def run():
        out["runaway"] = execute(lead.http, [[RUNAWAY]], timeout=60)

    th = threading.Thread(target=run)
    th.start()
    slowest = 0.0
    try:
        while th.is_alive():
            t0 = time.monotonic()
            st, _ = call(lead.http, "GET", "/status", timeout=5)
            slowest = max(slowest, time.monotonic() - t0)
            assert st == 200
            th.join(0.05)
    finally:
        th.join(60)
    st, body = out["runaway"]
    assert st == 200, body
    err = body["results"][0].get("error", "")
    assert "write budget of 30,000,000 SQLite steps" in err, body
    assert slowest < 1.0, f"/status took {slowest:.2f}s while the runaway ran"
    st, body = execute(lead.http, [["INSERT INTO t(v) VALUES (?)", "after"]])
    assert st == 200 and body["results"][0]["rows_affected"] == 1, body
    want = contents(lead)
    assert want == [[1, "after"]]
    for n in cluster.nodes:
        wait_for(lambda n=n: contents(n) == want, 20, f"{n.node_id} caught up")


def test_member_replaying_the_runaway_after_a_crash_is_not_wedged(cluster):
    """A follower killed with the runaway entry in its log replays it on restart (every
    entry since its last snapshot) and becomes ready with the same rows."""
    lead = cluster.leader()
    st, body = execute(lead.http, [[RUNAWAY]], timeout=60)
    assert st == 200 and "write budget" in body["results"][0].get("error", ""), body
    st, _ = execute(lead.http, [["INSERT INTO t(v) VALUES ('replayed')"]])
    assert st == 200
    f = next(n for n in cluster.nodes if n is not lead)
    want = contents(lead)
    wait_for(lambda: contents(f) == want, 20, "follower caught up before the crash")
    f.kill()
    f.start()
    wait_for(f.ready, 60, f"{f.node_id} ready after restart")
    wait_for(lambda: contents(f) == want, 30, f"{f.node_id} replayed")


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _find(doc, key):
    """The first dict in ``doc`` (nested) that has ``key``."""
    if isinstance(doc, dict):
        if key in doc:
            return doc
        for v in doc.values():
            got = _find(v, key)
            if got is not None:
                return got
    return None


def _db_counters(node):
    st, body = call(node.http, "GET", "/status")
    assert st == 200
    return _find(body, "inline_fallbacks"), _find(body, "reads_cancelled")


def test_abandoned_read_stops_using_the_cpu(cluster):
    """A read that would never end, whose client closes its connection, is interrupted
    (SQLite returns, the reader thread is free again) and the member's CPU use falls
    back instead of a core spinning on forever."""
    node = cluster.nodes[-1]
    db0, _ = _db_counters(node)
    host, port = node.http.split(":")
    q = urllib.parse.quote(FOREVER_READ)
    pid = node.proc.pid
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET /db/query?level=none&q={q} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_for(lambda: _db_counters(node)[0]["inline_fallbacks"] > db0["inline_fallbacks"],
                 10, "the read to move to a reader thread")
        c0, t0 = _cpu_seconds(pid), time.monotonic()
        time.sleep(0.5)
        busy = (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    wait_for(lambda: _db_counters(node)[0]["interrupted"] > db0["interrupted"], 10,
             "the abandoned read to be interrupted")
    db1, store1 = _db_counters(node)
    assert store1["reads_cancelled"] >= 1
    c1, t1 = _cpu_seconds(pid), time.monotonic()
    time.sleep(0.5)
    idle = (_cpu_seconds(pid) - c1) / (time.monotonic() - t1)
    assert idle < max(0.15, busy / 2), (busy, idle)


def test_vacuum_goes_through_the_log_on_every_member(cluster):
    """VACUUM sent to a follower (forwarded) answers like any statement without rows and
    every member gives pages back; VACUUM beside another statement is a clear 400 that
    changes nothing."""
    lead = cluster.leader()
    st, body = execute(lead.http, [["CREATE TABLE junk (v)"],
                                   ["INSERT INTO junk SELECT zeroblob(4000) FROM (WITH RECURSIVE "
                                    "c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 400) "
                                    "SELECT x FROM c)"], ["DELETE FROM junk"]])
    assert st == 200, body
    # (the leader's count: a follower may not have applied the inserts yet)
    before = values(lead.http, "PRAGMA page_count")[0][0]
    f = next(n for n in cluster.nodes if n is not lead)
    st, body = execute(f.http, [["VACUUM"]], timeout=30)
    assert st == 200 and body["results"] == [{}], body
    for n in cluster.nodes:
        wait_for(lambda n=n: values(n.http, "PRAGMA page_count")[0][0] < before / 4,
                 20, f"{n.node_id} vacuumed")
    st, body = execute(lead.http, [["VACUUM"], ["INSERT INTO junk VALUES (1)"]])
    assert st == 400 and "only statement" in body["error"], body
    assert values(lead.http, "SELECT count(*) FROM junk") == [[0]]


def test_load_with_a_runaway_statement_is_refused_and_undone_everywhere(cluster):
    """Invariant: a /db/load whose dump holds a statement that never ends answers a 400
    naming the budget (sent to a follower, so it is forwarded), is undone whole on every
    member (no table of it exists anywhere), and the members keep applying: a write
    after it reaches all of them. A dump of plain INSERTs whose total steps pass the
    per-statement budget many times loads."""
    lead = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not lead)
    dump = ("CREATE TABLE ld (x);\nINSERT INTO ld VALUES (1);\n"
            "INSERT INTO ld WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) "
            "SELECT x FROM c;\n")
    t0 = time.monotonic()
    st, body = call(follower.http, "POST", "/db/load", dump,
                    headers={"Content-Type": "text/plain"}, timeout=30)
    assert st == 400 and "write budget" in str(body) and "statement 3" in str(body), \
        (st, body)
    assert time.monotonic() - t0 < 10
    st, body = execute(lead.http, [["INSERT INTO t(v) VALUES (?)", "after-load"]])
    assert st == 200 and body["results"][0]["rows_affected"] == 1, body
    for n in cluster.nodes:
        wait_for(lambda n=n: ["after-load"] in values(n.http, "SELECT v FROM t"), 10,
                 f"{n.node_id} applies after the refused load")
        st, body = call(n.http, "GET", "/db/query?q=" + urllib.parse.quote(
            "SELECT count(*) FROM ld"))
        assert "no such table" in str(body), (n.node_id, body)
    # two statements of ~22 M steps each (1 M rows): each within the 30 M budget, the
    # load well past it in total, as a large dump is
    fill = ("INSERT INTO ld2 SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
            "SELECT x+1 FROM c LIMIT 1000000) SELECT x FROM c);\n")
    big = "CREATE TABLE ld2 (x);\n" + fill + fill
    st, body = call(lead.http, "POST", "/db/load", big,
                    headers={"Content-Type": "text/plain"}, timeout=30)
    assert st == 200 and "error" not in str(body), body
    for n in cluster.nodes:
        wait_for(lambda n=n: values(n.http, "SELECT count(*) FROM ld2") == [[2000000]], 15,
                 f"{n.node_id} loaded")
