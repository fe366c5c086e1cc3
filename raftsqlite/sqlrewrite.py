"""Deterministic statement rewriting and refusal of unsafe statements, before logging.

Every replica applies the same SQL text, so anything that would evaluate differently on
each replica is replaced by a literal chosen once by the node that receives the write:
``random()``, ``randomblob(N)``, the date/time functions with ``'now'`` (or with no time
argument, which means now), and ``CURRENT_TIMESTAMP/DATE/TIME``. Statements that escape
the database or break replication are refused with ``StatementRefused`` naming them.

A small tokenizer keeps string literals, quoted identifiers and comments intact. The
fast path is one regex search over the text; most statements never get tokenized.

Not rewritten: DDL (``CREATE``/``ALTER``): a ``DEFAULT CURRENT_TIMESTAMP`` or a trigger
body must stay an expression. Those are evaluated while applying, and are deterministic
there too: each log entry carries the leader's instant (read by SQLite through the
writer's clock VFS) and ``random()`` is seeded by the entry's position (see db.py, fsm.py).
"""
import random as _random
import re
import time
from collections import OrderedDict

from raftsqlite.codec.model import BulkStatements, Statement
from raftsqlite.db_shapes import STATE_PRAGMAS
from raftsqlite.errors import StatementRefused

INTERNAL_PREFIX = "_raftsqlite_"

# Plain substrings (lowercase) that a statement needing any work must contain: checking
# them with ``in`` is several times cheaper than one case-insensitive regex search.
_CANDIDATE_WORDS = ("random", "current_", "date", "time", "julianday", "unixepoch", "attach",
                    "detach",
                    "load_extension", "vacuum", "pragma", ";", "begin", "commit", "end",
                    "rollback", "savepoint", "release", "_raftsqlite_")


