"""SQL text -> route plan, parsed once per text (sqlglot) and cached.

A plan is *logical*: it says which table and which key values a statement is bound to,
the SQL to run on one shard (the original text) or on many (a rewrite), and how to merge.
It does not say which groups own the keys: ``Plan.route(catalog, params)`` resolves that
at execution time from the current catalog, so a catalog refresh never invalidates the
cache. The cache is dropped only when table registrations change (``schema_version``).

What is refused, and why, is decided here; see docs/design/sharding.md for the list.
"""
import re
import threading
from collections import OrderedDict

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

from raftsqlite.errors import RoutingRefused
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.ownership import GUARD_MAGIC, GuardItem
from raftsqlite.sharding.ownership import _HDR as _GHDR, _ONE as _GONE
from raftsqlite.sharding.scatter import (
    _Tables, _has_subquery, _key_binding, _param_names, _refuse,
    _rewrite_agg, _rewrite_rows, _aggs, _resolve_group, _span_names, _sqlite_name, _src, _tname,
)

D = "sqlite"
_DIALECT = sqlglot.Dialect.get_or_raise(D)
DEFAULT_GROUP = "default"


class Call:
    """One statement to run on one group."""
    __slots__ = ("group", "sql", "params", "guard")

    def __init__(self, group, sql, params, guard=None):
        self.group = group
        self.sql = sql
        self.params = params
        self.guard = guard  # list[GuardItem] or None (unsharded)

    def __repr__(self):
        return f"Call({self.group!r}, {self.sql!r}, {self.params!r})"


class Route:
    """A plan resolved against a catalog: the calls and how to combine their results."""
    __slots__ = ("kind", "calls", "merge", "write")

    def __init__(self, kind, calls, merge=None, write=False):
        self.kind = kind      # "default" | "single" | "scatter" | "fanout"
        self.calls = calls
        self.merge = merge    # None (one call), or a merge spec dict
        self.write = write


class Plan:
    kind = "default"
    write = False

    def route(self, catalog, params):
        raise NotImplementedError

    def explain(self, catalog, params=None):
        r = self.route(catalog, params)
        return {"kind": self.kind, "route": r.kind, "write": r.write,
                "tables": getattr(self, "tables", []),
                "shards": [c.group for c in r.calls],
                "sql": [{"shard": c.group, "sql": c.sql} for c in r.calls],
                "merge": _merge_steps(r.merge)}


class DefaultPlan(Plan):
    """Not about any sharded table: the default group runs it unchanged."""
    kind = "default"

    def __init__(self, sql, write=None):
        self.sql = sql
        self.tables = []
        self.write = write

    def route(self, catalog, params):
        return Route("default", [Call(DEFAULT_GROUP, self.sql, params)], None, self.write)


def _merge_steps(m):
    if not m:
        return ["none: one shard answers"]
    if m["kind"] == "write":
        return ["per-shard results: rows_affected summed; each shard's outcome reported"]
    if m["kind"] == "agg":
        return [f"partial aggregates per shard ({m['width']} columns)",
                f"re-aggregate in SQLite: {m['final_sql']}"]
    steps = []
    if m.get("order"):
        steps.append("k-way merge on " + ", ".join(
            f"column {i}{' DESC' if d else ''}" for i, d, _, _ in m["order"]))
    else:
        steps.append("concatenate")
    if m.get("distinct"):
        steps.append("remove duplicates across shards")
    if m.get("limit") or m.get("offset"):
        steps.append(f"each shard returns LIMIT+OFFSET rows; slice LIMIT {_fmt_src(m.get('limit'))} "
                     f"OFFSET {_fmt_src(m.get('offset'))}")
    if m.get("hidden"):
        steps.append(f"drop {m['hidden']} sort column(s) added for the merge")
    return steps


def _fmt_src(src):
    if src is None:
        return "-"
    kind, v = src
    return repr(v) if kind == "lit" else f"?{v + 1}" if kind == "pos" else f":{v}"


def _params_for(names, params):
    """Named-parameter dict for rewritten SQL, where positional ``?`` became ``:__pN``."""
    out = {}
    for n in names:
        if n.startswith("__p"):
            i = int(n[3:])
            if not isinstance(params, (list, tuple)) or i >= len(params):
                raise RoutingRefused(f"statement needs parameter {i + 1}, which was not given")
            out[n] = params[i]
        else:
            if not isinstance(params, dict) or n not in params:
                raise RoutingRefused(f"statement needs parameter :{n}, which was not given")
            out[n] = params[n]
    return out


