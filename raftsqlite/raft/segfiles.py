"""Files beside the Raft log's records: the preallocated spare segment, the index files
of sealed segments, and the byte-level helpers of the recovery scan. See
docs/design/raft-io.md.
"""
import array
import logging
import mmap
import os
import re
import hashlib
import struct
import threading
import time


from raftsqlite import codec
from raftsqlite.raft import trace
from raftsqlite.errors import DecodeError

log = logging.getLogger("raftsqlite.raft.log")

ZERO_CHUNK = bytes(1 << 20)
ZERO_VIEW = memoryview(ZERO_CHUNK)
PAGE = 4096
# Zero-fill step of a spare, each fdatasynced: small bursts of writeback (256 KiB measured
# a lower bulk p99 than 1 MiB together with the idle I/O class; store.md "Tail latency").
FILL_STEP = 256 << 10
_U64 = struct.Struct("<Q")


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data, fsync=True):
    """Replace ``path`` by ``data``: write a temp file, fsync, rename, fsync the dir, so a
    crash leaves either the old or the new content, never a mix."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(os.path.dirname(path) or ".")


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_all(fd, data, off):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n


def pwritev_all(fd, parts, off):
    """Write the buffers ``parts`` at ``off`` with one call (the usual case)."""
    n = os.pwritev(fd, parts, off)
    total = sum(len(p) for p in parts)
    if n < total:   # short write (rare for a regular file): finish piecewise
        pwrite_all(fd, b"".join(bytes(p) for p in parts)[n:], off + n)


def write_zeros(fd, off, n):
    while n > 0:
        k = min(n, len(ZERO_CHUNK))
        pwrite_all(fd, memoryview(ZERO_CHUNK)[:k], off)
        off += k
        n -= k


TRASH_SUFFIX = ".del"


def remove_gradually(path, step=16 << 20, pause=0.0):
    """Delete a large file without one long stall of the file system: rename it to
    ``<path>.del`` (so a crash midway never leaves a shortened file under its real name),
    shrink it ``step`` bytes at a time, then unlink it. Freeing 1 GB in one unlink took
    ~360 ms here (ext4 with online discard) and delayed the Raft log's fdatasync by up to
    60 ms; freed in 16 MB steps the fdatasync waits at most ~10 ms. -> bytes freed."""
    trash = path if path.endswith(TRASH_SUFFIX) else path + TRASH_SUFFIX
    try:
        if trash != path:
            os.rename(path, trash)
        fd = os.open(trash, os.O_WRONLY)
    except FileNotFoundError:
        return 0
    try:
        size = freed = os.fstat(fd).st_size
        while size > 0:
            size = max(0, size - step)
            os.ftruncate(fd, size)
            if pause:
                time.sleep(pause)
    finally:
        os.close(fd)
    try:
        os.unlink(trash)
    except FileNotFoundError:
        pass
    return freed


def remove_trash(dirpath):
    """Finish deletions a crash interrupted (start-up)."""
    for n in os.listdir(dirpath):
        if n.endswith(TRASH_SUFFIX):
            remove_gradually(os.path.join(dirpath, n))


def fdatasync_quiet(fd):
    """Pace writeback of a file being written (a received snapshot): the fsync before
    its rename is what makes it durable, so a failure here (the fd may have been closed
    by a restarted stream meanwhile) is ignored."""
    try:
        os.fdatasync(fd)
    except OSError:
        pass


def lower_thread_priority(nice=10):
    """Run the calling thread at a lower CPU priority (Linux: a thread's nice value is
    per thread, set on its tid). Elsewhere, or without permission, nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}   # syscall numbers (Python has no wrapper)


def lower_io_priority():
    """Put the calling thread's disk I/O in the idle class (``ioprio_set``, which is per
    thread on Linux), so an I/O scheduler that honours classes (mq-deadline, bfq) serves
    the Raft log's fdatasyncs first. -> whether it was set. Elsewhere nothing changes."""
    import ctypes
    import platform
    nr = _IOPRIO_SET.get(platform.machine())
    if nr is None:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # IOPRIO_WHO_PROCESS with who=0: the calling thread; class IDLE (3) << 13
        return libc.syscall(nr, 1, 0, 3 << 13) == 0
    except (OSError, AttributeError):
        return False


