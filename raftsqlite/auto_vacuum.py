"""``-auto-vacuum-int``: VACUUM on a schedule, as rqlite's flag of the same name.

The group's leader checks now and then whether the last VACUUM is older than the interval and,
if so, proposes one. The VACUUM goes through the log like a client's (``Store._vacuum``: an
entry of its own, applied alone on every member; ``fsm_vacuum.py``), which records the leader's
instant of it in the replicated meta table, so a new leader after a failover knows when the
last one ran and does not start over. A group that never ran one counts from when this
member first led and saw none, so a node's start never triggers a VACUUM at once. Each group
of a sharded cluster does its own: a shard node's store is its group's.

A VACUUM rewrites the whole database while writes wait behind it in the log, so the interval
is meant to be long (hours to days); it is off by default.
"""
import asyncio
import logging
import time

from raftsqlite.codec.model import Statement
from raftsqlite.errors import RaftSQLiteError
from raftsqlite.fsm_vacuum import last_vacuum_clock

log = logging.getLogger("raftsqlite.auto_vacuum")


class AutoVacuum:
    def __init__(self, node, interval):
        self.node = node
        self.interval = float(interval)
        # how often to look: often enough to be on time, at most once a minute
        self.check_every = min(60.0, max(0.2, self.interval / 4))
        self._task = None
        self._since = None            # clock ms when this member first led and saw none
        self.counters = {"runs": 0, "failures": 0}
        self.last_error = ""
        self.last_seconds = None

    def start(self):
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self):
        while True:
            await asyncio.sleep(self.check_every)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as e:   # noqa: BLE001 - keep the schedule alive
                self.counters["failures"] += 1
                self.last_error = str(e)
                log.warning("auto VACUUM: %s", e)

    def due(self, now_ms):
        """Whether a VACUUM is due at ``now_ms`` (clock-VFS ms)."""
        last = last_vacuum_clock(self.node.db)
        if last is None:
            if self._since is None:
                self._since = now_ms
            last = self._since
        return now_ms - last >= self.interval * 1000

    async def check(self):
        node = self.node
        if not node.raft.is_leader:
            return False
        if not self.due(node.db.clock_now_ms()):
            return False
        short = self._space_short()
        if short:
            # every member would stop applying at the VACUUM until it had room (disk-full
            # handling never lets a member skip an entry): better not to propose it
            self.counters["skipped_no_space"] = self.counters.get("skipped_no_space", 0) + 1
            self.last_error = short
            log.warning("auto VACUUM skipped: %s", short)
            return False
        t0 = time.monotonic()
        try:
            res = await node.store.execute([Statement("VACUUM")],
                                           timeout=max(60.0, node.store.config.write_timeout))
        except RaftSQLiteError as e:
            self.counters["failures"] += 1
            self.last_error = str(e)
            log.warning("auto VACUUM not run: %s", e)
            return False
        err = (res.get("results") or [{}])[0].get("error")
        if err:
            self.counters["failures"] += 1
            self.last_error = err
            log.warning("auto VACUUM failed: %s", err)
            return False
        self.counters["runs"] += 1
        self.last_seconds = round(time.monotonic() - t0, 3)
        log.info("auto VACUUM done in %.3fs (every %gs)", self.last_seconds, self.interval)
        return True

    def _space_short(self):
        """Why this leader's disk cannot take a VACUUM now, or "" (it writes a copy of the
        database, so it wants about the database's size free, beyond -min-free-disk)."""
        import os
        from raftsqlite.raft.diskerr import free_bytes
        node = self.node
        path = node.config.db_path
        try:
            size = os.path.getsize(path)
            free = free_bytes(os.path.dirname(os.path.abspath(path)))
        except OSError:
            return ""
        keep = getattr(node.raft.config, "min_free_disk", 0) or 0
        if free is not None and free < size + keep:
            return (f"{free} bytes free, a VACUUM of this {size}-byte database needs about "
                    f"{size + keep} (its size plus -min-free-disk)")
        return ""

    def stats(self):
        last = last_vacuum_clock(self.node.db)
        age = (self.node.db.clock_now_ms() - last) / 1000 if last is not None else None
        return dict(self.counters, interval_s=self.interval, last_seconds=self.last_seconds,
                    last_error=self.last_error,
                    last_vacuum_age_s=round(age, 1) if age is not None else None)
