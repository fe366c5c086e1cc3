"""Recycled log segments: a compacted segment becomes the next spare and is overwritten in
place. Its old records must never be read back as records of its new life, a crash in the
middle of a write into it must leave exactly the durable prefix, and what is kept to be
recycled is bounded and survives restarts (docs/design/raft-io.md, "Recycled segments")."""
import os
import random
import struct

import pytest

from raftsqlite import codec
from raftsqlite.codec.model import Entry, SnapshotMeta
from raftsqlite.errors import StorageCorrupt
from raftsqlite.raft.log import RaftLog, encode_snapshot_meta, write_atomic

SEG = 64 << 10  # the smallest segment size that preallocates


def mk(i, t, size=1000):
    return Entry(t, i, data=(b"%d:" % i).ljust(size, b"o" if t % 2 else b"n"))


def opened(path, **kw):
    kw.setdefault("segment_bytes", SEG)
    lg = RaftLog(str(path), **kw)
    lg.open()
    return lg


def recycle_dir(path):
    return os.path.join(str(path), "raft", "recycle")


def frames_after(path, start, below):
    """Offsets >= start of whole, valid entry frames with an index < ``below``: the old
    records a recycled file still holds after its new records."""
    with open(path, "rb") as f:
        buf = f.read()
    found = []
    off = start
    while off + codec.HEADER_SIZE <= len(buf):
        n = 8 + struct.unpack_from("<I", buf, off)[0]
        if codec.HEADER_SIZE <= n <= len(buf) - off:
            try:
                _, e = codec.decode_entry(buf[off:off + n])
                if e.index < below:
                    found.append(off)
                    off += n
                    continue
            except Exception:
                pass
        off += 1
    return found


def into_recycled(path, **kw):
    """A log whose active segment is a recycled one: old segments filled with 1000-byte
    entries, compacted away (kept for recycling), the next spare made from one of them,
    then taken. -> (log, entries still in the log, first index of the recycled segment)."""
    lg = opened(path, preallocate=True, **kw)
    ents = {}
    i = 1
    while len(lg._segments) < 4:
        batch = [mk(j, 1) for j in range(i, i + 5)]
        lg.persist(None, batch)
        ents.update((e.index, e) for e in batch)
        i += 5
        assert lg.wait_spare(20)
    last = lg.last_index()
    lg.compact(SnapshotMeta(last, 1, []), keep_from=last + 1)
    assert lg.stats()["segments_recycled"] >= 2, lg.stats()
    zeros = lg.stats()["zero_filled_bytes"]
    while lg.stats()["spares_recycled"] == 0:
        batch = [mk(j, 2) for j in range(i, i + 5)]
        lg.persist(None, batch)
        ents.update((e.index, e) for e in batch)
        i += 5
        assert lg.wait_spare(20) and i < 2000
    # a recycled spare is only extended by zeros to the spare size (the segment was trimmed)
    assert lg.stats()["zero_filled_bytes"] - zeros < SEG // 8
    taken = lg.stats()["segments_from_spare"]
    while lg.stats()["segments_from_spare"] == taken:
        batch = [mk(j, 2) for j in range(i, i + 5)]
        lg.persist(None, batch)
        ents.update((e.index, e) for e in batch)
        i += 5
        assert i < 2000
    seg = lg._segments[-1]
    return lg, {k: v for k, v in ents.items() if k >= lg.first_index()}, seg.first


def test_recycled_segment_full_of_old_records_reopens_at_its_last_new_entry(tmp_path):
    """Invariant: a recycled segment still holds whole, valid records of its previous use
    after its new ones; a restart takes none of them: the log ends exactly at the last
    entry appended, reads back every entry, and appends go on in the same file."""
    lg, ents, first = into_recycled(tmp_path)
    active = lg._segments[-1].path
    size = os.path.getsize(active)
    batch = [mk(j, 3, 300) for j in range(lg.last_index() + 1, lg.last_index() + 4)]
    lg.persist(None, batch)
    ents.update((e.index, e) for e in batch)
    end = lg._segments[-1].size
    last = lg.last_index()
    assert os.path.getsize(active) == size, "an append into a recycled segment grew it"
    lg.close()
    assert frames_after(active, end, first), "the test needs old records after the new"
    lg2 = opened(tmp_path)
    assert lg2.last_index() == last
    assert lg2.entries(lg2.first_index(), last + 1) == [ents[k] for k in
                                                        range(lg2.first_index(), last + 1)]
    assert lg2.stats()["stale_tail_bytes"] > 0
    lg2.persist(None, [mk(last + 1, 3, 50)])
    lg2.close()
    lg3 = opened(tmp_path)
    assert lg3.last_index() == last + 1 and lg3.entries(last + 1, last + 2) == [mk(last + 1, 3, 50)]
    lg3.close()


