"""A full or failing disk (ENOSPC, EIO, SQLITE_FULL) is retried, never skipped, never
turned into a result some members have and others do not (raft/diskerr.py; the cluster
test with a real full tmpfs is tests/cluster/test_disk_full.py)."""
import asyncio
import errno
import os

import pytest

from raftsqlite import errors
from raftsqlite.codec.model import Entry
from raftsqlite.db import Database
from raftsqlite.fsm import FSM
from raftsqlite.raft import diskerr
from raftsqlite.raft import log as rlog
from raftsqlite.raft.demo import KVStateMachine
from raftsqlite.raft.log import RaftLog
from raftsqlite.raft.types import HardState

from tests.cluster.test_raft_driver import cfg, run, single
from tests.unit.test_fsm import ex, req


def _entries(lo, hi, term=1, size=300):
    return [Entry(term, i, data=b"%06d" % i * (size // 6)) for i in range(lo, hi)]


def _enospc_after_half(real):
    """A pwrite that writes about half its bytes, then fails as a full disk does."""
    def torn(fd, data, off):
        blob = data[0] if isinstance(data, list) else data
        os.pwrite(fd, bytes(blob[:len(blob) // 2 + 7]), off)   # mid-record
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return torn


@pytest.mark.parametrize("fsync", [False, True])
def test_log_write_retried_after_a_torn_enospc_keeps_every_record(tmp_path, monkeypatch,
                                                                  fsync):
    """Invariant: a batch whose write failed half-way (ENOSPC) and is written again by the
    same call succeeds whole; the log then reopens with every record of both batches."""
    lg = RaftLog(str(tmp_path), fsync=fsync)
    lg.open()
    lg.persist(HardState(1, "", 0), _entries(1, 20))
    b = lg.prepare(None, _entries(20, 40))
    with monkeypatch.context() as m:
        m.setattr(rlog, "pwrite_all", _enospc_after_half(rlog.pwrite_all))
        m.setattr(rlog, "pwritev_all", _enospc_after_half(rlog.pwritev_all))
        with pytest.raises(OSError) as ei:
            lg.write(b)
        assert diskerr.classify(ei.value).code == "disk_full"
    assert lg.last_index() == 19          # nothing of the failed batch is visible
    lg.write(b)                           # the retry
    lg.finish(b)
    assert lg.last_index() == 39
    lg.close()
    again = RaftLog(str(tmp_path), fsync=fsync)
    again.open()
    assert again.last_index() == 39
    assert again.entries(1, 40) == _entries(1, 40)
    again.close()


def test_torn_tail_left_by_enospc_is_dropped_at_reopen(tmp_path, monkeypatch):
    """Invariant: a member that stops (or crashes) after a half-written batch reopens at
    its last whole record (the torn one ignored, no StorageCorrupt: the batch was never
    acknowledged, so its whole records are just uncommitted entries), and a new leader's
    conflicting entries replace them normally."""
    lg = RaftLog(str(tmp_path), fsync=False)
    lg.open()
    lg.persist(HardState(1, "", 0), _entries(1, 20))
    b = lg.prepare(None, _entries(20, 40))
    monkeypatch.setattr(rlog, "pwrite_all", _enospc_after_half(rlog.pwrite_all))
    monkeypatch.setattr(rlog, "pwritev_all", _enospc_after_half(rlog.pwritev_all))
    with pytest.raises(OSError):
        lg.write(b)
    lg.close()
    monkeypatch.undo()
    again = RaftLog(str(tmp_path), fsync=False)
    again.open()
    last = again.last_index()
    assert 19 <= last < 39
    assert again.entries(1, last + 1) == _entries(1, last + 1)
    st = again.stats()
    assert st["truncated_tail_bytes"] + st["stale_tail_bytes"] > 0   # the torn bytes seen
    again.persist(None, _entries(20, 25, term=2))
    again.close()
    third = RaftLog(str(tmp_path), fsync=False)
    third.open()
    assert third.entries(1, 25) == _entries(1, 20) + _entries(20, 25, term=2)
    third.close()


def test_fdatasync_eio_is_retried_with_every_byte_written_again(tmp_path, monkeypatch):
    """Invariant: after an fdatasync that failed (EIO), the retried write writes the whole
    batch again before syncing (pages whose writeback failed may have been marked clean),
    and the log holds the batch exactly."""
    lg = RaftLog(str(tmp_path), fsync=True, preallocate=False)
    lg.open()
    lg.persist(HardState(1, "", 0), _entries(1, 5))
    b = lg.prepare(None, _entries(5, 9))
    real_sync, real_pw = os.fdatasync, rlog.pwrite_all
    calls = {"sync": 0, "pw": 0}

    def bad_sync(fd):
        calls["sync"] += 1
        if calls["sync"] == 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_sync(fd)

    def counting_pw(fd, data, off):
        calls["pw"] += 1
        real_pw(fd, data, off)
    monkeypatch.setattr(rlog.os, "fdatasync", bad_sync)
    monkeypatch.setattr(rlog, "pwrite_all", counting_pw)
    with pytest.raises(OSError) as ei:
        lg.write(b)
    assert diskerr.classify(ei.value).code == "disk_error"
    lg.write(b)
    lg.finish(b)
    assert calls == {"sync": 2, "pw": 2}
    lg.close()
    monkeypatch.undo()
    again = RaftLog(str(tmp_path), fsync=True)
    again.open()
    assert again.entries(1, 9) == _entries(1, 9)
    again.close()


def _rows(f):
    return f.db.read([("SELECT * FROM t ORDER BY rowid", None)])[0]["values"]


def _strip(res):
    return [[{k: v for k, v in r.items() if k != "time"} for r in rs] for rs in res["results"]]


def test_sqlite_full_is_never_a_statement_result(tmp_path, monkeypatch):
    """Invariant: SQLITE_FULL on one member (the other had room) is not turned into a
    per-statement error: the apply raises a disk error, nothing of it stays (rows,
    applied index), and applying the same entries once there is room gives exactly the
    results and rows of the member that had room, including a constraint error that is
    deterministic (the same on both). (max_page_count makes SQLite fail as a full disk
    would; the file system's free space, which tells the two apart, is made to say "no
    room" while it lasts.)"""
    import raftsqlite.db_exec as dbx
    monkeypatch.setattr(dbx, "_room_left", lambda conn: False)
    a = FSM(Database(str(tmp_path / "a.sqlite")))
    b = FSM(Database(str(tmp_path / "b.sqlite")))
    setup = [Entry(1, 1), ex(2, req("CREATE TABLE t (v TEXT NOT NULL)"))]
    a.apply(setup)
    b.apply(setup)
    pages = b.db.internal("PRAGMA page_count")[0][0]
    b.db.internal(f"PRAGMA max_page_count={pages}")   # no room to grow: SQLITE_FULL
    big = "x" * 50_000
    ins = "INSERT INTO t VALUES (?)"
    entries = [ex(3, req((ins, [big])), req((ins, [None])), req((ins, ["y"])))]
    want = a.apply(entries)
    assert "NOT NULL" in _strip(want[0])[1][0]["error"]
    with pytest.raises(Exception) as ei:
        b.apply(entries)
    assert diskerr.classify(ei.value) is not None, repr(ei.value)
    assert b.applied_index() == 2 and _rows(b) == []
    b.db.internal("PRAGMA max_page_count=1073741823")
    got = b.apply(entries)
    assert _strip(got[0]) == _strip(want[0])
    assert _rows(b) == _rows(a) and b.applied_index() == a.applied_index() == 3
    a.db.close()
    b.db.close()


class _FullFirst(KVStateMachine):
    """Raises ENOSPC for the first ``n`` apply calls that hold ``key``."""

    def __init__(self, key, n):
        super().__init__()
        self.key, self.left, self.order = key, n, []

    def apply(self, entries):
        if self.left and any(self.key in e.data for e in entries):
            self.left -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        out = super().apply(entries)
        self.order.extend(e.index for e in entries if e.data)
        return out


def test_driver_retries_a_failed_apply_in_order_and_refuses_writes_meanwhile(tmp_path):
    """Invariants: an apply that fails with a disk error is retried with the same entries
    until it succeeds (never skipped: applied in log order), the member does not
    fail-stop, new writes are refused with DiskFull (HTTP 507) while it lasts, the error
    shows in stats while present and is counted, and writes work again afterwards."""
    async def main():
        fsm = _FullFirst(b"bad", 4)
        node, _ = await single(cfg(tmp_path), fsm)
        await node.propose(b"a=1")
        fut = node.propose_future(b"bad=1")
        for _ in range(300):
            if node.disk_error:
                break
            await asyncio.sleep(0.01)
        assert "disk full" in node.disk_error and "applying entries" in node.disk_error
        assert node.stats()["writes_refused"]
        with pytest.raises(errors.DiskFull):
            node.propose_future(b"c=1")
        with pytest.raises((errors.OutcomeUnknown, errors.DiskError)):
            await fut       # its proposer is told at once, not left to time out
        for _ in range(500):
            if fsm.data.get(b"bad") == b"1" and node.disk_error is None:
                break
            await asyncio.sleep(0.01)
        assert fsm.data.get(b"bad") == b"1" and node.disk_error is None
        await node.propose(b"c=2")
        s = node.stats()
        # (the first of the 4 failures may be the inline attempt, which hands the batch
        # to the apply thread without counting)
        assert s["failed"] is None and s["disk_errors_total"] >= 3 and s["disk_recoveries"] >= 1
        assert fsm.order == sorted(fsm.order) and len(fsm.order) == len(set(fsm.order))
        assert fsm.data[b"c"] == b"2"
        await node.stop()
    run(main())


def test_leader_whose_log_cannot_be_written_gives_way_and_catches_up(tmp_path):
    """Invariants: a leader whose log writes fail with ENOSPC (i) acknowledges nothing it
    could not persist (its waiting proposer is answered OutcomeUnknown/DiskFull, never a
    result), (ii) stops holding the group: the others elect a leader and commit writes,
    (iii) does not fail-stop, and (iv) once its disk works again it finishes the retried
    write, catches up and holds exactly the same data as the others."""
    from raftsqlite.codec.model import Member
    from raftsqlite.raft.config import RaftConfig
    from raftsqlite.raft.driver import RaftNode
    from raftsqlite.testing.procs import free_port
    from tests.cluster.test_raft_driver import bootstrap_and_elect

    async def main():
        ports = [free_port() for _ in range(3)]
        ids = ["a", "b", "c"]
        members = [Member(i, f"127.0.0.1:{p}") for i, p in zip(ids, ports)]
        nodes, fsms = [], []
        for nid, port in zip(ids, ports):
            fsm = KVStateMachine()
            node = RaftNode(RaftConfig(node_id=nid, data_dir=str(tmp_path / nid),
                                       tick_interval=0.02, raft_addr=f"127.0.0.1:{port}",
                                       min_free_disk=0), fsm)
            await node.start()
            nodes.append(node)
            fsms.append(fsm)
        lead = await bootstrap_and_elect(nodes, members)
        await lead.propose(b"a=1")
        real = lead.log.write
        full = {"on": True}

        def write(b):
            if full["on"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(b)
        lead.log.write = write
        fut = lead.propose_future(b"b=1")
        with pytest.raises((errors.OutcomeUnknown, errors.DiskError)):
            await asyncio.wait_for(fut, 5)
        assert "writing the Raft log" in lead.disk_error
        new = None
        for _ in range(500):
            new = next((n for n in nodes if n is not lead and n.is_leader), None)
            if new is not None:
                break
            await asyncio.sleep(0.01)
        assert new is not None, "no member took over from the leader with a full disk"
        await new.propose(b"c=1")
        assert lead.stats()["failed"] is None and lead.disk_error
        full["on"] = False
        for _ in range(500):
            if lead.disk_error is None and lead.applied_index >= new.applied_index \
                    and fsms[nodes.index(lead)].data == fsms[nodes.index(new)].data:
                break
            await asyncio.sleep(0.01)
        datas = [f.data for f in fsms]
        assert lead.disk_error is None and all(d == datas[0] for d in datas), datas
        assert datas[0][b"c"] == b"1" and datas[0][b"a"] == b"1"
        for n in nodes:
            await n.stop()
    run(main())


class _SnapFullOnce(KVStateMachine):
    def __init__(self):
        super().__init__()
        self.fail = 1

    def snapshot(self, path):
        if self.fail:
            self.fail -= 1
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().snapshot(path)


def test_snapshot_and_compaction_without_room_keep_the_old_ones(tmp_path):
    """Invariants: a snapshot that runs out of space, and a compaction whose meta write
    does, leave the previous snapshot and the whole log in place (nothing lost, the
    partial file removed), answer DiskFull, keep the member running and serving, and
    the next attempt succeeds once there is room."""
    async def main():
        fsm = _SnapFullOnce()
        node, _ = await single(cfg(tmp_path, min_free_disk=0), fsm)
        for i in range(20):
            await node.propose(b"k%d=%d" % (i, i))
        first = node.log.first_index()
        with pytest.raises(errors.DiskFull):
            await node.snapshot()
        assert node.log.first_index() == first and node.last_snapshot_index == 0
        assert "snapshot" in node.stats()["disk_errors_now"]
        assert not [n for n in os.listdir(node.log.snap_dir) if n.endswith(".tmp")]
        real = node.log.write_compact
        calls = {"n": 0}

        def write_compact(b):
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(b)
        node.log.write_compact = write_compact
        with pytest.raises(errors.DiskFull):
            await node.snapshot()
        assert node.log.first_index() == first and node.last_snapshot_index == 0
        await node.propose(b"after=1")       # still serving
        res = await node.snapshot()
        assert res and node.last_snapshot_index == res["index"] > 0
        assert "snapshot" not in node.stats()["disk_errors_now"]
        assert node.stats()["failed"] is None and fsm.data[b"after"] == b"1"
        await node.stop()
    run(main())


def test_min_free_disk_flag():
    """-min-free-disk takes a byte count with K/M/G suffixes (powers of 1024) into the
    Raft settings; an explicit -raft-opt min_free_disk wins; a bad value is refused."""
    from raftsqlite.cli import config_from_args
    from raftsqlite.raft.config import RaftConfig

    def opt(argv):
        return dict(config_from_args(argv)[0].raft_overrides).get("min_free_disk")
    assert opt([]) is None and RaftConfig.min_free_disk == 64 << 20
    assert opt(["-min-free-disk", "128MB"]) == 128 << 20
    assert opt(["-min-free-disk", "0"]) == 0
    assert opt(["-min-free-disk", "1G", "-raft-opt", "min_free_disk=5"]) == 5
    with pytest.raises(SystemExit):
        config_from_args(["-min-free-disk", "lots"])


def test_sqlite_full_with_room_on_disk_is_sqlites_own_limit(tmp_path, monkeypatch):
    """Invariant: SQLITE_FULL while the database's file system and SQLite's temp directory
    still have room is SQLite's own limit, the same on every member: a statement error,
    never a retried disk error (which would wedge the group); with no room it is the
    disk's."""
    import apsw
    import raftsqlite.db_exec as dbx
    db = Database(str(tmp_path / "c.sqlite"))
    conn = db.writer
    e = apsw.FullError("database or disk is full")
    assert dbx._room_left(conn)          # this machine's disks have room
    dbx.raise_disk_error(e, conn)        # returns: SQLite's limit
    monkeypatch.setattr(dbx, "_room_left", lambda c: False)
    with pytest.raises(Exception) as ei:
        dbx.raise_disk_error(e, conn)
    assert diskerr.classify(ei.value) is not None
    with pytest.raises(Exception):
        dbx.raise_disk_error(e)          # no connection: the disk's
    db.close()
