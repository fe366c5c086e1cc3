"""SQL shape analysis and scatter rewrites for the planner (split from planner.py).

- which tables a SELECT reads and whether they are colocated and joined on the key;
- which shard-key values a WHERE clause binds;
- the column names SQLite would give the select list (taken from the original text);
- the rewrite of a SELECT for scatter-gather: extra sort columns and LIMIT n+m for row
  merges, partial aggregates plus the final re-aggregation query for aggregate merges.
"""
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from raftsqlite.errors import RoutingRefused
from raftsqlite.sharding.merge import PARTIALS

D = "sqlite"

def _refuse(why, todo):
    return RoutingRefused(f"{why}. What to do: {todo}.")


# ---- plans ----------------------------------------------------------------------------

def _tname(t):
    return t.name.lower()


def _src(e):
    """A value source for an expression that is a literal or a parameter, else None."""
    if isinstance(e, exp.Paren):
        return _src(e.this)
    if isinstance(e, exp.Literal):
        if e.is_string:
            return ("lit", e.this)
        try:
            return ("lit", int(e.this))
        except ValueError:
            try:
                return ("lit", float(e.this))
            except ValueError:
                return None
    if isinstance(e, exp.Neg) and isinstance(e.this, exp.Literal) and not e.this.is_string:
        s = _src(e.this)
        return None if s is None else ("lit", -s[1])
    if isinstance(e, exp.Placeholder):
        n = e.name
        if not n:
            return None
        if n.startswith("__p") and n[3:].isdigit():
            return ("pos", int(n[3:]))
        return ("name", n)
    if isinstance(e, exp.Parameter):
        return ("name", e.name)
    if isinstance(e, exp.Column) and not e.table and e.name.startswith("$"):
        return ("name", e.name[1:])
    if isinstance(e, exp.HexString):
        try:
            return ("lit", bytes.fromhex(e.this))
        except ValueError:
            return None
    if isinstance(e, exp.Boolean):
        return ("lit", 1 if e.this else 0)
    return None


def _param_names(node):
    names = []
    for p in node.find_all(exp.Placeholder, exp.Parameter):
        if p.name:
            names.append(p.name)
    for c in node.find_all(exp.Column):
        if not c.table and c.name.startswith("$"):
            names.append(c.name[1:])
    return names


def _conjuncts(e):
    if e is None:
        return []
    if isinstance(e, exp.Paren):
        return _conjuncts(e.this)
    if isinstance(e, exp.And):
        return _conjuncts(e.this) + _conjuncts(e.expression)
    return [e]


def _has_subquery(node):
    return any(isinstance(n, (exp.Select, exp.Subquery)) for n in node.walk() if n is not node)


# ---- SELECT ---------------------------------------------------------------------------

@lru_cache(maxsize=256)
def declared_collations(create_sql):
    """``{column: collation}`` for columns declared with COLLATE in a CREATE TABLE.
    SQLite orders, groups and compares such a column by its collation even when a query
    does not say so, so the merge must too."""
    if not create_sql:
        return {}
    try:
        st = sqlglot.parse_one(create_sql, read=D)
    except SqlglotError:
        return {}
    out = {}
    for cd in st.find_all(exp.ColumnDef):
        for c in cd.args.get("constraints") or []:
            if isinstance(c.args.get("kind"), exp.CollateColumnConstraint):
                out[cd.name.lower()] = c.args["kind"].this.name.lower()
    return out


