"""Differential correctness: the same rows in one plain SQLite database and spread over
three in-process shards; a generated corpus of queries through planner + router + merge
must give the plain database's answer (order-sensitive where ORDER BY fixes the order)."""
import random

import pytest

from sharding_env import make_env, norm_rows, run

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=["hash", "range"])
def env(request):
    return make_env(func=request.param)


def corpus(users, orders, seed):
    """(sql, params, order_fixed) triples. ``order_fixed`` only when ORDER BY is a total
    order (it ends with a unique key), so any correct answer has exactly that order."""
    r = random.Random(seed)
    ids = [u[0] for u in users]
    q = []
    some = lambda k: r.sample(ids, k)  # noqa: E731
    # point reads: literal, positional, named, text key with integer affinity, miss
    i = r.choice(ids)
    q += [(f"SELECT * FROM users WHERE id = {i}", None, True),
          ("SELECT name, age FROM users WHERE id = ?", [r.choice(ids)], True),
          ("SELECT * FROM users WHERE id = :k", {"k": r.choice(ids)}, True),
          ("SELECT * FROM users WHERE id = ?", [str(r.choice(ids))], True),
          ("SELECT * FROM users WHERE id = ? AND age > 30", [r.choice(ids)], True),
          ("SELECT * FROM users WHERE id = 999999", None, True)]
    # IN lists across shards
    ks = some(6)
    q += [(f"SELECT id, name FROM users WHERE id IN ({', '.join(map(str, ks))}) ORDER BY id", None, True),
          ("SELECT id, city FROM users WHERE id IN (?, ?, ?)", some(3), False),
          (f"SELECT COUNT(*), SUM(age) FROM users WHERE id IN ({', '.join(map(str, some(10)))})", None, True)]
    # ranges (scatter)
    a = r.randint(15, 50)
    q += [(f"SELECT id, age FROM users WHERE age BETWEEN {a} AND {a + 10}", None, False),
          ("SELECT id FROM users WHERE id > ? AND id < ?", [-100, 500], False),
          ("SELECT * FROM users WHERE city = 'Oslo'", None, False)]
    # ORDER BY + LIMIT/OFFSET, total orders
    n, m = r.randint(1, 15), r.randint(0, 30)
    q += [(f"SELECT id, name, age FROM users ORDER BY age DESC, id LIMIT {n} OFFSET {m}", None, True),
          ("SELECT id, name FROM users ORDER BY name, id LIMIT ? OFFSET ?", [n, m], True),
          ("SELECT id, age FROM users ORDER BY age NULLS LAST, id DESC LIMIT :n", {"n": n + 5}, True),
          (f"SELECT name, id FROM users ORDER BY name COLLATE NOCASE, id LIMIT {n + 20}", None, True),
          ("SELECT id FROM users ORDER BY score, id LIMIT 25", None, True),
          ("SELECT id, score * 2 FROM users ORDER BY 2 DESC, 1 LIMIT 10", None, True),
          ("SELECT id AS k, age FROM users ORDER BY k DESC LIMIT 7 OFFSET 3", None, True),
          ("SELECT * FROM users ORDER BY city DESC NULLS FIRST, id LIMIT 40", None, True),
          ("SELECT id FROM users ORDER BY id LIMIT -1 OFFSET 230", None, True),
          ("SELECT id, age FROM users ORDER BY age, id LIMIT 2, 5", None, True),
          ("SELECT id FROM users LIMIT 0", None, True),
          ("SELECT id, age FROM users WHERE age > ? ORDER BY age, id LIMIT ?, ?", [a, m, n], True),
          ("SELECT id FROM users WHERE age > :a ORDER BY id DESC LIMIT :n OFFSET :m",
           {"a": a, "n": n, "m": m}, True)]
    # aggregates
    k = r.randint(1, 5)
    q += [("SELECT COUNT(*) FROM users", None, True),
          ("SELECT COUNT(*), COUNT(age), SUM(age), MIN(age), MAX(age), AVG(age), TOTAL(score) FROM users", None, True),
          ("SELECT MIN(name), MAX(name), MIN(score), AVG(score) FROM users WHERE age > ?", [a], True),
          ("SELECT city, COUNT(*) AS n, AVG(age) FROM users GROUP BY city ORDER BY city", None, True),
          (f"SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > {k} ORDER BY 2 DESC, 1", None, True),
          ("SELECT city, name, SUM(age) * 2, MAX(age) - MIN(age) FROM users GROUP BY city, name", None, False),
          ("SELECT age % 10 AS bucket, COUNT(*) FROM users GROUP BY bucket HAVING bucket IS NOT NULL ORDER BY bucket", None, True),
          ("SELECT COUNT(DISTINCT id) FROM users", None, True),
          ("SELECT SUM(age) FILTER (WHERE city = 'Oslo'), COUNT(*) FILTER (WHERE age > 40) FROM users", None, True),
          ("SELECT city, AVG(score) FROM users WHERE age > ? GROUP BY 1 ORDER BY 1 LIMIT 3 OFFSET 1", [a], True),
          ("SELECT COUNT(*) FROM users WHERE age > 1000", None, True),
          ("SELECT city, COUNT(*) FROM users WHERE age > 1000 GROUP BY city", None, False),
          ("SELECT user_id, COUNT(*), SUM(amount) FROM orders GROUP BY user_id ORDER BY 3 DESC, 1 LIMIT 10", None, True),
          ("SELECT status, SUM(amount), COUNT(*) FROM orders GROUP BY status HAVING SUM(amount) > ? ORDER BY status", [r.randint(100, 20000)], True)]
    # DISTINCT
    q += [("SELECT DISTINCT city FROM users ORDER BY city", None, True),
          ("SELECT DISTINCT name, city FROM users", None, False),
          ("SELECT DISTINCT status FROM orders ORDER BY 1 DESC LIMIT 2", None, True),
          ("SELECT DISTINCT age FROM users ORDER BY age LIMIT 5 OFFSET 2", None, True)]
    # colocated joins
    u = r.choice([o[1] for o in orders])
    q += [("SELECT u.id, u.name, o.amount FROM users u JOIN orders o ON u.id = o.user_id "
           "WHERE o.amount > ? ORDER BY o.order_id", [r.randint(1, 400)], True),
          ("SELECT u.name, o.order_id FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = ?", [u], False),
          ("SELECT u.city, SUM(o.amount), COUNT(*) FROM users u JOIN orders o ON u.id = o.user_id "
           "GROUP BY u.city ORDER BY u.city", None, True),
          ("SELECT u.id, COUNT(o.order_id) FROM users u LEFT JOIN orders o ON u.id = o.user_id "
           "GROUP BY u.id ORDER BY 2 DESC, 1 LIMIT 15", None, True),
          ("SELECT o.status, MAX(u.age) FROM orders o JOIN users u ON u.id = o.user_id GROUP BY o.status", None, False)]
    return q


