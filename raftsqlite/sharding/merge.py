"""Merging per-shard results into the one answer a single database would give.

- concatenation (no order asked for);
- ``ORDER BY``: a k-way merge of the shards' already sorted rows, comparing values the way
  SQLite does (NULL < numbers < text < blob; BINARY or NOCASE text; NULLS FIRST/LAST);
- ``LIMIT n OFFSET m``: each shard was asked for ``n+m`` rows; the merge slices;
- ``DISTINCT``: duplicates across shards removed, first occurrence kept;
- aggregates: the shards return partial aggregates per group; the final step re-aggregates
  them with SQLite itself (an in-memory database per thread, Citus-style), so ``HAVING``,
  expressions over aggregates, ``ORDER BY`` and type rules are exactly SQLite's.

Results are the neutral dicts of the router's executor interface:
``{"columns": [...], "types": [...], "values": [[...], ...]}``.
"""
import heapq
import sqlite3
import threading
from itertools import islice

from raftsqlite.db_shapes import fill_types
from raftsqlite.errors import RoutingRefused

PARTIALS = "__rs_partials"


class _Rev:
    """Inverts the order of a key part for DESC terms in a mixed-direction ORDER BY."""
    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k

    def __lt__(self, o):
        return o.k < self.k

    def __eq__(self, o):
        return self.k == o.k


def _nocase(s):
    # SQLite's NOCASE folds ASCII letters only.
    return s.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def _rtrim(s):
    return s.rstrip(" ")


def sort_value(v, collation=None):
    """A Python key ordering like SQLite's comparison of stored values."""
    if v is None:
        return (0, 0)
    t = type(v)
    if t is int or t is float or t is bool:
        return (1, v)
    if t is str:
        if collation == "nocase":
            return (2, _nocase(v))
        if collation == "rtrim":
            return (2, _rtrim(v))
        return (2, v)  # Python compares code points == SQLite BINARY on UTF-8
    return (3, bytes(v))


def _key_fn(order):
    """``order``: [(column index, desc, nulls_first, collation)] -> key(row)."""
    parts = []
    for idx, desc, nulls_first, coll in order:
        # SQLite's default puts NULL first ascending and last descending; an explicit
        # NULLS FIRST/LAST overrides it.
        null_rank = -1 if nulls_first else 4
        if desc:
            null_rank = -null_rank + 3  # undone by the reversal below
        parts.append((idx, desc, null_rank, coll))

    def key(row):
        out = []
        for idx, desc, null_rank, coll in parts:
            v = row[idx]
            k = (null_rank, 0) if v is None else sort_value(v, coll)
            out.append(_Rev(k) if desc else k)
        return out
    return key


def merge_sorted(shard_rows, order):
    """k-way merge of lists that are each sorted by ``order``. Stable across shards."""
    return heapq.merge(*shard_rows, key=_key_fn(order))


def resolve_int(src, params, what):
    """The int a LIMIT/OFFSET source stands for (a literal or a bound parameter)."""
    if src is None:
        return None
    kind, v = src
    if kind == "pos":
        if not isinstance(params, (list, tuple)) or v >= len(params):
            raise RoutingRefused(f"{what} refers to parameter {v + 1}, which was not given")
        v = params[v]
    elif kind == "name":
        if not isinstance(params, dict) or v not in params:
            raise RoutingRefused(f"{what} refers to parameter :{v}, which was not given")
        v = params[v]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            pass
    if not isinstance(v, int) or isinstance(v, bool):
        raise RoutingRefused(f"{what} must be an integer, got {v!r}")
    return v


def _check_shard(res, group):
    if "error" in res and res["error"]:
        raise ShardError(group, res["error"])
    return res


class ShardError(Exception):
    """A shard answered one statement with an error; the merged answer is that error."""

    def __init__(self, group, message):
        super().__init__(f"shard {group}: {message}")
        self.group = group
        self.message = message


def merge_rows(results, spec, params):
    """Merge non-aggregate results. ``results``: [(group, result dict)]; ``spec`` is the
    plan's merge spec; returns one result dict."""
    cols = types = None
    lists = []
    for group, res in results:
        _check_shard(res, group)
        if cols is None and res.get("columns") is not None:
            cols, types = res["columns"], res.get("types")
        lists.append(res.get("values") or [])
    hidden = spec.get("hidden", 0)
    if cols is None:
        cols, types = [], []
    order = spec.get("order")
    if order:
        ncols = len(cols)
        order = [(i if i >= 0 else ncols + i, d, nf, c) for i, d, nf, c in order]
        rows = merge_sorted(lists, order)
    else:
        rows = (r for rows in lists for r in rows)
    if spec.get("distinct"):
        rows = _distinct(rows, spec.get("distinct_colls"))
    limit = resolve_int(spec.get("limit"), params, "LIMIT")
    offset = resolve_int(spec.get("offset"), params, "OFFSET") or 0
    if offset < 0:
        offset = 0
    if limit is not None and limit >= 0:
        rows = islice(rows, offset, offset + limit)
    elif offset:
        rows = islice(rows, offset, None)
    if hidden:
        out = [list(r[:-hidden]) for r in rows]
        cols, types = cols[:-hidden], (types[:-hidden] if types else types)
    else:
        out = [list(r) for r in rows]
    # a shard that had no rows could not infer an undeclared column's type (db_shapes)
    return {"columns": list(cols), "types": fill_types(list(types or []), out), "values": out}


