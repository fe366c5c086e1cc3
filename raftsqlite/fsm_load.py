"""SYSTEM ops that make ``/db/load`` all-or-nothing on every member.

A load is too big for one log entry, so it travels in several, but nothing of it may
become visible until all of it has arrived and run:

- ``load.stage`` {id, seq} NUL data: keep one chunk of statements (codec-encoded) in
  ``_raftsqlite_load``. Staged rows are ordinary rows of the database, so they are in
  snapshots and replayed from the log like anything else: a member that restarts, or
  installs a snapshot, mid-load has exactly the chunks the others have. Chunk 0 discards
  whatever an earlier, unfinished load left behind (one load at a time; a load whose
  leader died is garbage the next load sweeps).
- ``load.commit`` {id, chunks, drop}: in one op (one savepoint of one apply transaction)
  drop every user object when ``drop`` (loading a SQLite file replaces the database),
  then run every staged statement in order. Any failure (a missing chunk, a failing
  statement) raises, so the FSM rolls the op back: the old database stays as it was.
  Each statement has the write budget the entry carries (op ``lsteps``, the leader's
  -max-apply-steps, counted for that statement alone and prepared fresh, so the count
  is exact and the same on every member): a statement that never ends (a recursive CTE
  without a bound) stops the load with ``OverBudget`` instead of freezing every member,
  on each restart again. A dump of a million small INSERTs passes: the budget bounds
  one statement, not the load.
- ``load.discard`` {id}: forget the staged chunks. Sent in the same entry right after
  ``load.commit`` (so it runs whether the commit worked or not), and by the leader when
  it gives up on a load before committing.
"""
import orjson

from raftsqlite.codec import decode_command
from raftsqlite.errors import BadRequest, OverBudget

_TABLE = "_raftsqlite_load"
_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {_TABLE} (load_id TEXT NOT NULL, seq INTEGER NOT NULL, "
           "data BLOB NOT NULL, PRIMARY KEY (load_id, seq))")


def drop_all(ctx, args):
    """Remove every user table, index, view and trigger (first step of a file load)."""
    rows = ctx.execute("SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' "
                       "ESCAPE '\\' AND name NOT LIKE '\\_raftsqlite\\_%' ESCAPE '\\'")
    dropped = 0
    for typ, name in rows:
        if typ in ("table", "view"):
            q = '"' + name.replace('"', '""') + '"'
            ctx.execute(f"DROP {typ.upper()} IF EXISTS {q}")
            dropped += 1
    return {"dropped": dropped}


def stage_args(load_id, seq, data):
    return orjson.dumps({"id": load_id, "seq": seq}) + b"\0" + data


def stage(ctx, args):
    head, _, data = bytes(args).partition(b"\0")
    a = orjson.loads(head)
    ctx.execute(_SCHEMA)
    if a["seq"] == 0:
        ctx.execute(f"DELETE FROM {_TABLE}")
    ctx.execute(f"INSERT OR REPLACE INTO {_TABLE}(load_id, seq, data) VALUES (?, ?, ?)",
                (a["id"], a["seq"], data))
    return {"staged": a["seq"]}


def commit(ctx, args):
    a = orjson.loads(args)
    lid, chunks = a["id"], int(a["chunks"])
    ctx.execute(_SCHEMA)
    have = ctx.execute(f"SELECT count(*) FROM {_TABLE} WHERE load_id = ?", (lid,))[0][0]
    if have != chunks:
        raise BadRequest(f"load: {chunks - have} of {chunks} staged chunks are missing "
                         "(another load started meanwhile?); nothing was changed")
    # With -fk, a dump's tables come in name order (a child before its parent): the
    # checks wait for the end of the op (the FSM fails the op if any violation is left).
    ctx.execute("PRAGMA defer_foreign_keys=ON")
    if a.get("drop"):
        drop_all(ctx, b"")
    n = 0
    for seq in range(chunks):
        data = ctx.execute(f"SELECT data FROM {_TABLE} WHERE load_id = ? AND seq = ?",
                           (lid, seq))[0][0]
        for st in decode_command(bytes(data)).requests[0].statements:
            n += 1
            r, over = ctx.run_user_budgeted(st.sql, st.params)
            if over:
                raise OverBudget(budget_error(n, ctx.step_budget(), st.sql))
            if not ctx.in_transaction():
                # e.g. INSERT OR ROLLBACK: the FSM re-runs the entry with this op failed
                raise BadRequest(f"load: statement {n} ended the transaction; nothing was changed")
            if "error" in r:
                raise BadRequest(f"load: statement {n} failed: {r['error']}; nothing was "
                                 "changed")
    top = ctx.table_at_rowid_limit()
    if top is not None:
        # a table at the largest rowid gives its next rows random rowids (members would
        # differ), or with AUTOINCREMENT fails every insert (db.check_rowid_limit)
        raise BadRequest(f"load: {top} holds {(1 << 63) - 1} (the largest rowid), which "
                         "this database does not accept; nothing was changed")
    return {"statements": n}


def budget_error(n, steps, sql):
    head = sql if len(sql) <= 120 else sql[:117] + "..."
    return (f"load: statement {n} ran past the write budget of {steps:,} SQLite steps per "
            f"statement (the leader's -max-apply-steps), so every member stopped it and "
            f"the whole load was undone; nothing was changed. Statement: {head}")


def discard(ctx, args):
    ctx.execute(_SCHEMA)
    ctx.execute(f"DELETE FROM {_TABLE} WHERE load_id = ?", (orjson.loads(args)["id"],))
    return {}


HANDLERS = {"drop_all": drop_all, "load.stage": stage, "load.commit": commit,
            "load.discard": discard}