def test_write_torn_anywhere_in_a_recycled_segment_leaves_the_durable_prefix(tmp_path):
    """Invariant: a crash while a batch is written into a recycled segment (the bytes
    before some cut are new, the rest still the file's old contents) reopens to the log
    before that batch plus the batch's whole records before the cut: never an old
    record, never a StorageCorrupt."""
    lg, ents, first = into_recycled(tmp_path)
    active = lg._segments[-1].path
    before_last = lg.last_index()
    start = lg._segments[-1].size
    with open(active, "rb") as f:
        old = f.read()
    batch = [mk(j, 4, 120) for j in range(before_last + 1, before_last + 4)]
    lg.persist(None, batch)
    ends = [lg._segments[-1].end_of(len(lg._segments[-1].offsets) - 3 + k) for k in range(3)]
    lg.close()
    with open(active, "rb") as f:
        new = f.read()
    assert new[start:ends[-1]] != old[start:ends[-1]]
    want = [ents[k] for k in range(first, before_last + 1)] + batch
    for cut in list(range(start, ends[-1] + 1, 3)) + ends:
        with open(active, "wb") as f:
            f.write(new[:cut] + old[cut:])
        lg2 = opened(tmp_path, preallocate=False)
        n = sum(1 for e in ends if e <= cut)   # records of the batch wholly written
        assert lg2.last_index() == before_last + n, cut
        assert lg2.entries(first, before_last + n + 1) == want[:before_last + n - first + 1]
        lg2.close()


def build_segment(path, first, new, after):
    """Write a segment file by hand: the records of entries ``new`` (indexes from
    ``first``, after a snapshot at ``first - 1``), then the bytes ``after``."""
    os.makedirs(os.path.join(str(path), "raft", "log"), exist_ok=True)
    write_atomic(os.path.join(str(path), "raft", "snapshot"),
                 encode_snapshot_meta(SnapshotMeta(first - 1, 1, [])))
    p = os.path.join(str(path), "raft", "log", f"{first:020d}.seg")
    with open(p, "wb") as f:
        f.write(b"".join(codec.encode_entry(e) for e in new) + after)
    return p


@pytest.mark.parametrize("junk", [b"", b"\x13" * 37, b"\0" * 64])
def test_old_record_right_after_the_end_is_not_taken(tmp_path, junk):
    """Invariant: a whole, valid record with an index below the segment's first, right at
    the end of its records or after torn bytes or zeros, ends the segment there (it is
    the file's previous use); later old records change nothing."""
    old = b"".join(codec.encode_entry(mk(i, 1, 90)) for i in range(3, 30))
    new = [mk(i, 5, 90) for i in range(50, 53)]
    build_segment(tmp_path, 50, new, junk + old)
    lg = opened(tmp_path, preallocate=False)
    assert lg.first_index() == 50 and lg.last_index() == 52
    assert lg.entries(50, 53) == new


@pytest.mark.parametrize("junk", [b"", b"\x13" * 37, b"\0" * 64])
def test_record_of_the_segment_after_its_end_is_damage(tmp_path, junk):
    """Invariant: a valid record whose index belongs to this segment (>= its first) after
    the point where its records stop means damage, not a tear: StorageCorrupt names the
    file and offset, whether it sits right there or after torn bytes or zeros."""
    new = [mk(i, 5, 90) for i in range(50, 53)]
    stray = codec.encode_entry(mk(60, 5, 90))
    p = build_segment(tmp_path, 50, new, junk + stray + b"\0" * 100)
    end = sum(len(codec.encode_entry(e)) for e in new)
    with pytest.raises(StorageCorrupt) as ei:
        opened(tmp_path, preallocate=False)
    assert p in str(ei.value) and f"offset {end}" in str(ei.value)


def test_spare_with_records_at_or_above_the_next_index_is_not_used(tmp_path):
    """Invariant: a kept file is only made the segment starting at index s if all its old
    records are below s (its bound <= s): otherwise the log grows a plain segment and the
    file's bytes stay untouched."""
    lg = opened(tmp_path, preallocate=True)
    lg.close()
    os.makedirs(recycle_dir(tmp_path), exist_ok=True)
    kept = os.path.join(recycle_dir(tmp_path), f"{10**6:020d}-x.seg")
    junk = os.urandom(3 * SEG)
    with open(kept, "wb") as f:
        f.write(junk)
    lg = opened(tmp_path, preallocate=True)
    assert lg.wait_spare(20) and lg._spare.bound == 10**6
    ents = [mk(i, 1) for i in range(1, 200)]
    for k in range(0, len(ents), 5):
        lg.persist(None, ents[k:k + 5])
    assert lg.stats()["segments_from_spare"] == 0 and lg.stats()["segments_grown"] >= 2
    assert lg.entries(1, 200) == ents
    lg.close()
    with open(os.path.join(str(tmp_path), "raft", "next-segment"), "rb") as f:
        assert f.read() == junk


