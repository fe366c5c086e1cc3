"""SQLite files other than the live database: the pieces of a sharded backup and load.

Part of the db layer (with db.py and db_exec.py, the only modules that import apsw).
Every function works on paths it is given, on the caller's thread; none touches the
node's database. The callers are sharding/backup.py and sharding/load.py.
"""
import os

import apsw

from raftsqlite import errors
from raftsqlite.db_shapes import quote_ident

_RO = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
_RW = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI


def _ro(path):
    return apsw.Connection(f"file:{os.path.abspath(path)}?immutable=1", flags=_RO)


def _scratch(path):
    """A connection to a scratch file: no journal, no syncs (it is thrown away on error)."""
    c = apsw.Connection(path, flags=_RW)
    c.execute("PRAGMA journal_mode=OFF")
    c.execute("PRAGMA synchronous=OFF")
    return c


def merge_owned_rows(dest_path, src_path, tables, owns):
    """Copy into the SQLite file ``dest_path`` the rows of ``tables`` ({table: shard key
    column}) that ``src_path`` holds and ``owns(table, key)`` says its group owns, in
    one transaction; returns {table: rows copied}. The columns are ``dest``'s own (by
    name), so a source that declared them in another order still lands right; a table
    the source does not have copies nothing. A row whose primary key another group's
    rows already took raises ``BadRequest`` naming the table: one file cannot hold both
    (a key that is not the shard key, assigned on each shard independently)."""
    c = _scratch(dest_path)
    try:
        c.create_scalar_function("rs_backup_owns", owns, 2, deterministic=True)
        c.execute("ATTACH DATABASE ? AS src", (f"file:{os.path.abspath(src_path)}?immutable=1",))
        counts = {}
        c.execute("BEGIN")
        try:
            for t, key in tables.items():
                q = quote_ident(t)
                if not c.execute("SELECT 1 FROM src.sqlite_schema WHERE type = 'table' "
                                 "AND lower(name) = lower(?)", (t,)).fetchall():
                    continue
                cols = ",".join(quote_ident(r[1]) for r in
                                c.execute(f"PRAGMA main.table_info({q})").fetchall())
                try:
                    c.execute(f"INSERT INTO main.{q}({cols}) SELECT {cols} FROM src.{q} "
                              f"WHERE rs_backup_owns(?, {quote_ident(key)})", (t,))
                except apsw.ConstraintError as e:
                    raise errors.BadRequest(
                        f"table {t}: two shards hold rows with the same primary key "
                        f"({e}); one SQLite file cannot hold both. Back up each shard "
                        "on its own with shard_id=NAME, or make the primary key include "
                        "the shard key") from None
                counts[t] = c.changes()
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("DETACH DATABASE src")
        return counts
    finally:
        c.close()


def run_script(dest_path, statements):
    """Run SQL statements (an iterable of complete statements, e.g. a streamed dump) into
    a new scratch SQLite file ``dest_path``, in one transaction; the dump's own
    ``BEGIN``/``COMMIT`` are skipped. A failing statement raises ``BadRequest`` naming it."""
    c = _scratch(dest_path)
    try:
        c.execute("BEGIN")
        n = 0
        for n, sql in enumerate(statements, 1):
            head = sql.lstrip()[:20].upper()
            if head.startswith(("BEGIN", "COMMIT", "END", "ROLLBACK")):
                continue
            try:
                c.execute(sql)
            except apsw.Error as e:
                raise errors.BadRequest(
                    f"the dump fails on its own at statement {n} ({sql[:200]!r}): {e}. A dump "
                    "that writes sharded tables is loaded like a database file, so it must "
                    "create every table it fills (as GET /db/backup?fmt=sql does)") from None
        c.execute("COMMIT")
    finally:
        c.close()


def tables_of(path):
    """{lower-case table name: (name, CREATE sql, has rows)} of the user tables in a file."""
    c = _ro(path)
    try:
        out = {}
        for name, sql in c.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'table' "
                                   "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'").fetchall():
            rows = c.execute(f"SELECT 1 FROM {quote_ident(name)} LIMIT 1").fetchall()
            out[name.lower()] = (name, sql, bool(rows))
        return out
    finally:
        c.close()


