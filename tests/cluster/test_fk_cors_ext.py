"""-fk, -http-allow-origin and -extensions-path on real processes: one 3-node group started
with all three, shared by the module. Foreign keys and the extension set are group
settings: a member started otherwise is refused at join and at start; enforcement
survives restarts and snapshot installs; CORS headers come from both HTTP lanes."""
import os
import shutil
import subprocess
import urllib.parse

import pytest

from tests.api.test_fastpath import _exchange, _get
from tests.cluster.node_harness import Cluster, NodeProc, call, execute, values, wait_for
from raftsqlite.testing.procs import free_port

pytestmark = pytest.mark.timeout(240)

ORIGIN = "https://app.example.com"
FK_ERR = "FOREIGN KEY constraint failed"

EXT_C = r"""
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1
static void twice(sqlite3_context *c, int n, sqlite3_value **v) {
  sqlite3_result_int64(c, 2 * sqlite3_value_int64(v[0]));
}
int sqlite3_extension_init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
  SQLITE_EXTENSION_INIT2(api);
  return sqlite3_create_function(db, "twice", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, 0,
                                 twice, 0, 0);
}
"""


def build_extension(wd):
    """A tiny extension (twice(x) = 2x) compiled now; None when no compiler works."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None or not os.path.exists("/usr/include/sqlite3ext.h"):
        return None
    d = os.path.join(wd, "ext")
    os.makedirs(d, exist_ok=True)
    src = os.path.join(wd, "twice.c")
    with open(src, "w") as f:
        f.write(EXT_C)
    r = subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", os.path.join(d, "twice.so"),
                        src], capture_output=True, timeout=60)
    return d if r.returncode == 0 else None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("fkcors"))
    ext = build_extension(wd)
    flags = ["-fk", "-http-allow-origin", ORIGIN, "-raft-opt", "snapshot_trailing=2",
             "-raft-opt", "segment_bytes=1024"]
    if ext:
        flags += ["-extensions-path", ext]
    cl = Cluster(wd, 3, extra=flags)
    try:
        cl.start(timeout=40)
        lead = cl.leader().http
        st, body = execute(lead, [
            "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT)",
            "CREATE TABLE c (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id) "
            "ON DELETE CASCADE)",
            "INSERT INTO p VALUES (1, 'one'), (2, 'two')",
            "INSERT INTO c VALUES (10, 1), (11, 1), (20, 2)"])
        assert st == 200 and "error" not in str(body), body
        yield cl, wd, flags, ext
    finally:
        cl.stop()


def synced(cl, marker):
    """Every live member has applied the write that inserted ``marker``."""
    sql = f"SELECT count(*) FROM p WHERE name = '{marker}'"
    for n in cl.nodes:
        if n.alive():
            wait_for(lambda n=n: values(n.http, sql) == [[1]], 20, f"{n.node_id} synced")


def mark(cl, marker):
    st, body = execute(cl.leader().http, [f"INSERT INTO p(name) VALUES ('{marker}')"])
    assert st == 200 and "error" not in str(body), body
    synced(cl, marker)


def everywhere(cl, sql):
    return [values(n.http, sql) for n in cl.nodes if n.alive()]


def test_violation_is_a_statement_error_on_every_api_and_changes_nothing(env):
    """An FK violation fails its statement (rqlite's per-statement error, the seed API's
    400) through every API family, on the leader and through a follower, and no member
    applies it."""
    cl, *_ = env
    lead = cl.leader()
    follower = next(n for n in cl.nodes if n is not lead)
    for node in (lead, follower):
        st, body = execute(node.http, [["INSERT INTO c VALUES (?, ?)", 30, 99],
                                       ["INSERT INTO c VALUES (?, ?)", 31, 2]])
        assert st == 200 and body["results"][0]["error"] == FK_ERR, body
        assert "error" not in body["results"][1]
        st, body = call(node.http, "POST", "/db/request",
                        [["INSERT INTO c VALUES (?, ?)", 32, 98], ["SELECT count(*) FROM c"]],
                        headers={"Content-Type": "application/json"})
        assert st == 200 and body["results"][0]["error"] == FK_ERR, body
        st, body = execute(node.http, [["INSERT INTO c VALUES (?, ?)", 33, 1],
                                       ["INSERT INTO c VALUES (?, ?)", 34, 97]],
                           params="?transaction")
        assert st == 200 and body["results"][-1]["error"] == FK_ERR, body
        st, body = call(node.http, "POST", "/execute",
                        {"query": "INSERT INTO c VALUES (?, ?)", "args": [35, 96]},
                        headers={"Content-Type": "application/json"})
        assert st == 400 and FK_ERR in str(body), (st, body)
        execute(node.http, ["DELETE FROM c WHERE id = 31"])
    mark(cl, "m1")
    assert everywhere(cl, "SELECT id FROM c ORDER BY id") == [[[10], [11], [20]]] * 3


def test_cascade_applies_on_every_member(env):
    """ON DELETE CASCADE removes the children on every member (read locally)."""
    cl, *_ = env
    st, body = execute(cl.leader().http, ["DELETE FROM p WHERE id = 2"])
    assert st == 200 and body["results"][0]["rows_affected"] == 1, body
    mark(cl, "m2")
    assert everywhere(cl, "SELECT id FROM c ORDER BY id") == [[[10], [11]]] * 3
    assert everywhere(cl, "PRAGMA foreign_keys") == [[[1]]] * 3


def test_pragma_cannot_switch_enforcement_off(env):
    """A client's PRAGMA foreign_keys=OFF is refused (the setting is the group's)."""
    cl, *_ = env
    st, body = execute(cl.leader().http, ["PRAGMA foreign_keys=OFF",
                                          "INSERT INTO c VALUES (40, 12345)"])
    assert "foreign_keys" in body["results"][0]["error"]
    assert body["results"][1]["error"] == FK_ERR


def test_status_shows_the_group_settings(env):
    """/status: fk_constraints enabled, the recorded group settings, the extensions."""
    cl, _, _, ext = env
    for n in cl.nodes:
        s = n.status()
        gs = s["group_settings"]
        assert gs["recorded"] == gs["local"] and gs["local"]["foreign_keys"] is True
        assert s["db"]["fk_constraints"] == "enabled"
        assert s["store"]["sqlite3"]["fk_constraints"] == "enabled"     # rqlite's key
        if ext:
            assert [e["name"] for e in gs["local"]["extensions"]] == ["twice.so"]
            assert len(gs["local"]["extensions"][0]["sha256"]) == 64
            assert s["db"]["extensions"] == ["twice.so"]


def test_cors_headers_on_both_lanes(env):
    """A real node sends the CORS headers through the fast lane and through Sanic, and
    answers OPTIONS 200."""
    cl, *_ = env
    port = int(cl.leader().http.rsplit(":", 1)[1])
    q = _get(b"/db/query?q=SELECT%201")
    for parts in ([q], [q[:9], q[9:]]):
        r = _exchange(port, parts)[0]
        assert b"\r\nAccess-Control-Allow-Origin: " + ORIGIN.encode() + b"\r\n" in r, r[:400]
        assert b"\r\nAccess-Control-Allow-Methods: OPTIONS, GET, POST\r\n" in r
    r = _exchange(port, [b"OPTIONS /db/execute HTTP/1.1\r\nHost: t\r\n\r\n"])[0]
    assert r.startswith(b"HTTP/1.1 200") and ORIGIN.encode() in r


def test_extension_function_replicates(env):
    """An extension's function used in an INSERT gives the same row on every member."""
    cl, _, _, ext = env
    if not ext:
        pytest.skip("no C compiler (or sqlite3ext.h) to build the test extension")
    st, body = execute(cl.leader().http, ["CREATE TABLE e (v INTEGER)",
                                          "INSERT INTO e VALUES (twice(21))"])
    assert st == 200 and "error" not in str(body), body
    wait_for(lambda: everywhere(cl, "SELECT v FROM e") == [[[42]]] * 3, 20, "e replicated")
    st, body = execute(cl.leader().http, ["SELECT load_extension('x')"])
    assert "load_extension" in str(body)
    # an -fk dump creates every table before any row (so it loads in any table order)
    st, dump = call(cl.leader().http, "GET", "/db/backup?fmt=sql", raw=True)
    assert st == 200, dump[:200]
    lines = dump.decode().splitlines()
    creates = [i for i, ln in enumerate(lines) if ln.startswith("CREATE TABLE")]
    inserts = [i for i, ln in enumerate(lines) if ln.startswith("INSERT")]
    assert len(creates) == 3 and max(creates) < min(inserts)
    assert 'INSERT INTO "e" VALUES(42);' in lines