def round_up(n, to=PAGE):
    return -(-n // to) * to


class Spare:
    """The next segment, prepared by a background thread so that appends to it overwrite
    blocks that are already allocated and written (an fdatasync of a growing or merely
    fallocated file also commits the metadata of the new or converted extents, which costs
    about three times as much on ext4). Preferably a segment the log no longer needs, taken
    from the ``Recycler`` (renamed, its old bytes left to be overwritten); otherwise a new
    file, ``fallocate``d, zero-filled and synced.

    States: absent, being prepared (thread alive), ready. Only a ready spare is taken; the
    thread never touches the file after it is marked ready, and only the persist path
    renames it (``take``), so the two never write the same file. ``bound``: every record
    left in a recycled spare from its previous use has an index below it (0: all zeros)."""

    def __init__(self, path, fsync, recycler=None):
        self.path = path
        self.fsync = fsync
        self.recycler = recycler
        self.size = 0
        self.bound = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self.error = None
        self.prepared = 0
        self.recycled = 0
        self.zero_filled_bytes = 0
        self.cpu_seconds = 0.0   # of the preparing threads (zero-fill and its writeback)
        self._retry_at = 0.0

    def ready(self):
        return self._ready.is_set()

    def ensure(self, size):
        """Start preparing a spare of ``size`` bytes unless one is ready or under way."""
        if self._ready.is_set() or (self._thread is not None and self._thread.is_alive()):
            return
        if self.error is not None and time.monotonic() < self._retry_at:
            return  # the last attempt failed (disk full?): do not retry on every batch
        self.size = size
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(size,), daemon=True,
                                        name="raft-prealloc")
        self._thread.start()

    def wait(self, timeout):
        return self._ready.wait(timeout)

    def take(self, dest):
        """Persist path: rename the ready spare to ``dest`` (the caller syncs the dir)."""
        try:
            os.rename(self.path, dest)
        finally:
            self._ready.clear()   # taken, or gone: either way a new one is needed

    def stop(self, timeout=5.0):
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _run(self, size):
        # The spare is wanted only when a segment fills; its zeros must not queue in
        # front of the log's own writes (docs/design/store.md, "Tail latency").
        lower_io_priority()
        t0 = time.thread_time()
        try:
            self._prepare(size)
        finally:
            self.cpu_seconds += time.thread_time() - t0

    def _prepare(self, size):
        try:
            got = self.recycler.pop(size) if self.recycler is not None else None
            if got is not None:
                src, bound = got
                os.rename(src, self.path)
                fd = os.open(self.path, os.O_WRONLY)
            else:
                bound = 0
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                have = os.fstat(fd).st_size
                if have < size and not self._fill(fd, have, size):
                    return
            finally:
                os.close(fd)
            if not self._stop.is_set():
                self.size = max(size, have)
                self.bound = bound
                if got is not None:
                    self.recycled += 1
                else:
                    self.prepared += 1
                self._ready.set()
        except OSError as e:
            # No spare: the log keeps working with growing segments (slower fsyncs).
            self.error = f"{type(e).__name__}: {e}"
            self._retry_at = time.monotonic() + 10.0
            log.warning("could not prepare the next log segment %s: %s", self.path, e)
            if not self._stop.is_set():   # once stopped, the path may be another's
                try:
                    os.unlink(self.path)
                except OSError:
                    pass

    def _fill(self, fd, off, size):
        """Allocate and zero-fill ``[off, size)``; False if stopped meanwhile."""
        try:
            # Contiguous extents first; the zero-fill below then writes them.
            os.posix_fallocate(fd, off, size - off)
        except (OSError, AttributeError):
            pass  # no fallocate here: the zero-fill alone allocates the blocks
        step = FILL_STEP
        while off < size:
            if self._stop.is_set():
                return False
            t0 = time.monotonic()
            if trace.ON:
                t0n = time.monotonic_ns()
            n = min(step, size - off)
            write_zeros(fd, off, n)
            off += n
            self.zero_filled_bytes += n
            if self.fsync:
                # Sync in steps, and rest as long as each step took: bounded bursts
                # of writeback that leave the disk to the foreground's fdatasyncs at
                # least half of the time. A spare is wanted only when a segment
                # fills, which takes far longer than this at any real load.
                os.fdatasync(fd)
                if trace.ON:
                    trace.span("spare_fill", t0n)
                self._stop.wait(min(0.1, time.monotonic() - t0))
        return True


