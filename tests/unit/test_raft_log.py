"""Durable Raft log: append, truncation, reopen, torn tails, corruption, compaction."""
import os
import random

import pytest

from raftsqlite.codec.model import Entry, Member, SnapshotMeta
from raftsqlite.errors import StorageCorrupt
from raftsqlite.raft.log import RaftLog
from raftsqlite.raft.types import HardState


def mk(i, t, size=10):
    return Entry(t, i, data=(b"%d:" % i).ljust(size, b"x"))


def opened(path, **kw):
    lg = RaftLog(str(path), **kw)
    lg.open()
    return lg


def segfiles(path):
    d = os.path.join(str(path), "raft", "log")
    return sorted(os.path.join(d, n) for n in os.listdir(d))


def test_append_and_reopen(tmp_path):
    """Every appended entry is readable after a restart with the same term and data."""
    lg = opened(tmp_path, segment_bytes=300)
    ents = [mk(i, 1 + i // 7) for i in range(1, 51)]
    for k in range(0, 50, 5):
        lg.persist(HardState(term=ents[k + 4].term, vote="a"), ents[k:k + 5])
    assert lg.last_index() == 50 and lg.first_index() == 1
    assert len(segfiles(tmp_path)) > 1, "small segment_bytes must rotate segments"
    lg.close()
    lg2 = opened(tmp_path, segment_bytes=300)
    assert lg2.entries(1, 51) == ents
    assert [lg2.term(i) for i in range(0, 51)] == [0] + [e.term for e in ents]
    assert lg2.hard_state().vote == "a"


def test_conflicting_suffix_truncated_across_segments(tmp_path):
    """Appending at an index <= last replaces the suffix, including later segments."""
    lg = opened(tmp_path, segment_bytes=200)
    for k in range(1, 31, 3):
        lg.persist(None, [mk(i, 1) for i in range(k, k + 3)])
    nseg = len(segfiles(tmp_path))
    new = [mk(i, 2, 12) for i in range(8, 12)]
    lg.persist(None, new)
    assert lg.last_index() == 11
    assert lg.entries(1, 12) == [mk(i, 1) for i in range(1, 8)] + new
    assert len(segfiles(tmp_path)) < nseg
    lg.close()
    lg2 = opened(tmp_path, segment_bytes=200)
    assert lg2.entries(1, 12) == [mk(i, 1) for i in range(1, 8)] + new
    assert lg2.term(7) == 1 and lg2.term(8) == 2


def test_torn_tail_truncated(tmp_path):
    """A partially written last record is cut off on open; earlier records survive."""
    lg = opened(tmp_path)
    lg.persist(None, [mk(i, 1, 50) for i in range(1, 11)])
    lg.close()
    seg = segfiles(tmp_path)[-1]
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:
        f.truncate(size - 20)
    lg2 = opened(tmp_path)
    assert lg2.last_index() == 9
    assert lg2.entries(1, 10) == [mk(i, 1, 50) for i in range(1, 10)]
    assert lg2.stats()["truncated_tail_bytes"] > 0
    # the log keeps working after the cut
    lg2.persist(None, [mk(10, 2)])
    lg2.close()
    assert opened(tmp_path).entries(10, 11) == [mk(10, 2)]


def test_zero_filled_tail_truncated(tmp_path):
    """Zeros after the last record (file extended, data never written) are a torn tail."""
    lg = opened(tmp_path)
    lg.persist(None, [mk(i, 1) for i in range(1, 6)])
    lg.close()
    with open(segfiles(tmp_path)[-1], "ab") as f:
        f.write(b"\0" * 4096)
    assert opened(tmp_path).last_index() == 5


def test_corruption_before_tail_refused(tmp_path):
    """A damaged record followed by valid ones refuses to open, naming file and offset."""
    lg = opened(tmp_path)
    lg.persist(None, [mk(i, 1, 40) for i in range(1, 21)])
    off = lg._segments[0].offsets[5]
    lg.close()
    seg = segfiles(tmp_path)[-1]
    with open(seg, "r+b") as f:
        f.seek(off + 30)
        b = f.read(1)
        f.seek(off + 30)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(StorageCorrupt) as ei:
        opened(tmp_path)
    msg = str(ei.value)
    assert seg in msg and f"offset {off}" in msg


def test_corrupt_sealed_segment_refused(tmp_path):
    """Damage at the end of a segment that is not the last one is corruption, not a tear."""
    lg = opened(tmp_path, segment_bytes=150)
    for i in range(1, 21):
        lg.persist(None, [mk(i, 1)])
    lg.close()
    first = segfiles(tmp_path)[0]
    with open(first, "r+b") as f:
        f.truncate(os.path.getsize(first) - 3)
    with pytest.raises(StorageCorrupt, match="offset"):
        opened(tmp_path, segment_bytes=150)


def test_hard_state_atomic_and_commit_deferred(tmp_path):
    """Term/vote changes are written at once; a commit-only change may be deferred but
    never exceeds the durable log, and the state file is never torn."""
    lg = opened(tmp_path)
    lg.persist(HardState(3, "n2", 0), [mk(1, 3)])
    lg.persist(HardState(3, "n2", 1), [])
    assert lg.hard_state().commit == 1
    lg.close()
    hs = opened(tmp_path).hard_state()
    assert (hs.term, hs.vote) == (3, "n2") and hs.commit <= 1
    lg = opened(tmp_path)
    lg.persist(HardState(3, "n2", 1), [], force_state=True)
    lg.close()
    assert opened(tmp_path).hard_state().commit == 1
    assert not [n for n in os.listdir(os.path.join(str(tmp_path), "raft")) if n.endswith(".tmp")]


def test_bad_state_file_refused(tmp_path):
    """A damaged state file stops start-up with a clear error naming it."""
    lg = opened(tmp_path)
    lg.persist(HardState(1, "x", 0), [mk(1, 1)])
    lg.close()
    p = os.path.join(str(tmp_path), "raft", "state")
    with open(p, "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff")
    with pytest.raises(StorageCorrupt, match="state"):
        opened(tmp_path)


def test_compaction_deletes_old_segments(tmp_path):
    """Segments wholly below the kept index are deleted; the rest stays readable, also
    after a restart; term of the entry before first_index is known."""
    lg = opened(tmp_path, segment_bytes=200)
    ents = [mk(i, 1 + i // 40) for i in range(1, 101)]
    for k in range(0, 100, 4):
        lg.persist(None, ents[k:k + 4])
    n0 = len(segfiles(tmp_path))
    meta = SnapshotMeta(80, lg.term(80), [Member("a", "h:1", "h:2")])
    lg.compact(meta, keep_from=70)
    assert len(segfiles(tmp_path)) < n0
    f = lg.first_index()
    assert 1 < f <= 70
    assert lg.entries(f, 101) == ents[f - 1:]
    assert lg.term(f - 1) == ents[f - 2].term
    lg.close()
    lg2 = opened(tmp_path, segment_bytes=200)
    assert lg2.snapshot_meta() == meta
    f2 = lg2.first_index()
    assert f2 <= 81 and lg2.entries(f2, 101) == ents[f2 - 1:]
    assert lg2.term(f2 - 1) == ents[f2 - 2].term


@pytest.mark.parametrize("crash_at", ["before_delete", "mid_delete"])
def test_compaction_deletion_interrupted_by_a_crash(tmp_path, crash_at):
    """Compaction's durable step is the meta alone; its file deletions run later. A crash
    before them (old segments still there) or midway (one renamed to .del and partly
    truncated) reopens to the same readable log, and the leftovers are cleaned up."""
    from raftsqlite.raft.segfiles import TRASH_SUFFIX
    lg = opened(tmp_path, segment_bytes=200)
    ents = [mk(i, 1 + i // 40) for i in range(1, 101)]
    for k in range(0, 100, 4):
        lg.persist(None, ents[k:k + 4])
    meta = SnapshotMeta(80, lg.term(80), [Member("a", "h:1", "h:2")])
    b = lg.prepare_compact(meta, keep_from=70)
    assert b.delete, "the test needs segments to drop"
    lg.write_compact(b)
    lg.finish_compact(b)
    if crash_at == "mid_delete":
        victim = b.delete[0].path
        os.rename(victim, victim + TRASH_SUFFIX)
        os.truncate(victim + TRASH_SUFFIX, 7)
    lg.close()
    lg2 = opened(tmp_path, segment_bytes=200)
    assert lg2.snapshot_meta() == meta
    f = lg2.first_index()
    assert f <= 81 and lg2.entries(f, 101) == ents[f - 1:]
    assert not any(p.endswith(TRASH_SUFFIX) for p in segfiles(tmp_path))
    lg2.close()


def test_remove_gradually_frees_a_file_in_steps(tmp_path):
    """remove_gradually deletes the file (and a .del leftover of an earlier attempt),
    returns the bytes freed, and ignores a file that is already gone."""
    from raftsqlite.raft.segfiles import TRASH_SUFFIX, remove_gradually, remove_trash
    p = str(tmp_path / "big")
    with open(p, "wb") as f:
        f.write(b"\1" * (3 << 20))
    assert remove_gradually(p, step=1 << 20) == 3 << 20
    assert os.listdir(tmp_path) == []
    assert remove_gradually(p) == 0
    with open(p + TRASH_SUFFIX, "wb") as f:
        f.write(b"\1" * 100)
    with open(str(tmp_path / "keep.seg"), "wb") as f:
        f.write(b"x")
    remove_trash(str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.seg"]


def test_install_snapshot_resets_log(tmp_path):
    """Installing a snapshot replaces the whole log; appends continue after it."""
    lg = opened(tmp_path)
    lg.persist(HardState(1, "", 0), [mk(i, 1) for i in range(1, 11)])
    meta = SnapshotMeta(500, 7, [Member("a"), Member("b", voter=False)])
    lg.persist(HardState(7, "", 500), [mk(501, 7)], snapshot=meta)
    assert (lg.first_index(), lg.last_index(), lg.term(500)) == (501, 501, 7)
    lg.close()
    lg2 = opened(tmp_path)
    assert (lg2.first_index(), lg2.last_index(), lg2.term(500)) == (501, 501, 7)
    assert lg2.snapshot_meta() == meta
    assert lg2.entries(501, 502) == [mk(501, 7)]


def test_interrupted_install_resets_on_open(tmp_path):
    """If a crash left the old log beside a newer snapshot, the log restarts at the snapshot."""
    lg = opened(tmp_path)
    lg.persist(None, [mk(i, 1) for i in range(1, 11)])
    lg.close()
    from raftsqlite.raft.log import encode_snapshot_meta, write_atomic
    write_atomic(os.path.join(str(tmp_path), "raft", "snapshot"),
                 encode_snapshot_meta(SnapshotMeta(20, 3, [])))
    lg2 = opened(tmp_path)
    assert (lg2.first_index(), lg2.last_index(), lg2.term(20)) == (21, 20, 3)


def test_memory_bounded_and_old_entries_from_disk(tmp_path):
    """The cache holds at most cache_entries entries; older ones are read from disk."""
    lg = opened(tmp_path, cache_entries=100, segment_bytes=4096)
    for k in range(20):
        lg.persist(None, [mk(i, 1) for i in range(k * 50 + 1, k * 50 + 51)])
    assert lg.stats()["cached_entries"] <= 100
    before = lg.stats()["disk_reads"]
    assert lg.entries(1, 1001) == [mk(i, 1) for i in range(1, 1001)]
    assert lg.stats()["disk_reads"] > before


def test_entries_max_bytes(tmp_path):
    """entries() stops at max_bytes but always returns at least one entry."""
    lg = opened(tmp_path, cache_entries=10)
    lg.persist(None, [mk(i, 1, 100) for i in range(1, 101)])
    assert len(lg.entries(1, 101, 1)) == 1
    got = lg.entries(1, 101, 1000)
    assert 1 <= len(got) <= 10 and sum(len(e.data) for e in got) <= 1000
    got = lg.entries(95, 101, 1000)
    assert 1 <= len(got) <= 10


@pytest.mark.parametrize("seed", range(int(os.environ.get("RAFTLOG_SEEDS", "8"))))
def test_random_model(tmp_path, seed):
    """Against a list model, random appends with conflicts, compactions and restarts keep
    the log identical to the model."""
    rnd = random.Random(seed)
    # fsync off: this checks bookkeeping against a model, not durability
    kw = dict(segment_bytes=rnd.choice([200, 500, 2000]), cache_entries=30, fsync=False)
    lg = opened(tmp_path, **kw)
    model = {}   # index -> entry
    term = 1
    snap = 0
    for step in range(300):
        r = rnd.random()
        last = lg.last_index()
        if r < 0.6:
            lo = rnd.randint(max(snap + 1, last - 5), last + 1)
            if rnd.random() < 0.3:
                term += 1
            ents = [mk(i, term, rnd.randint(1, 60)) for i in range(lo, lo + rnd.randint(1, 12))]
            lg.persist(None, ents)
            for i in [i for i in model if i >= lo]:
                del model[i]
            model.update({e.index: e for e in ents})
        elif r < 0.7 and last > snap + 5:
            idx = rnd.randint(snap + 1, last - 2)
            lg.compact(SnapshotMeta(idx, model[idx].term, []), keep_from=idx - rnd.randint(0, 5))
            snap = idx
        elif r < 0.85:
            lg.close()
            lg = opened(tmp_path, **kw)
        last = lg.last_index()
        assert last == (max(model) if model else 0)
        f = lg.first_index()
        assert f <= snap + 1
        assert lg.entries(f, last + 1) == [model[i] for i in range(f, last + 1)] if last >= f else True
        for i in range(f - 1, last + 1):
            if i in model:
                assert lg.term(i) == model[i].term


def test_torn_last_batch_at_every_cut(tmp_path):
    """Cutting the file anywhere inside the last (unacknowledged) batch never raises and
    never loses an earlier batch: the log reopens as a prefix that holds them all."""
    base = tmp_path / "base"
    lg = opened(base)
    first = [mk(i, 1, 30) for i in range(1, 6)]
    last = [mk(i, 2, 30) for i in range(6, 10)]
    lg.persist(None, first)
    start = lg._segments[-1].size
    lg.persist(None, last)
    lg.close()
    seg = segfiles(base)[-1]
    with open(seg, "rb") as f:
        data = f.read()
    for cut in range(start, len(data)):
        d = tmp_path / f"c{cut}"
        os.makedirs(d / "raft" / "log")
        with open(d / "raft" / "log" / os.path.basename(seg), "wb") as f:
            f.write(data[:cut])
        got = opened(d)
        n = got.last_index()
        assert 5 <= n <= 9
        assert got.entries(1, n + 1) == (first + last)[:n]
        got.close()


def test_missing_segment_refused(tmp_path):
    """A gap between segments (a deleted middle file) refuses to start, naming the file."""
    lg = opened(tmp_path, segment_bytes=100)
    for i in range(1, 16):
        lg.persist(None, [mk(i, 1)])
    lg.close()
    files = segfiles(tmp_path)
    assert len(files) >= 3
    os.unlink(files[1])
    with pytest.raises(StorageCorrupt, match="log gap") as ei:
        opened(tmp_path, segment_bytes=100)
    assert files[2] in str(ei.value)


# ---- preallocated segments -------------------------------------------------------------

SEG = 64 << 10  # the smallest segment size that preallocates and indexes


def in_spare(path, n_more=10):
    """A log whose active segment is a preallocated spare: a plain start segment filled
    past PLAIN_SEGMENT_BYTES (and SEG), then one-entry batches into the spare."""
    lg = opened(path, segment_bytes=SEG, preallocate=True)
    ents = [mk(i, 1, 1000) for i in range(1, 71)]  # ~72 KB: the plain segment is full
    lg.persist(HardState(1, "a", 0), ents)
    assert lg.wait_spare(20), "spare not prepared"
    for i in range(71, 71 + n_more):
        e = mk(i, 1 + i // 75, 100)
        lg.persist(None, [e])
        ents.append(e)
    assert lg.stats()["segments_from_spare"] == 1
    return lg, ents


def test_appends_overwrite_preallocated_blocks_and_reopen(tmp_path):
    """Appends into a spare overwrite its zero-filled blocks (the file does not grow); a
    reopen sees exactly the appended entries, ends cleanly at the zero tail (nothing is
    reported torn), and appending continues in the same preallocated file."""
    lg, ents = in_spare(tmp_path)
    active = segfiles(tmp_path)[-1]
    size = os.path.getsize(active)
    assert lg.stats()["active_preallocated_bytes"] > 0
    assert size > lg._segments[-1].size
    lg.persist(None, [mk(81, 2, 200)])
    ents.append(mk(81, 2, 200))
    assert os.path.getsize(active) == size, "an append into preallocated blocks grew the file"
    lg.close()
    lg2 = opened(tmp_path, segment_bytes=SEG)
    assert lg2.last_index() == 81 and lg2.entries(1, 82) == ents
    assert lg2.stats()["truncated_tail_bytes"] == 0
    assert [lg2.term(i) for i in range(1, 82)] == [e.term for e in ents]
    lg2.persist(None, [mk(82, 2)])
    assert os.path.getsize(active) == size
    lg2.close()
    assert opened(tmp_path, segment_bytes=SEG).entries(1, 83) == ents + [mk(82, 2)]


def test_sealed_spare_is_trimmed_and_untrimmed_tail_accepted(tmp_path):
    """A preallocated segment left behind by rotation gives back its tail; if a crash came
    before that, the log still opens intact whatever the tail holds (zeros, or a recycled
    file's old bytes: here a stray byte), but a sealed segment that lost its last record is
    a gap named by file and offset."""
    lg, ents = in_spare(tmp_path)
    i = 81
    while lg.stats()["segments_from_spare"] < 2:
        # the spare is prepared in the idle I/O class: under other I/O it may take a while,
        # and without it the log would rotate into a plain segment
        assert lg.wait_spare(20)
        batch = [mk(j, 3, 1000) for j in range(i, i + 5)]
        lg.persist(None, batch)
        ents += batch
        i += 5
        if i > 200:
            assert lg.wait_spare(20)
    lg.close()
    files = segfiles(tmp_path)
    assert len(files) == 3
    sealed = files[1]
    data_end = os.path.getsize(sealed)
    with open(sealed, "ab") as f:   # as if the trim never reached the disk
        f.write(b"\0" * 8192)
    lg2 = opened(tmp_path, segment_bytes=SEG)
    assert lg2.entries(1, i) == ents
    lg2.close()
    with open(sealed, "r+b") as f:
        f.seek(data_end + 5000)
        f.write(b"\x07")
    lg3 = opened(tmp_path, segment_bytes=SEG)
    assert lg3.entries(1, i) == ents and lg3.stats()["stale_tail_bytes"] > 0
    last_off = lg3._segments[1].offsets[-1]
    lg3.close()
    with open(sealed, "r+b") as f:
        f.seek(last_off + 40)
        byte = f.read(1)
        f.seek(last_off + 40)
        f.write(bytes([byte[0] ^ 0x20]))
    with pytest.raises(StorageCorrupt, match="log gap") as ei:
        opened(tmp_path, segment_bytes=SEG)
    assert sealed in str(ei.value) and f"offset {last_off}" in str(ei.value)


def test_torn_record_in_preallocated_tail_ignored(tmp_path):
    """A record torn inside the zero-filled tail is cut off on open (reported; its bytes
    are left, the file keeps its blocks), earlier records survive, and the log keeps
    working: the next append overwrites the torn bytes (and zeros to the end of the page)."""
    from raftsqlite import codec
    lg, ents = in_spare(tmp_path)
    end = lg._segments[-1].size
    lg.close()
    active = segfiles(tmp_path)[-1]
    size = os.path.getsize(active)
    rec = codec.encode_entry(mk(81, 2, 300))
    with open(active, "r+b") as f:
        f.seek(end)
        f.write(rec[:200])   # the first pages of the write landed, the rest did not
    lg2 = opened(tmp_path, segment_bytes=SEG)
    assert lg2.last_index() == 80 and lg2.entries(1, 81) == ents
    assert lg2.stats()["truncated_tail_bytes"] == 200
    assert os.path.getsize(active) == size
    lg2.persist(None, [mk(81, 2, 50)])
    lg2.close()
    lg3 = opened(tmp_path, segment_bytes=SEG)
    assert lg3.entries(1, 82) == ents + [mk(81, 2, 50)]
    assert lg3.stats()["truncated_tail_bytes"] == 0


def test_damage_before_preallocated_tail_refused(tmp_path):
    """In a preallocated segment, a damaged record with valid records after it refuses to
    open (file and offset named), and so does a zeroed length field with records after
    it: a zero length ends a segment only when nothing but zeros follows."""
    lg, _ = in_spare(tmp_path, n_more=20)
    seg = lg._segments[-1]
    off_bad, off_zero = seg.offsets[5], seg.offsets[8]
    lg.close()
    active = segfiles(tmp_path)[-1]
    with open(active, "rb") as f:
        orig = f.read()
    with open(active, "r+b") as f:
        f.seek(off_bad + 40)
        f.write(bytes([orig[off_bad + 40] ^ 0x55]))
    with pytest.raises(StorageCorrupt) as ei:
        opened(tmp_path, segment_bytes=SEG)
    assert active in str(ei.value) and f"offset {off_bad}" in str(ei.value)
    with open(active, "r+b") as f:
        f.write(orig)
        f.seek(off_zero)
        f.write(b"\0\0\0\0")
    with pytest.raises(StorageCorrupt) as ei:
        opened(tmp_path, segment_bytes=SEG)
    assert active in str(ei.value) and f"offset {off_zero}" in str(ei.value)


def test_crash_during_preallocation(tmp_path):
    """A half-prepared spare (a crash while zero-filling) is never used: start-up discards
    it, the log is intact, and a fresh spare of the full size is prepared. A spare renamed
    into place just before a crash (an all-zero segment) opens as an empty segment."""
    lg, ents = in_spare(tmp_path)
    lg.close()
    spare = os.path.join(str(tmp_path), "raft", "next-segment")
    with open(spare, "wb") as f:
        f.write(b"\0" * 3000 + b"partial")
    lg2 = opened(tmp_path, segment_bytes=SEG)
    assert lg2.entries(1, 81) == ents
    assert lg2.wait_spare(20)
    assert os.path.getsize(spare) >= SEG and b"partial" not in open(spare, "rb").read()
    lg2.close()
    # the next segment, renamed into place, before its first record was durable
    nxt = os.path.join(str(tmp_path), "raft", "log", f"{81:020d}.seg")
    with open(nxt, "wb") as f:
        f.write(b"\0" * SEG)
    lg3 = opened(tmp_path, segment_bytes=SEG)
    assert lg3.last_index() == 80 and lg3.entries(1, 81) == ents
    lg3.persist(None, [mk(81, 3)])
    lg3.close()
    lg4 = opened(tmp_path, segment_bytes=SEG)
    assert lg4.entries(1, 82) == ents + [mk(81, 3)]


def test_conflict_in_preallocated_segment_leaves_no_stale_records(tmp_path):
    """Replacing a suffix inside a preallocated segment with shorter records leaves none
    of the replaced records behind: a reopen sees exactly the new suffix."""
    lg, ents = in_spare(tmp_path, n_more=20)
    new = [mk(i, 9, 10) for i in range(85, 88)]
    lg.persist(None, new)
    want = ents[:84] + new
    assert lg.entries(1, 88) == want
    lg.close()
    lg2 = opened(tmp_path, segment_bytes=SEG)
    assert lg2.last_index() == 87 and lg2.entries(1, 88) == want
    assert lg2.stats()["truncated_tail_bytes"] == 0


# ---- index files of sealed segments -----------------------------------------------------

def sealed_log(path, n=300, **kw):
    # no spare: segments then rotate exactly at SEG, which keeps the counts below exact
    lg = opened(path, segment_bytes=SEG, preallocate=False, **kw)
    ents = [mk(i, 1 + i // 45, 1000) for i in range(1, n + 1)]
    for k in range(0, n, 10):
        lg.persist(None, ents[k:k + 10])
    return lg, ents


def idxfiles(path):
    d = os.path.join(str(path), "raft", "index")
    return sorted(os.path.join(d, n) for n in os.listdir(d))


def test_sealed_segments_open_from_index(tmp_path):
    """Sealed segments get an index; a restart takes their offsets and terms from it (only
    the last segment is scanned) and sees exactly what a full scan sees."""
    lg, ents = sealed_log(tmp_path)
    nseg = len(segfiles(tmp_path))
    assert nseg >= 4
    lg.close()
    assert len(idxfiles(tmp_path)) == nseg - 1
    lg2 = opened(tmp_path, segment_bytes=SEG)
    st = lg2.stats()
    assert (st["segments_indexed_at_open"], st["segments_scanned_at_open"]) == (nseg - 1, 1)
    assert lg2.entries(1, 301) == ents
    assert [lg2.term(i) for i in range(301)] == [0] + [e.term for e in ents]
    offs = [list(s.offsets) for s in lg2._segments]
    lg2.close()
    for p in idxfiles(tmp_path):
        os.unlink(p)
    lg3 = opened(tmp_path, segment_bytes=SEG)
    assert lg3.stats()["segments_indexed_at_open"] == 0
    assert [list(s.offsets) for s in lg3._segments] == offs
    assert [lg3.term(i) for i in range(301)] == [0] + [e.term for e in ents]


def test_damage_in_indexed_segment_still_refused(tmp_path):
    """A flipped byte inside a sealed, indexed segment is still found at start-up (the
    segment no longer matches its index, so every record is checked): StorageCorrupt
    names the file and the damaged record's offset."""
    lg, _ = sealed_log(tmp_path)
    seg = lg._segments[1]
    off = seg.offsets[7]
    lg.close()
    path = seg.path
    with open(path, "r+b") as f:
        f.seek(off + 100)
        b = f.read(1)
        f.seek(off + 100)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(StorageCorrupt) as ei:
        opened(tmp_path, segment_bytes=SEG)
    assert path in str(ei.value) and f"offset {off}" in str(ei.value)


def test_damaged_or_stale_index_falls_back_to_scan(tmp_path):
    """A torn index file is ignored (full scan, same log) and rewritten; an index left
    over from a segment whose records were replaced by a conflicting append is never
    trusted over the segment's bytes."""
    lg, ents = sealed_log(tmp_path)
    # every open without a spare, as in sealed_log: with one, where a segment seals
    # depends on when the spare is ready, and an extra sealed segment brings its own index
    lg.close()
    first_idx = idxfiles(tmp_path)[0]
    with open(first_idx, "r+b") as f:
        f.truncate(os.path.getsize(first_idx) // 2)
    lg2 = opened(tmp_path, segment_bytes=SEG, preallocate=False)
    assert lg2.entries(1, 301) == ents
    assert lg2.stats()["segments_scanned_at_open"] == 2
    lg2.close()
    assert opened(tmp_path, segment_bytes=SEG, preallocate=False).stats()["segments_scanned_at_open"] == 1
    # a conflicting append inside the first sealed segment, with its index copied back
    lg3 = opened(tmp_path, segment_bytes=SEG, preallocate=False)
    with open(first_idx, "rb") as f:
        saved = f.read()
    new = [mk(i, 50, 20) for i in range(30, 40)]
    lg3.persist(None, new)
    assert not os.path.exists(first_idx)
    more = [mk(i, 51, 1000) for i in range(40, 140)]
    for k in range(0, 100, 10):   # seal that segment again, then put the old index back
        lg3.persist(None, more[k:k + 10])
    assert len(segfiles(tmp_path)) >= 2
    lg3.close()
    with open(first_idx, "wb") as f:
        f.write(saved)
    lg4 = opened(tmp_path, segment_bytes=SEG, preallocate=False)
    assert lg4.last_index() == 139 and lg4.entries(1, 140) == ents[:29] + new + more
    assert lg4.stats()["segments_indexed_at_open"] == 0