class _Tables:
    """The tables of a FROM clause: alias -> table name, checked for colocation."""

    def __init__(self, sel, ctx):
        self.alias = {}
        cat = ctx.catalog
        froms = []
        if sel.args.get("from_") is not None:
            froms.append(sel.args["from_"].this)
        joins = sel.args.get("joins") or []
        froms.extend(j.this for j in joins)
        for f in froms:
            if not isinstance(f, exp.Table):
                raise _refuse("a subquery or table function in FROM together with a sharded "
                              "table cannot be answered across shards",
                              "query the sharded table directly")
            n = _tname(f)
            if n not in cat.tables:
                raise _refuse(f"table {n} is not sharded (it lives in the default group) and "
                              "cannot be joined with a sharded table",
                              "join only tables of one colocation group on their shard key, "
                              "or query them separately")
            self.alias[f.alias_or_name.lower()] = n
        cols = {cat.tables[n]["colocation"] for n in self.alias.values()}
        if len(cols) > 1:
            raise _refuse(f"tables {', '.join(sorted(set(self.alias.values())))} are not in one "
                          "colocation group, so matching rows may be on different shards",
                          "register them with colocate_with so equal keys share a shard, or "
                          "query them separately")
        self.names = list(dict.fromkeys(self.alias.values()))
        self.cat = cat
        self.joins = joins
        self.single = len(self.alias) == 1
        self.colls = {a: declared_collations(cat.tables[n].get("create_sql"))
                      for a, n in self.alias.items()}

    def collation_of(self, e):
        """The collation SQLite uses for expression ``e``: an explicit COLLATE, else the
        declared collation of a plain column, else None (BINARY)."""
        if isinstance(e, exp.Collate):
            return e.expression.name.lower()
        if not isinstance(e, exp.Column):
            return None
        name = e.name.lower()
        if e.table:
            return self.colls.get(e.table.lower(), {}).get(name)
        found = {c[name] for c in self.colls.values() if name in c}
        return found.pop() if len(found) == 1 else None

    def key_of(self, col):
        """The alias whose shard key ``col`` names, or None."""
        if not isinstance(col, exp.Column):
            return None
        if col.table:
            a = col.table.lower()
            n = self.alias.get(a)
            if n is not None and col.name.lower() == self.cat.tables[n]["shard_key"].lower():
                return a
            return None
        if self.single:
            (a, n), = self.alias.items()
            return a if col.name.lower() == self.cat.tables[n]["shard_key"].lower() else None
        return None

    def check_colocated_join(self, where):
        if self.single:
            return
        parent = {a: a for a in self.alias}

        def find(a):
            while parent[a] != a:
                a = parent[a]
            return a
        conds = list(_conjuncts(where))
        # Any join kind (inner, LEFT/RIGHT/FULL outer) stays inside a shard when the key
        # equality links every table: rows without a partner still live with their key.
        for j in self.joins:
            conds.extend(_conjuncts(j.args.get("on")))
            for u in j.args.get("using") or []:
                right = j.this.alias_or_name.lower()
                for a, n in self.alias.items():
                    if a != right and u.name.lower() == self.cat.tables[n]["shard_key"].lower() \
                            and u.name.lower() == self.cat.tables[self.alias[right]]["shard_key"].lower():
                        parent[find(a)] = find(right)
        for c in conds:
            if isinstance(c, exp.EQ):
                a, b = self.key_of(c.this), self.key_of(c.expression)
                if a and b:
                    parent[find(a)] = find(b)
        if len({find(a) for a in self.alias}) > 1:
            raise _refuse("a join between sharded tables must match their shard keys (e.g. "
                          "ON a.id = b.id); otherwise matching rows may be on different shards",
                          "join on the shard key, or query the tables separately")


def _key_binding(where, tabs):
    """Sources of the shard-key values a WHERE clause binds (``=``, ``IN``), or None."""
    for c in _conjuncts(where):
        if isinstance(c, exp.EQ):
            for col, val in ((c.this, c.expression), (c.expression, c.this)):
                if tabs.key_of(col):
                    s = _src(val)
                    if s is not None and s != ("lit", None):
                        return [s]
        elif isinstance(c, exp.In) and tabs.key_of(c.this) and not c.args.get("query") \
                and not c.args.get("unnest") and not c.args.get("is_global"):
            srcs = [_src(v) for v in c.expressions]
            if srcs and all(s is not None for s in srcs):
                return srcs
    return None


def _span_names(sql, tokens):
    """The text of each item of the outermost SELECT list, which is the column name
    SQLite gives an unaliased expression (sqlglot would re-spell it)."""
    depth, start, items, cur = 0, None, [], []
    for t in tokens:
        tt = t.token_type
        if start is None:
            if tt == TokenType.SELECT and depth == 0:
                start = True
            elif tt == TokenType.L_PAREN:
                depth += 1
            elif tt == TokenType.R_PAREN:
                depth -= 1
            continue
        if depth == 0 and tt in (TokenType.DISTINCT, TokenType.ALL) and not cur and not items:
            continue
        if tt == TokenType.L_PAREN:
            depth += 1
        elif tt == TokenType.R_PAREN:
            depth -= 1
        if depth == 0 and tt in (TokenType.FROM, TokenType.WHERE, TokenType.GROUP_BY,
                                 TokenType.ORDER_BY, TokenType.LIMIT, TokenType.HAVING):
            break
        if depth == 0 and tt == TokenType.COMMA:
            items.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        items.append(cur)
    out = []
    for toks in items:
        a, b = toks[0].start, toks[-1].end + 1
        out.append(sql[a:b].strip())
    return out