def _resolve(src, params):
    kind, v = src
    if kind == "lit":
        return v
    if kind == "pos":
        if not isinstance(params, (list, tuple)) or v >= len(params):
            raise RoutingRefused(f"statement needs parameter {v + 1}, which was not given")
        return params[v]
    if not isinstance(params, dict) or v not in params:
        raise RoutingRefused(f"statement needs parameter :{v}, which was not given")
    return params[v]


class _Sharded(Plan):
    """Common to plans on one colocation group."""

    def _tinfo(self, catalog):
        t = catalog.table(self.table)
        if t is None:
            raise RoutingRefused(f"table {self.table} is no longer registered; retry the statement")
        col = catalog.colocations[t["colocation"]]
        if not col["starts"]:
            raise _refuse(f"table {self.table} is registered for sharding but is on no shard yet",
                          "add it to a shard first: POST /table/add-to-shard")
        return t, col

    def _owners(self, catalog, params):
        """{group: [kid, ...]} for a key-bound plan. ``key = NULL`` matches no row, so a
        NULL binding needs no shard; if nothing else is bound, any one owner answers
        (with no rows)."""
        t, col = self._tinfo(catalog)
        out = {}
        for src in self.keys:
            v = _resolve(src, params)
            if v is None:
                continue
            kid = ks.key_id(v, t["shard_func"], t.get("key_affinity"))
            g = col["owners"][ks.index_of(col["starts"], kid)]
            out.setdefault(g, []).append(kid)
        if not out:
            out[col["owners"][0]] = []
        return t, col, out

    def _owned_only(self, ast, cname):
        """``ast`` restricted to rows this shard owns: a shard that holds rows of a range
        it does not own (a move's target while copying, its source until cleanup) must
        not answer with them. ``rs_owns`` is the SQL function every shard registers."""
        conds = [exp.Anonymous(this="rs_owns", expressions=[exp.Literal.string(cname),
                                                           exp.column(key, table=alias)])
                 for alias, key in self.owns_terms]
        return ast.where(exp.and_(*conds), copy=True).sql(D)

    def _sql_for(self, catalog, g, default_sql, ast):
        cname = catalog.tables[self.table]["colocation"]
        if g not in catalog.foreign_holders(cname):
            return default_sql
        f = self._filtered.get(cname)
        if f is None:
            f = self._filtered[cname] = self._owned_only(ast, cname)
        return f

    def _guard(self, col, group, kids):
        # The epoch is the group's own: when its ranges last changed (see Catalog._reown).
        e = col["shard_epochs"].get(group, 0)
        return [GuardItem(tb, e, kids) for tb in self.tables]


class ReadPlan(_Sharded):
    kind = "read"

    def __init__(self, sql, tables, keys, scatter_ast, scatter_names, merge, owns_terms):
        self.owns_terms = owns_terms        # [(alias, shard key)] of the FROM clause
        self._filtered = {}
        self.sql = sql
        self.tables = tables
        self.table = tables[0]
        self.keys = keys                    # [src] or None
        self._scatter_ast = scatter_ast
        self._scatter_sql = None
        self.scatter_names = scatter_names  # params the rewrite needs (None: original params)
        self.merge = merge

    @property
    def scatter_sql(self):
        # Generated on first use: a key-bound read usually never needs it.
        if self._scatter_sql is None:
            self._scatter_sql = self._scatter_ast.sql(D)
        return self._scatter_sql

    def route(self, catalog, params):
        if self.keys is not None:
            t, col, owners = self._owners(catalog, params)
            if len(owners) == 1:
                (g, kids), = owners.items()
                return Route("single", [Call(g, self.sql, params, self._guard(col, g, kids))])
            groups = sorted(owners)
        else:
            t, col = self._tinfo(catalog)
            owners = {}
            groups = sorted(set(col["owners"]))
            if len(groups) == 1:
                return Route("single", [Call(groups[0], self.sql, params, self._guard(col, groups[0], None))])
        p = params if self.scatter_names is None else _params_for(self.scatter_names, params)
        calls = [Call(g, self._sql_for(catalog, g, self.scatter_sql, self._scatter_ast), p,
                      self._guard(col, g, owners.get(g))) for g in groups]
        return Route("scatter", calls, self.merge)


