"""Durable Raft log: append-only segment files of codec frames, a small state file,
and the latest snapshot's metadata. See docs/design/raft-io.md.

Layout of ``<data_dir>/raft``::

    state             term, vote, commit: one frame, replaced atomically
    snapshot          SnapshotMeta of the latest snapshot: one frame, replaced atomically
    log/<first>.seg   segments; records are ``codec.encode_entry`` frames, consecutive indexes,
                      then (in a preallocated segment) zeros up to the end of the file
    next-segment      the spare: a preallocated file that becomes the next segment
    recycle/<bound>-<first>.seg   compacted segments kept to become spares (records < bound)
    snap/<index>-<term>.snap   snapshot files made by the state machine

Threading: the core reads this log on the event loop. Every change is split in three so that
only syscalls leave the loop: ``prepare`` (loop: plan the bytes, change nothing visible),
``write`` (executor: write, truncate, fdatasync, rename) and ``finish`` (loop: update the
in-memory index and cache). Only one batch is in flight at a time (the driver's single
persistence path), so a plan made from the current state stays valid until it finishes.
"""
import array
import bisect
import logging
import os
import threading
import time

from raftsqlite import codec
from raftsqlite.codec.model import SnapshotMeta
from raftsqlite.metrics import DISK_BUCKETS, Histogram
from raftsqlite.raft import slowdisk, trace
from raftsqlite.raft.logopen import (  # noqa: F401 (the codecs and names: API)
    INDEX_MIN_BYTES, RECYCLE_DIR, SEG_SUFFIX, SPARE_NAME, RecoveryMixin, _Segment,
    decode_hard_state, decode_snapshot_meta, encode_hard_state, encode_snapshot_meta)
from raftsqlite.raft.segfiles import (  # noqa: F401 (fsync_dir, write_atomic: API)
    IDX_SUFFIX, PAGE, ZERO_VIEW, Recycler, Spare, fsync_dir, pwrite_all, pwritev_all,
    remove_gradually, round_up, write_atomic, write_index, write_zeros)
from raftsqlite.raft.types import HardState

log = logging.getLogger(__name__)

# A commit-only change of the hard state is written at most this often: the commit index
# is recoverable from the leader, so it need not cost two fsyncs per batch.
COMMIT_PERSIST_INTERVAL = 1.0
# The first spare of a run is small (a fresh member's start-up writes little disk traffic);
# each later one doubles up to the segment size, so a busy log reaches full segments soon.
FIRST_SPARE_BYTES = 1 << 20
# A fresh log (and one reset by a snapshot) starts in a plain, growing segment and moves to
# a spare only once that holds this much: tiny logs (tests, idle groups) stay in one small
# file, a working one moves within its first hundred or so entries.
PLAIN_SEGMENT_BYTES = 16 << 10
# No preallocation for segments smaller than this (tests with tiny segments).
PREALLOC_MIN_SEGMENT_BYTES = 64 << 10
# Compacted segments kept to be recycled as spares, at most this many bytes (PostgreSQL
# keeps recycled WAL up to max_wal_size, 1 GB by default): the log's own size until the
# next snapshot, which a busy member reaches again anyway.
RECYCLE_MAX_BYTES = 1 << 30


class _Batch:
    """One persistence step, planned on the loop and executed in the executor."""

    __slots__ = ("snapshot", "meta_bytes", "reset", "truncate", "delete", "new_segment",
                 "segment", "blob", "offsets", "entries", "state", "state_bytes",
                 "drop_before", "use_spare", "seal", "spare_taken")

    def __init__(self):
        self.snapshot = None      # SnapshotMeta being installed (log reset)
        self.meta_bytes = None    # snapshot meta file content to write
        self.reset = False
        self.truncate = None      # (segment, byte offset, entry position) or None
        self.delete = []          # segments whose files go away
        self.new_segment = None   # segment created by this batch
        self.segment = None       # segment the blob is appended to
        self.blob = b""
        self.offsets = []
        self.entries = []
        self.state = None
        self.state_bytes = None
        self.drop_before = None   # compaction: drop segments wholly below this index
        self.use_spare = False    # new_segment is the prepared spare, renamed into place
        self.seal = None          # (segment, data end): the segment left behind, trimmed
        self.spare_taken = False  # write() renamed the spare already (a retried write)