def _sqlite_name(proj, span):
    if isinstance(proj, exp.Alias):
        return proj.alias
    if isinstance(proj, exp.Column):
        return proj.name
    return span


def _is_agg(n):
    if isinstance(n, exp.Filter):
        return _is_agg(n.this)
    if isinstance(n, (exp.Min, exp.Max)):
        return not n.expressions
    if isinstance(n, exp.Anonymous):
        return n.name.lower() == "total"
    return isinstance(n, exp.AggFunc)


def _aggs(node):
    out = []
    for n in node.walk():
        if _is_agg(n) and not any(_is_agg(p) for p in _ancestors(n, node)):
            out.append(n)
    return out


def _ancestors(n, stop):
    p = n.parent
    while p is not None and p is not stop:
        yield p
        p = p.parent
    if p is stop:
        yield p


def _limit_src(sel, arg):
    node = sel.args.get(arg)
    if node is None:
        return None
    e = node.expression if arg == "limit" else node.this if node.this is not None else node.expression
    s = _src(e)
    if s is None:
        raise _refuse(f"{arg.upper()} must be a number or a parameter on a sharded table",
                      "compute it first and pass it as a parameter")
    return s


def _resolve_group(group_exprs, projs):
    """GROUP BY items with positions and output aliases replaced by what they name."""
    out = []
    aliases = {p.alias.lower(): p.this for p in projs if isinstance(p, exp.Alias)}
    for g in group_exprs:
        if isinstance(g, exp.Literal) and not g.is_string and g.this.isdigit():
            i = int(g.this) - 1
            if 0 <= i < len(projs):
                p = projs[i]
                out.append(p.this if isinstance(p, exp.Alias) else p)
                continue
        if isinstance(g, exp.Column) and not g.table and g.name.lower() in aliases:
            out.append(aliases[g.name.lower()])
            continue
        out.append(g)
    return out


def _unalias(p):
    return p.this if isinstance(p, exp.Alias) else p


def _order_terms(order, projs, names, tabs):
    """[(output index or None, Ordered, inner expr, collation)]"""
    out = []
    for o in order.expressions:
        e = o.this
        coll = None
        if isinstance(e, exp.Collate):
            coll = e.expression.name.lower()
            e = e.this
        idx = None
        if isinstance(e, exp.Literal) and not e.is_string and e.this.isdigit():
            idx = int(e.this) - 1
            if not 0 <= idx < len(projs):
                raise _refuse(f"ORDER BY term {e.this} is out of range", "fix the column number")
        elif isinstance(e, exp.Column) and not e.table:
            for i, (p, n) in enumerate(zip(projs, names)):
                if isinstance(p, exp.Alias) and n.lower() == e.name.lower():
                    idx = i
                    break
        if idx is None:
            for i, p in enumerate(projs):
                if _unalias(p) == e:
                    idx = i
                    break
        if coll is None:
            coll = tabs.collation_of(e if idx is None or isinstance(e, exp.Column) and e.table
                                     else _unalias(projs[idx]))
        if coll not in (None, "binary", "nocase", "rtrim"):
            raise _refuse(f"ordering by collation {coll} cannot be merged across shards",
                          "use BINARY, NOCASE or RTRIM")
        out.append((idx, o, e, coll))
    return out