def test_kept_files_bounded_survive_restart_and_never_alias_a_segment(tmp_path):
    """Invariants: at most ``recycle_bytes`` of compacted segments are kept (the rest are
    deleted); kept files survive a restart and are used after it; a kept name that is a
    second link to a live segment (a crash between a rename's two directory entries) is
    removed at start, never recycled."""
    lg = opened(tmp_path, preallocate=True, recycle_bytes=2 * SEG + 8192)
    i = 1
    while len(lg._segments) < 5:
        lg.persist(None, [mk(j, 1) for j in range(i, i + 5)])
        i += 5
        assert lg.wait_spare(20)
    last = lg.last_index()
    lg.compact(SnapshotMeta(last, 1, []), keep_from=last + 1)
    st = lg.stats()
    assert st["segments_recycled"] >= 1 and st["recycle_bytes"] <= 2 * SEG + 8192
    assert st["segments_deleted"] > st["segments_recycled"]
    lg.close()
    kept = sorted(os.listdir(recycle_dir(tmp_path)))
    assert kept
    live = lg._segments[-1].path
    alias = os.path.join(recycle_dir(tmp_path), f"{1:020d}-alias.seg")
    os.link(live, alias)
    lg2 = opened(tmp_path, preallocate=True)
    assert not os.path.exists(alias) and os.path.exists(live)
    assert lg2.wait_spare(20)
    assert lg2.stats()["spares_recycled"] == 1
    assert len(os.listdir(recycle_dir(tmp_path))) == len(kept) - 1
    lg2.close()
    # a run without preallocation does not keep them
    opened(tmp_path, preallocate=False).close()
    assert not os.path.exists(recycle_dir(tmp_path))


def _files(path):
    d = os.path.join(str(path), "raft")
    out = {}
    for p in [os.path.join(d, "next-segment")] + [os.path.join(d, "log", n) for n in
                                                  os.listdir(os.path.join(d, "log"))]:
        if os.path.exists(p):
            with open(p, "rb") as f:
                out[p] = f.read()
    return out


@pytest.mark.parametrize("seed", range(int(os.environ.get("RAFTLOG_SEEDS", "4"))))
def test_random_appends_compactions_and_torn_writes(tmp_path, seed):
    """Against a model: random appends (some replacing a suffix), compactions (their
    segments recycled as spares) and crashes that tear an appending batch at a random byte
    (the rest of its region keeps the file's previous bytes: old records of a recycled
    segment, or zeros) always reopen to the log before that batch plus a prefix of it, and
    the log matches the model throughout."""
    rnd = random.Random(seed)
    kw = dict(segment_bytes=SEG, fsync=False, preallocate=True, cache_entries=50)
    lg = opened(tmp_path, **kw)
    model = {}
    term, snap, tears, torn_recycled, recycled_spares = 1, 0, 0, 0, 0

    def reopen(lg):
        nonlocal recycled_spares
        recycled_spares += lg.stats()["spares_recycled"]
        lg.close()
        return opened(tmp_path, **kw)

    for step in range(220):
        r = rnd.random()
        last = lg.last_index()
        if r < 0.75:
            conflict = rnd.random() < 0.15 and last > snap + 3
            lo = rnd.randint(max(snap + 1, last - 3), last) if conflict else last + 1
            term += conflict
            ents = [mk(i, term, rnd.randint(200, 3000)) for i in range(lo, lo + rnd.randint(1, 6))]
            tear = not conflict and rnd.random() < 0.3
            if tear:
                lg.wait_spare(2)
                pre = _files(tmp_path)
                from_spare = lg.stats()["segments_from_spare"]
            lg.persist(None, ents)
            for i in [i for i in model if i >= lo]:
                del model[i]
            model.update({e.index: e for e in ents})
            if tear:
                seg = lg._segments[-1]
                spare_taken = lg.stats()["segments_from_spare"] > from_spare
                old = pre.get(os.path.join(str(tmp_path), "raft", "next-segment")) \
                    if spare_taken else pre.get(seg.path, b"")
                start = seg.offsets[len(seg.offsets) - len(ents)]
                cut = rnd.randint(start, seg.size)
                recycled_spares += lg.stats()["spares_recycled"]
                lg.close()
                with open(seg.path, "rb") as f:
                    data = f.read()
                rest = (old or b"")[cut:len(data)]
                with open(seg.path, "wb") as f:
                    f.write(data[:cut] + rest)
                lg = opened(tmp_path, **kw)
                kept = lg.last_index()
                assert lo - 1 <= kept <= ents[-1].index, (seed, step, cut)
                for i in [i for i in model if i > kept]:
                    del model[i]
                tears += 1
                torn_recycled += any(rest)   # old records showed through the tear
        elif r < 0.85 and last > snap + 20:
            idx = rnd.randint(snap + 1, last - 2)
            lg.compact(SnapshotMeta(idx, model[idx].term, []), keep_from=idx + 1)
            snap = idx
        elif r < 0.92:
            lg = reopen(lg)
        last = lg.last_index()
        assert last == (max(model) if model else 0), (seed, step)
        f = lg.first_index()
        if last >= f:
            assert lg.entries(f, last + 1) == [model[i] for i in range(f, last + 1)], (seed, step)
    recycled_spares += lg.stats()["spares_recycled"]
    lg.close()
    # the run exercised what it is about: tears, some of them inside recycled segments
    assert tears > 10 and recycled_spares > 2 and torn_recycled > 0, (
        tears, recycled_spares, torn_recycled)
