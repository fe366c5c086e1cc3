"""The snapshot side of RaftNode (a mixin; see driver.py and docs/design/raft-io.md):
taking local snapshots and compacting the log, streaming a snapshot file to a follower,
receiving one in chunks and installing it. It uses RaftNode's attributes."""
import asyncio
import heapq
import logging
import os

from raftsqlite import errors
from raftsqlite.codec.model import Message, MsgType, SnapshotMeta
from raftsqlite.raft import diskerr
from raftsqlite.raft.log import fsync_dir
from raftsqlite.raft.segfiles import fdatasync_quiet, remove_gradually

log = logging.getLogger("raftsqlite.raft.driver")

_RECV_FLUSH_BYTES = 8 << 20   # a received snapshot is flushed this often


class _SnapRecv:
    __slots__ = ("key", "meta", "fd", "tmp", "offset", "unsynced")

    def __init__(self, key, meta, fd, tmp):
        self.key = key
        self.meta = meta
        self.fd = fd
        self.tmp = tmp
        self.offset = 0
        self.unsynced = 0


class SnapshotMixin:
    # ---- snapshots -------------------------------------------------------------------------

    async def snapshot(self, timeout=60.0):
        """Take a snapshot now and compact the log (on demand; the threshold does the same
        by itself). -> {"index", "term"} of the snapshot, or False when nothing was
        applied since the last one. A snapshot already being taken is waited for first."""
        if not self._running:
            raise errors.Unavailable("raft node is not running")
        deadline = self._loop.time() + timeout
        while self._snapshotting:
            if self._loop.time() > deadline:
                raise errors.Timeout("a snapshot in progress did not finish in time")
            await asyncio.sleep(0.01)
        if self._applied <= self._snap_index:
            return False
        self._snapshotting = True
        res = await self._take_snapshot(raise_errors=True)
        if not res:
            return False
        # the log is compacted between two Ready cycles; answer once it is
        self._compact_error = None

        def compacted():
            if self._compact_error is not None:
                raise self._compact_error
            return self.log.snapshot_meta().index >= res[0]
        await self._until(compacted,
                          max(1.0, deadline - self._loop.time()),
                          errors.Timeout("snapshot taken but the log was not compacted in time"))
        return {"index": res[0], "term": res[1]}

    async def _take_snapshot(self, raise_errors=False):
        # Our FSM copies from its own read transaction, so it runs on the snapshot thread
        # and applies go on meanwhile (a 1 GB copy paused writes for 2-4 s on the apply
        # thread).
        try:
            tmp = os.path.join(self.log.snap_dir, "local.snap.tmp")
            # A state machine that may be snapshotted beside its applies says so
            # (``snapshot_concurrent``); any other is snapshotted on the apply executor.
            ex = self._snap_exec if getattr(self.fsm, "snapshot_concurrent", False) \
                else self._apply_exec
            if ex is self._apply_exec:
                # It must see exactly the applied prefix: no inline applies meanwhile.
                self._apply_on_thread = True
            try:
                index, term = await self._in(ex, self.fsm.snapshot, tmp)
            finally:
                self._apply_on_thread = False
            if index <= self.log.snapshot_meta().index:
                # a snapshot received from the leader overtook ours meanwhile
                await self._in(self._snap_exec, remove_gradually, tmp)
                return None
            path = self.log.snapshot_path(index, term)

            def publish():
                os.replace(tmp, path)
                if self.config.fsync:
                    fsync_dir(self.log.snap_dir)
            await self._in(self._snap_exec, publish)
            meta = SnapshotMeta(index, term, self.core.members_at(index))
            self._snap_index = max(self._snap_index, index)
            keep = max(1, index - self.config.snapshot_trailing + 1)
            self._compact_req = (meta, keep)
            self._stats["snapshots_taken"] += 1
            self._wake.set()
            return index, term
        except Exception as e:
            self._snapshot_failed(e, "taking a snapshot")
            try:
                await self._in(self._snap_exec, remove_gradually, tmp)
            except OSError:
                pass
            if raise_errors:
                d = diskerr.classify(e)
                if d is not None:
                    raise type(d)(f"{d} taking a snapshot in {self.log.snap_dir}; the "
                                  f"previous snapshot and the log are kept") from e
                raise
            return None
        finally:
            self._snapshotting = False

    def _snapshot_failed(self, exc, what):
        """A snapshot or compaction failed: the previous snapshot and the whole log stay
        as they were (nothing is lost), and the threshold tries again after a backoff
        (up to a minute) rather than after every apply. A disk error is recorded
        (/status raft.disk_errors_now "snapshot"); the member keeps serving."""
        self._snap_delay = min(60.0, max(1.0, self._snap_delay * 2))
        self._snap_retry_at = self._loop.time() + self._snap_delay
        self._snap_index = self.log.snapshot_meta().index
        if diskerr.classify(exc) is not None:
            self.disk.failed("snapshot", exc, f"{what} in {self.log.dir}")
        else:
            log.error("%s failed (retrying in %.0f s): %r", what, self._snap_delay, exc,
                      exc_info=exc)

    def _snapshot_ok(self):
        self._snap_delay = 0.0
        self._snap_retry_at = 0.0
        self.disk.ok("snapshot")

    async def _compact(self):
        meta, keep = self._compact_req
        self._compact_req = None
        if meta.index <= self.log.snapshot_meta().index:
            return
        b = self.log.prepare_compact(meta, keep)
        # Only the meta write is on the persist path (the log's appends wait for it);
        # the files it frees are deleted in the background, never awaited here: the Ready
        # loop went quiet for the 100s of ms a 1 GB deletion takes.
        try:
            await self._in(self._persist_exec, self.log.write_compact, b)
        except OSError as e:
            # The meta file is replaced atomically: the old one (and every segment) is
            # still in place. Try again with a later snapshot.
            if diskerr.classify(e) is None:
                raise
            self._snapshot_failed(e, "compacting the log")
            d = diskerr.classify(e)
            self._compact_error = type(d)(f"{d} compacting the log in {self.log.dir}; the "
                                          f"snapshot file is kept, the log is not compacted "
                                          f"yet (tried again later)")
            return
        self._snapshot_ok()
        self.log.finish_compact(b)
        self._cleanups += 1
        fut = self._in(self._snap_exec, self._remove_old, b, meta, set(self._sending))
        fut.add_done_callback(self._cleanup_done)

    def _cleanup_done(self, fut):
        self._cleanups -= 1
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("deleting files after a compaction failed: %r", fut.exception())

    def _remove_old(self, b, keep_meta, sending):
        """Snapshot thread: delete the segments a compaction dropped and older snapshot
        files (never the one the log points at, nor one being sent)."""
        self.log.remove_dropped(b)
        keep = {os.path.basename(self.log.snapshot_path(keep_meta.index, keep_meta.term))}
        keep.update(os.path.basename(p) for p in sending)
        names = sorted(n for n in os.listdir(self.log.snap_dir) if n.endswith(".snap"))
        keep.update(names[-self.config.snapshots_kept:])
        for n in names:
            if n not in keep:
                remove_gradually(os.path.join(self.log.snap_dir, n))

    def _start_stream(self, m):
        old = self._streams.get(m.to)
        if old is not None and not old.done():
            return
        self._streams[m.to] = self._loop.create_task(self._stream_snapshot(m))

    async def _stream_snapshot(self, m):
        meta = m.snapshot
        path = self.log.snapshot_path(meta.index, meta.term)
        ok = False
        self._sending[path] = self._sending.get(path, 0) + 1
        try:
            f = await self._in(self._io_exec, open, path, "rb")
            try:
                size = os.fstat(f.fileno()).st_size
                off = 0
                chunk = self.config.snapshot_chunk_bytes
                while True:
                    data = await self._in(self._io_exec, f.read, chunk)
                    done = off + len(data) >= size
                    await self.transport.send_stream(Message(
                        MsgType.SNAPSHOT, frm=self.node_id, to=m.to, term=m.term,
                        snapshot=meta, offset=off, data=data, done=done))
                    off += len(data)
                    if done:
                        break
            finally:
                f.close()
            ok = True
            self._stats["snapshots_sent"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("streaming snapshot %d to %s failed: %r", meta.index, m.to, e)
        finally:
            n = self._sending.pop(path, 1) - 1
            if n > 0:
                self._sending[path] = n
            if self.core is not None and self._running:
                self.core.report_snapshot(m.to, ok)
                self._wake.set()

    def _on_snapshot_chunk(self, m):
        meta = m.snapshot
        if meta is None:
            return
        key = (m.frm, meta.index, meta.term)
        st = self._recv.get(m.frm)
        if m.offset == 0:
            if st is not None:
                os.close(st.fd)
            tmp = os.path.join(self.log.snap_dir, f"recv-{m.frm}.tmp")
            st = _SnapRecv(key, meta, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                           tmp)
            self._recv[m.frm] = st
        elif st is None or st.key != key or st.offset != m.offset:
            # A chunk out of sequence (we restarted, or lost part of the stream).
            self.transport.send(Message(MsgType.SNAPSHOT_RESP, frm=self.node_id, to=m.frm,
                                        term=self.core.term, index=meta.index, reject=True))
            self.transport.flush()
            return
        # Chunks are written on the loop: a page-cache write of one chunk is short. Every
        # 8 MB the I/O thread flushes what was written (not awaited), so the fsync when the
        # file is complete never has a whole snapshot to write out at once: that queued up
        # to 1 GB in front of the log's fdatasync on the same disk.
        view = memoryview(m.data)
        try:
            while view:
                view = view[os.write(st.fd, view):]
        except OSError as e:
            # No room for the snapshot: drop what was received (the space is wanted)
            # and reject, so the leader's core sends it again later.
            self._recv.pop(m.frm, None)
            os.close(st.fd)
            try:
                os.unlink(st.tmp)
            except OSError:
                pass
            self.disk.failed("snapshot", e, f"receiving snapshot {meta.index} into "
                                            f"{self.log.snap_dir}")
            self.transport.send(Message(MsgType.SNAPSHOT_RESP, frm=self.node_id, to=m.frm,
                                        term=self.core.term, index=meta.index, reject=True))
            self.transport.flush()
            return
        st.offset += len(m.data)
        st.unsynced += len(m.data)
        if st.unsynced >= _RECV_FLUSH_BYTES and self.config.fsync:
            st.unsynced = 0
            self._io_exec.submit(fdatasync_quiet, st.fd)
        if m.done:
            del self._recv[m.frm]
            # Hold later messages from the leader until the snapshot is stepped in, so its
            # appends are not rejected against the old log.
            self._held = []
            self._loop.create_task(self._finish_recv(st, m))

    async def _finish_recv(self, st, m):
        try:
            path = self.log.snapshot_path(st.meta.index, st.meta.term)

            def finalize():
                if self.config.fsync:
                    os.fsync(st.fd)
                os.close(st.fd)
                os.replace(st.tmp, path)
                if self.config.fsync:
                    fsync_dir(self.log.snap_dir)
            await self._in(self._io_exec, finalize)
            self._stats["snapshots_received"] += 1
            self.disk.ok("snapshot")
            self.core.step(Message(MsgType.SNAPSHOT, frm=m.frm, to=self.node_id, term=m.term,
                                   snapshot=st.meta, done=True))
        except Exception as e:
            log.exception("receiving snapshot %d from %s failed", st.meta.index, m.frm)
            if diskerr.classify(e) is not None:
                self.disk.failed("snapshot", e, f"receiving snapshot {st.meta.index}")
                try:
                    os.unlink(st.tmp)
                except OSError:
                    pass
        finally:
            held, self._held = self._held, None
            for msg in held or ():
                self._on_message(msg)
            self._wake.set()

    async def _install_snapshot(self, meta):
        """Restore the state machine from a received snapshot (after queued applies)."""
        path = self.log.snapshot_path(meta.index, meta.term)
        # Retried while the disk is full: the log already points at this snapshot, and
        # a member restarted meanwhile restores from it at start.
        await self._in(self._apply_exec, self._retry_disk, "apply",
                       f"restoring snapshot {meta.index} into SQLite", self.fsm.restore,
                       path, meta)
        self._applied = self._apply_queued = meta.index
        self._snap_index = meta.index
        rw = self._read_wait
        while rw and rw[0][0] <= self._applied:
            for f in heapq.heappop(rw)[2]:
                if not f.done():
                    f.set_result(None)