def _refused(wd, argv_extra, join, name):
    """Start a node that must refuse; -> its output once it exited."""
    n = NodeProc(wd, name, free_port(), free_port(), join=join, extra=argv_extra).start()
    try:
        n.proc.wait(60)
    finally:
        n.kill()
    assert n.proc.returncode not in (0, None)
    return n.tail(20)


def test_member_without_fk_is_refused_at_join(env):
    """A node started without -fk (and without the extensions) cannot join: a clear
    error naming both settings, and the group's membership is unchanged."""
    cl, wd, flags, ext = env
    out = _refused(wd, ["-join-timeout", "30"], [cl.nodes[0].http], "nofk")
    assert "foreign keys enforced (-fk)" in out and "foreign keys not enforced" in out, out
    if ext:
        assert "twice.so" in out
    if ext:
        # -fk alone is not enough: the extension set is part of the group's settings
        out = _refused(wd, ["-fk", "-join-timeout", "30"], [cl.nodes[0].http], "noext")
        assert "the group has foreign keys enforced (-fk), extensions twice.so" in out, out
        assert "the joining node has foreign keys enforced (-fk), no extensions" in out, out
    assert len(cl.leader().status()["store"]["members"]) == 3


def test_restart_and_snapshot_keep_enforcement(env):
    """A member restarted without -fk refuses to start; restarted with it, it still
    enforces. A new member catching up from a snapshot gets the record and enforces."""
    cl, wd, flags, ext = env
    lead = cl.leader()
    n3 = next(n for n in cl.nodes if n is not lead)
    n3.terminate()
    bad = NodeProc(wd, n3.node_id, n3.http_port, n3.raft_port, extra=[])
    bad.data = n3.data
    bad.start()
    try:
        bad.proc.wait(60)
    finally:
        bad.kill()
    assert bad.proc.returncode not in (0, None)
    out = bad.tail(20)
    assert "-fk" in out and "foreign keys not enforced" in out, out
    n3.start()
    wait_for(n3.ready, 40, "restarted member ready")
    mark(cl, "m3")
    assert values(n3.http, "PRAGMA foreign_keys") == [[1]]
    lead = cl.leader()
    for i in range(30):
        execute(lead.http, [["INSERT INTO p(name) VALUES (?)", f"fill{i}"]])
    mark(cl, "m4")
    st, body = call(lead.http, "POST", "/snapshot")
    assert st in (200, 204), body
    wait_for(lambda: lead.status()["raft"]["log"]["first_index"] > 5, 30,
             "a compacted log on the leader")
    n4 = NodeProc(wd, "node4", free_port(), free_port(), join=[cl.nodes[0].http],
                  extra=flags)
    cl.nodes.append(n4)
    n4.start()
    wait_for(n4.ready, 40, "node4 ready")
    wait_for(lambda: values(n4.http, "SELECT count(*) FROM p WHERE name = 'm4'") == [[1]],
             30, "node4 caught up")
    assert n4.status()["raft"].get("snapshots_received", 0) >= 1
    assert values(n4.http, "PRAGMA foreign_keys") == [[1]]
    assert n4.status()["group_settings"]["recorded"]["foreign_keys"] is True
    assert values(n4.http, "SELECT id FROM c ORDER BY id") == [[10], [11]]
