"""Cluster administration for the store: membership (join, remove, leadership transfer),
snapshots, backups and loads. A mixin of ``store.Store`` (split from store.py, which keeps
the write and read paths); it uses the Store's raft driver, config, database, encoder,
I/O thread, ``_propose_one``, ``_map_error``, ``_require_leader`` and ``member``.
"""
import asyncio
import logging
import os
import tempfile

import orjson

from raftsqlite import fsm_load, sqlrewrite
from raftsqlite.codec.model import Command, CommandType, Request, Statement
from raftsqlite.errors import (BadRequest, DiskFull, EncodeError, NotFound, OverBudget,
                               RaftSQLiteError)
from raftsqlite.fsm import clock_op, load_steps_op

log = logging.getLogger("raftsqlite.store")

# A load is written about this many times its size before it is done (_check_room).
LOAD_SPACE_FACTOR = 3


class StoreAdmin:
    """Membership, snapshot, backup and load operations of ``Store`` (its base class)."""

    # ---- membership -------------------------------------------------------------------
    async def join(self, node_id, raft_addr, http_addr="", voter=True, timeout=None,
                   fresh=False):
        """Add a member (learner first, promoted once caught up when ``voter``). Joining
        again with the same addresses is harmless; new addresses replace the old.
        ``fresh``: the joiner has an empty data dir. A member that comes back so lost the
        log it acknowledged, and Raft never lowers what it knows a follower holds, so
        the leader would only ever probe it; it is removed and added again instead."""
        if not node_id or not isinstance(node_id, str) or not isinstance(raft_addr, str) \
                or not raft_addr:
            raise BadRequest("join needs node_id and raft_addr")
        self._require_leader()
        timeout = timeout or max(self.config.write_timeout, 30.0)
        m = self.member(node_id)
        if m is not None and fresh and node_id != self.node_id and (
                m.voter or self._match_of(node_id) > 0):
            # (a learner at match 0 is already being caught up: a retried join must not
            # start that over)
            log.warning("%s joins with an empty data dir: re-adding it", node_id)
            await self._call(self.raft.remove_member(node_id, timeout=timeout))
            m = None
        if m is not None:
            if m.raft_addr == raft_addr and (not http_addr or m.http_addr == http_addr) \
                    and bool(m.voter) == bool(voter):
                return {"node_id": node_id, "already_member": True}
            if m.raft_addr != raft_addr or (http_addr and m.http_addr != http_addr):
                await self._call(self.raft.remove_member(node_id, timeout=timeout))
        nudge = asyncio.get_running_loop().create_task(self._nudge(node_id))
        try:
            await self._call(self.raft.add_member(node_id, raft_addr, http_addr,
                                                  voter=bool(voter), timeout=timeout))
        finally:
            nudge.cancel()
        # once more after a learner-only add, which returns before any replication
        await self._nudge_once()
        return {"node_id": node_id, "already_member": False}

    def _match_of(self, node_id):
        core = getattr(self.raft, "core", None)
        pr = core.progress().get(node_id) if core is not None else None
        return pr.get("match", 0) if pr else 0

    async def _nudge(self, node_id):
        """While a new member catches up, append a no-op now and then. A new member's
        first probe can be lost (it is sent before the connection exists); with the log
        idle the leader has nothing new to send, so it would wait forever. A fresh entry
        gives it something to send and the follower's reject starts the back-off."""
        while True:
            await asyncio.sleep(0.5)
            await self._nudge_once()

    async def _nudge_once(self):
        try:
            if self.raft.is_leader:
                await self.raft.propose(self._encode(Command(CommandType.NOOP)), 5.0)
        except Exception:  # best effort: the next nudge or write does the same job
            pass

    async def remove(self, node_id, timeout=None):
        if not node_id or not isinstance(node_id, str):
            raise BadRequest("remove needs a node id")
        self._require_leader()
        if self.member(node_id) is None:
            raise NotFound(f"node {node_id!r} is not a member")
        await self._call(self.raft.remove_member(node_id, timeout=timeout or 30.0))
        return {"node_id": node_id}

    async def transfer_leadership(self, to=None, timeout=None):
        self._require_leader()
        if to is not None and self.member(to) is None:
            raise NotFound(f"node {to!r} is not a member")
        await self._call(self.raft.transfer_leadership(to, timeout=timeout or 10.0))
        return {"leader": self.raft.leader_id}

    async def _call(self, aw):
        try:
            return await aw
        except Exception as exc:
            raise self._map_error(exc) from None

    async def snapshot(self, timeout=None):
        """Take a snapshot now and compact the log. -> {"index", "term"}, or False when
        nothing was applied since the last snapshot."""
        return await self._call(self.raft.snapshot(timeout=timeout or 300.0))

    # ---- backup and load --------------------------------------------------------------
    async def backup(self, path=None, *, fmt="binary", tables=None):
        """Write a backup to ``path`` (default: a new temp file in the data dir) and
        return the path; the caller streams and deletes it. ``fmt``: "binary" (a SQLite
        file) or "sql" (a dump)."""
        if fmt not in ("binary", "sql"):
            raise BadRequest(f"unknown backup format {fmt!r}; use binary or sql")
        if path is None:
            d = os.path.join(os.path.dirname(self.db.path), "tmp")
            os.makedirs(d, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="backup-", suffix=".sqlite" if fmt == "binary"
                                        else ".sql", dir=d)
            os.close(fd)

        def work():
            if fmt == "binary":
                self.db.backup_to(path)
            else:
                with open(path, "w", encoding="utf-8") as f:
                    for line in self.db.iterdump(tables=tables):
                        f.write(line)
                        f.write("\n")
            return path
        return await asyncio.get_running_loop().run_in_executor(self._io, work)

    async def load(self, source, *, fmt=None, timeout=None):
        """Load a SQLite file (replaces every user table) or a SQL dump (executed as
        given) through the log, so every member gets it. ``source``: a path, or bytes.
        The format is detected from the content (``fmt`` is accepted for the HTTP layer;
        the file's header decides). Streams: chunks of ``batch_max_bytes`` are checked and
        staged through the log, so a large file is never held in memory, then one entry
        applies them all in one transaction (``fsm_load``): a load is all-or-nothing on
        every member. A refused statement, a corrupt file, a failing statement or a
        leader lost midway leave the old database as it was."""
        self._require_leader()
        loop = asyncio.get_running_loop()
        tmp = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            fd, tmp = tempfile.mkstemp(prefix="load-", dir=os.path.dirname(self.db.path))
            with os.fdopen(fd, "wb") as f:
                f.write(source)
            source = tmp
        try:
            if not isinstance(source, str) or not os.path.exists(source):
                raise BadRequest(f"load: no such file {source}")
            self._check_room(source)
            is_db = self.db.is_sqlite_file(source)
            if is_db:
                await loop.run_in_executor(self._io, self._check_file, source)
            return await self._load_chunks(source, is_db,
                                           timeout or max(self.config.write_timeout, 60.0))
        finally:
            if tmp:
                os.unlink(tmp)

    def _check_room(self, source):
        """Refuse a load the data dir's disk cannot hold before anything is proposed: it
        is written about three times (the log, the staged rows, the tables and their
        WAL), and -min-free-disk must stay free. A load that a member still cannot apply
        would stop that member's applies until space is freed (never half-applied)."""
        from raftsqlite.raft.diskerr import free_bytes
        d = os.path.dirname(os.path.abspath(self.db.path))
        try:
            free = free_bytes(d)
        except OSError:
            return
        size = os.path.getsize(source)
        keep = getattr(getattr(self.raft, "config", None), "min_free_disk", 0) or 0
        need = LOAD_SPACE_FACTOR * size + keep
        if free is not None and free < need:
            raise DiskFull(f"load of {size} bytes refused: it needs about {need} bytes free "
                           f"on the disk of data dir {d} ({LOAD_SPACE_FACTOR}x its size for "
                           f"the log, the staged copy and the tables, plus -min-free-disk "
                           f"{keep}), {free} are free; nothing was loaded")

    def _load_statements(self, path, is_db):
        if is_db:
            it = self.db.iterdump(path=path)
        else:
            f = open(path, "r", encoding="utf-8")
            it = _closing_lines(f)
        try:
            for s in it:
                if not _is_dump_control(s):
                    yield s
        except UnicodeDecodeError:
            raise BadRequest("load: the body is neither a SQLite file nor UTF-8 SQL text") \
                from None

    def _check_file(self, path):
        """A truncated or corrupt SQLite file is refused before anything is proposed."""
        try:
            bad = [r[0] for r in self.db.read_file_internal(path, "PRAGMA quick_check")
                   if r[0] != "ok"]
        except Exception as exc:  # apsw's CorruptError, NotADBError, ...: db.py's to name
            raise BadRequest(f"load: the SQLite file is corrupt or truncated ({exc})") from None
        if bad:
            raise BadRequest(f"load: the SQLite file is corrupt: {'; '.join(bad[:3])}")

    async def _load_chunks(self, path, is_db, timeout):
        loop = asyncio.get_running_loop()
        gen = self._load_statements(path, is_db)
        limit = self.config.batch_max_bytes

        def take():
            chunk, size = [], 0
            try:
                for s in gen:
                    sqlrewrite.check(s)
                    chunk.append(Statement(s))
                    size += len(s)
                    if size >= limit:
                        break
            except RaftSQLiteError:
                raise
            except Exception as exc:
                raise BadRequest(f"load: cannot read the file ({type(exc).__name__}: {exc})") \
                    from None
            return chunk

        load_id = os.urandom(8).hex()
        chunks, n, staged = 0, 0, False
        try:
            while True:
                chunk = await loop.run_in_executor(self._io, take)
                if not chunk:
                    break
                try:
                    data = self._encode(Command(CommandType.EXECUTE, [Request(chunk)]))
                except (EncodeError, ValueError, TypeError, OverflowError) as exc:
                    raise BadRequest(f"load: cannot encode a statement: {exc}") from None
                staged = True
                await self._propose_one(Command(CommandType.SYSTEM, ops=[(
                    "load.stage", fsm_load.stage_args(load_id, chunks, data))]), timeout)
                chunks += 1
                n += len(chunk)
            args = orjson.dumps({"id": load_id, "chunks": chunks, "drop": is_db})
            # one entry, so the staged rows go whether the commit worked or not
            # each statement's write budget travels in the entry: every member uses the same
            res = await self._propose_one(Command(CommandType.SYSTEM, ops=[
                clock_op(self.db.clock_now_ms()), ("load.commit", args),
                ("load.discard", args), load_steps_op(self.config.max_apply_steps)]),
                timeout + n * 0.001)
            staged = False
        finally:
            await loop.run_in_executor(self._io, gen.close)
            if staged:
                await self._discard_load(load_id, timeout)
        out = {"statements": n, "raft_index": res["index"]}
        r = res["results"][0]
        if isinstance(r, dict) and r.get("error"):
            if r.get("code") == OverBudget.code:
                raise OverBudget(r["error"])    # undone everywhere: a clear 400
            out["error"] = r["error"]
            out["statements"] = 0
        return out

    async def _discard_load(self, load_id, timeout):
        """Best effort: a load that stopped before its commit leaves staged rows; the
        next load sweeps them if this fails too (fsm_load)."""
        try:
            await self._propose_one(Command(CommandType.SYSTEM, ops=[(
                "load.discard", orjson.dumps({"id": load_id}))]), timeout)
        except Exception:
            pass


def _is_dump_control(s):
    u = s.lstrip().upper()
    return u.startswith(("BEGIN", "COMMIT", "END TRANSACTION", "ROLLBACK", "PRAGMA",
                         "SAVEPOINT", "RELEASE"))


def _closing_lines(f):
    from raftsqlite.db import iter_sql
    with f:
        yield from iter_sql(f)
