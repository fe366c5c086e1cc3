"""Differential correctness over queries composed at random by hypothesis: projections,
predicates, GROUP BY/HAVING, aggregates, DISTINCT, ORDER BY, LIMIT/OFFSET, parameters.
Every query the router accepts must answer exactly like the single database; a query it
refuses must be refused with a reason (never a wrong answer)."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftsqlite.errors import RoutingRefused

from sharding_env import make_env, norm_rows, run

pytestmark = pytest.mark.timeout(120)

_ENV = {}


def env():
    if "e" not in _ENV:
        _ENV["e"] = make_env(seed=7)
    return _ENV["e"]


COLS = ["id", "name", "age", "city", "score"]
AGGS = ["COUNT(*)", "COUNT(age)", "SUM(age)", "MIN(age)", "MAX(name)", "AVG(age)",
        "TOTAL(score)", "MIN(score)", "SUM(age) + COUNT(*)", "MAX(age) - MIN(age)",
        "COUNT(DISTINCT id)", "AVG(score) * 2"]
GROUPS = ["city", "name", "age % 3", "city, name", "id"]
PREDS = ["id = ?", "id IN (?, ?, ?)", "age > ?", "city = 'Oslo'", "age BETWEEN ? AND ? + 20",
         "score IS NULL", "name LIKE 'b%'", "id < ? AND age IS NOT NULL"]


@st.composite
def queries(draw):
    ids = [u[0] for u in env()[3]]
    params = []
    where = ""
    if draw(st.booleans()):
        p = draw(st.sampled_from(PREDS))
        for _ in range(p.count("?")):
            params.append(draw(st.sampled_from(ids)) if p.startswith("id") else draw(st.integers(10, 70)))
        where = " WHERE " + p
    agg = draw(st.booleans())
    limit = ""
    if draw(st.booleans()):
        n, m = draw(st.integers(-1, 12)), draw(st.integers(0, 20))
        if draw(st.booleans()):
            limit = " LIMIT ? OFFSET ?"
            tail = [n, m]
        else:
            limit = f" LIMIT {n} OFFSET {m}"
            tail = []
    else:
        tail = []
    if agg:
        grp = draw(st.one_of(st.none(), st.sampled_from(GROUPS)))
        aggs = draw(st.lists(st.sampled_from(AGGS), min_size=1, max_size=3, unique=True))
        proj = ([grp] if grp else []) + aggs
        sql = f"SELECT {', '.join(proj)} FROM users{where}"
        ordered = True
        if grp:
            sql += f" GROUP BY {grp}"
            if draw(st.booleans()):
                sql += f" HAVING COUNT(*) > {draw(st.integers(0, 3))}"
            sql += f" ORDER BY {grp}"  # a total order: one row per group
        else:
            limit, tail = "", []
        return sql + limit, params + tail, ordered
    cols = draw(st.lists(st.sampled_from(COLS), min_size=1, max_size=4, unique=True))
    distinct = draw(st.booleans())
    order_by = draw(st.lists(st.sampled_from(["age", "name", "city", "score", "name COLLATE NOCASE"]),
                             max_size=2, unique=True))
    desc = [draw(st.sampled_from(["", " DESC", " NULLS LAST", " DESC NULLS FIRST"])) for _ in order_by]
    terms = [o + d for o, d in zip(order_by, desc)]
    if distinct:
        # ORDER BY must use selected columns, and the whole row makes the order total
        terms = [c for c in cols] if draw(st.booleans()) else []
        ordered = bool(terms)
    else:
        terms.append("id" + draw(st.sampled_from(["", " DESC"])))
        ordered = True
    sql = f"SELECT {'DISTINCT ' if distinct else ''}{', '.join(cols)} FROM users{where}"
    if terms:
        sql += " ORDER BY " + ", ".join(terms)
    elif limit:
        limit, tail = "", []   # LIMIT without a total order has many right answers
    return sql + limit, params + tail, ordered


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queries())
def test_random_queries_match_single_database(q):
    """Invariant: an accepted query answers exactly like one SQLite database (columns,
    rows, and order when the ORDER BY is total)."""
    sql, params, ordered = q
    cl, router, plain, users, orders = env()
    cur = plain.execute(sql, params)
    want_cols = [d[0] for d in cur.description]
    want = cur.fetchall()
    try:
        got = run(router.query([(sql, params)]))[0]
    except RoutingRefused as e:
        assert "What to do:" in str(e)
        return
    assert "error" not in got, (sql, got)
    assert got["columns"] == want_cols, sql
    assert norm_rows(got["values"], ordered) == norm_rows(want, ordered), sql