class WritePlan(_Sharded):
    """UPDATE / DELETE."""
    kind = "write"
    write = True

    def __init__(self, sql, table, keys, single_only, ast, names, owns_terms):
        self.ast = ast                  # for the owned-rows-only variant during moves
        self.names = names              # parameters that variant binds by name, if any
        self.owns_terms = owns_terms
        self._filtered = {}
        self.sql = sql
        self.table = table
        self.tables = [table]
        self.keys = keys
        self.single_only = single_only  # ORDER BY/LIMIT on a write: one shard or refuse

    def route(self, catalog, params):
        if self.keys is not None:
            t, col, owners = self._owners(catalog, params)
            groups = {g: kids for g, kids in owners.items()}
        else:
            t, col = self._tinfo(catalog)
            groups = {g: None for g in sorted(set(col["owners"]))}
        if len(groups) > 1 and self.single_only:
            raise _refuse("UPDATE/DELETE with ORDER BY or LIMIT would pick rows on each shard "
                          "separately, not across the table",
                          "bind the shard key to one value, or select the keys first and write by key")
        calls = []
        for g, kids in sorted(groups.items()):
            sql = self.sql if kids is not None else self._sql_for(catalog, g, self.sql, self.ast)
            p = params if sql is self.sql or self.names is None else _params_for(self.names, params)
            calls.append(Call(g, sql, p, self._guard(col, g, kids)))
        return Route("single" if len(calls) == 1 else "scatter", calls,
                     None if len(calls) == 1 else {"kind": "write"}, True)


class InsertPlan(_Sharded):
    kind = "insert"
    write = True

    def __init__(self, sql, table, keys, prefix, rows, suffix, row_names):
        self.sql = sql
        self._one = None          # route_one's lookups for one catalog version
        self.table = table
        self.tables = [table]
        self.keys = keys          # one source per VALUES row
        self.prefix, self.rows, self.suffix = prefix, rows, suffix
        self.row_names = row_names  # per row: parameter names its rewritten SQL uses

    def route_one(self, catalog, params):
        """``(group, guard bytes)`` of a one-row insert (``len(self.keys) == 1``): the
        group and ``encode_guard`` of ``route``'s one call, without building the route.
        The catalog lookups are kept per catalog object and version (any change bumps
        the version)."""
        c = self._one
        if c is None or c[0] is not catalog or c[1] != catalog.version:
            t, col = self._tinfo(catalog)
            name = self.table.encode("utf-8")
            c = self._one = (catalog, catalog.version, t["shard_func"], t.get("key_affinity"),
                             col["starts"], col["owners"], col["shard_epochs"],
                             GUARD_MAGIC + _GHDR.pack(1) + _GHDR.pack(len(name)) + name)
        _, _, func, aff, starts, owners, epochs, prefix = c
        kid = ks.key_id(_resolve(self.keys[0], params), func, aff)
        g = owners[ks.index_of(starts, kid)]
        return g, prefix + _GONE.pack(epochs.get(g, 0), 1, kid)

    def route(self, catalog, params):
        t, col = self._tinfo(catalog)
        if len(self.keys) == 1:      # one row: one owner (the commonest insert)
            kid = ks.key_id(_resolve(self.keys[0], params), t["shard_func"], t.get("key_affinity"))
            g = col["owners"][ks.index_of(col["starts"], kid)]
            return Route("single", [Call(g, self.sql, params, self._guard(col, g, [kid]))], None, True)
        by = {}
        for i, src in enumerate(self.keys):
            kid = ks.key_id(_resolve(src, params), t["shard_func"], t.get("key_affinity"))
            g = col["owners"][ks.index_of(col["starts"], kid)]
            by.setdefault(g, ([], []))
            by[g][0].append(i)
            by[g][1].append(kid)
        if len(by) == 1:
            (g, (_, kids)), = by.items()
            return Route("single", [Call(g, self.sql, params, self._guard(col, g, kids))], None, True)
        calls = []
        for g in sorted(by):
            idx, kids = by[g]
            sql = self.prefix + ", ".join(self.rows[i] for i in idx) + self.suffix
            names = [n for i in idx for n in self.row_names[i]] + self.row_names[-1]
            calls.append(Call(g, sql, _params_for(dict.fromkeys(names), params),
                              self._guard(col, g, kids)))
        return Route("scatter", calls, {"kind": "write"}, True)