RECYCLE_SUFFIX = ".seg"


class Recycler:
    """Segments the log no longer needs (compacted away), kept to become spares instead
    of being deleted, as write-ahead logs elsewhere recycle theirs: a recycled spare is
    overwritten in place, so no zeros are written (nor their pages of page cache touched
    and written back) for it. Files are ``<dir>/<bound>-<name>``: every record in one has
    an index below ``bound``, the first index the log kept when it was dropped; the log
    only starts a segment at or above that index in it, and its scan never takes a record
    whose index is not the next one expected, so a record from a file's previous use is
    never read as one of its new segment. At most ``max_bytes`` are kept; the rest are
    deleted as before. ``offer`` (the thread that deletes compacted segments) and ``pop``
    (the spare's thread) share a lock."""

    def __init__(self, dirpath, max_bytes):
        self.dir = dirpath
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files = []      # [(bound, path, size)], oldest first
        self.offered = 0
        self.taken = 0

    def load(self, live):
        """Start-up: list the kept files. ``live``: (st_dev, st_ino) of the log's segments;
        a kept name that is also a live segment (a rename whose two directory entries a
        crash left both in place) is only a second link, removed, never reused."""
        os.makedirs(self.dir, exist_ok=True)
        files = []
        for n in sorted(os.listdir(self.dir)):
            p = os.path.join(self.dir, n)
            head = n.split("-", 1)[0]
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            if (not n.endswith(RECYCLE_SUFFIX) or not head.isdigit()
                    or (st.st_dev, st.st_ino) in live or st.st_size == 0):
                os.unlink(p)
                continue
            files.append((int(head), p, st.st_size))
        with self._lock:
            self._files = files
        while self.bytes() > self.max_bytes:
            with self._lock:
                _, p, _ = self._files.pop()
            remove_gradually(p)

    def bytes(self):
        with self._lock:
            return sum(f[2] for f in self._files)

    def offer(self, path, bound):
        """Keep the dropped segment ``path`` (all its records below ``bound``) -> True, or
        False (full, or it is gone) and the caller deletes it."""
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            return False
        with self._lock:
            if size == 0 or sum(f[2] for f in self._files) + size > self.max_bytes:
                return False
            dest = os.path.join(self.dir, f"{bound:020d}-{os.path.basename(path)}")
            os.rename(path, dest)
            self._files.append((bound, dest, size))
            self.offered += 1
        return True

    def pop(self, size):
        """-> (path, bound) of the oldest kept file of at least ``size`` bytes (else the
        largest: the spare's thread zero-fills only the rest), or None."""
        with self._lock:
            if not self._files:
                return None
            big = [k for k, f in enumerate(self._files) if f[2] >= size]
            k = big[0] if big else max(range(len(self._files)), key=lambda k: self._files[k][2])
            bound, p, _ = self._files.pop(k)
            self.taken += 1
            return p, bound

    def stats(self):
        with self._lock:
            return {"recycle_files": len(self._files),
                    "recycle_bytes": sum(f[2] for f in self._files),
                    "segments_recycled": self.offered}


def frame_length(buf, off):
    """Total length of the frame starting at ``off``: 8 + the u32 length field
    (raftsqlite/codec/FORMAT.md)."""
    if off + 8 > len(buf):
        return None
    return 8 + struct.unpack_from("<I", buf, off)[0]


def nonzero_end(buf, start, size):
    """Offset just past the last non-zero byte in ``buf[start:size]`` (``start`` if all
    zero). Scans backwards in large slices: a preallocated tail is mostly zeros."""
    end = size
    step = len(ZERO_CHUNK)
    while end > start:
        lo = max(start, end - step)
        chunk = buf[lo:end]
        if chunk != ZERO_CHUNK[:end - lo]:
            return lo + len(chunk.rstrip(b"\0"))
        end = lo
    return start


