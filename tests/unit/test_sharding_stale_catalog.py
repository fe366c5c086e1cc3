"""The default group refuses a default plan made with a catalog older than a table
registration it holds (``StaleCatalog``), so a router whose catalog missed a
registration never writes that table's rows into the default group's template table."""
import pytest

from raftsqlite.errors import DecodeError, StaleCatalog
from raftsqlite.sharding.catalog import DEFAULT_GROUP
from raftsqlite.sharding.fake import FakeCluster
from raftsqlite.sharding.glue import CatalogState, op_args
from raftsqlite.sharding.ownership import (catalog_guard, check_catalog_version,
                                          decode_catalog_guard, is_catalog_guard)
from raftsqlite.sharding.router import Router

from sharding_env import run

pytestmark = pytest.mark.timeout(60)

KV = "CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)"


def _stale_router():
    """A cluster where ``kv`` exists everywhere but the router's cached catalog predates
    its registration (a member cut off while it was registered)."""
    cl = FakeCluster(("s1",))
    router = Router(cl.executor, cl.source)
    run(router.execute([KV]))
    cl.groups["s1"].conn.execute(KV)
    cl.op("register_table", refresh=False, table="kv", shard_key="id", shard_func="hash",
          key_affinity="integer", create_sql=KV)
    cl.op("add_to_shard", refresh=False, table="kv", shard="s1")
    assert "kv" not in router.cat.current().tables      # the router is stale
    return cl, router


def test_stale_default_plan_write_goes_to_the_shard():
    """Invariant: a write planned as unsharded with a catalog that missed the table's
    registration is refused by the default group (nothing runs there) and, after the
    router refreshes and plans again, lands on the owning shard."""
    cl, router = _stale_router()
    res = run(router.execute([("INSERT INTO kv (id, v) VALUES (?, ?)", [7, "x"])]))
    assert res[0]["rows_affected"] == 1
    assert cl.sql(DEFAULT_GROUP, "SELECT * FROM kv") == []
    assert cl.sql("s1", "SELECT * FROM kv") == [(7, "x")]
    assert router.counts["stale_catalog_retries"] == 1
    assert cl.groups[DEFAULT_GROUP].rejected == 1


def test_stale_default_plan_in_a_mixed_request_replans_only_the_rest():
    """Invariant: statements already applied before the refusal are not applied again;
    the refused statement and those after it are planned again."""
    cl, router = _stale_router()
    run(router.execute(["CREATE TABLE other (id INTEGER)"]))
    cl.groups["s1"].conn.execute("CREATE TABLE IF NOT EXISTS other (id INTEGER)")
    res = run(router.request([("INSERT INTO other VALUES (1)", None),
                              ("INSERT INTO kv (id, v) VALUES (1, 'a')", None),
                              ("SELECT v FROM kv WHERE id = 1", None)]))
    assert [r.get("rows_affected") for r in res[:2]] == [1, 1], res
    assert res[2]["values"] == [["a"]]
    assert cl.sql(DEFAULT_GROUP, "SELECT * FROM other") == [(1,)]
    assert cl.sql(DEFAULT_GROUP, "SELECT * FROM kv") == []
    assert cl.sql("s1", "SELECT * FROM kv") == [(1, "a")]


def test_stale_read_is_refused_then_served_by_the_shard():
    """Invariant: a read planned stale is not answered from the template table."""
    cl, router = _stale_router()
    cl.groups["s1"].conn.execute("INSERT INTO kv VALUES (3, 'z')")
    res = run(router.query([("SELECT v FROM kv WHERE id = 3", None)]))
    assert res[0]["values"] == [["z"]]


def test_unrelated_writes_at_the_current_version_pass():
    """Invariant: a router whose catalog is current is never refused (no false
    positives), and the guard is exactly the version the plan was made with."""
    cl = FakeCluster(("s1",))
    router = Router(cl.executor, cl.source)
    run(router.execute(["CREATE TABLE t (a)", "INSERT INTO t VALUES (1)"]))
    assert router.counts["stale_catalog_retries"] == 0
    g = catalog_guard(5)
    assert is_catalog_guard(g) and decode_catalog_guard(g) == 5 and len(g) == 10
    check_catalog_version(5, 5)
    with pytest.raises(StaleCatalog):
        check_catalog_version(4, 5)
    with pytest.raises(DecodeError):
        decode_catalog_guard(b"G\x01\x00\x00")


class _Ctx:
    """``ctx.execute`` over a plain sqlite3 database holding the FSM's meta table."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql, params=()):
        return self.conn.execute(sql, params).fetchall()


def test_catalog_state_check_reads_the_stored_catalog_below_its_hint():
    """Invariant: the FSM-side check is exact for the catalog as stored: the cheap path
    (one compare against an upper bound) never accepts a call planned before a stored
    registration, even when the in-memory copy is ahead (a re-run batch) or restored."""
    import sqlite3
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE _raftsqlite_meta (k TEXT PRIMARY KEY, v)")
    ctx = _Ctx(conn)
    st = CatalogState()
    st.load(ctx.execute)
    st.check(ctx.execute, catalog_guard(0))
    st._apply(ctx, "catalog.register_table", op_args(
        {"table": "kv", "shard_key": "id", "shard_func": "hash"}))
    v = st.load(ctx.execute).schema_version
    assert v >= 1 and st.schema_hint == v
    with pytest.raises(StaleCatalog):
        st.check(ctx.execute, catalog_guard(v - 1))
    st.check(ctx.execute, catalog_guard(v))
    # the hint ahead of the stored bytes (the op rolled back): the stored state decides
    conn.execute("DELETE FROM _raftsqlite_meta")
    st.check(ctx.execute, catalog_guard(0))


def test_registration_refused_in_the_log_when_the_template_has_rows():
    """Invariant: a table is never registered while the default group's template table
    holds rows, even if a write landed between the HTTP handler's emptiness check and
    the registration op (checked again where the op applies); nothing changes."""
    import sqlite3

    from raftsqlite.errors import BadRequest
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE _raftsqlite_meta (k TEXT PRIMARY KEY, v)")
    conn.execute("CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE empty (id INTEGER PRIMARY KEY)")
    ctx = _Ctx(conn)
    st = CatalogState()
    conn.execute("INSERT INTO kv VALUES (1, 'late')")
    with pytest.raises(BadRequest, match="has rows"):
        st._apply(ctx, "catalog.register_table", op_args(
            {"table": "KV", "shard_key": "id", "shard_func": "hash"}))
    assert "kv" not in st.load(ctx.execute).tables
    st._apply(ctx, "catalog.register_table", op_args(
        {"table": "empty", "shard_key": "id", "shard_func": "hash"}))
    st._apply(ctx, "catalog.register_table", op_args(
        {"table": "notyet", "shard_key": "id", "shard_func": "hash"}))
    assert {"empty", "notyet"} <= set(st.load(ctx.execute).tables)