class DDLPlan(Plan):
    """DDL on a sharded table: every shard holding it, and the default group (which keeps
    the schema as the template for shards added later). Made idempotent so that a retry
    after a partial failure converges."""
    kind = "ddl"
    write = True

    def __init__(self, sql, tables, fanout_sql, all_groups=False):
        self.sql = sql
        self.tables = tables
        self.fanout_sql = fanout_sql
        self.all_groups = all_groups

    def route(self, catalog, params):
        groups = {DEFAULT_GROUP}
        if self.all_groups:
            groups.update(catalog.groups)
        for t in self.tables:
            col = catalog.colocation_of(t)
            if col is not None:
                groups.update(col["shards"])
                groups.update(col["owners"])
        calls = [Call(g, self.fanout_sql, params) for g in sorted(groups)]
        return Route("fanout", calls, {"kind": "write", "ddl": True}, True)


# ---- the planner ------------------------------------------------------------------------

class Planner:
    """Plans statements with a bounded LRU cache keyed by SQL text."""

    def __init__(self, cache_size=2048):
        self.cache_size = cache_size
        self._cache = OrderedDict()
        self._schema = None
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def plan(self, sql, catalog):
        with self._lock:
            if self._schema != catalog.schema_version:
                self._cache.clear()
                self._schema = catalog.schema_version
            hit = self._cache.get(sql)
            if hit is not None:
                self._cache.move_to_end(sql)
                self.hits += 1
                if isinstance(hit, RoutingRefused):
                    raise RoutingRefused(str(hit))
                return hit
        self.misses += 1
        try:
            plan = build_plan(sql, catalog)
        except RoutingRefused as e:
            plan = e
        with self._lock:
            self._cache[sql] = plan
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if isinstance(plan, RoutingRefused):
            raise RoutingRefused(str(plan))
        return plan

    def clear(self):
        with self._lock:
            self._cache.clear()

    def stats(self):
        return {"cached": len(self._cache), "capacity": self.cache_size,
                "hits": self.hits, "misses": self.misses}


def _mentions(sql_lower, catalog):
    return any(t in sql_lower for t in catalog.tables)


def build_plan(sql, catalog):
    if not catalog.tables:
        return DefaultPlan(sql)
    low = sql.lower()
    drop_index = low.lstrip().startswith("drop index")
    if not drop_index and not _mentions(low, catalog):
        return DefaultPlan(sql)
    try:
        tokens = _DIALECT.tokenize(sql)
    except SqlglotError as e:
        raise _refuse(f"cannot parse the statement to route it ({e})", "check its syntax") from None
    ptokens, npos = _name_positionals(tokens)
    try:
        stmts = [s for s in _DIALECT.parser().parse(ptokens, sql) if s is not None]
    except SqlglotError as e:
        raise _refuse(f"cannot parse a statement on a sharded table to route it ({str(e)[:200]})",
                      "use SQLite syntax that the router understands, or target one shard "
                      "explicitly with shard_id=") from None
    tables = _registered_in(stmts, catalog)
    if any(isinstance(st, exp.Command) for st in stmts):
        # sqlglot could not analyse it; if a token names a sharded table, routing it
        # blind to the default group would be a silent wrong answer.
        named = sorted(set(re.findall(r"\w+", low)) & set(catalog.tables))
        if named:
            raise _refuse(f"the router cannot analyse this statement on sharded table(s) "
                          f"{', '.join(named)}", "rewrite it (e.g. INSERT OR REPLACE instead of "
                          "REPLACE), or target one shard explicitly with shard_id=")
    if not tables and not drop_index:
        return DefaultPlan(sql)
    if len(stmts) != 1:
        raise _refuse("several statements in one SQL text touch a sharded table",
                      "send them as separate statements")
    st = stmts[0]
    ctx = _Ctx(sql, tokens, catalog, npos)
    if isinstance(st, exp.Select):
        return _plan_select(st, ctx)
    if isinstance(st, exp.Insert):
        return _plan_insert(st, ctx)
    if isinstance(st, (exp.Update, exp.Delete)):
        return _plan_write(st, ctx)
    if isinstance(st, (exp.Create, exp.Drop, exp.Alter)):
        return _plan_ddl(st, ctx, tables)
    if isinstance(st, exp.Union) or isinstance(st, exp.SetOperation):
        raise _refuse("UNION/INTERSECT/EXCEPT over sharded tables is not supported",
                      "run each part as its own query and combine the results")
    if isinstance(st, exp.Command):
        raise _refuse(f"the router cannot analyse this {st.name} statement on sharded table(s) "
                      f"{', '.join(tables)}", "rewrite it (e.g. INSERT OR REPLACE instead of "
                      "REPLACE), or target one shard explicitly with shard_id=")
    if isinstance(st, (exp.Pragma, exp.Transaction, exp.Commit, exp.Rollback)):
        return DefaultPlan(sql)
    raise _refuse(f"{type(st).__name__.upper()} statements on sharded tables are not routed",
                  "target one shard explicitly with shard_id=")


