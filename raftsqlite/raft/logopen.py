"""The Raft log's start-up: reading its files back (state, snapshot meta, segments), the
recovery scan of a segment, and the file formats these use. ``RecoveryMixin`` is part of
``RaftLog`` (log.py) and uses its attributes. See docs/design/raft-io.md, "Start-up".
"""
import array
import bisect
import json
import logging
import mmap
import os
import shutil
import struct
import time

from raftsqlite import codec
from raftsqlite.codec.model import Member, SnapshotMeta
from raftsqlite.errors import DecodeError, StorageCorrupt
from raftsqlite.raft.segfiles import (
    IDX_SUFFIX, frame_length, load_index, nonzero_end, remove_trash, valid_record_after)
from raftsqlite.raft.types import HardState

log = logging.getLogger("raftsqlite.raft.log")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

_T_STATE = 0xE0        # frame type of the state file
_T_SNAPMETA = 0xE1     # frame type of the snapshot meta file
SEG_SUFFIX = ".seg"
SPARE_NAME = "next-segment"
RECYCLE_DIR = "recycle"
# No index for sealed segments smaller than this (their scan is as quick as reading one).
INDEX_MIN_BYTES = 16 << 10


def encode_hard_state(hs, group=0):
    return codec.encode_frame(group, _T_STATE, hs.term, hs.commit, hs.vote.encode())


def decode_hard_state(buf):
    _, typ, term, commit, payload = codec.decode_frame(buf)
    if typ != _T_STATE:
        raise DecodeError(f"not a state frame (type {typ})")
    return HardState(term=term, vote=bytes(payload).decode(), commit=commit)


def encode_snapshot_meta(meta, group=0):
    members = [[m.node_id, m.raft_addr, m.http_addr, bool(m.voter)] for m in meta.members]
    return codec.encode_frame(group, _T_SNAPMETA, meta.term, meta.index,
                              json.dumps(members).encode())


def decode_snapshot_meta(buf):
    _, typ, term, index, payload = codec.decode_frame(buf)
    if typ != _T_SNAPMETA:
        raise DecodeError(f"not a snapshot meta frame (type {typ})")
    try:
        members = [Member(*m) for m in json.loads(bytes(payload))]
    except (ValueError, TypeError) as e:
        raise DecodeError(f"bad snapshot member list: {e}") from None
    return SnapshotMeta(index, term, members)