@pytest.mark.parametrize("seed", range(4))
def test_differential_corpus(env, seed):
    """Invariant: for every query in the corpus the sharded answer equals the single
    database's answer (same columns; same rows, in the same order when ORDER BY fixes it)."""
    cl, router, plain, users, orders = env
    for sql, params, ordered in corpus(users, orders, seed):
        cur = plain.execute(sql, params if params is not None else ())
        want_cols = [d[0] for d in cur.description]
        want = cur.fetchall()
        got = run(router.query([(sql, params)]))[0]
        assert "error" not in got, (sql, got)
        assert got["columns"] == want_cols, sql
        assert norm_rows(got["values"], ordered) == norm_rows(want, ordered), sql


def test_scatter_really_scatters(env):
    """Invariant: the corpus exercises the merge paths (no silent single-shard answer):
    an unbound query reaches every shard, a bound one reaches exactly one."""
    cl, router, plain, users, orders = env
    for sql, n in (("SELECT COUNT(*) FROM users", 3), ("SELECT * FROM users WHERE id = 4", 1),
                   ("SELECT id FROM users ORDER BY id LIMIT 3", 3)):
        assert len(router.explain(sql)["shards"]) == n, sql
    # every shard holds a share of the rows, and every row is on its owner
    cat = cl.catalog
    from raftsqlite.sharding import keyspace as ks
    total = 0
    for g in ("s1", "s2", "s3"):
        rows = cl.sql(g, "SELECT id FROM users")
        assert rows, g
        total += len(rows)
        for (i,) in rows:
            func = cat.table("users")["shard_func"]
            assert cat.owner_of("users", ks.key_id(i, func, "integer")) == g
    assert total == len(users)
    assert cl.sql("default", "SELECT COUNT(*) FROM users")[0][0] == 0


def test_writes_match_plain_database(env):
    """Invariant: UPDATE and DELETE (bound and scatter) leave the shards holding exactly
    the rows the plain database holds; per-shard results add up to the plain rowcount."""
    cl, router, plain, users, orders = env
    ids = [u[0] for u in users]
    writes = [("UPDATE users SET age = age + 1 WHERE city = ?", ["Rome"]),
              ("UPDATE users SET name = 'x' WHERE id = ?", [ids[3]]),
              ("UPDATE users SET score = NULL WHERE id IN (?, ?, ?)", ids[10:13]),
              ("DELETE FROM orders WHERE amount < 50", None),
              ("DELETE FROM users WHERE id = ?", [ids[20]]),
              ("INSERT OR REPLACE INTO users (id, name, age) VALUES (?, ?, ?), (?, ?, ?)",
               [ids[5], "rep", 1, 100000, "new", 2])]
    for sql, params in writes:
        cur = plain.execute(sql, params or ())
        res = run(router.execute([(sql, params)]))[0]
        assert "error" not in res, (sql, res)
        assert res["rows_affected"] == cur.rowcount, sql
    for t in ("users", "orders"):
        got = []
        for g in ("s1", "s2", "s3"):
            got += cl.sql(g, f"SELECT * FROM {t}")
        assert norm_rows(got, False) == norm_rows(plain.execute(f"SELECT * FROM {t}").fetchall(), False)