class _Ctx:
    def __init__(self, sql, tokens, catalog, npos):
        self.sql = sql
        self.tokens = tokens
        self.catalog = catalog
        self.npos = npos


def _name_positionals(tokens):
    """Turn every ``?`` token into ``:__pN`` (N = its position in the text), so that
    rewritten SQL which drops, moves or repeats a parameter still binds the right value.
    Done on tokens: the AST's walk order is not the text order (``LIMIT ?, ?``)."""
    out, n = [], 0
    prev = None
    for t in tokens:
        if prev is not None and prev.token_type == TokenType.PLACEHOLDER and prev.text == "?" \
                and t.token_type == TokenType.NUMBER and t.start == prev.end + 1:
            raise _refuse("numbered parameters (?NNN) are not supported on sharded tables",
                          "use ? or :name parameters")
        if t.token_type == TokenType.PLACEHOLDER and t.text == "?":
            out.append(Token(TokenType.COLON, ":", t.line, t.col, t.start, t.start, t.comments))
            out.append(Token(TokenType.VAR, f"__p{n}", t.line, t.col, t.start, t.end, []))
            n += 1
        else:
            out.append(t)
        prev = t
    return out, n

def _registered_in(stmts, catalog):
    found = []
    for st in stmts:
        ctes = {c.alias_or_name.lower() for c in st.find_all(exp.CTE)}
        for t in st.find_all(exp.Table):
            n = _tname(t)
            if n in catalog.tables and n not in ctes and n not in found:
                found.append(n)
    return found


def _plan_select(sel, ctx):
    if sel.args.get("with_") is not None or sel.args.get("with") is not None:
        raise _refuse("WITH (common table expressions) over sharded tables is not supported",
                      "run the inner query first and pass its result as parameters")
    if _has_subquery(sel):
        raise _refuse("subqueries over sharded tables cannot be answered across shards "
                      "(each shard would see only its own rows)",
                      "run the subquery separately and pass its result as a parameter")
    if any(isinstance(n, exp.Window) for n in sel.walk()):
        window_ok = False
    else:
        window_ok = True
    tabs = _Tables(sel, ctx)
    where = sel.args.get("where")
    where = where.this if where is not None else None
    tabs.check_colocated_join(where)
    keys = _key_binding(where, tabs)
    projs = sel.expressions
    spans = _span_names(ctx.sql, ctx.tokens)
    if len(spans) != len(projs):
        spans = [p.sql(D) for p in projs]
    names = [_sqlite_name(p, s) for p, s in zip(projs, spans)]
    group = sel.args.get("group")
    group_exprs = list(group.expressions) if group is not None else []
    having = sel.args.get("having")
    order = sel.args.get("order")
    has_agg = bool(group_exprs) or any(_aggs(p) for p in projs) or \
        (having is not None and _aggs(having))
    grouped_by_key = any(tabs.key_of(g) for g in _resolve_group(group_exprs, projs))

    if not window_ok and (keys is None or len(keys) != 1):
        raise _refuse("window functions over a sharded table would see one shard at a time",
                      "bind the shard key to one value, or compute the window client-side")
    if has_agg and not grouped_by_key:
        scatter, merge = _rewrite_agg(sel, tabs, projs, names, group_exprs, having, order)
    else:
        scatter, merge = _rewrite_rows(sel, tabs, projs, names, order)
    # Rewritten SQL binds positional parameters by name (:__pN); named ones pass as given.
    names_needed = sorted(set(_param_names(scatter))) if ctx.npos else None
    owns = [(a, ctx.catalog.tables[n]["shard_key"]) for a, n in tabs.alias.items()]
    return ReadPlan(ctx.sql, tabs.names, keys, scatter, names_needed, merge, owns)