class _Segment:
    __slots__ = ("path", "first", "offsets", "size", "fd", "alloc")

    def __init__(self, path, first, alloc=0):
        self.path = path
        self.first = first
        self.offsets = array.array("Q")  # file offset of each record, in index order
        self.size = 0                    # bytes of whole records
        self.fd = None
        # File size; bytes in [size, alloc) are already written to disk (zeros, or a
        # recycled file's old records), so a write there changes no metadata and its
        # fdatasync flushes only data.
        self.alloc = alloc

    @property
    def last(self):
        return self.first + len(self.offsets) - 1

    def end_of(self, i):
        """Offset just past the record at position ``i``."""
        return self.offsets[i + 1] if i + 1 < len(self.offsets) else self.size

    def open(self):
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self.fd

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class RecoveryMixin:
    """RaftLog's ``open``: load state, snapshot meta and segments, recover the tail."""

    def open(self):
        """Load state, snapshot meta and segments; truncate a torn tail; refuse a log that
        is damaged before its tail (``StorageCorrupt`` naming file and offset)."""
        t0 = time.monotonic()
        for d in (self.dir, self.log_dir, self.snap_dir, self.index_dir):
            os.makedirs(d, exist_ok=True)
        for d in (self.log_dir, self.snap_dir):
            remove_trash(d)
        spare = os.path.join(self.dir, SPARE_NAME)
        try:
            os.unlink(spare)  # possibly half prepared when we stopped: never trusted
        except FileNotFoundError:
            pass
        state_path = os.path.join(self.dir, "state")
        if os.path.exists(state_path):
            self._hs = self._read_small(state_path, decode_hard_state)
            self._hs_written = HardState(self._hs.term, self._hs.vote, self._hs.commit)
        meta_path = os.path.join(self.dir, "snapshot")
        if os.path.exists(meta_path):
            self._snap = self._read_small(meta_path, decode_snapshot_meta)
        self._first = self._snap.index + 1
        self._last = self._snap.index
        self._run_idx = [self._snap.index]
        self._run_term = [self._snap.term]
        names = sorted(n for n in os.listdir(self.log_dir) if n.endswith(SEG_SUFFIX))
        segs = []
        for n in names:
            try:
                first = int(n[: -len(SEG_SUFFIX)])
            except ValueError:
                raise StorageCorrupt(f"unexpected file in log dir: {os.path.join(self.log_dir, n)}")
            segs.append(_Segment(os.path.join(self.log_dir, n), first))
        segs.sort(key=lambda s: s.first)
        runs = []  # (index, term) where a new term starts, over all segments
        for k, seg in enumerate(segs):
            if k and seg.first != segs[k - 1].last + 1:
                prev = segs[k - 1]
                raise StorageCorrupt(
                    f"log gap: {seg.path} starts at index {seg.first} but the segment before "
                    f"it ends at {prev.last} (its records end at offset {prev.size} of "
                    f"{prev.path})")
            is_last = k == len(segs) - 1
            if is_last or not self._load_index(seg, runs):
                self._scan(seg, is_last=is_last, runs=runs)
                self._stats["segments_scanned_at_open"] += 1
                if not is_last and seg.size >= INDEX_MIN_BYTES:
                    self._index_later(seg, _seg_runs_from(runs, seg))
        firsts = {s.first for s in segs}
        for n in os.listdir(self.index_dir):
            stem = n[:-len(IDX_SUFFIX)] if n.endswith(IDX_SUFFIX) else None
            if stem is None or not stem.isdigit() or int(stem) not in firsts:
                try:
                    os.unlink(os.path.join(self.index_dir, n))  # a deleted segment's, a temp
                except FileNotFoundError:
                    pass
        snap = self._snap
        if segs and snap.index > 0:
            lo, hi = segs[0].first, segs[-1].last
            ok = lo == snap.index + 1 or (
                lo <= snap.index <= hi and _run_term(runs, snap.index) == snap.term)
            if not ok:
                if lo > snap.index + 1:
                    raise StorageCorrupt(f"log gap: {segs[0].path} starts at index {lo} but "
                                         f"the snapshot ends at {snap.index}")
                # An installed snapshot whose log reset was interrupted: the old log is void.
                log.warning("log [%d, %d] does not match snapshot %d/%d; resetting the log",
                            lo, hi, snap.index, snap.term)
                for seg in segs:
                    seg.close()
                    os.unlink(seg.path)
                segs, runs = [], []
        if segs and not segs[0].offsets:
            # Only an empty segment: it must start right after the snapshot.
            if segs[0].first != snap.index + 1:
                segs[0].close()
                os.unlink(segs[0].path)
                segs = []
        if segs:
            s0 = segs[0].first
            if s0 == snap.index + 1:
                self._first, dummy_term = s0, snap.term
            else:
                # Entries before the snapshot kept for slow followers: the first one serves
                # as the known-term predecessor of the first readable entry.
                self._first, dummy_term = s0 + 1, _run_term(runs, s0)
            self._last = segs[-1].last
            self._run_idx = [self._first - 1] + [i for i, _ in runs if i >= self._first]
            self._run_term = [dummy_term] + [t for i, t in runs if i >= self._first]
            self._segments = segs
            self._seg_firsts = [s.first for s in segs]
            n = min(self.cache_entries // 2, self._last - self._first + 1)
            if n > 0:
                self._cache_first = self._last + 1
                self._cache_extend(self.entries(self._last - n + 1, self._last + 1))
            else:
                self._cache_first = self._last + 1
        else:
            self._cache_first = self._first
        if self._hs.commit > self._last:
            # Commit is only written after the entries it covers are durable; a larger
            # value means the log lost synced data.
            raise StorageCorrupt(f"state file says commit {self._hs.commit} but the log in "
                                 f"{self.log_dir} ends at {self._last}")
        if self._recycler is not None:
            live = set()
            for seg in self._segments:
                st = os.stat(seg.path)
                live.add((st.st_dev, st.st_ino))
            self._recycler.load(live)
        elif os.path.isdir(os.path.join(self.dir, RECYCLE_DIR)):
            # Kept by a run that preallocated; this one does not recycle.
            shutil.rmtree(os.path.join(self.dir, RECYCLE_DIR), ignore_errors=True)
        self._opened = True
        self._stats["open_seconds"] = round(time.monotonic() - t0, 4)
        if self._spare is not None:
            self._spare.ensure(self._spare_next)

    def _read_small(self, path, decode):
        with open(path, "rb") as f:
            data = f.read()
        try:
            return decode(data)
        except DecodeError as e:
            raise StorageCorrupt(f"{path} at offset 0: {e}") from None

    def _load_index(self, seg, runs):
        """Take a sealed segment's offsets and terms from its index file if the index is
        whole and the segment's bytes hash to what it says; else False (scan instead)."""
        got = load_index(seg.path, self._idx_path(seg), seg.first)
        if got is None:
            return False
        seg.offsets, seg_runs, seg.size = got
        seg.alloc = seg.size
        for i, t in seg_runs:
            if not runs or runs[-1][1] != t:
                runs.append((i, t))
        self._stats["segments_indexed_at_open"] += 1
        return True

    def _scan(self, seg, is_last, runs):
        """Read a segment's records: consecutive indexes from ``seg.first``, each frame
        whole and its CRC right. The first position that is not the next such record is
        the end (a zero length field, a torn write, or bytes left from the file's previous
        use as another segment: their records have lower indexes, so one is never taken
        for the expected next). A record of this segment (index >= ``seg.first``) anywhere
        after that end means damage, not a tear: ``StorageCorrupt`` naming file, offset
        and index."""
        size = os.path.getsize(seg.path)
        seg.alloc = size
        if size == 0:
            return
        with open(seg.path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        dirty = None
        try:
            off = 0
            expect = seg.first
            offsets = seg.offsets
            err = None
            damaged = False
            while off < size:
                if buf[off:off + 4] == b"\0\0\0\0":
                    err = "zero length field followed by non-zero bytes"
                    break
                n = frame_length(buf, off)
                if n is None or n <= 0 or off + n > size:
                    err = "record extends past the end of the file"
                    break
                try:
                    _, e = codec.decode_entry(buf[off:off + n])
                except DecodeError as ex:
                    err = str(ex)
                    break
                if e.index != expect:
                    err = f"record has index {e.index}, expected {expect}"
                    damaged = e.index >= seg.first   # a record of this segment out of place
                    break
                if not runs or runs[-1][1] != e.term:
                    runs.append((e.index, e.term))
                offsets.append(off)
                off += n
                expect += 1
            seg.size = off
            # The next record's header landed but the record did not: a torn last write.
            torn = (err is not None and off + codec.HEADER_SIZE <= size
                    and buf[off + 8:off + 12] == _U32.pack(self.group)
                    and buf[off + 12] in (0x40, 0x41)
                    and _U64.unpack_from(buf, off + 21)[0] == expect)
            if off < size and not damaged:
                dirty = nonzero_end(buf, off, size)
                damaged = dirty > off and valid_record_after(buf, off + 1, dirty, size,
                                                             self.group, seg.first)
            if damaged:
                raise StorageCorrupt(
                    f"corrupt log record in {seg.path} at offset {off} (index {expect}): "
                    f"{err}; records follow it, so this is not a torn tail. Restore this "
                    f"member from a snapshot or remove it from the group and re-add it.")
        finally:
            buf.close()
        if dirty is None or dirty <= seg.size:
            return   # a clean end: nothing but zeros after the last record
        # Left as they are: the scan never takes them, the next appends overwrite them, and
        # a recycled file holds old bytes up to its end (rewriting them would cost a start).
        n = dirty - seg.size
        if torn:
            log.warning("truncating torn tail of %s at offset %d: the record of index %d is "
                        "incomplete (%s); the log ends before it (%d bytes ignored)",
                        seg.path, seg.size, expect, err, n)
            self._stats["truncated_tail_bytes"] += n
        else:
            log.info("%s: records end at offset %d (index %d); the %d bytes after them are "
                     "no records of this segment (a recycled file's old contents, or a torn "
                     "write), ignored", seg.path, seg.size, expect - 1, n)
            self._stats["stale_tail_bytes"] += n


def _seg_runs_from(runs, seg):
    """Term runs of ``seg`` from the open-time list of all runs so far."""
    k = bisect.bisect_right(runs, (seg.first, 1 << 64)) - 1
    out = [(seg.first, runs[k][1])] if k >= 0 else []
    out += [(i, t) for i, t in runs[k + 1:] if i <= seg.last]
    return out


def _run_term(runs, index):
    k = bisect.bisect_right(runs, (index, 1 << 64)) - 1
    return runs[k][1] if k >= 0 else 0
