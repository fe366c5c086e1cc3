"""Routing properties of the keyspace, the catalog and the guard (hypothesis)."""
import importlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftsqlite.errors import BadRequest, DecodeError, NotFound, RoutingRefused
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.ownership import GuardItem, decode_guard, encode_guard

U64 = st.integers(0, ks.KEYSPACE_END - 1)
OWNERS = st.sampled_from(["s1", "s2", "s3", "s4"])
KEYS = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.text(max_size=20),
                 st.binary(max_size=20), st.floats(allow_nan=False))


def ops():
    return st.lists(st.one_of(
        st.tuples(st.just("split"), st.integers(1, ks.KEYSPACE_END - 1)),
        st.tuples(st.just("assign"), U64, U64, OWNERS),
        st.tuples(st.just("merge"))), max_size=25)


def apply_ops(seq):
    starts, owners = [0], ["s1"]
    for op in seq:
        if op[0] == "split":
            starts, owners = ks.split(starts, owners, op[1])
        elif op[0] == "assign":
            a, b = sorted((op[1], op[2]))
            if a == b:
                continue
            starts, owners = ks.assign(starts, owners, a, b, op[3])
        else:
            starts, owners = ks.merge_adjacent(starts, owners)
    return starts, owners


@settings(max_examples=300, deadline=None)
@given(ops())
def test_ranges_always_partition_the_keyspace(seq):
    """Invariant: after any sequence of split/assign/merge the ranges start at 0, are
    strictly increasing, and consecutive ranges meet: no gap, no overlap."""
    starts, owners = apply_ops(seq)
    ks.check_starts(starts)
    assert len(starts) == len(owners)
    rs = ks.ranges(starts)
    assert rs[0][0] == 0 and rs[-1][1] == ks.KEYSPACE_END
    for (a, b), (c, d) in zip(rs, rs[1:]):
        assert a < b == c < d


@settings(max_examples=300, deadline=None)
@given(ops(), st.lists(U64, min_size=1, max_size=20))
def test_every_key_in_exactly_one_range(seq, kids):
    """Invariant: every keyspace id lies in exactly one range, and index_of finds it."""
    starts, owners = apply_ops(seq)
    rs = ks.ranges(starts)
    for kid in kids + [0, ks.KEYSPACE_END - 1] + starts:
        hits = [i for i, (s, e) in enumerate(rs) if s <= kid < e]
        assert hits == [ks.index_of(starts, kid)]


@settings(max_examples=200, deadline=None)
@given(ops(), st.lists(U64, max_size=20))
def test_owned_spans_agree_with_lookup(seq, kids):
    """Invariant: a shard's joined spans contain a key iff the range map says it owns it
    (what a shard checks equals what the router routes by)."""
    starts, owners = apply_ops(seq)
    for kid in kids + starts:
        owner = owners[ks.index_of(starts, kid)]
        for o in set(owners):
            assert ks.span_contains(ks.owned_spans(starts, owners, o), kid) == (o == owner)


@settings(max_examples=100, deadline=None)
@given(ops(), st.lists(OWNERS, min_size=1, max_size=4, unique=True))
def test_rebalance_reaches_equal_shares(seq, shards):
    """Invariant: after the planned moves each placement shard owns its equal share of
    the keyspace (within 1), shards outside the placement own nothing, and only ranges
    named in a move changed owner."""
    starts, owners = apply_ops(seq)
    moves, ns, no = ks.rebalance_moves(starts, owners, shards)
    for g in set(no) | set(shards):
        have = sum(e - s for s, e in ks.owned_spans(ns, no, g))
        want = ks.KEYSPACE_END // len(shards) if g in shards else 0
        assert abs(have - want) <= 1, (g, have, want)
    for i in range(len(ns)):
        s, e = ks.range_of(ns, i)
        if owners[ks.index_of(starts, s)] != no[i]:
            assert any(m["start"] <= s and e <= m["end"] and m["target"] == no[i] for m in moves)


@settings(max_examples=200, deadline=None)
@given(st.lists(KEYS, min_size=1, max_size=30), ops(), st.sampled_from(["hash", "range"]))
def test_compiled_and_pure_hash_route_identically(values, seq, mode):
    """Invariant: the compiled hash and its pure twin send every key to the same range."""
    c = pytest.importorskip("raftsqlite._chash")
    pure = importlib.import_module("raftsqlite.codec.hashing")
    starts, _ = apply_ops(seq)
    assert c.owners_batch(values, starts, mode) == pure.owners_batch(values, starts, mode)
    fn = "keyspace_id" if mode == "hash" else "range_key"
    for v in values:
        assert getattr(c, fn)(v) == getattr(pure, fn)(v)