# ---- INSERT / UPDATE / DELETE --------------------------------------------------------

def _plan_insert(ins, ctx):
    target = ins.this
    cols = None
    if isinstance(target, exp.Schema):
        cols = [c.name for c in target.expressions]
        target = target.this
    name = _tname(target)
    cat = ctx.catalog
    t = cat.tables.get(name)
    if t is None:
        raise _refuse("INSERT ... SELECT from a sharded table into another table is not supported",
                      "read the rows first, then insert them")
    src = ins.expression
    if not isinstance(src, exp.Values):
        raise _refuse(f"INSERT into sharded table {name} needs a VALUES list (INSERT ... SELECT "
                      "and DEFAULT VALUES cannot be routed)", "insert explicit rows with VALUES")
    if _has_subquery(src):
        raise _refuse("a subquery inside INSERT VALUES on a sharded table cannot be routed",
                      "compute the value first and pass it as a parameter")
    if cols is None:
        cols = t.get("columns")
        if not cols:
            raise _refuse(f"INSERT into sharded table {name} must name its columns",
                          f"write INSERT INTO {name} (col, ...) VALUES (...)")
    key = t["shard_key"].lower()
    lc = [c.lower() for c in cols]
    if key not in lc:
        raise _refuse(f"INSERT into sharded table {name} does not give the shard key "
                      f"{t['shard_key']}; an auto-assigned key cannot be routed (each shard "
                      "would number rows on its own)", f"give {t['shard_key']} an explicit value")
    ki = lc.index(key)
    conflict = ins.args.get("conflict")
    if conflict is not None:
        for e in conflict.expressions or []:
            if isinstance(e, exp.EQ) and isinstance(e.this, exp.Column) and e.this.name.lower() == key:
                raise _refuse(f"ON CONFLICT DO UPDATE may not change the shard key {t['shard_key']}",
                              "delete the row and insert it with the new key")
    if conflict is not None and _has_subquery(conflict):
        raise _refuse("a subquery in ON CONFLICT on a sharded table cannot be routed",
                      "compute the value first")
    keys = []
    for row in src.expressions:
        vals = row.expressions if isinstance(row, exp.Tuple) else [row]
        if len(vals) != len(cols):
            raise _refuse(f"a VALUES row has {len(vals)} values for {len(cols)} columns",
                          "give one value per column")
        s = _src(vals[ki])
        if s is None:
            raise _refuse(f"the shard key {t['shard_key']} must be a literal or a parameter in "
                          "INSERT (an expression cannot be routed before it runs)",
                          "compute the key first and pass it as a parameter")
        if s == ("lit", None):
            raise _refuse(f"the shard key {t['shard_key']} is NULL; a row without a key has no shard",
                          "give the key a value")
        keys.append(s)
    rows = [r.sql(D) for r in src.expressions]
    row_names = [_param_names(r) for r in src.expressions]
    shell = ins.copy()
    shell.set("expression", exp.Values(expressions=[exp.Tuple(expressions=[exp.column("__RS_ROWS__")])]))
    text = shell.sql(D)
    marker = "(__RS_ROWS__)"
    if text.count(marker) != 1:
        raise _refuse("cannot split this INSERT per shard", "insert rows of one shard at a time")
    prefix, suffix = text.split(marker)
    rest = ins.copy()
    rest.set("expression", None)
    row_names.append(_param_names(conflict) if conflict is not None else [])
    if ins.args.get("returning") is not None:
        row_names[-1] += _param_names(ins.args["returning"])
    return InsertPlan(ctx.sql, name, keys, prefix, rows, suffix, row_names)


