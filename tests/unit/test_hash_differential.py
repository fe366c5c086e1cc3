"""Differential and property tests of the shard hash: compiled vs twin vs the xxhash
package; routing properties the sharding layer relies on."""
import bisect
import os

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings, strategies as st

from raftsqlite.codec import hashing as PY
from raftsqlite.errors import EncodeError

from impls import compiled_or_none

C = compiled_or_none("raftsqlite._chash")

IMPLS = [PY] + ([C] if C is not None else [])
SETTINGS = settings(max_examples=200 * int(os.environ.get("RAFTSQLITE_FUZZ_SCALE", "1")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=20),
                 st.binary(max_size=20), st.booleans())
anything = st.one_of(keys, st.none(), st.integers(-2**70, 2**70), st.lists(st.integers(), max_size=2),
                     st.just("\ud800"))
starts_st = st.lists(st.integers(1, 2**64 - 1), max_size=8, unique=True).map(lambda s: [0] + sorted(s))


def _outcome(fn, *a):
    try:
        return ("ok", fn(*a))
    except EncodeError:
        return ("error",)


@SETTINGS
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_xxh64_matches_reference(data, seed):
    """xxh64 equals xxhash.xxh64_intdigest in both implementations."""
    ref = xxhash.xxh64_intdigest(data, seed)
    for m in IMPLS:
        assert m.xxh64(data, seed) == ref
        assert m.xxh64(bytearray(data), seed) == ref


@SETTINGS
@given(anything)
def test_key_functions_identical(v):
    """key_bytes, keyspace_id and range_key: same result or same EncodeError in both;
    keyspace_id is xxh64 of key_bytes."""
    for name in ("key_bytes", "keyspace_id", "range_key"):
        outs = [_outcome(getattr(m, name), v) for m in IMPLS]
        assert all(o == outs[0] for o in outs), name
    kb = _outcome(PY.key_bytes, v)
    if kb[0] == "ok":
        assert PY.keyspace_id(v) == xxhash.xxh64_intdigest(kb[1])


@SETTINGS
@given(st.lists(keys, max_size=30), starts_st, st.sampled_from(["hash", "range"]))
def test_owners_batch_identical_and_correct(values, starts, mode):
    """owners_batch routes every key to exactly the range holding its id, identically in
    both implementations (NaN keys are refused by both)."""
    outs = [_outcome(m.owners_batch, values, starts, mode) for m in IMPLS]
    assert all(o == outs[0] for o in outs)
    if outs[0][0] == "ok":
        key = PY.keyspace_id if mode == "hash" else PY.range_key
        for v, i in zip(values, outs[0][1]):
            k = key(v)
            assert starts[i] <= k < (starts[i + 1] if i + 1 < len(starts) else 2**64)
            assert i == bisect.bisect_right(starts, k) - 1
        assert [list(m.keyspace_ids(values, mode)) for m in IMPLS] == \
            [[key(v) for v in values]] * len(IMPLS)


@SETTINGS
@given(st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False)),
       st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False)))
def test_range_key_monotonic_numbers(a, b):
    """Numbers (ints and floats mixed, as SQLite orders them) never map out of order."""
    if a > b:
        a, b = b, a
    for m in IMPLS:
        assert m.range_key(a) <= m.range_key(b)
        if a == b:
            assert m.key_bytes(a) == m.key_bytes(b)  # 1 == 1.0 -> same shard


@SETTINGS
@given(st.text(max_size=12), st.text(max_size=12), st.binary(max_size=12), st.binary(max_size=12))
def test_range_key_monotonic_text_blob(s1, s2, b1, b2):
    """Text (by UTF-8 bytes = code point order) and blobs (memcmp) never map out of order."""
    try:
        s1.encode(), s2.encode()
    except UnicodeEncodeError:
        return
    s1, s2 = sorted((s1, s2))
    b1, b2 = sorted((b1, b2))
    for m in IMPLS:
        assert m.range_key(s1) <= m.range_key(s2)
        assert m.range_key(b1) <= m.range_key(b2)


@pytest.mark.parametrize("m", IMPLS, ids=lambda m: m.__name__)
def test_bad_batch_arguments(m):
    """Bad boundaries or a NULL among the keys fail the whole batch with EncodeError."""
    for starts in ([], [1], [0, 5, 3], [0, -1], [0, 2**64], None, [0, "1"]):
        with pytest.raises(EncodeError):
            m.owners_batch([1], starts, "hash")
    with pytest.raises(EncodeError, match="NULL"):
        m.owners_batch([1, None], [0], "hash")
    with pytest.raises(EncodeError):
        m.xxh64("text")
    with pytest.raises(EncodeError):
        m.xxh64(b"", -1)