def valid_record_after(buf, start, stop, size, group=0, min_index=0):
    """Whether a whole, valid entry frame of ``group`` with an index >= ``min_index``
    starts in ``[start, stop)`` (and ends by ``size``). A torn write leaves only garbage
    after the tear; a valid record of the segment after a bad one means damage (records of
    a recycled file's previous use have lower indexes and do not count). Only offsets where
    the group id and an entry frame type sit at their header positions are tried, and the
    index is read before the CRC is checked, so this is quick even over a large region."""
    pat = re.compile(b"(?=" + re.escape(struct.pack("<I", group)) + b"[\x40\x41])")
    lo = start + 8
    region = buf[lo:min(stop + 13, size)]
    for m in pat.finditer(region):
        off = lo + m.start() - 8
        if off < start or off >= stop:
            continue
        n = frame_length(buf, off)
        if (n is not None and codec.HEADER_SIZE <= n <= size - off
                and _U64.unpack_from(buf, off + 21)[0] >= min_index):
            try:
                codec.decode_entry(buf[off:off + n])
                return True
            except DecodeError:
                pass
    return False


# ---- index files of sealed segments --------------------------------------------------------
#
# A sealed segment never changes again (unless a conflicting append truncates it, which first
# deletes its index). Its index holds what the scan would compute (record offsets, term
# runs, the end of its records) and a hash of its bytes: start-up hashes the file (GB/s)
# instead of decoding every record, and falls back to the full scan on any mismatch, so a
# damaged record is still found and named by file and offset.

_IDX_MAGIC = b"RSIX"
_IDX_HEAD = struct.Struct("<4sIQQQQ16s")   # magic, version, first, count, data_end, nruns, hash
IDX_SUFFIX = ".idx"


def data_hash(buf, end):
    # stdlib blake2b: C speed in both codec implementations and no runtime dependency
    return hashlib.blake2b(memoryview(buf)[:end], digest_size=16).digest()


def encode_index(first, offsets, runs, data_end, digest):
    flat = array.array("Q", [x for r in runs for x in r])
    body = (_IDX_HEAD.pack(_IDX_MAGIC, 1, first, len(offsets), data_end, len(runs), digest)
            + offsets.tobytes() + flat.tobytes())
    return body + struct.pack("<I", codec.crc32c(body))


def decode_index(data):
    """(first, offsets, runs, data_end, digest), or None if the file is not a whole index."""
    if len(data) < _IDX_HEAD.size + 4:
        return None
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if codec.crc32c(body) != crc:
        return None
    magic, ver, first, count, data_end, nruns, digest = _IDX_HEAD.unpack_from(body)
    if magic != _IDX_MAGIC or ver != 1 or len(body) != _IDX_HEAD.size + 8 * (count + 2 * nruns):
        return None
    offsets = array.array("Q")
    offsets.frombytes(body[_IDX_HEAD.size:_IDX_HEAD.size + 8 * count])
    flat = array.array("Q")
    flat.frombytes(body[_IDX_HEAD.size + 8 * count:])
    runs = [(flat[k], flat[k + 1]) for k in range(0, len(flat), 2)]
    return first, offsets, runs, data_end, digest


def write_index(seg_path, idx_path, first, offsets, runs, data_end):
    """Background: hash the sealed segment's records and write its index (temp + rename;
    no fsync: a torn or missing index only costs a full scan at the next start)."""
    try:
        with open(seg_path, "rb") as f:
            data = f.read(data_end)
        if len(data) != data_end:
            return False
        tmp = f"{idx_path}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(encode_index(first, offsets, runs, data_end, data_hash(data, data_end)))
        os.replace(tmp, idx_path)
        return True
    except OSError as e:
        log.info("could not index %s: %s", seg_path, e)
        return False


def load_index(seg_path, idx_path, first):
    """(offsets, runs, data_end) of a sealed segment from its index, or None when there is
    no whole index, it does not describe this file, or the file's bytes do not hash to it."""
    try:
        with open(idx_path, "rb") as f:
            idx = decode_index(f.read())
    except FileNotFoundError:
        return None
    if idx is None:
        log.info("index %s is damaged; scanning %s", idx_path, seg_path)
        return None
    ifirst, offsets, runs, data_end, digest = idx
    if (ifirst != first or not offsets or offsets[0] != 0 or offsets[-1] >= data_end
            or data_end != os.path.getsize(seg_path) or not runs or runs[0][0] != first):
        return None
    with open(seg_path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if data_hash(buf, data_end) != digest:
            log.warning("%s does not match its index; scanning every record", seg_path)
            return None
    finally:
        buf.close()
    return offsets, runs, data_end