def _plan_write(st, ctx):
    target = st.this
    if not isinstance(target, exp.Table):
        raise _refuse("cannot find the table this statement writes", "name one table")
    name = _tname(target)
    t = ctx.catalog.tables.get(name)
    if t is None:
        raise _refuse("a write to an unsharded table that reads a sharded table cannot be routed",
                      "read the sharded rows first, then write")
    if st.args.get("from_") is not None or st.args.get("from") is not None or st.args.get("joins"):
        raise _refuse("UPDATE ... FROM / DELETE with joins on a sharded table is not supported",
                      "write by key")
    if _has_subquery(st):
        raise _refuse("a subquery inside UPDATE/DELETE on a sharded table would see only one "
                      "shard's rows", "run the subquery first and pass its result as a parameter")
    key = t["shard_key"].lower()
    if isinstance(st, exp.Update):
        for e in st.expressions:
            cols = [e.this] if not isinstance(e.this, exp.Tuple) else e.this.expressions
            for c in cols:
                if isinstance(c, exp.Column) and c.name.lower() == key:
                    raise _refuse(f"UPDATE cannot change the shard key {t['shard_key']} of {name}: "
                                  "the row would have to move to another shard",
                                  "DELETE the row and INSERT it with the new key")
    tabs = _SingleTable(name, target.alias_or_name.lower(), key)
    where = st.args.get("where")
    keys = _key_binding(where.this if where is not None else None, tabs)
    single_only = st.args.get("order") is not None or st.args.get("limit") is not None
    names = sorted(set(_param_names(st))) if ctx.npos else None
    return WritePlan(ctx.sql, name, keys, single_only, st, names,
                     [(target.alias_or_name, t["shard_key"])])


class _SingleTable:
    def __init__(self, name, alias, key):
        self.name, self.alias, self.key = name, alias, key

    def key_of(self, col):
        if isinstance(col, exp.Column) and col.name.lower() == self.key and \
                (not col.table or col.table.lower() in (self.alias, self.name)):
            return self.alias
        return None


# ---- DDL --------------------------------------------------------------------------------

def _plan_ddl(st, ctx, tables):
    kind = (st.args.get("kind") or "").upper()
    if isinstance(st, exp.Drop) and kind == "INDEX":
        s = st.copy()
        s.set("exists", True)
        return DDLPlan(ctx.sql, tables, s.sql(D), all_groups=True)
    if isinstance(st, exp.Create):
        if kind in ("VIEW", "TRIGGER"):
            raise _refuse(f"a {kind} over sharded table(s) {', '.join(tables)} would see one "
                          "shard's rows", "query the tables through the router instead")
        if kind == "TABLE" and st.expression is not None:
            raise _refuse("CREATE TABLE ... AS SELECT over a sharded table is not supported",
                          "create the table, then insert rows through the router")
        s = st.copy()
        s.set("exists", True)
        return DDLPlan(ctx.sql, tables, s.sql(D))
    if isinstance(st, exp.Drop):
        s = st.copy()
        s.set("exists", True)
        return DDLPlan(ctx.sql, tables, s.sql(D))
    if isinstance(st, exp.Alter):
        name = _tname(st.this)
        t = ctx.catalog.tables.get(name)
        key = t["shard_key"].lower()
        for a in st.args.get("actions") or []:
            if type(a).__name__ in ("AlterRename", "RenameTable"):
                raise _refuse(f"renaming sharded table {name} would detach it from the catalog",
                              "create the new table, register it, and copy the rows")
            if isinstance(a, exp.RenameColumn) and a.this.name.lower() == key:
                raise _refuse(f"renaming the shard key {t['shard_key']} of {name} would break routing",
                              "keep the key column's name")
            if isinstance(a, exp.Drop) and any(c.name.lower() == key for c in a.args.get("tables") or []):
                raise _refuse(f"dropping the shard key {t['shard_key']} of {name} would break routing",
                              "remove the table from sharding first")
        # ADD COLUMN has no IF NOT EXISTS in SQLite: the router treats "duplicate column"
        # from a shard as already applied, which makes a retried fan-out converge.
        return DDLPlan(ctx.sql, tables, ctx.sql)
    raise _refuse(f"this DDL on sharded table(s) {', '.join(tables)} is not routed",
                  "target one shard explicitly with shard_id=")
