"""``POST /table/remove {"table_name"[, "drop_rows": true]}``: unregister a table without
hiding its rows.

Once a table is unregistered, routed queries and ``GET /db/backup`` read it from the
default group only, so rows left on the shards vanish from every view but
``shard_id=NAME``: silent data loss for an operator who did not read the answer. So:

1. Fence the table's colocation group on every shard owning a range of it (``own.fence``
   over the whole keyspace). A routed write that has not been applied yet now meets
   ``Fenced`` and waits; one applied before the fence is in the count below (the fence is
   in each shard's log, and the count is a linearizable read after it).
2. Count the table's rows on every shard group (rows held without being owned, a move's
   leftovers, count too: they would be stranded as well).
3. Rows and no ``drop_rows``: unfence and refuse with 409 naming the counts and what to
   do. Nothing changed: the fence was the only step, and it is undone.
4. Otherwise unregister (the catalog op), push ownership (the shards give the table up,
   so routers still on the old catalog get ``Moved``, refresh and go to the default
   group), unfence what is left (the colocation survives when other tables share it),
   then with ``drop_rows`` drop the table on every shard group that had it.

A move in progress on the colocation group is refused (409 naming it) before step 1, and
step 1 is preceded by a mark in the catalog (``catalog.remove_begin``, applied in the
default group's log) that refuses a move in progress and that ``move_create`` refuses
until the removal ends (``unregister_table`` or ``remove_end`` clears it). Moves are the
only other source of fences, so lifting the whole keyspace's fence lifts only ours: a
coordinator that planned a move just before the removal started cannot slip one in
between the check and the unfence. A removal whose node fails leaves the mark (and its
fence); repeating ``POST /table/remove`` clears both.

Moving the rows back into the default group instead was considered and not done: it is
a move whose target is not a shard (no ownership, no guard, no fence on the target), and
the router would have to send writes to the default group at the switch. Deleting the
rows through the router (``DELETE FROM t``) or taking a backup first covers the need.
"""
import logging
import time

from raftsqlite import errors
from raftsqlite.codec.model import Statement
from raftsqlite.db import quote_ident
from raftsqlite.sharding import ops
from raftsqlite.sharding.catalog import DEFAULT_GROUP, MOVE_END
from raftsqlite.sharding.glue import op_args

log = logging.getLogger("raftsqlite.sharding.remove")

_WHOLE = {"start": 0, "end": None}


def drop_rows_flag(body):
    v = body.get("drop_rows", False)
    if not isinstance(v, bool):
        raise errors.BadRequest("drop_rows must be true or false")
    return v


async def remove_table(svc, body):
    """Run the removal above on the default group's leader -> the answer's document."""
    op, args = ops.remove(body)
    drop = drop_rows_flag(body)
    table = ops._field(body, "table_name").lower()
    await svc.cache.refresh()
    cat = svc.cache.current()
    if table not in cat.tables:
        raise errors.NotFound(f"table {table} is not registered")
    cname = cat.tables[table]["colocation"]
    moving = sorted(m["id"] for m in cat.moves.values()
                    if m["colocation"] == cname and m["phase"] not in MOVE_END)
    if moving:
        raise _busy(table, moving)
    # Mark the colocation in the catalog first: no move starts from here on (checked in
    # the log, so also against a coordinator that planned before this), and a move that
    # started since the check above refuses the mark.
    await _mark(svc, "remove_begin", table, cname, time.time())
    owners = cat.owning_groups(table)
    shards = sorted(g for g in cat.groups if g != DEFAULT_GROUP)
    fenced = []
    unregistered = False
    try:
        for g in owners:
            await _own(svc, g, "own.fence", cname)
            fenced.append(g)
        counts = {g: await _count(svc, g, table) for g in shards}
        held = {g: n for g, n in counts.items() if n}
        if held and not drop:
            raise errors.Conflict(
                f"table {table} still has {sum(held.values())} row(s) on its shards ("
                + ", ".join(f"{g}: {n}" for g, n in held.items())
                + "); removing its registration would hide them from routed queries and "
                "backups. Nothing was changed. What to do: delete them through the router "
                f"(DELETE FROM {table}) or keep a copy first (GET /db/backup), or repeat with "
                '"drop_rows": true to drop the table and its rows on every shard.')
        res = await svc.catalog_op(op, args)
        unregistered = True
        for g in owners:
            await svc.push_ownership(g)
    finally:
        for g in fenced:
            await _unfence(svc, g, cname)
        if not unregistered:
            try:
                await _mark(svc, "remove_end", table, cname)
            except errors.RaftSQLiteError as e:
                log.warning("could not clear the removal mark of %s: %s; moves of its "
                            "colocation are refused until POST /table/remove is repeated",
                            table, e)
    doc = {"removed": table, "result": res, "rows_on_shards": sum(held.values())}
    if drop:
        doc["dropped_on"] = await _drop(svc, [g for g, n in counts.items() if n is not None], table)
    return doc