def _distinct(rows, colls=None):
    # Values equal under a column's collation are duplicates (NOCASE 'Oslo' == 'oslo').
    folds = [(i, _nocase if c == "nocase" else _rtrim) for i, c in enumerate(colls or ())
             if c in ("nocase", "rtrim")]
    seen = set()
    for r in rows:
        k = [_hashable(v) for v in r]
        for i, f in folds:
            if i < len(k) and isinstance(k[i], str):
                k[i] = f(k[i])
        k = tuple(k)
        if k not in seen:
            seen.add(k)
            yield r


def _hashable(v):
    # 1 and 1.0 are the same value to SQLite's DISTINCT, and to Python's set; bytes-like
    # values from JSON decoding may arrive as lists.
    return tuple(v) if isinstance(v, list) else v


_local = threading.local()


def _conn():
    c = getattr(_local, "conn", None)
    if c is None:
        c = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=True)
        _local.conn = c
    return c


def merge_aggregates(results, spec, params):
    """Re-aggregate partial rows with SQLite: load them into a temporary table with no
    declared types (so values keep their types), run the plan's final query on it."""
    rows = []
    width = spec["width"]
    shard_types = None
    for group, res in results:
        _check_shard(res, group)
        if shard_types is None and res.get("types"):
            shard_types = res["types"]
        for r in res.get("values") or []:
            if len(r) != width:
                raise ShardError(group, f"partial aggregate row has {len(r)} columns, expected {width}")
            rows.append(r)
    c = _conn()
    colls = {int(k): v for k, v in (spec.get("colls") or {}).items()}
    cols = ", ".join(f"__rs_c{i}" + (f" COLLATE {colls[i].upper()}" if i in colls else "")
                     for i in range(width))
    c.execute(f"DROP TABLE IF EXISTS temp.{PARTIALS}")
    c.execute(f"CREATE TEMP TABLE {PARTIALS} ({cols})")
    try:
        if rows:
            c.executemany(f"INSERT INTO {PARTIALS} VALUES ({', '.join('?' * width)})", rows)
        try:
            cur = c.execute(spec["final_sql"], _final_params(spec, params))
        except sqlite3.Error as e:
            raise ShardError("router", f"final aggregation failed: {e}") from None
        values = [list(r) for r in cur.fetchall()]
        names = [d[0] for d in cur.description] if cur.description else []
    finally:
        c.execute(f"DROP TABLE IF EXISTS temp.{PARTIALS}")
    types = [shard_types[i] if i is not None and shard_types and i < len(shard_types) else ""
             for i in (spec.get("types_from") or [None] * len(names))]
    # computed in the final query here (COUNT, SUM, AVG, ...): the unsharded answer's type
    return {"columns": names, "types": fill_types(types, values), "values": values}


def _final_params(spec, params):
    need = spec.get("final_params") or ()
    if not need:
        return {}
    out = {}
    for name in need:
        if name.startswith("__p"):
            i = int(name[3:])
            if not isinstance(params, (list, tuple)) or i >= len(params):
                raise RoutingRefused(f"statement needs parameter {i + 1}, which was not given")
            out[name] = params[i]
        else:
            if not isinstance(params, dict) or name not in params:
                raise RoutingRefused(f"statement needs parameter :{name}, which was not given")
            out[name] = params[name]
    return out


def merge_writes(results):
    """Per-shard write results -> one result that says what each shard applied
    (decision 15: a multi-shard statement is not atomic, and the answer says so)."""
    total = 0
    last_id = None
    errors = {}
    per = {}
    for group, res in results:
        per[group] = res
        if res.get("error"):
            errors[group] = res["error"]
            continue
        total += res.get("rows_affected") or 0
        if res.get("last_insert_id") is not None:
            last_id = res["last_insert_id"]
    out = {"rows_affected": total, "last_insert_id": last_id, "shards": per}
    if errors:
        out["error"] = "; ".join(f"shard {g}: {e}" for g, e in errors.items())
        out["applied_on"] = sorted(g for g in per if g not in errors)
    return out