def _rewrite_rows(sel, tabs, projs, names, order):
    """Scatter SQL and merge spec for a query whose rows do not need re-aggregation."""
    s = sel.copy()
    new_projs = []
    for p, n in zip(projs, names):
        if isinstance(p, (exp.Alias, exp.Column, exp.Star)) or \
                (isinstance(p, exp.Column) and isinstance(p.this, exp.Star)):
            new_projs.append(p.copy())
        else:
            new_projs.append(exp.alias_(p.copy(), n, quoted=True))
    distinct = s.args.get("distinct") is not None
    if distinct and s.args["distinct"].args.get("on"):
        raise _refuse("DISTINCT ON is not SQLite", "use GROUP BY")
    merge = {"kind": "rows", "order": [], "hidden": 0, "distinct": distinct,
             "distinct_colls": [tabs.collation_of(_unalias(p)) for p in projs] if distinct else None}
    if order is not None:
        terms = _order_terms(order, projs, names, tabs)
        hidden = []
        for idx, o, e, coll in terms:
            if idx is None:
                if distinct:
                    raise _refuse("SELECT DISTINCT ... ORDER BY a column that is not selected "
                                  "has no single right answer to merge",
                                  "add the ORDER BY column to the select list")
                # A sort column the client did not select rides along at the end of each
                # shard's rows (SELECT * has no known width, so count from the end).
                new_projs.append(exp.alias_(e.copy(), f"__rs_o{len(hidden)}", quoted=True))
                idx = ("hidden", len(hidden))
                hidden.append(e)
            merge["order"].append([idx, bool(o.args.get("desc")), bool(o.args.get("nulls_first")), coll])
        h = len(hidden)
        merge["order"] = [(-(h - i[1]) if isinstance(i, tuple) else i, d, nf, c)
                          for i, d, nf, c in merge["order"]]
        merge["hidden"] = h
    s.set("expressions", new_projs)
    lim, off = _limit_src(sel, "limit"), _limit_src(sel, "offset")
    merge["limit"], merge["offset"] = lim, off
    if off is not None or lim is not None:
        s.set("offset", None)
        s.set("limit", None)
        if lim is not None:
            if off is None:
                s.set("limit", exp.Limit(expression=sel.args["limit"].expression.copy()))
            elif lim[0] == "lit" and off[0] == "lit":
                n = lim[1] if lim[1] < 0 else lim[1] + max(off[1], 0)
                s.set("limit", exp.Limit(expression=exp.Literal.number(n)))
            else:
                le = sel.args["limit"].expression.copy()
                oe = _offset_expr(sel).copy()
                s.set("limit", exp.Limit(expression=exp.Case(
                    ifs=[exp.If(this=exp.LT(this=le.copy(), expression=exp.Literal.number(0)),
                                true=exp.Literal.number(-1))],
                    default=exp.Add(this=le, expression=exp.Max(this=oe, expressions=[
                        exp.Literal.number(0)])))))
    return s, merge


def _offset_expr(sel):
    node = sel.args["offset"]
    return node.expression if node.expression is not None else node.this


_MERGE_FN = {"count": "SUM", "sum": "SUM", "total": "TOTAL", "min": "MIN", "max": "MAX"}


def _agg_kind(n, tabs_key):
    inner = n.this if isinstance(n, exp.Filter) else n
    if isinstance(inner, exp.Count):
        if isinstance(inner.this, exp.Distinct):
            ds = inner.this.expressions
            if len(ds) == 1 and tabs_key(ds[0]):
                return "count"  # distinct keys never repeat across shards
            raise _refuse("COUNT(DISTINCT ...) of a column other than the shard key cannot be "
                          "merged across shards (a value may be on several shards)",
                          "GROUP BY that column and count the rows client-side")
        return "count"
    if isinstance(inner, exp.Avg):
        return "avg"
    if isinstance(inner, (exp.Sum, exp.Min, exp.Max)):
        if isinstance(inner.this, exp.Distinct):
            if isinstance(inner, (exp.Min, exp.Max)):
                return type(inner).__name__.lower()
            raise _refuse("SUM(DISTINCT ...) cannot be merged across shards",
                          "GROUP BY the column and sum client-side")
        return type(inner).__name__.lower()
    if isinstance(inner, exp.Anonymous) and inner.name.lower() == "total":
        return "total"
    fname = inner.sql_name() if hasattr(inner, "sql_name") else type(inner).__name__
    raise _refuse(f"aggregate {fname} cannot be merged across shards",
                  "use COUNT, SUM, TOTAL, MIN, MAX or AVG, GROUP BY the shard key, "
                  "or bind the shard key to one value")