def _maybe(sql):
    low = sql.lower()
    for w in _CANDIDATE_WORDS:
        if w in low:
            return True
    return False


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<str>'(?:[^']|'')*(?:'|\Z))
  | (?P<ident>"(?:[^"]|"")*(?:"|\Z)|`(?:[^`]|``)*(?:`|\Z)|\[[^\]]*(?:\]|\Z))
  | (?P<blob>[xX]'[^']*(?:'|\Z))
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+)
  | (?P<param>\?\d*|[:@$][A-Za-z0-9_]+)
  | (?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)
  | (?P<op>.)
""", re.X | re.S)

_TIME_FUNCS = {"date", "time", "datetime", "julianday", "unixepoch"}
_TXN_WORDS = {"begin", "commit", "end", "rollback", "savepoint", "release"}
_DENIED_PRAGMAS = {"journal_mode", "synchronous", "wal_checkpoint", "wal_autocheckpoint",
                   "writable_schema", "locking_mode", "mmap_size", "journal_size_limit"}
_WRITE_WORDS = {"insert", "update", "delete", "replace"}
_MAX_RANDOMBLOB = 1 << 20


def tokenize(sql):
    """[(kind, text)] covering the whole text, in order."""
    return [(m.lastgroup, m.group()) for m in _TOKEN.finditer(sql)]


def _split(tokens):
    """Split tokens into statements at top-level ';' (a trigger body's BEGIN..END, with
    CASE..END inside it, does not end the statement)."""
    stmts, cur, first, is_trigger, depth = [], [], None, False, 0
    for tok in tokens:
        kind, text = tok
        cur.append(tok)
        if kind == "word":
            w = text.lower()
            if first is None:
                first = w
            elif first == "create" and w == "trigger":
                is_trigger = True
            elif is_trigger and w in ("begin", "case"):
                depth += 1
            elif is_trigger and w == "end" and depth:
                depth -= 1
        elif kind == "op" and text == ";" and depth == 0:
            stmts.append(cur)
            cur, first, is_trigger = [], None, False
    if any(k not in ("ws", "comment") for k, _ in cur):
        stmts.append(cur)
    return stmts


def _words(stmt):
    return [(i, t.lower()) for i, (k, t) in enumerate(stmt) if k == "word"]


def _sig(stmt):
    """Indexes of tokens that are not whitespace or comments."""
    return [i for i, (k, _) in enumerate(stmt) if k not in ("ws", "comment")]


def _refuse_check(stmt, text):
    sig = _sig(stmt)
    if not sig:
        return
    kind, first = stmt[sig[0]]
    first_l = first.lower() if kind == "word" else ""
    snippet = text.strip()[:80]
    if first_l in ("attach", "detach"):
        raise StatementRefused(f"{first.upper()} is not allowed: it escapes the replicated "
                               f"database (statement: {snippet})")
    if first_l in _TXN_WORDS:
        raise StatementRefused(f"{first.upper()} is not allowed: explicit transaction control "
                               f"cannot be replicated; send the statements in one request with "
                               f"the transaction flag (statement: {snippet})")
    if first_l == "vacuum" and any(w == "into" for _, w in _words(stmt)):
        raise StatementRefused(f"VACUUM INTO is not allowed: it writes a file outside the "
                               f"replicated database (statement: {snippet})")
    if first_l == "pragma":
        names = [stmt[i][1].lower() for i in sig[1:4] if stmt[i][0] in ("word", "ident")]
        # PRAGMA name or PRAGMA schema.name
        name = names[1] if len(sig) > 3 and stmt[sig[2]][1] == "." and len(names) > 1 \
            else (names[0] if names else "")
        name = name.strip('"`[]')
        if name in _DENIED_PRAGMAS:
            raise StatementRefused(f"PRAGMA {name} is not allowed: it changes durability or "
                                   f"the file format underneath replication "
                                   f"(statement: {snippet})")
        if name == "optimize":
            raise StatementRefused(f"PRAGMA optimize is not allowed: what it analyzes "
                                   f"depends on each connection's history, so replicas would "
                                   f"differ; run ANALYZE instead (statement: {snippet})")
        named_at = 3 if len(sig) > 3 and stmt[sig[2]][1] == "." else 1
        if name in STATE_PRAGMAS and len(sig) > named_at + 1:
            raise StatementRefused(f"PRAGMA {name} cannot be set by a statement: it is "
                                   f"connection state, not database state, so replicas and "
                                   f"restarted members would differ (reading it is allowed; "
                                   f"statement: {snippet})")
    for n, i in enumerate(sig):
        k, t = stmt[i]
        if k == "word" and t.lower() == "load_extension" and n + 1 < len(sig) \
                and stmt[sig[n + 1]][1] == "(":
            raise StatementRefused(f"load_extension() is not allowed: it loads native code "
                                   f"outside the replicated database (statement: {snippet})")


def _now_literal(now):
    t = time.gmtime(now)
    ms = int(round((now - int(now)) * 1000))
    if ms >= 1000:
        ms = 999
    return "'" + time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{ms:03d}'"


def _matching_paren(stmt, sig, n):
    """sig position of the ')' closing the '(' at sig position n, or None."""
    depth = 0
    for m in range(n, len(sig)):
        t = stmt[sig[m]][1]
        if stmt[sig[m]][0] != "op":
            continue
        if t == "(":
            depth += 1
        elif t == ")":
            depth -= 1
            if depth == 0:
                return m
    return None


def _args(stmt, sig, open_n, close_n):
    """Top-level arguments between parens as lists of sig positions."""
    args, cur, depth = [], [], 0
    for m in range(open_n + 1, close_n):
        k, t = stmt[sig[m]]
        if k == "op" and t == "(":
            depth += 1
        elif k == "op" and t == ")":
            depth -= 1
        if k == "op" and t == "," and depth == 0:
            args.append(cur)
            cur = []
        else:
            cur.append(m)
    if cur or args:
        args.append(cur)
    return args


def _rewrite_stmt(stmt, now_lit, rng):
    """Return the statement's text with non-deterministic calls replaced by literals."""
    sig = _sig(stmt)
    if not sig:
        return "".join(t for _, t in stmt)
    first = stmt[sig[0]][1].lower() if stmt[sig[0]][0] == "word" else ""
    if first in ("create", "alter"):
        return "".join(t for _, t in stmt)
    repl = {}          # token index -> replacement text ('' deletes)
    after = {}         # token index -> text inserted after it
    for n, i in enumerate(sig):
        kind, text = stmt[i]
        if kind != "word":
            continue
        w = text.lower()
        if w in ("current_timestamp", "current_date", "current_time"):
            if n > 0 and stmt[sig[n - 1]][1] == ".":
                continue
            lit = now_lit[1:-1]
            value = {"current_timestamp": lit[:19], "current_date": lit[:10],
                     "current_time": lit[11:19]}[w]
            repl[i] = f"'{value}'"
            continue
        if n + 1 >= len(sig) or stmt[sig[n + 1]][1] != "(" or \
                (n > 0 and stmt[sig[n - 1]][1] == "."):
            continue
        if w not in ("random", "randomblob", "strftime") and w not in _TIME_FUNCS:
            continue
        close = _matching_paren(stmt, sig, n + 1)
        if close is None:
            continue
        args = _args(stmt, sig, n + 1, close)
        if w == "random":
            if not args:
                v = rng.getrandbits(64) - (1 << 63)
                repl[i] = f"({v})"
                for m in range(n + 1, close + 1):
                    repl[sig[m]] = ""
        elif w == "randomblob":
            if len(args) != 1:
                continue
            toks = [stmt[sig[m]] for m in args[0]]
            if len(toks) == 1 and toks[0][0] == "num" and toks[0][1].isdigit():
                size = max(1, int(toks[0][1]))
                if size > _MAX_RANDOMBLOB:
                    raise StatementRefused(f"randomblob({size}) is too large to replicate "
                                           f"(at most {_MAX_RANDOMBLOB} bytes)")
                repl[i] = "X'" + rng.getrandbits(size * 8).to_bytes(size, "big").hex() + "'"
                for m in range(n + 1, close + 1):
                    repl[sig[m]] = ""
            else:
                raise StatementRefused("randomblob() needs a literal integer length to be "
                                       "replicated deterministically")
        else:
            pos = 1 if w == "strftime" else 0
            if len(args) == pos:
                anchor = sig[close - 1] if pos else sig[n + 1]
                after[anchor] = after.get(anchor, "") + (", " if pos else "") + now_lit
            elif len(args) > pos and len(args[pos]) == 1:
                k, t = stmt[sig[args[pos][0]]]
                if k == "str" and t[1:-1].strip().lower() == "now":
                    repl[sig[args[pos][0]]] = now_lit
    if not repl and not after:
        return "".join(t for _, t in stmt)
    out = []
    for i, (_, t) in enumerate(stmt):
        out.append(repl.get(i, t))
        if i in after:
            out.append(after[i])
    return "".join(out)


def rewrite(sql, *, now=None, rng=None):
    """Return ``sql`` made deterministic; raise StatementRefused for unsafe statements.
    ``now`` (epoch seconds) and ``rng`` (a random.Random) are chosen by the caller once
    per request so every statement of it sees the same instant."""
    if not isinstance(sql, str):
        raise StatementRefused(f"statement must be a string, got {type(sql).__name__}")
    if may_name_schema(sql):
        sql = hide_internal(sql)   # reads through the log (level=strong, /db/request) too
    if not _maybe(sql):
        return sql
    if INTERNAL_PREFIX in sql.lower():
        raise StatementRefused(f"statement refers to internal tables ({INTERNAL_PREFIX}*), "
                               f"which only the node itself may touch: {sql.strip()[:80]}")
    stmts = _split(tokenize(sql))
    now_lit = _now_literal(time.time() if now is None else now)
    rng = rng or _random.Random()
    parts = []
    for st in stmts:
        text = "".join(t for _, t in st)
        _refuse_check(st, text)
        parts.append(_rewrite_stmt(st, now_lit, rng))
    return "".join(parts)


def rewrite_statements(statements, *, now=None, rng=None):
    """[Statement] -> [Statement] with rewritten SQL (same objects when unchanged). A
    BulkStatements (one text for every row) is checked once and comes back as it is when
    its text needs no rewriting; otherwise each of its statements is rewritten on its own
    (a list comes back), so every row draws its own random and time literals as before."""
    now = time.time() if now is None else now
    rng = rng or _random.Random()
    if type(statements) is BulkStatements:
        if rewrite(statements.sql, now=now, rng=rng) == statements.sql:
            return statements
        statements = list(statements)
    out = []
    append = out.append
    same = None     # last text that needed no change: a bulk request repeats one text
    for st in statements:
        text = st.sql
        if text == same:
            append(st)
            continue
        sql = rewrite(text, now=now, rng=rng)
        if sql == text:
            # nothing was rewritten (so no random or time literal was drawn) and the
            # refusal checks passed: an equal text gives the same answer
            same = text
            append(st)
        else:
            append(Statement(sql, st.params))
    return out


def check(sql):
    """Refusal checks only (for reads, which are never rewritten)."""
    if not isinstance(sql, str):
        raise StatementRefused(f"statement must be a string, got {type(sql).__name__}")
    if not _maybe(sql):
        return
    if INTERNAL_PREFIX in sql.lower():
        raise StatementRefused(f"statement refers to internal tables ({INTERNAL_PREFIX}*), "
                               f"which only the node itself may touch: {sql.strip()[:80]}")
    for st in _split(tokenize(sql)):
        _refuse_check(st, "".join(t for _, t in st))


_RO_CACHE = OrderedDict()
_RO_CACHE_MAX = 4096
_SIMPLE_SELECT = re.compile(r"\s*select\b[^;'\"`\[]*\Z", re.I)


def is_read_only(sql) -> bool:
    """True when every statement in ``sql`` only reads (SELECT, VALUES, EXPLAIN, a WITH
    that ends in SELECT, a PRAGMA without '='). Unknown or empty text counts as a write
    so it is sent through the log, where SQLite itself decides."""
    if not isinstance(sql, str):
        return False
    if _SIMPLE_SELECT.match(sql):
        return True
    return _cached(_RO_CACHE, _RO_CACHE_MAX, sql, _classify)


def _cached(cache, limit, sql, fn):
    """``fn(sql)`` through ``cache``, an OrderedDict kept to ``limit`` recent texts."""
    hit = cache.get(sql)
    if hit is not None:
        cache.move_to_end(sql)
        return hit
    out = fn(sql)
    cache[sql] = out
    if len(cache) > limit:
        cache.popitem(last=False)
    return out


def _classify(sql):
    stmts = _split(tokenize(sql))
    if not stmts:
        return False
    for st in stmts:
        sig = _sig(st)
        if not sig:
            continue
        k, t = st[sig[0]]
        first = t.lower() if k == "word" else t
        if first in ("select", "values", "explain"):
            if first == "select" and any(w in _WRITE_WORDS for _, w in _words(st)) and \
                    not _select_only(st):
                return False
            continue
        if first == "(":
            continue
        if first == "with":
            if _select_only(st):
                continue
            return False
        if first == "pragma":
            if any(st[i][1] == "=" for i in sig):
                return False
            continue
        return False
    return True


def _select_only(st):
    """A WITH/SELECT statement whose top-level (depth 0) verbs are all SELECT
    (``replace(...)`` the function is not the REPLACE verb)."""
    depth = 0
    sig = _sig(st)
    for n, i in enumerate(sig):
        k, t = st[i]
        if k == "op":
            if t == "(":
                depth += 1
            elif t == ")":
                depth -= 1
        elif k == "word" and depth == 0 and t.lower() in _WRITE_WORDS:
            if n + 1 < len(sig) and st[sig[n + 1]][1] == "(":
                continue
            return False
    return True


# ---- the node's own tables, hidden from schema introspection --------------------------
# ORMs and tools list tables by reading sqlite_master (SQLAlchemy's reflection, Alembic's
# autogenerate, Django's inspectdb, rqlite's own shell's .tables and .schema) or PRAGMA
# table_list. They would see the node's bookkeeping tables (_raftsqlite_*) and, worse,
# propose to drop them. So a statement naming main.sqlite_master / sqlite_schema as a table
# reads a subquery without them instead, under the same name or the user's alias, and a bare
# PRAGMA table_list becomes the same query on pragma_table_list without them. Reads are
# rewritten where they run (Database.read); statements through the log (writes, level=strong
# reads, /db/request) in ``rewrite``, before logging, so every member applies the same text.
# Naming an internal table outright is refused as before.
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema"}
_VISIBLE_SCHEMA = ("(SELECT * FROM main.sqlite_master WHERE tbl_name NOT LIKE "
                   "'\\_raftsqlite\\_%' ESCAPE '\\')")
_VISIBLE_TABLE_LIST = ("SELECT * FROM pragma_table_list WHERE name NOT LIKE "
                       "'\\_raftsqlite\\_%' ESCAPE '\\'")
# words that may follow a table in a FROM clause and are not an alias
_AFTER_TABLE = {"where", "join", "left", "right", "full", "inner", "cross", "natural", "on",
                "using", "group", "order", "limit", "union", "except", "intersect", "window",
                "having", "indexed", "not", "outer", "returning"}
_hide_cache = OrderedDict()
_HIDE_CACHE_MAX = 256


def may_name_schema(sql):
    """Cheap test: could ``hide_internal`` change ``sql``?"""
    low = sql.lower()
    return "sqlite_" in low or "table_list" in low


def _ident(kind, text):
    if kind == "word":
        return text.lower()
    if kind == "ident":
        return text[1:-1].lower()
    return None


def hide_internal(sql):
    """``sql`` with the node's tables left out of sqlite_master / PRAGMA table_list (see
    above); ``sql`` itself when it names neither."""
    return _cached(_hide_cache, _HIDE_CACHE_MAX, sql, _hide)


def _hide(sql):
    toks = tokenize(sql)
    sig = _sig(toks)
    words = [_ident(*toks[i]) for i in sig]
    texts = [t for _, t in toks]
    changed = False
    if 2 <= len(sig) <= 5 and words[0] == "pragma":
        rest = [toks[i][1].lower() for i in sig[1:]]
        if rest[-1] == ";":
            rest.pop()
        if rest == ["table_list"]:
            return _VISIBLE_TABLE_LIST
        if rest == ["main", ".", "table_list"]:
            return _VISIBLE_TABLE_LIST + " AND schema = 'main'"
    for p, i in enumerate(sig):
        if words[p] not in _SCHEMA_TABLES:
            continue
        start = p
        if p >= 2 and toks[sig[p - 1]] == ("op", "."):
            if words[p - 2] != "main":
                continue          # temp.sqlite_master, or a column of that name
            start = p - 2
        before = words[start - 1] if start >= 1 else None
        if before not in ("from", "join") and toks[sig[start - 1]] != ("op", ","):
            continue
        nxt = sig[p + 1] if p + 1 < len(sig) else None
        if nxt is not None and toks[nxt] == ("op", "."):
            continue              # sqlite_master.name: a qualifier, not the table
        aliased = nxt is not None and (
            toks[nxt][0] == "ident" or (toks[nxt][0] == "word"
                                        and words[p + 1] not in _AFTER_TABLE))
        repl = _VISIBLE_SCHEMA if aliased else f"{_VISIBLE_SCHEMA} AS {toks[i][1]}"
        for j in range(sig[start], i + 1):
            texts[j] = ""
        texts[sig[start]] = repl
        changed = True
    return "".join(texts) if changed else sql