class RaftLog(RecoveryMixin):
    """The durable log of one member. Implements ``raftsqlite.raft.types.LogReader``."""

    def __init__(self, data_dir, *, group=0, segment_bytes=64 << 20, cache_entries=20_000,
                 cache_bytes=64 << 20, fsync=True, preallocate=None,
                 recycle_bytes=RECYCLE_MAX_BYTES):
        self.dir = os.path.join(data_dir, "raft")
        self.log_dir = os.path.join(self.dir, "log")
        self.snap_dir = os.path.join(self.dir, "snap")
        self.index_dir = os.path.join(self.dir, "index")
        self._index_threads = []
        self.group = group
        self.segment_bytes = segment_bytes
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        self.fsync = fsync
        # Preallocation only pays for fdatasync; without fsync it is just disk traffic.
        self.preallocate = (fsync if preallocate is None else preallocate) and \
            segment_bytes >= PREALLOC_MIN_SEGMENT_BYTES
        # A batch is never split, so a segment may run a little past segment_bytes.
        self._spare_max = round_up(segment_bytes + max(PAGE, min(segment_bytes // 16, 1 << 20)))
        self._spare_next = min(self._spare_max, FIRST_SPARE_BYTES)
        self._recycler = Recycler(os.path.join(self.dir, RECYCLE_DIR), recycle_bytes) \
            if self.preallocate and recycle_bytes > 0 else None
        self._spare = Spare(os.path.join(self.dir, SPARE_NAME), fsync, self._recycler) \
            if self.preallocate else None
        self._segments = []          # list[_Segment], ascending, consecutive
        self._seg_firsts = []        # their first indexes, for bisect
        self._first = 1
        self._last = 0
        self._run_idx = [0]          # term runs: entries from _run_idx[k] on have _run_term[k]
        self._run_term = [0]
        self._cache = []             # recent entries, indexes [_cache_first, _last]
        self._cache_first = 1
        self._cache_size = 0
        self._hs = HardState()
        self._hs_written = HardState()
        self._hs_time = 0.0
        self._snap = SnapshotMeta(0, 0, [])
        # One observation per write(): its syscalls and the fdatasync (GET /metrics)
        self.write_hist = Histogram(DISK_BUCKETS)
        self._stats = {"fsyncs": 0, "batches": 0, "bytes_written": 0, "disk_reads": 0,
                       "truncated_tail_bytes": 0, "segments_deleted": 0, "state_writes": 0,
                       "segments_from_spare": 0, "segments_grown": 0, "open_seconds": 0.0,
                       "segments_indexed_at_open": 0, "segments_scanned_at_open": 0,
                       "segments_indexed": 0, "stale_tail_bytes": 0}
        self._opened = False
        # Test-only slow-disk hook (None unless RAFTSQLITE_TEST_SLOW_FSYNC is set).
        self._slow = slowdisk.from_env(data_dir)

    # ---- start-up ---------------------------------------------------------------------

    def wait_spare(self, timeout=10.0):
        """Wait until the next segment is prepared (tests and benchmarks)."""
        return self._spare is not None and self._spare.wait(timeout)

    def _idx_path(self, seg):
        return os.path.join(self.index_dir, f"{seg.first:020d}{IDX_SUFFIX}")

    def _index_later(self, seg, seg_runs):
        """Write a sealed segment's index in the background (it is only a start-up aid)."""
        self._index_threads = [t for t in self._index_threads if t.is_alive()]
        t = threading.Thread(target=self._write_index, daemon=True, name="raft-index",
                             args=(seg.path, self._idx_path(seg), seg.first,
                                   array.array("Q", seg.offsets), seg_runs, seg.size))
        self._index_threads.append(t)
        t.start()

    def _write_index(self, *args):
        if write_index(*args):
            self._stats["segments_indexed"] += 1

    def _drop_index(self, seg):
        try:
            os.unlink(self._idx_path(seg))
        except FileNotFoundError:
            pass


    def first_index(self):
        return self._first

    def last_index(self):
        return self._last

    def term(self, index):
        if index < self._first - 1 or index > self._last:
            if index == self._snap.index:
                return self._snap.term
            raise IndexError(f"term({index}) outside log [{self._first - 1}, {self._last}]")
        k = bisect.bisect_right(self._run_idx, index) - 1
        return self._run_term[k]

    def entries(self, lo, hi, max_bytes=1 << 62):
        """Entries [lo, hi), stopping once ``max_bytes`` of data is reached (at least one)."""
        if lo < self._first or hi > self._last + 1:
            raise IndexError(f"entries({lo}, {hi}) outside log [{self._first}, {self._last}]")
        out = []
        size = 0
        i = lo
        while i < hi:
            if i >= self._cache_first:
                part = self._cache[i - self._cache_first: hi - self._cache_first]
            else:
                k = bisect.bisect_right(self._seg_firsts, i) - 1
                seg = self._segments[k]
                part = self._read_range(seg, i, min(hi, seg.last + 1, self._cache_first),
                                        max_bytes - size)
            for e in part:
                size += len(e.data)
                if out and size > max_bytes:
                    return out
                out.append(e)
            i += len(part)
        return out

    def snapshot_meta(self):
        return self._snap

    def hard_state(self):
        return self._hs

    # ---- reads from disk ---------------------------------------------------------------

    def _read_range(self, seg, lo, hi, max_bytes=1 << 62):
        p0 = lo - seg.first
        p1 = hi - seg.first
        start = seg.offsets[p0]
        # Read only about as much as asked: find the record end that covers max_bytes.
        end_pos = p1
        if max_bytes < 1 << 62:
            limit = start + max_bytes + 4096
            end_pos = max(p0 + 1, min(p1, bisect.bisect_right(seg.offsets, limit, p0, p1)))
        end = seg.end_of(end_pos - 1)
        data = os.pread(seg.open(), end - start, start)
        self._stats["disk_reads"] += 1
        out = []
        for p in range(p0, end_pos):
            a = seg.offsets[p] - start
            b = seg.end_of(p) - start
            _, e = codec.decode_entry(data[a:b])
            out.append(e)
        return out

    # ---- cache ---------------------------------------------------------------------------

    def _cache_extend(self, entries):
        if not entries:
            return
        if not self._cache:
            self._cache_first = entries[0].index
        self._cache.extend(entries)
        self._cache_size += sum(len(e.data) for e in entries)
        if len(self._cache) > self.cache_entries or self._cache_size > self.cache_bytes:
            # Trim to 3/4 so the O(n) list shift is amortized over many appends.
            keep = max(1, min(len(self._cache), self.cache_entries * 3 // 4))
            drop = len(self._cache) - keep
            while drop < len(self._cache) - 1 and self._cache_size - sum(
                    len(e.data) for e in self._cache[:drop]) > self.cache_bytes * 3 // 4:
                drop += max(1, (len(self._cache) - drop) // 4)
            drop = min(drop, len(self._cache) - 1)
            self._cache_size -= sum(len(e.data) for e in self._cache[:drop])
            del self._cache[:drop]
            self._cache_first += drop

    def _cache_truncate(self, index):
        """Drop cached entries >= index."""
        if index < self._cache_first:
            self._cache = []
            self._cache_size = 0
            self._cache_first = index
            return
        k = index - self._cache_first
        self._cache_size -= sum(len(e.data) for e in self._cache[k:])
        del self._cache[k:]

    # ---- persistence: prepare (loop) / write (executor) / finish (loop) --------------------

    def prepare(self, hard_state=None, entries=(), snapshot=None, force_state=False):
        b = _Batch()
        last = self._last
        segments = self._segments
        if snapshot is not None:
            b.snapshot = snapshot
            b.meta_bytes = encode_snapshot_meta(snapshot, self.group)
            b.reset = True
            b.delete = list(segments)
            last = snapshot.index
            segments = []
        if entries:
            first_new = entries[0].index
            if first_new > last + 1:
                raise ValueError(f"append at {first_new} leaves a gap after {last}")
            if first_new <= self._snap.index and not b.reset:
                raise ValueError(f"append at {first_new} is below the snapshot "
                                 f"{self._snap.index}")
            if first_new <= last and not b.reset:
                # Conflicting suffix: drop whole later segments, truncate the one holding it.
                k = bisect.bisect_right(self._seg_firsts, first_new) - 1
                if k < 0:
                    raise ValueError(f"append at {first_new} below the first segment")
                seg = segments[k]
                pos = first_new - seg.first
                b.truncate = (seg, seg.offsets[pos] if pos < len(seg.offsets) else seg.size, pos,
                              seg.size)
                b.delete = segments[k + 1:]
                segments = segments[:k + 1]
            active = segments[-1] if segments else None
            size = active.size if active is not None else 0
            if b.truncate is not None and b.truncate[0] is active:
                size = b.truncate[1]
            parts = [codec.encode_entry(e, self.group) for e in entries]
            b.blob = b"".join(parts)
            # A recycled spare only becomes a segment starting above all its old records.
            spare = (self._spare is not None and size >= PLAIN_SEGMENT_BYTES
                     and self._spare.ready() and self._spare.bound <= first_new)
            # Move to the prepared spare rather than grow a file: when this batch would run
            # past the active segment's preallocated blocks (or it has none).
            if (active is None or size >= self.segment_bytes
                    or (spare and b.truncate is None and size + len(b.blob) > active.alloc)):
                if active is not None and active.alloc > size and not b.reset:
                    b.seal = (active, size)
                b.new_segment = _Segment(os.path.join(self.log_dir, f"{first_new:020d}{SEG_SUFFIX}"),
                                         first_new)
                if spare:
                    b.use_spare = True
                    b.new_segment.alloc = self._spare.size
                active = b.new_segment
                size = 0
            b.segment = active
            offs = []
            for rec in parts:
                offs.append(size)
                size += len(rec)
            b.offsets = offs
            b.entries = list(entries)
        if hard_state is not None:
            hs = hard_state
            new_last = b.entries[-1].index if b.entries else last
            if hs.commit > new_last:
                # Never make a commit index durable above the durable log.
                hs = HardState(hs.term, hs.vote, new_last)
            w = self._hs_written
            now = time.monotonic()
            if (force_state or hs.term != w.term or hs.vote != w.vote
                    or (hs.commit != w.commit and now - self._hs_time >= COMMIT_PERSIST_INTERVAL)):
                b.state = HardState(hs.term, hs.vote, hs.commit)
                b.state_bytes = encode_hard_state(b.state, self.group)
            elif hs.commit != self._hs.commit:
                b.state = HardState(hs.term, hs.vote, hs.commit)  # in memory only, for now
        return b

    def write(self, b):
        """Executor side: the syscalls of a planned batch. Entries are durable on return.

        A write that raised (a full disk, an I/O error) may be called again with the same
        batch until it succeeds: every step is repeatable, and all of the batch's bytes
        are written again before the fdatasync, so pages whose writeback failed (and that
        the kernel may have marked clean) are dirtied and written once more. Nothing of
        the batch is visible (``finish``) until one call returned; a crash meanwhile
        leaves at most a torn tail, which ``open`` drops (docs/operations.md)."""
        t0 = time.perf_counter()
        if trace.ON:
            trace.mark("w0")
        if b.reset:
            write_atomic(os.path.join(self.dir, "snapshot"), b.meta_bytes, self.fsync)
        if b.truncate is not None:
            seg, off, _, end = b.truncate
            self._drop_index(seg)  # it describes the records about to be replaced
            if end > off:
                # Zero the replaced suffix (keeping the file's blocks) and make that durable
                # before new records land beside it: a crash must never leave a new record
                # followed by old ones that still parse. Conflicts are rare; two syncs are fine.
                fd = seg.open()
                write_zeros(fd, off, end - off)
                if self.fsync:
                    os.fdatasync(fd)
                    self._stats["fsyncs"] += 1
        for seg in b.delete:
            if seg is not b.segment:
                self._drop_index(seg)
                try:
                    os.unlink(seg.path)
                except FileNotFoundError:
                    pass
        if b.seal is not None:
            # The segment left behind gives back its unused preallocation. Its records are
            # already durable and the scan accepts a zero tail, so no sync is needed.
            seg, end = b.seal
            os.ftruncate(seg.open(), end)
        if b.new_segment is not None and not b.spare_taken:
            if b.use_spare:
                try:
                    self._spare.take(b.new_segment.path)
                    b.spare_taken = True
                    self._stats["segments_from_spare"] += 1
                except FileNotFoundError:
                    # Removed behind our back: carry on with a plain, growing segment.
                    log.warning("spare segment %s vanished", self._spare.path)
                    b.use_spare = False
                    b.new_segment.alloc = 0
            if not b.use_spare:
                os.ftruncate(b.new_segment.open(), 0)
                self._stats["segments_grown"] += 1
        if b.blob:
            seg = b.segment
            end = b.offsets[0] + len(b.blob)
            # Zeros up to the next page boundary inside preallocated blocks: a write that
            # ends inside a page whose old bytes are not cached (a recycled segment's,
            # after a restart) would first read that page from disk. The next batch
            # overwrites them; the scan ends at the zero length field they leave.
            pad = min(round_up(end), seg.alloc) - end
            if pad > 0:
                pwritev_all(seg.open(), [b.blob, ZERO_VIEW[:pad]], b.offsets[0])
            else:
                pwrite_all(seg.open(), b.blob, b.offsets[0])
            self._stats["bytes_written"] += len(b.blob)
        if self.fsync and (b.blob or b.truncate is not None):
            if trace.ON:
                trace.mark("w_fs")
            if self._slow is not None:
                self._slow.delay()
            os.fdatasync(b.segment.fd if b.segment is not None else b.truncate[0].fd)
            self._stats["fsyncs"] += 1
            if trace.ON:
                trace.mark("w_fs1")
        if self.fsync and (b.new_segment is not None or b.delete):
            fsync_dir(self.log_dir)
        if b.state_bytes is not None:
            # Entries first, then the state: a durable commit index never exceeds the log.
            write_atomic(os.path.join(self.dir, "state"), b.state_bytes, self.fsync)
            self._stats["state_writes"] += 1
        self._stats["batches"] += 1
        self.write_hist.observe(time.perf_counter() - t0)

    def finish(self, b):
        """Loop side: make the written batch visible."""
        if b.reset:
            for seg in self._segments:
                if seg is not b.segment:
                    seg.close()
            self._segments = []
            self._seg_firsts = []
            self._snap = b.snapshot
            self._first = b.snapshot.index + 1
            self._last = b.snapshot.index
            self._run_idx = [b.snapshot.index]
            self._run_term = [b.snapshot.term]
            self._cache = []
            self._cache_size = 0
            self._cache_first = self._first
        if b.truncate is not None:
            seg, off, pos, _ = b.truncate
            first_new = seg.first + pos
            for s in b.delete:
                s.close()
            n = len(self._segments) - len(b.delete)
            del self._segments[n:]
            del self._seg_firsts[n:]
            del seg.offsets[pos:]
            seg.size = off
            self._last = first_new - 1
            k = bisect.bisect_right(self._run_idx, self._last)
            del self._run_idx[k:]
            del self._run_term[k:]
            self._cache_truncate(first_new)
            if not seg.offsets and seg is not b.segment:
                seg.close()
                self._segments.remove(seg)
                self._seg_firsts.remove(seg.first)
        if b.seal is not None:
            seg, end = b.seal
            seg.alloc = end
        if b.new_segment is not None:
            if self._segments and not self._segments[-1].offsets:
                old = self._segments.pop()
                self._seg_firsts.pop()
                old.close()
                if old.path != b.new_segment.path:
                    try:
                        os.unlink(old.path)
                    except FileNotFoundError:
                        pass
            if self._segments and self._segments[-1].size >= INDEX_MIN_BYTES:
                prev = self._segments[-1]   # sealed from now on
                self._index_later(prev, self._seg_runs(prev))
            self._segments.append(b.new_segment)
            self._seg_firsts.append(b.new_segment.first)
            if b.use_spare:
                self._spare_next = min(self._spare_max, self._spare_next * 2)
        if self._spare is not None and not self._spare.ready():
            self._spare.ensure(self._spare_next)
        if b.entries:
            seg = b.segment
            seg.offsets.extend(b.offsets)
            seg.size = b.offsets[0] + len(b.blob)
            seg.alloc = max(seg.alloc, seg.size)
            for e in b.entries:
                if e.term != self._run_term[-1]:
                    self._run_idx.append(e.index)
                    self._run_term.append(e.term)
            self._last = b.entries[-1].index
            if self._cache and self._cache_first + len(self._cache) != b.entries[0].index:
                self._cache_truncate(b.entries[0].index)
            self._cache_extend(b.entries)
        if b.state is not None:
            self._hs = b.state
            if b.state_bytes is not None:
                self._hs_written = b.state
                self._hs_time = time.monotonic()

    def persist(self, hard_state=None, entries=(), snapshot=None, force_state=False):
        """prepare + write + finish in one call (tests, start-up, shutdown)."""
        b = self.prepare(hard_state, entries, snapshot, force_state)
        self.write(b)
        self.finish(b)

    # ---- compaction ------------------------------------------------------------------------

    def prepare_compact(self, meta, keep_from):
        """After a local snapshot at ``meta``: record it and drop segments that hold only
        entries below ``keep_from`` (<= meta.index + 1)."""
        b = _Batch()
        b.meta_bytes = encode_snapshot_meta(meta, self.group)
        b.snapshot = meta
        keep_from = min(keep_from, meta.index + 1, self._last + 1)
        b.drop_before = keep_from
        for k, seg in enumerate(self._segments):
            nxt = self._segments[k + 1].first if k + 1 < len(self._segments) else None
            if nxt is not None and nxt <= keep_from and seg is not self._segments[-1]:
                b.delete.append(seg)
        return b

    def write_compact(self, b):
        """Persist path: only the new snapshot meta. The dropped segments' files are left
        for ``remove_dropped`` on another thread: deleting 1 GB of segments here held up
        the log's appends for hundreds of ms. Left behind by a crash they are harmless
        (``open`` accepts a log that starts before the snapshot)."""
        write_atomic(os.path.join(self.dir, "snapshot"), b.meta_bytes, self.fsync)

    def remove_dropped(self, b):
        """Delete the files of the segments a compaction dropped (any thread, after
        ``finish_compact``), oldest first, so what is left always starts at a segment
        boundary with no gap; or keep them to be recycled as spares (every record in
        them is below ``b.drop_before``, which no later segment starts below)."""
        kept = False
        for seg in b.delete:
            self._drop_index(seg)
            if self._recycler is not None and self._recycler.offer(seg.path, b.drop_before):
                kept = True
            else:
                remove_gradually(seg.path)
        if b.delete and self.fsync:
            fsync_dir(self.log_dir)
            if kept:
                fsync_dir(self._recycler.dir)

    def finish_compact(self, b):
        if b.snapshot.index < self._snap.index:
            return
        self._snap = b.snapshot
        for seg in b.delete:
            seg.close()
            self._segments.remove(seg)
            self._seg_firsts.remove(seg.first)
        self._stats["segments_deleted"] += len(b.delete)
        new_first = self._segments[0].first if self._segments else self._snap.index + 1
        new_first = max(new_first, self._first)
        if self._last < self._snap.index:
            # A snapshot ahead of the log (cannot happen locally, but keep the log sane).
            new_first = self._snap.index + 1
            self._last = self._snap.index
        if new_first > self._first:
            before = new_first - 1
            t = self.term(before) if before >= self._first - 1 else self._snap.term
            k = bisect.bisect_right(self._run_idx, before) - 1
            self._run_idx = [before] + self._run_idx[k + 1:]
            self._run_term = [t] + self._run_term[k + 1:]
            self._first = new_first
            if self._cache_first < new_first:
                drop = min(len(self._cache), new_first - self._cache_first)
                self._cache_size -= sum(len(e.data) for e in self._cache[:drop])
                del self._cache[:drop]
                self._cache_first = new_first

    def compact(self, meta, keep_from):
        b = self.prepare_compact(meta, keep_from)
        self.write_compact(b)
        self.finish_compact(b)
        self.remove_dropped(b)

    # ---- snapshots on disk ----------------------------------------------------------------

    def snapshot_path(self, index, term):
        return os.path.join(self.snap_dir, f"{index:020d}-{term:020d}.snap")

    def prune_snapshots(self, keep):
        """Delete all but the ``keep`` newest snapshot files (executor side)."""
        names = sorted(n for n in os.listdir(self.snap_dir) if n.endswith(".snap"))
        for n in names[:-keep] if keep else names:
            os.unlink(os.path.join(self.snap_dir, n))
        for n in os.listdir(self.snap_dir):
            if n.endswith(".tmp"):
                os.unlink(os.path.join(self.snap_dir, n))

    # ---- misc --------------------------------------------------------------------------------

    def _seg_runs(self, seg):
        k = bisect.bisect_right(self._run_idx, seg.first) - 1
        out = [(seg.first, self._run_term[k])]
        last = seg.last
        for j in range(k + 1, len(self._run_idx)):
            if self._run_idx[j] > last:
                break
            out.append((self._run_idx[j], self._run_term[j]))
        return out

    def close(self):
        if self._spare is not None:
            self._spare.stop()
        for t in self._index_threads:
            t.join(10)
        for seg in self._segments:
            seg.close()

    def stats(self):
        s = dict(self._stats)
        s.update(first_index=self._first, last_index=self._last, segments=len(self._segments),
                 cached_entries=len(self._cache), cached_bytes=self._cache_size,
                 snapshot_index=self._snap.index, term=self._hs.term,
                 spare_ready=bool(self._spare and self._spare.ready()),
                 spare_error=self._spare.error if self._spare else None,
                 spares_recycled=self._spare.recycled if self._spare else 0,
                 spares_zero_filled=self._spare.prepared if self._spare else 0,
                 zero_filled_bytes=self._spare.zero_filled_bytes if self._spare else 0,
                 spare_cpu_seconds=round(self._spare.cpu_seconds, 4) if self._spare else 0.0,
                 active_preallocated_bytes=(self._segments[-1].alloc - self._segments[-1].size
                                            if self._segments else 0))
        if self._recycler is not None:
            s.update(self._recycler.stats())
        if self._slow is not None:
            s.update(self._slow.stats())
        return s
