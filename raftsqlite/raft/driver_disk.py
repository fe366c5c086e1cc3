"""The disk-error side of RaftNode (a mixin; see driver.py, raft/diskerr.py and
docs/design/raft-io.md, "Disk full and I/O errors"): a log write or an apply that fails
because the disk is full or failing is retried with the same batch until it succeeds,
never skipped or failed; meanwhile new proposals are refused (``DiskFull``, HTTP 507) and
a leader gives way. Also the ``min_free_disk`` guard. It uses RaftNode's attributes."""
import asyncio
import logging
import threading

from raftsqlite import errors
from raftsqlite.raft import diskerr
from raftsqlite.raft.types import Role

log = logging.getLogger("raftsqlite.raft.driver")


class _Stopping(Exception):
    """The member is stopping while a disk write was being retried."""


class DiskMixin:
    def _init_disk(self, config):
        # Disk errors (diskerr.py): failed writes are retried, never skipped or failed.
        self.disk = diskerr.DiskState(config.data_dir)
        self._refuse = None         # why new proposals are refused (HTTP 507), or None
        self._space_low = None      # free bytes, when below min_free_disk
        self._space_at = 0.0        # loop time of the next free-space check
        self._log_stuck = False     # a log write is being retried: no heartbeats go out
        self._handoff_at = 0.0      # loop time before which no disk hand-off is tried
        self._apply_stop = threading.Event()    # stop(): a retried apply gives up
        self._snap_retry_at = 0.0   # a failed snapshot is tried again after this
        self._snap_delay = 0.0
        self._compact_error = None  # why the last compaction failed (snapshot() answers it)

    async def _persist_retrying(self, b, rd):
        """``_persist``, retried with backoff while the disk is full or failing
        (diskerr.py): the batch stays unacknowledged and uncounted (the core hears of it
        only in ``advance``), the loop goes on meanwhile (ticks, messages, HTTP), a leader
        stops sending heartbeats so that a member with a working disk is elected, and the
        member goes on by itself once the write succeeds. Any other error fail-stops."""
        try:
            await self._persist(b, rd)
            return
        except Exception as e:      # noqa: BLE001 - sorted just below
            if diskerr.classify(e) is None:
                raise
            if not self._running:
                raise _Stopping() from e
            err = e
        delay = diskerr.RETRY_MIN
        self._log_stuck = True
        try:
            while True:
                self.disk.failed("log", err, f"writing the Raft log in {self.log.dir}")
                self._disk_changed()
                await asyncio.sleep(delay)
                if not self._running:
                    raise _Stopping()
                delay = diskerr.backoff(delay)
                try:
                    await self._persist(b, rd)
                    break
                except Exception as e:      # noqa: BLE001
                    if diskerr.classify(e) is None:
                        raise
                    err = e
        finally:
            self._log_stuck = False
        self.disk.ok("log")
        self._disk_changed()

    def _disk_changed(self):
        """Loop: a disk error appeared, is still there or went away, or free space crossed
        ``min_free_disk``. While one is there new proposals are refused (HTTP 507),
        proposals waiting for an outcome are answered (it is unknown: other members may
        commit the entry), and a leader hands leadership to a member with a working disk."""
        err = self.disk.error(("log", "apply"))
        if err is not None:
            self._refuse = (f"{err}; this node takes no writes until that succeeds; "
                            f"free space on that disk (see /status raft.disk_errors_now)")
        elif self._space_low is not None:
            self._refuse = (f"disk almost full: {self._space_low} bytes free on the disk of "
                            f"data dir {self.disk.data_dir}, below -min-free-disk "
                            f"{self.config.min_free_disk}; free space on that disk")
        else:
            self._refuse = None
            return
        if err is not None:
            if self._pending:
                exc = errors.OutcomeUnknown(
                    f"{err}: this node cannot finish the write now; it may still be "
                    f"applied (by the other members, or here once the disk recovers)")
                pend, self._pending = self._pending, {}
                for _, f in pend.values():
                    if not f.done():
                        f.set_exception(exc)
            if self._props:
                props, self._props = self._props, []
                for _, f in props:
                    if not f.done():
                        f.set_exception(errors.DiskFull(self._refuse))
        self._disk_handoff(err or self._refuse)

    def _disk_handoff(self, why):
        core = self.core
        if core is None or core.role != Role.LEADER or len(core.voters) <= 1:
            return
        now = self._loop.time()
        if now < self._handoff_at:
            return
        self._handoff_at = now + 30.0
        try:
            core.transfer_leadership(None)
        except errors.RaftSQLiteError as e:
            log.warning("disk: cannot hand leadership over: %s", e)
            return
        self._stats["disk_handoffs"] = self._stats.get("disk_handoffs", 0) + 1
        log.warning("%s: handing leadership to a member with a working disk (%s)",
                    self.node_id, why)
        self._wake.set()

    def _check_space(self):
        """Tick, once a second with ``min_free_disk`` on: is the data dir's disk low?"""
        try:
            free = diskerr.free_bytes(self.log.dir)
        except OSError:
            free = None
        low = free is not None and free < self.config.min_free_disk
        if low and self._space_low is None:
            log.warning("disk almost full: %d bytes free on the disk of %s, below "
                        "-min-free-disk %d: refusing new writes until space is freed",
                        free, self.disk.data_dir, self.config.min_free_disk)
        elif not low and self._space_low is not None:
            log.warning("disk space back above -min-free-disk (%s bytes free): taking writes "
                        "again", free)
        was = self._space_low
        self._space_low = free if low else None
        if (was is None) != (self._space_low is None) or (low and self.is_leader):
            self._disk_changed()

    @property
    def disk_error(self):
        """The disk error this member is retrying (its log or its state machine cannot be
        written), or None. /readyz answers not ready meanwhile."""
        return self.disk.error(("log", "apply"))

    def _apply_retrying(self, entries):
        """Apply thread: ``fsm.apply``, retried with the same entries while the disk is
        full or failing (SQLITE_FULL/IOERR; the FSM undid the whole attempt). Never
        skipped, never turned into an error result some members have and others do not:
        that would make the replicas differ. Later batches queue behind it on this one
        thread, so nothing is applied out of order. ``stop`` ends the wait."""
        return self._retry_disk(
            "apply", f"applying entries {entries[0].index}-{entries[-1].index} to the "
                     f"state machine",
            self.fsm.apply, entries)

    def _retry_disk(self, op, what, fn, *args):
        """Apply thread: ``fn(*args)``, called again after a backoff for as long as it
        fails with a disk error (``op`` names it in /status and /readyz)."""
        try:
            return fn(*args)
        except Exception as e:      # noqa: BLE001 - sorted just below
            if diskerr.classify(e) is None:
                raise
            err = e
        delay = diskerr.RETRY_MIN
        loop = self._loop
        while True:
            self.disk.failed(op, err, what)
            loop.call_soon_threadsafe(self._disk_changed)
            if self._apply_stop.wait(delay):
                raise _Stopping()
            delay = diskerr.backoff(delay)
            try:
                res = fn(*args)
            except Exception as e:      # noqa: BLE001
                if diskerr.classify(e) is None:
                    raise
                err = e
                continue
            self.disk.ok(op)
            loop.call_soon_threadsafe(self._disk_changed)
            return res