def copy_without_rows(src_path, dest_path, tables):
    """A copy of ``src_path`` at ``dest_path`` whose ``tables`` are emptied (schema kept)."""
    src = _ro(src_path)
    try:
        dst = _scratch(dest_path)
        try:
            with dst.backup("main", src, "main") as b:
                while not b.done:
                    b.step(1024)
            dst.execute("BEGIN")
            for t in tables:
                dst.execute(f"DELETE FROM {quote_ident(t)}")
            dst.execute("COMMIT")
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def row_batches(path, table, max_rows=500, max_params=30000):
    """(column names, batches of row tuples) of ``table`` in a file, in rowid order where
    there is one; each batch holds at most ``max_rows`` rows and ``max_params`` values."""
    c = _ro(path)
    q = quote_ident(table)
    cols = [r[1] for r in c.execute(f"PRAGMA table_info({q})").fetchall()]
    per = max(1, min(max_rows, max_params // max(1, len(cols))))

    def batches():
        try:
            cur = c.execute(f"SELECT {','.join(quote_ident(x) for x in cols)} FROM {q}")
            batch = []
            for row in cur:
                batch.append(row)
                if len(batch) >= per:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            c.close()
    return cols, batches()


# ---- automatic backups (auto_backup.py) ------------------------------------------------

def content_digest(path) -> str:
    """Hex digest of what a user sees in the SQLite file at ``path``: the schema of its
    user objects and the rows of its tables in storage order (rowid, or primary key for
    WITHOUT ROWID tables), rowids included. Our ``_raftsqlite_*`` tables are left out:
    they change with every log entry (the applied index), user data or not. Rows, not
    pages: two members' files hold the same rows in pages laid out differently, and a
    new leader must recognise the backup its predecessor wrote of the same content.

    SQLite renders the rows (``quote``, exact for REAL; text as hex, so a NUL inside it
    counts) and joins 5,000 at a time; Python only hashes the joined text. Rendering
    them in Python held the GIL for about a second per 100 MB, which the event loop of
    the node felt."""
    import hashlib
    h = hashlib.blake2b(digest_size=16)
    c = _ro(path)
    try:
        objs = c.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema "
                         "WHERE name NOT LIKE '\\_raftsqlite\\_%' ESCAPE '\\' "
                         "ORDER BY type, name").fetchall()
        h.update(repr(objs).encode())
        for typ, name, _, sql in objs:
            if typ != "table" or not sql or sql.lstrip().upper().startswith("CREATE VIRTUAL"):
                continue    # a virtual table's rows live in its shadow tables, hashed too
            h.update(b"\x00table " + name.encode() + b"\x00")
            for chunk in _rendered_rows(c, name):
                h.update(chunk.encode("utf-8", "surrogatepass"))
    finally:
        c.close()
    return h.hexdigest()


def _rendered_rows(c, table, per=5_000):
    q = quote_ident(table)
    cols = [r[1] for r in c.execute(f"PRAGMA table_info({q})").fetchall()]
    expr = "||','||".join(f"CASE typeof({quote_ident(x)}) WHEN 'text' THEN "
                          f"'T'||hex({quote_ident(x)}) ELSE quote({quote_ident(x)}) END"
                          for x in cols) or "''"
    rowid = not {x.lower() for x in cols} & {"rowid", "_rowid_", "oid"}
    if rowid:
        try:
            c.execute(f"SELECT rowid FROM {q} LIMIT 0").fetchall()
        except apsw.SQLError:       # WITHOUT ROWID
            rowid = False
    if not rowid:
        # primary key order (WITHOUT ROWID), or a table whose columns hide the rowid
        buf = []
        for (x,) in c.execute(f"SELECT {expr} FROM {q}"):
            buf.append(x)
            if len(buf) >= per:
                yield "\n".join(buf) + "\n"
                buf = []
        if buf:
            yield "\n".join(buf) + "\n"
        return
    last = None
    while True:
        where = "" if last is None else "WHERE rowid > ?"
        text, last2 = c.execute(
            f"SELECT group_concat(x, char(10) ORDER BY r), max(r) FROM (SELECT rowid AS r, "
            f"rowid||':'||{expr} AS x FROM {q} {where} ORDER BY rowid LIMIT {per})",
            () if last is None else (last,)).fetchall()[0]
        if last2 is None:
            return
        yield text + "\n"
        last = last2


def vacuum_into(src_path, dest_path):
    """A compacted copy of the SQLite file ``src_path`` (a private copy, never the live
    database) at ``dest_path``, with SQLite's VACUUM INTO."""
    if os.path.exists(dest_path):
        os.unlink(dest_path)
    c = apsw.Connection(src_path, flags=_RW)
    try:
        c.execute("VACUUM INTO ?", (dest_path,))
    finally:
        c.close()


def check_sqlite_file(path):
    """Raise ``BadRequest`` unless ``path`` is a SQLite file that passes quick_check."""
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise errors.BadRequest(f"{path} is not a SQLite database file")
    try:
        c = _ro(path)
        try:
            bad = [r[0] for r in c.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
        finally:
            c.close()
    except apsw.Error as e:
        raise errors.BadRequest(f"{path}: the SQLite file is corrupt or truncated "
                                f"({e})") from None
    if bad:
        raise errors.BadRequest(f"{path}: the SQLite file is corrupt: {'; '.join(bad[:3])}")