@given(st.integers(-(1 << 63), (1 << 63) - 1))
def test_affinity_makes_text_and_int_keys_equal(i):
    """Invariant: '456' written to an INTEGER column routes where 456 does (SQLite stores
    it as 456), and 5.0 routes where 5 does."""
    assert ks.key_id(str(i), "hash", "integer") == ks.key_id(i, "hash", "integer")
    assert ks.key_id(float(i // 1024), "hash", "integer") == ks.key_id(i // 1024, "hash", "integer")
    assert ks.key_id(i, "hash", "text") == ks.key_id(str(i), "hash", "text")


def test_null_and_bad_keys_are_refused():
    """Invariant: a NULL or unhashable key is a clear RoutingRefused, never a crash."""
    for v in (None, float("nan"), 1 << 70, object()):
        with pytest.raises(RoutingRefused):
            ks.key_id(v, "hash", None)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=10), st.integers(0, ks.KEYSPACE_END - 1),
                          st.one_of(st.none(), st.lists(U64, max_size=5))), max_size=5))
def test_guard_roundtrip(items):
    """Invariant: decode(encode(guard)) == guard."""
    g = [GuardItem(t, e, k) for t, e, k in items]
    assert decode_guard(encode_guard(g)) == g


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=60))
def test_guard_decode_garbage_is_decode_error(buf):
    """Invariant: malformed guard bytes raise DecodeError only."""
    try:
        decode_guard(buf)
    except DecodeError:
        pass
    b = encode_guard([GuardItem("users", 3, [1, 2])])
    for cut in range(len(b)):
        with pytest.raises(DecodeError):
            decode_guard(b[:cut])


CAT_OPS = st.lists(st.one_of(
    st.tuples(st.just("add_group"), st.fixed_dictionaries({"group": OWNERS})),
    st.tuples(st.just("register_table"), st.fixed_dictionaries(
        {"table": st.sampled_from(["t1", "t2"]), "shard_key": st.just("id"),
         "shard_func": st.sampled_from(["hash", "range", "bogus"])})),
    st.tuples(st.just("add_to_shard"), st.fixed_dictionaries(
        {"table": st.sampled_from(["t1", "t2", "nope"]), "shard": OWNERS})),
    st.tuples(st.just("assign"), st.fixed_dictionaries(
        {"table": st.sampled_from(["t1", "t2"]), "start": U64, "end": U64, "owner": OWNERS})),
    st.tuples(st.just("split"), st.fixed_dictionaries({"table": st.just("t1"), "at": U64})),
    st.tuples(st.just("unregister_table"), st.fixed_dictionaries({"table": st.just("t2")})),
), max_size=20)


@settings(max_examples=150, deadline=None)
@given(CAT_OPS)
def test_catalog_is_deterministic_and_atomic(seq):
    """Invariants: two replicas applying the same ops hold byte-identical catalogs; a
    refused op changes nothing; serialisation round-trips; every table's ranges
    partition the keyspace; the epoch never decreases."""
    a, b = Catalog(), Catalog()
    for name, args in seq:
        before = a.to_bytes()
        epoch = a.epoch
        ra = rb = None
        try:
            ra = a.apply("catalog." + name, args)
        except (BadRequest, NotFound) as e:
            ra = type(e)
            assert a.to_bytes() == before
        try:
            rb = b.apply(name, __import__("orjson").dumps(args))
        except (BadRequest, NotFound) as e:
            rb = type(e)
        assert ra == rb
        assert a.epoch >= epoch
        assert a.to_bytes() == b.to_bytes()
        assert Catalog.from_bytes(a.to_bytes()).to_bytes() == a.to_bytes()
        for col in a.colocations.values():
            if col["starts"]:
                ks.check_starts(col["starts"])
                assert set(col["owners"]) <= set(col["shards"])


def test_seed_api_bodies_become_catalog_ops():
    """Invariants: the seed's /table/* bodies map to catalog ops that apply; bad bodies
    are clear BadRequests; a plan computed from an outdated catalog is not applied; the
    applied plan spreads the table over its shards."""
    from raftsqlite.sharding import ops
    c = Catalog()
    for g in ("shard1", "shard2"):
        c.apply("catalog.add_group", {"group": g})
    c.apply(*ops.register({"table_name": "Users", "shard_key": "id", "shard_func": "hash"},
                          key_decl_type="INTEGER"))
    assert c.table("users")["key_affinity"] == "integer"
    c.apply(*ops.add_to_shard({"table_name": "users", "shard_id": "shard1"}))
    c.apply(*ops.add_to_shard({"table_name": "users", "shard_id": "shard2"}))
    plan = ops.rebalance_plan({"table_name": "users", "dry_run": True}, c)
    assert plan["dry_run"] and len(plan["moves"]) == 1
    for op in ops.assign_ops(plan):
        c.apply(*op)
    assert sorted(set(c.colocation_of("users")["owners"])) == ["shard1", "shard2"]
    before = c.to_bytes()
    with pytest.raises(BadRequest, match="epoch changed"):
        c.apply(*ops.assign_ops(plan)[0])   # the same plan again: computed at an old epoch
    assert c.to_bytes() == before
    for body in ({}, {"table_name": ""}, {"table_name": "t", "shard_key": 3}, [],
                 {"table_name": "t", "shard_key": "id", "shard_func": "geo"}):
        with pytest.raises(BadRequest):
            ops.register(body)
    with pytest.raises(NotFound):
        c.apply(*ops.add_to_shard({"table_name": "users", "shard_id": "nope"}))