def _rewrite_agg(sel, tabs, projs, names, group_exprs, having, order):
    tabs_key = tabs.key_of
    if any(isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
           for p in projs):
        raise _refuse("SELECT * with aggregates or GROUP BY cannot be merged across shards",
                      "name the grouped columns")
    groups = _resolve_group(group_exprs, projs)
    shard_cols = []
    gcols = {}
    colls = {}  # partial column -> collation it must keep in the final aggregation
    for i, g in enumerate(groups):
        if tabs.collation_of(g):
            colls[len(shard_cols)] = tabs.collation_of(g)
        gcols[i] = exp.column(f"__rs_c{len(shard_cols)}")
        shard_cols.append(exp.alias_(g.copy(), f"__rs_g{i}", quoted=True))
    partial_of = []  # (agg node, [shard column index], kind)

    def partials(n):
        for a, cols, kind in partial_of:
            if a == n:
                return cols, kind
        kind = _agg_kind(n, tabs_key)
        inner = n.this if isinstance(n, exp.Filter) else n
        if kind == "avg":
            filt = n.expression.copy() if isinstance(n, exp.Filter) else None
            parts = [exp.Sum(this=inner.this.copy()), exp.Count(this=inner.this.copy())]
            if filt is not None:
                parts = [exp.Filter(this=p, expression=filt.copy()) for p in parts]
        else:
            parts = [n.copy()]
        cols = []
        for p in parts:
            if kind in ("min", "max") and tabs.collation_of(inner.this):
                colls[len(shard_cols)] = tabs.collation_of(inner.this)
            cols.append(len(shard_cols))
            shard_cols.append(exp.alias_(p, f"__rs_a{len(shard_cols)}", quoted=True))
        partial_of.append((n, cols, kind))
        return cols, kind

    def final(node):
        """``node`` with group expressions and aggregates replaced by merged columns."""
        def tr(n):
            for i, g in enumerate(groups):
                if n == g:
                    return gcols[i].copy()
            if _is_agg(n):
                cols, kind = partials(n)
                c = [exp.column(f"__rs_c{i}") for i in cols]
                if kind == "avg":
                    return exp.Case(ifs=[exp.If(this=exp.GT(this=exp.Sum(this=c[1]), expression=exp.Literal.number(0)),
                                                true=exp.Div(this=exp.Cast(this=exp.Sum(this=c[0]), to=exp.DataType.build("REAL")),
                                                             expression=exp.Sum(this=c[1].copy())))])
                fn = _MERGE_FN[kind]
                if fn == "TOTAL":
                    return exp.Anonymous(this="TOTAL", expressions=[c[0]])
                return {"SUM": exp.Sum, "MIN": exp.Min, "MAX": exp.Max}[fn](this=c[0])
            return n
        return node.copy().transform(tr)

    out_projs = []
    types_from = []  # a grouped plain column keeps the declared type the shard reported
    for p, n in zip(projs, names):
        f = final(_unalias(p))
        types_from.append(int(f.name[6:]) if isinstance(f, exp.Column) and f.name.startswith("__rs_c") else None)
        out_projs.append(exp.alias_(f, n, quoted=True))
    names_lc = {n.lower() for n in names}
    fin = exp.Select(expressions=out_projs).from_(PARTIALS)
    if groups:
        fin = fin.group_by(*[gcols[i].copy() for i in range(len(groups))])
    if having is not None:
        fin.set("having", exp.Having(this=final(having.this)))
    if order is not None:
        fin.set("order", exp.Order(expressions=[final(o) for o in order.expressions]))
    if sel.args.get("distinct") is not None:
        fin.set("distinct", exp.Distinct())
    if sel.args.get("limit") is not None:
        fin.set("limit", sel.args["limit"].copy())
    if sel.args.get("offset") is not None:
        fin.set("offset", sel.args["offset"].copy())
    # Whatever column is left was neither grouped nor aggregated (SQLite's "bare column"),
    # whose value depends on which row a shard happened to pick.
    for part in ("expressions", "having", "order"):
        nodes = fin.args.get(part)
        nodes = nodes if isinstance(nodes, list) else [nodes] if nodes is not None else []
        for c in (c for n in nodes for c in n.find_all(exp.Column)):
            nm = c.name
            if not c.table and nm.startswith("__rs_c") and nm[6:].isdigit():
                continue
            # HAVING and ORDER BY may name an output column; the select list may not
            # name a column that is neither grouped nor aggregated.
            if part != "expressions" and not c.table and nm.lower() in names_lc:
                continue
            raise _refuse(f"column {c.sql(D)} is neither grouped nor aggregated, so its value "
                          "would depend on which shard's row was picked",
                          "add it to GROUP BY or wrap it in an aggregate")
    s = sel.copy()
    for arg in ("order", "limit", "offset", "having", "distinct"):
        s.set(arg, None)
    s.set("expressions", shard_cols)
    if groups:
        s.set("group", exp.Group(expressions=[g.copy() for g in groups]))
    width = len(shard_cols)
    final_sql = fin.sql(D)
    bad = {c for c in colls.values() if c not in ("binary", "nocase", "rtrim")}
    if bad:
        raise _refuse(f"collation {', '.join(sorted(bad))} is not available to merge across shards",
                      "group by a column with BINARY, NOCASE or RTRIM collation")
    merge = {"kind": "agg", "width": width, "final_sql": final_sql, "colls": colls,
             "types_from": types_from,
             "final_params": sorted(set(_param_names(fin)))}
    return s, merge