def _busy(table, moving):
    return errors.Conflict(
        f"table {table} has a rebalance move in progress ({', '.join(moving)}); nothing was "
        "changed. What to do: wait for it (GET /table/rebalance/status) or cancel it "
        "(POST /table/rebalance/cancel), then remove the table.")


async def _mark(svc, name, table, cname, now=None):
    """``catalog.remove_begin`` / ``remove_end`` (catalog.py): while the mark is set no
    move of the colocation starts."""
    args = {"table": table, "colocation": cname}
    if now is not None:
        args["now"] = now
    res = (await svc.system(DEFAULT_GROUP, [(f"catalog.{name}", op_args(args))]))[0]
    if isinstance(res, dict) and res.get("error"):
        if res.get("code") == "conflict":
            await svc.cache.refresh()
            cat = svc.cache.current()
            moving = sorted(m["id"] for m in cat.moves.values()
                            if m["colocation"] == cname and m["phase"] not in MOVE_END)
            raise _busy(table, moving) if moving else \
                errors.Conflict(f"{res['error']}; nothing was changed")
        raise errors.Unavailable(f"catalog.{name} failed: {res['error']}; nothing was changed")


async def _own(svc, group, name, cname):
    res = await svc.system(group, [(name, op_args(dict(_WHOLE, colocation=cname)))])
    if isinstance(res[0], dict) and res[0].get("error"):
        raise errors.Unavailable(f"{name} on {group} failed: {res[0]['error']}; nothing was "
                                 "changed")


async def _unfence(svc, group, cname):
    """Lift our fence. The colocation may be gone from the shard (its last table was
    removed and the ownership push dropped it): then there is nothing to lift."""
    for _ in range(3):
        try:
            res = await svc.system(group, [("own.unfence", op_args(dict(_WHOLE, colocation=cname)))])
            err = isinstance(res[0], dict) and res[0].get("error")
            if not err or "holds no colocation" in err:
                return
            log.warning("unfence of %s on %s: %s", cname, group, err)
        except errors.RaftSQLiteError as e:
            log.warning("unfence of %s on %s: %s", cname, group, e)
    log.error("could not lift the fence of %s on %s: writes to it wait until a rebalance "
              "or POST /table/remove is retried", cname, group)


async def _count(svc, group, table):
    """Rows of ``table`` in ``group`` (None: the group has no such table)."""
    try:
        res = await svc.executor.query(group, [Statement(f"SELECT count(*) FROM {quote_ident(table)}")],
                                       level="linearizable")
    except errors.RaftSQLiteError as e:
        raise errors.Unavailable(f"could not count the rows of {table} on {group} ({e}); "
                                 "nothing was changed. Retry when the group has a leader.") from None
    r = res[0]
    if r.get("error"):
        if "no such table" in r["error"]:
            return None
        raise errors.Unavailable(f"could not count the rows of {table} on {group}: {r['error']}; "
                                 "nothing was changed")
    return int(r["values"][0][0])


async def _drop(svc, groups, table):
    """``DROP TABLE`` on each group; the table is no longer registered, so nothing routes
    there any more. A failure names what is left."""
    done, failed = [], []
    for g in groups:
        try:
            res = await svc.executor.execute(g, [Statement(f"DROP TABLE IF EXISTS {quote_ident(table)}")])
        except errors.RaftSQLiteError as e:
            failed.append(f"{g}: {e}")
            continue
        if res[0].get("error"):
            failed.append(f"{g}: {res[0]['error']}")
        else:
            done.append(g)
    if failed:
        raise errors.Unavailable(f"table {table} is unregistered, but dropping it failed on "
                                 f"{'; '.join(failed)} (dropped on: {', '.join(done) or 'none'}). "
                                 f"Run DROP TABLE {table} with shard_id=NAME on each of them.")
    return done
