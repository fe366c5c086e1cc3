"""-auto-backup and -auto-restore on real processes: a 3-node group backing up every
second into one directory (shared by the module), and a fresh node restoring from it."""
import gzip
import json
import os

import apsw
import pytest

from tests.cluster.node_harness import Cluster, NodeProc, call, execute, values, wait_for
from raftsqlite.testing.procs import free_port

pytestmark = pytest.mark.timeout(180)


def _write(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("autobk"))
    bdir = os.path.join(wd, "backups")
    cfg = _write(os.path.join(wd, "ab.json"), {
        "version": 1, "type": "file", "interval": "1s", "timestamp": False,
        "no_compress": False, "vacuum": True,
        "sub": {"dir": "${RSBK_DIR}", "file": "backup.sqlite"}})
    os.environ["RSBK_DIR"] = bdir     # expanded by the node from its environment
    cl = Cluster(wd, 3, extra=["-auto-backup", cfg])
    try:
        cl.start(timeout=40)
        yield cl, wd, bdir
    finally:
        cl.stop()


def _meta(bdir):
    try:
        with open(os.path.join(bdir, "METADATA.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _rows_in_backup(path, wd):
    with open(path, "rb") as f:
        head = f.read(2)
    plain = os.path.join(wd, "check.sqlite")
    with (gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")) as f, \
            open(plain, "wb") as out:
        out.write(f.read())
    c = apsw.Connection(plain, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return c.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        c.close()


def _backup_stats(cl):
    return {n.node_id: (n.status() or {}).get("auto_backup") for n in cl.nodes}


def test_backup_written_skipped_when_unchanged_rewritten_after_write(env):
    """The leader (only it) writes a gzipped SQLite backup with the rows; with nothing
    written it does not write again (METADATA.json and the file keep their mtime) and
    counts skips; one write later a new backup holds the new row."""
    cl, wd, bdir = env
    lead = cl.leader()
    st, body = execute(lead.http, ["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
                                   "INSERT INTO t VALUES (1, 'one')",
                                   "INSERT INTO t VALUES (2, 'two')"])
    assert st == 200 and all("error" not in r for r in body["results"]), body
    md = wait_for(lambda: (m := _meta(bdir)) and os.path.exists(m["name"])
                  and _rows_in_backup(m["name"], wd) == [(1, "one"), (2, "two")] and m,
                  20, "a backup with both rows")
    assert md["name"] == os.path.join(bdir, "backup.sqlite")
    with open(md["name"], "rb") as f:
        assert f.read(2) == b"\x1f\x8b"        # gzip unless no_compress
    stats = _backup_stats(cl)
    writers = [nid for nid, s in stats.items() if s and s["backups_ok"]]
    assert writers == [lead.node_id], stats
    mtimes = (os.stat(md["name"]).st_mtime_ns,
              os.stat(os.path.join(bdir, "METADATA.json")).st_mtime_ns)
    s0 = _backup_stats(cl)[lead.node_id]
    skipped0 = s0["skipped_unchanged"]
    # three more intervals with nothing written: skipped, nothing rewritten
    wait_for(lambda: _backup_stats(cl)[lead.node_id]["skipped_unchanged"] >= skipped0 + 3,
             15, "three skipped intervals")
    assert (os.stat(md["name"]).st_mtime_ns,
            os.stat(os.path.join(bdir, "METADATA.json")).st_mtime_ns) == mtimes
    assert _meta(bdir) == md
    s = _backup_stats(cl)[lead.node_id]
    # (an earlier backup of the empty group may exist: only none since counts)
    assert s["backups_ok"] == s0["backups_ok"] and s["last_backup_id"] == md["id"] \
        and s["last_error"] is None, s
    assert sorted(os.listdir(bdir)) == ["METADATA.json", "backup.sqlite"]   # no temp left
    st, _ = execute(lead.http, ["INSERT INTO t VALUES (3, 'three')"])
    assert st == 200
    md2 = wait_for(lambda: (m := _meta(bdir)) and m["id"] != md["id"] and m, 20,
                   "a new backup after a write")
    assert _rows_in_backup(md2["name"], wd) == [(1, "one"), (2, "two"), (3, "three")]
    # /metrics exposes the counters
    st, text = call(lead.http, "GET", "/metrics")
    assert st == 200 and "raftsqlite_auto_backups_total" in text


def test_new_leader_does_not_rewrite_same_content(env):
    """A follower that becomes leader finds METADATA.json current (same content digest)
    and writes nothing, though its applied index moved (its barrier entry)."""
    cl, wd, bdir = env
    lead = cl.leader()
    md = wait_for(lambda: (m := _meta(bdir)) and
                  _backup_stats(cl)[lead.node_id]["skipped_unchanged"] > 0 and m,
                  20, "a current backup")
    mtime = os.stat(os.path.join(bdir, "METADATA.json")).st_mtime_ns
    st, _ = call(lead.http, "POST", "/leader", {})
    assert st == 200
    new = wait_for(lambda: (n := cl.leader()) and n.node_id != lead.node_id and n, 15,
                   "a new leader")
    wait_for(lambda: (_backup_stats(cl)[new.node_id] or {}).get("skipped_same_content", 0)
             >= 1, 20, "the new leader's content check")
    s = _backup_stats(cl)[new.node_id]
    assert s["backups_ok"] == 0, s
    assert _meta(bdir) == md
    assert os.stat(os.path.join(bdir, "METADATA.json")).st_mtime_ns == mtime


def test_fresh_node_auto_restores(env):
    """A new single node started with -auto-restore on the backup directory comes up
    with the backed-up rows (through the log: they survive its restart)."""
    cl, wd, bdir = env
    want = values(cl.leader().http, "SELECT id, v FROM t ORDER BY id", level="strong")
    wait_for(lambda: (m := _meta(bdir)) and [list(r) for r in _rows_in_backup(m["name"], wd)]
             == want, 20, "the backup to hold every row")
    rcfg = _write(os.path.join(wd, "ar.json"), {
        "version": 1, "type": "file", "timeout": "10s", "continue_on_failure": False,
        "sub": {"dir": bdir, "file": "backup.sqlite"}})
    n = NodeProc(wd, "restored", free_port(), free_port(), extra=["-auto-restore", rcfg])
    try:
        n.start()
        wait_for(n.ready, 30, "the restored node ready")
        assert values(n.http, "SELECT id, v FROM t ORDER BY id", level="strong") == want
        assert n.status()["auto_restore"]["outcome"] == "restored"
        n.terminate()
        n.start()       # it has data now: the restore is skipped, the rows stay
        wait_for(n.ready, 30, "the restarted node ready")
        assert values(n.http, "SELECT id, v FROM t ORDER BY id", level="strong") == want
        assert n.status()["auto_restore"]["outcome"] == "skipped"
    finally:
        n.kill()


def test_bad_configs_stop_the_node(env):
    """An unsupported type or a missing backup (without continue_on_failure) stops the
    node at start with a clear message; with continue_on_failure it starts empty."""
    cl, wd, bdir = env
    bad = _write(os.path.join(wd, "s3.json"), {"version": 1, "type": "s3", "interval": "1s",
                                               "sub": {"dir": "/x", "file": "b"}})
    miss = _write(os.path.join(wd, "miss.json"), {"version": 1, "type": "file",
                                                  "sub": {"dir": bdir, "file": "nope.sqlite"},
                                                  "continue_on_failure": False})
    for name, flag, cfgf, needle in (("bad1", "-auto-backup", bad, "only \"file\""),
                                     ("bad2", "-auto-restore", miss, "nope.sqlite")):
        n = NodeProc(wd, name, free_port(), free_port(), extra=[flag, cfgf])
        n.start()
        try:
            n.proc.wait(30)
        finally:
            n.kill()
        assert n.proc.returncode != 0 and needle in n.tail(), n.tail()
    # the failed restore formed no group: started again with a good file, it restores
    good = _write(os.path.join(wd, "good.json"), {"version": 1, "type": "file",
                                                  "sub": {"dir": bdir, "file": ""}})
    n.extra = ["-auto-restore", good]
    try:
        n.start(n.argv())
        wait_for(n.ready, 30, "bad2 started again")
        assert n.status()["auto_restore"]["outcome"] == "restored"
    finally:
        n.kill()
    ok = _write(os.path.join(wd, "cont.json"), {"version": 1, "type": "file",
                                                "sub": {"dir": bdir, "file": "nope.sqlite"},
                                                "continue_on_failure": True})
    n = NodeProc(wd, "cont", free_port(), free_port(), extra=["-auto-restore", ok])
    try:
        n.start()
        wait_for(n.ready, 30, "the node that continued")
        assert n.status()["auto_restore"]["outcome"] == "failed"
        st, body = call(n.http, "GET", "/db/query?q=SELECT+1&level=none")
        assert st == 200
    finally:
        n.kill()
