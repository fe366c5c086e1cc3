"""A full disk never loses an acknowledged write, never makes the replicas differ, and
never kills or wedges a node (docs/operations.md, "Disk full and I/O errors").

Real ``raft-sqlite`` processes; the members under test run in a mount namespace of their
own with a small tmpfs as their data dir (``unshare -m``, or ``unshare -rm`` without
root), filled by a file the test writes there (through ``/proc/<pid>/root``) and deletes
to free the space again.
"""
import errno
import os
import shutil
import subprocess
import threading
import time

import pytest

from tests.cluster.node_harness import (Cluster, NodeProc, call, execute, free_port,
                                        query, values, wait_for)

TMPFS = "32m"
# Small log segments (and so small preallocated spares): the follower's log runs out of
# preallocated room soon after its disk is full, and all of a member's files (log, spares,
# SQLite and its WAL) stay well inside TMPFS once the filler is gone.
SEGMENT = ["-raft-opt", "segment_bytes=1048576"]


def _tmpfs_prefix(probe_dir):
    """The command prefix that runs a program with a fresh tmpfs mounted on "$0", or
    None when this machine allows neither ``unshare -m`` (root) nor ``unshare -rm``."""
    if shutil.which("unshare") is None:
        return None
    script = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'
    for flags in (["-m"], ["-rm"]):
        pre = ["unshare", *flags, "--propagation", "private", "sh", "-c", script]
        try:
            r = subprocess.run(pre + [probe_dir, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return flags
    return None


class TmpfsNode(NodeProc):
    """A member whose data dir is a ``TMPFS`` tmpfs seen only by its own process."""

    def __init__(self, flags, mnt, *a, **kw):
        super().__init__(*a, **kw)
        self.flags, self.mnt = flags, mnt
        self.data = os.path.join(mnt, "data")

    def argv(self):
        script = f'mount -t tmpfs -o size={TMPFS} tmpfs "$0" && exec "$@"'
        return ["unshare", *self.flags, "--propagation", "private", "sh", "-c", script,
                self.mnt] + super().argv()

    def _inside(self, name):
        return f"/proc/{self.proc.pid}/root{self.mnt}/{name}"

    def fill(self, leave=0):
        """Fill the tmpfs up to ``leave`` bytes free (as closely as 64 KiB steps allow).
        With ``leave=0`` a thread keeps it full until ``free``: space the node gives back
        (a preallocated spare it drops after ENOSPC) is taken again at once, as by
        another process writing to the same disk."""
        path = self._inside("filler")
        chunk = b"\xa5" * (64 << 10)
        with open(path, "ab") as f:
            while True:
                st = os.statvfs(self._inside("."))
                if st.f_bavail * st.f_frsize <= leave + len(chunk):
                    break
                try:
                    f.write(chunk)
                    f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
        if leave:
            return
        self._stop = threading.Event()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)

        def top_up():
            try:
                while not self._stop.is_set():
                    try:
                        while True:
                            os.write(fd, b"\xa5" * 4096)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC, e
                    self._stop.wait(0.005)
            finally:
                os.close(fd)
        self._filler = threading.Thread(target=top_up, daemon=True)
        self._filler.start()
        deadline = time.monotonic() + 30
        while self.free_bytes() >= 4096:
            assert time.monotonic() < deadline, "the tmpfs did not fill within 30 s"
            time.sleep(0.005)

    def free(self):
        if getattr(self, "_filler", None) is not None:
            self._stop.set()
            self._filler.join(5)
            self._filler = None
        os.unlink(self._inside("filler"))

    def free_bytes(self):
        st = os.statvfs(self._inside("."))
        return st.f_bavail * st.f_frsize


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    probe = str(tmp_path_factory.mktemp("probe"))
    f = _tmpfs_prefix(probe)
    if f is None:
        pytest.skip("cannot mount a tmpfs here: neither `unshare -m` (root) nor "
                    "`unshare -rm` (user namespaces) works")
    return f


@pytest.fixture(scope="module")
def cluster(flags, tmp_path_factory):
    """node1 (the first leader) and node3 on tmpfs data dirs; node2 on the normal disk."""
    work = str(tmp_path_factory.mktemp("diskfull"))
    c = Cluster(work, n=3, extra=["-min-free-disk", "0"] + SEGMENT)
    for i in (0, 2):
        old = c.nodes[i]
        mnt = os.path.join(work, f"mnt{i + 1}")
        os.makedirs(mnt)
        c.nodes[i] = TmpfsNode(flags, mnt, work, old.node_id, old.http_port, old.raft_port,
                               old.join, old.extra)
    try:
        c.start(timeout=60)
        st, body = execute(c.nodes[0].http,
                           ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"])
        assert st == 200 and "error" not in body["results"][0], body
        for n in c.nodes:
            wait_for(lambda: values(n.http, "SELECT count(*) FROM t") == [[0]], 15,
                     f"the table on {n.node_id}")
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()


def _insert(addr, i, size=2000, timeout=10.0):
    """One row; -> (HTTP status, body). Acknowledged means 200 with no error in it."""
    return execute(addr, [["INSERT INTO t(id, v) VALUES(?, ?)", i, f"{i:06d}" * (size // 6)]],
                   timeout=timeout)


def _acked(st, body):
    return st == 200 and isinstance(body, dict) and "error" not in body \
        and "error" not in body["results"][0]


def _rows(node):
    return values(node.http, "SELECT id, v FROM t ORDER BY id")


def _identical(c, acked):
    """Every member has every acknowledged row, and all members hold the same rows."""
    ref = _rows(c.nodes[1])
    ids = {r[0] for r in ref}
    missing = acked - ids
    assert not missing, f"acknowledged writes lost: {sorted(missing)[:10]}"
    for n in c.nodes:
        assert _rows(n) == ref, f"{n.node_id} differs from node2"


def _status(node):
    st, body = call(node.http, "GET", "/status", timeout=5)
    assert st == 200, body
    return body


def _wait_all_ready(c, timeout=30):
    for n in c.nodes:
        wait_for(n.ready, timeout, f"{n.node_id} ready again")
    # applied everything (ready() means applied what it knew committed; poll rows too)
    wait_for(lambda: len({len(_rows(n)) for n in c.nodes}) == 1, timeout, "same row count")


def test_follower_disk_full_no_ack_lost_replicas_identical(cluster):
    """Invariants: a follower whose disk fills up (1) stays alive and reports the error
    (/readyz 503 naming it, /status store.disk_error, /metrics raftsqlite_disk_error 1),
    (2) does not stop the group: every write through the leader is acknowledged, (3)
    recovers by itself once space is freed, and (4) then holds exactly the same rows as
    the others, with no acknowledged write missing."""
    c = cluster
    n3 = c.nodes[2]
    lead = c.leader()
    assert lead is not n3 or pytest.skip("node3 leads")
    acked = set()
    for i in range(1, 11):
        st, body = _insert(lead.http, i)
        assert _acked(st, body), (st, body)
        acked.add(i)
    n3.fill()
    for i in range(11, 101):
        # small rows first (SQLite runs out), then large ones: the follower's log has
        # preallocated room for a while, then its appends fail too
        st, body = _insert(lead.http, i, size=2000 if i < 51 else 60000)
        assert _acked(st, body), (st, body)     # two of three members have room
        acked.add(i)
    err = wait_for(lambda: _status(n3)["store"].get("disk_error"), 15, "node3 disk_error")
    assert "disk full" in err and n3.mnt in err, err
    st, text = call(n3.http, "GET", "/readyz", timeout=5)
    assert st == 503 and "disk error" in text and "disk full" in text, (st, text)
    st, metrics = call(n3.http, "GET", "/metrics", timeout=5)
    assert st == 200 and "raftsqlite_disk_error{" in metrics
    assert any(line.startswith("raftsqlite_disk_error{") and line.endswith(" 1")
               for line in metrics.splitlines()), "raftsqlite_disk_error is not 1"
    time.sleep(0.5)     # retries happen meanwhile: the node must neither die nor give up
    assert n3.alive(), n3.tail()
    assert _status(n3)["store"]["raft"]["state"] != "Shutdown"
    n3.free()
    _wait_all_ready(c)
    assert _status(n3)["store"].get("disk_error") is None
    _identical(c, acked)
    assert "retrying with backoff" in n3.tail(200)


def test_leader_disk_full_refused_clearly_then_new_leader(cluster):
    """Invariants: when the leader's disk fills up, (1) no write it could not make
    durable is acknowledged: writes fail with a clear 503/507 JSON error naming the disk
    and the data dir, (2) a member with room takes over leadership and writes succeed
    again through any member, (3) the old leader stays alive and catches up by itself
    once space is freed, and (4) all members end with identical rows, every
    acknowledged write present."""
    c = cluster
    n1 = c.nodes[0]
    _wait_all_ready(c)
    if not n1.is_leader():
        st, _ = call(n1.http, "POST", "/leader", {"id": n1.node_id}, timeout=10)
        wait_for(n1.is_leader, 15, "node1 leads")
    acked = set(r[0] for r in _rows(c.nodes[1]))
    n1.fill()
    errors_seen = []
    i = 1000
    deadline = time.monotonic() + 25
    ok_after_error = False
    while time.monotonic() < deadline:
        i += 1
        st, body = _insert(n1.http, i, timeout=5)
        if _acked(st, body):
            acked.add(i)
            if errors_seen:
                ok_after_error = True
                break
        else:
            errors_seen.append((st, body))
            time.sleep(0.05)
    print("leader with a full disk answered:", errors_seen[:3], "...", len(errors_seen))
    assert errors_seen, "the leader with a full disk acknowledged every write"
    assert ok_after_error, f"no member took over: {errors_seen[-3:]}"
    st, body = errors_seen[0]
    assert st in (503, 507), errors_seen[:3]
    assert isinstance(body, dict) and "disk" in body.get("error", "") \
        and n1.mnt in body["error"], errors_seen[:3]
    new = c.leader()
    assert new is not n1
    for j in range(i + 1, i + 11):     # through the old leader too (forwarded)
        st, body = _insert(c.nodes[j % 3].http, j)
        assert _acked(st, body), (st, body)
        acked.add(j)
    assert n1.alive(), n1.tail()
    st, text = call(n1.http, "GET", "/readyz", timeout=5)
    assert st == 503 and "disk error" in text, (st, text)
    n1.free()
    _wait_all_ready(c)
    _identical(c, acked)


def test_min_free_disk_guard_refuses_writes_keeps_reads(flags, tmp_path):
    """Invariants of -min-free-disk: below it the leader refuses writes with HTTP 507 (the
    one JSON error shape, naming the data dir) before the disk is full, reads keep
    working, nothing refused is applied, and writes are taken again once space is freed.
    And a /db/load bigger than the disk can hold is refused (507) with nothing loaded."""
    work = str(tmp_path)
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    n = TmpfsNode(flags, mnt, work, "solo", free_port(), free_port(), (),
                  ["-min-free-disk", "6MB"] + SEGMENT)
    n.start()
    try:
        wait_for(n.ready, 30, "solo ready")
        st, body = execute(n.http, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
        assert _acked(st, body), body
        assert _acked(*_insert(n.http, 1))
        # A load the disk cannot hold is refused before anything is proposed.
        free = n.free_bytes()
        line = "INSERT INTO big VALUES('%s');\n" % ("z" * 1000)
        dump = ("CREATE TABLE big (v TEXT);\n" + line * (free // 3000 + 100)).encode()
        st, body = call(n.http, "POST", "/db/load", dump, timeout=30,
                        headers={"Content-Type": "application/octet-stream"})
        assert st == 507 and "nothing was loaded" in body["error"] and mnt in body["error"], \
            (st, body)
        st, body = query(n.http, "SELECT count(*) FROM big")
        assert "no such table" in body["results"][0].get("error", ""), body
        st, body = call(n.http, "POST", "/db/load", b"CREATE TABLE small (v);\n"
                        b"INSERT INTO small VALUES(1);\n", timeout=30,
                        headers={"Content-Type": "application/octet-stream"})
        assert st == 200 and values(n.http, "SELECT v FROM small") == [[1]], (st, body)
        n.fill(leave=3 << 20)
        assert n.free_bytes() < 6 << 20

        acked = {1}
        ids = iter(range(2, 1000))

        def refused():      # free space is checked once a second: an ack may come first
            i = next(ids)
            st, body = _insert(n.http, i)
            if _acked(st, body):
                acked.add(i)
            return (i, st, body) if st == 507 else None
        i, st, body = wait_for(refused, 5, "a 507")
        assert "min-free-disk" in body["error"] and mnt in body["error"], body
        assert body.get("code") in (None, "disk_full"), body
        st, body = _insert(n.http, i + 1)
        assert st == 507, (st, body)
        got = {r[0] for r in values(n.http, "SELECT id FROM t")}   # reads work
        assert got == acked, (got, acked)
        assert _status(n)["store"]["raft"]["state"] == "Leader"
        n.free()
        wait_for(lambda: _acked(*_insert(n.http, 5000)), 5, "writes taken again")
        assert {r[0] for r in values(n.http, "SELECT id FROM t")} == acked | {5000}
    except BaseException:
        print(n.tail(100))
        raise
    finally:
        n.terminate(10)
