"""``GET /db/backup`` of a sharded database: one file with every row, from any node.

Without this, a backup taken from a default-group node held only that group's database:
the registered tables' empty templates, none of their rows (they live on the shard
groups). An rqlite user's habitual ``curl .../db/backup -o backup.sqlite`` would have
saved a file that restores to empty tables, silently.

How a cluster-wide backup is made (``cluster_backup``):
1. The catalog as it is now fixes which groups own which ranges.
2. The default group's database is copied (this node's own copy when it is a member of
   that group and leads it, else streamed from a member: ``/db/backup?shard_id=default``).
3. For each group owning ranges of the registered tables asked for, its whole database is
   streamed from a member (``/db/backup?shard_id=NAME``; a follower relays from its leader,
   so each is one consistent copy of that group), and the rows of those tables whose shard
   key that group owns are copied into the file (``db_files.merge_owned_rows``). Rows a
   group holds without owning them (a move's target while copying, its source until
   cleanup) are left out, exactly as routed reads leave them out.
4. If any of those tables' ranges changed meanwhile (a move switched), the backup starts
   again, up to ``ATTEMPTS`` times, then fails with 503 and what to do.
The file is one consistent state per group, not one instant across groups (as Vitess's
and Citus's per-shard backups): writes that land on two groups while the backup runs may
be in it on one side only. ``fmt=sql`` dumps the assembled file. ``shard_id=NAME`` backs up
one group's own database unchanged, as before (what step 3 asks of each group).
"""
import asyncio
import logging
import os
import tempfile

from raftsqlite import errors
from raftsqlite import db_files
from raftsqlite.db import Database
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import DEFAULT_GROUP

log = logging.getLogger("raftsqlite.sharding")

ATTEMPTS = 3


def _layout(cat, tables):
    """{table: (colocation, starts, owners)} of the registered tables asked for (all when
    ``tables`` is None), for comparing before and after."""
    wanted = {t.lower() for t in tables} if tables else None
    out = {}
    for t, rec in sorted(cat.tables.items()):
        if wanted is not None and t not in wanted:
            continue
        col = cat.colocations[rec["colocation"]]
        out[t] = (rec["colocation"], tuple(col["starts"]), tuple(col["owners"]))
    return out


def _owns_fn(cat, group):
    """``owns(table, key)`` for ``group`` under catalog ``cat``. A NULL key (no routed
    write makes one; an operator's ``shard_id`` write could) stays with the group holding
    it, so nothing is dropped."""
    memo = {}

    def owns(table, key):
        info = memo.get(table)
        if info is None:
            rec = cat.tables[table.lower()]
            col = cat.colocations[rec["colocation"]]
            info = memo[table] = (rec["shard_func"], rec.get("key_affinity"),
                                  col["starts"], col["owners"])
        func, aff, starts, owners = info
        if key is None or not starts:
            return key is None
        return owners[ks.index_of(starts, ks.key_id(key, func, aff))] == group
    return owns


class ClusterBackup:
    def __init__(self, svc, spool_dir):
        self.svc = svc
        self.spool_dir = spool_dir

    def _tmp(self, tag):
        fd, path = tempfile.mkstemp(prefix=f".backup-{tag}-", dir=self.spool_dir)
        os.close(fd)
        return path

    async def group_copy(self, group, path):
        """``group``'s own database into ``path`` (a SQLite file)."""
        svc = self.svc
        if group == svc.group and svc.node.store.is_leader():
            await svc.node.store.backup(path, fmt="binary")
            return
        last = None
        for addr in svc.group_addrs(group):
            try:
                status, _, chunks = await svc.client.stream(
                    "GET", addr, f"/db/backup?shard_id={group}")
            except errors.Unavailable as e:
                last = e
                continue
            if status != 200:
                body = b"".join([c async for c in chunks])
                last = errors.Unavailable(f"group {group!r} member {addr} answered {status} "
                                          f"to a backup: {body[:300].decode(errors='replace')}")
                continue
            loop = asyncio.get_running_loop()
            with open(path, "wb") as f:
                async for c in chunks:
                    await loop.run_in_executor(None, f.write, c)
            if not await loop.run_in_executor(None, Database.is_sqlite_file, path):
                raise errors.Unavailable(f"group {group!r} member {addr} sent a backup that "
                                         "is not a SQLite file")
            return
        raise last or errors.Unavailable(f"no member of group {group!r} could be backed up")

    async def run(self, tables=None):
        """Path of a SQLite file holding the default group's tables and every owned row of
        the registered tables (or only those in ``tables``); the caller deletes it. None
        when no registered table is concerned (the plain backup is the whole answer)."""
        for attempt in range(1, ATTEMPTS + 1):
            cat = self.svc.cache.current()
            layout = _layout(cat, tables)
            if not any(starts for _, starts, _ in layout.values()):
                return None
            out = self._tmp("cluster")
            try:
                await self.group_copy(DEFAULT_GROUP, out)
                groups = sorted({g for _, _, owners in layout.values() for g in owners})
                for g in groups:
                    part = self._tmp(g)
                    try:
                        await self.group_copy(g, part)
                        keys = {t: cat.tables[t]["shard_key"] for t, (_, _, owners)
                                in layout.items() if g in owners}
                        counts = await asyncio.get_running_loop().run_in_executor(
                            None, db_files.merge_owned_rows, out, part, keys, _owns_fn(cat, g))
                        log.info("backup: %s rows from group %s", counts, g)
                    finally:
                        _unlink(part)
            except BaseException:
                _unlink(out)
                raise
            if _layout(self.svc.cache.current(), tables) == layout:
                return out
            _unlink(out)
            log.info("backup: shard ranges changed while it ran (attempt %d); again", attempt)
        raise errors.Unavailable(
            "the shards' key ranges kept changing while the backup ran (a rebalance is "
            "moving data); retry once GET /table/rebalance/status shows no move running, or "
            "back up one group at a time with shard_id=NAME")


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def backup_for(svc, p, spool_dir):
    """The HTTP layer's sharded backup (``RouterSQL.backup``): path of the file to send in
    ``p.fmt`` (the caller deletes it), or None for this node's plain backup."""
    sid = p.shard_id
    cb = ClusterBackup(svc, spool_dir)
    if sid is not None:
        if sid not in svc.cache.current().groups:
            raise errors.NotFound(f"shard {sid!r} is not a known group; GET /shards lists them")
        if sid == svc.group:
            return None
        path = cb._tmp(sid)
        try:
            await cb.group_copy(sid, path)
        except BaseException:
            _unlink(path)
            raise
    else:
        path = await cb.run(p.tables)
        if path is None:
            return None
    if p.fmt != "sql":
        return path
    out = cb._tmp("dump")

    def dump():
        with open(out, "w", encoding="utf-8") as f:
            for line in svc.node.store.db.iterdump(tables=p.tables, path=path):
                f.write(line)
                f.write("\n")
    try:
        await asyncio.get_running_loop().run_in_executor(None, dump)
    except BaseException:
        _unlink(out)
        raise
    finally:
        _unlink(path)
    return out
