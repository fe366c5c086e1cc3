"""Shared set-up for the sharding tests: a fake cluster (default + 3 shards) and a plain
SQLite database loaded with the same generated rows."""
import asyncio
import math
import random
import sqlite3

from raftsqlite.sharding.fake import FakeCluster
from raftsqlite.sharding.router import Router

# city has a declared collation: SQLite then groups, sorts and deduplicates it
# case-insensitively without being told, and so must the merge.
USERS = ("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, "
         "city TEXT COLLATE NOCASE, score REAL)")
ORDERS = ("CREATE TABLE orders (order_id INTEGER, user_id INTEGER, amount INTEGER, "
          "status TEXT, PRIMARY KEY (user_id, order_id))")
NAMES = ["ann", "Bob", "bob", "cat", "Dan", "eve", "zed", "Émile", "al", ""]
CITIES = ["Oslo", "oslo", "Rome", "Lima", None, "Kyiv"]


def run(coro):
    return asyncio.run(coro)


def make_env(shards=("s1", "s2", "s3"), n_users=240, n_orders=600, seed=1, func="hash"):
    cl = FakeCluster(shards)
    cl.op("register_table", table="users", shard_key="id", shard_func=func, key_affinity="integer",
          create_sql=USERS)
    cl.op("register_table", table="orders", shard_key="user_id", shard_func=func,
          key_affinity="integer", colocate_with="users")
    for s in shards:
        cl.op("add_to_shard", table="users", shard=s)
    if func == "hash":
        # The table is still empty, so the rebalance plan can switch ownership directly.
        for m in cl.catalog.plan_rebalance("users")["moves"]:
            cl.op("assign", table="users", start=m["start"], end=m["end"], owner=m["target"])
    else:
        # Range sharding: ids run from -293 to 7*n-300; cut the id space into equal parts.
        from raftsqlite.sharding import keyspace as ks
        hi = 7 * n_users - 300
        cuts = [ks.key_id(-300 + (hi + 300) * (i + 1) // len(shards), "range", "integer")
                for i in range(len(shards) - 1)]
        bounds = [0] + cuts + [ks.KEYSPACE_END]
        for i, s in enumerate(shards):
            cl.op("assign", table="users", start=bounds[i], end=ks.end_to_json(bounds[i + 1]), owner=s)
    router = Router(cl.executor, cl.source)
    plain = sqlite3.connect(":memory:", isolation_level=None)
    for ddl in (USERS, ORDERS):
        plain.execute(ddl)
        run(router.execute([ddl]))
    rnd = random.Random(seed)
    users = []
    for i in range(1, n_users + 1):
        users.append((i * 7 - 300, rnd.choice(NAMES), rnd.choice([None] + list(range(15, 70))),
                      rnd.choice(CITIES), round(rnd.uniform(0, 100), 2) if rnd.random() > 0.1 else None))
    orders = []
    for j in range(1, n_orders + 1):
        u = rnd.choice(users)[0]
        orders.append((j, u, rnd.randint(1, 500), rnd.choice(["new", "paid", "sent"])))
    for batch in range(0, len(users), 50):
        rows = users[batch:batch + 50]
        sql = "INSERT INTO users (id, name, age, city, score) VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(rows))
        params = [v for r in rows for v in r]
        plain.execute(sql, params)
        res = run(router.execute([(sql, params)]))
        assert "error" not in res[0], res
    for batch in range(0, len(orders), 100):
        rows = orders[batch:batch + 100]
        sql = "INSERT INTO orders (order_id, user_id, amount, status) VALUES " + ", ".join(
            f"({a}, {b}, {c}, '{d}')" for a, b, c, d in rows)
        plain.execute(sql)
        res = run(router.execute([sql]))
        assert "error" not in res[0], res
    return cl, router, plain, users, orders


def norm(v):
    # 'Oslo' and 'oslo' are one group under city's NOCASE collation, and SQLite does not
    # define which spelling a group shows, so either is right (no name is spelled so).
    if v == "Oslo":
        return "oslo"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return Approx(v)
    return v


class Approx(float):
    """A float equal to any number within 1e-9 relative: a merged AVG (sum of sums / sum
    of counts) may differ from SQLite's own AVG in the last bits, and rounding both to a
    fixed number of digits still splits values that straddle a rounding boundary."""

    def __eq__(self, other):
        return isinstance(other, (int, float)) and math.isclose(self, other, rel_tol=1e-9, abs_tol=1e-12)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = float.__hash__


def norm_rows(rows, ordered):
    rows = [tuple(norm(v) for v in r) for r in rows]
    if not ordered:
        rows.sort(key=lambda r: tuple((0, "") if v is None else (1, v) if isinstance(v, (int, float))
                                      else (2, v) if isinstance(v, str) else (3, v) for v in r))
    return rows


def checksum(cl):
    """Every group's full content, to prove a refused statement changed nothing."""
    out = {}
    for g, grp in cl.groups.items():
        tabs = [r[0] for r in grp.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out[g] = {t: sorted(map(repr, grp.conn.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tabs}
    return out


class StaticCache:
    """A catalog cache holding one Catalog object, for tests of the service's steps."""

    def __init__(self, cat):
        self.cat = cat

    async def refresh(self):
        pass

    def current(self):
        return self.cat
