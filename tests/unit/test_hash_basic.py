"""Shard hash basics, run against both implementations in one pytest run."""
import random

import pytest
import xxhash

from raftsqlite.errors import EncodeError


def test_xxh64_equals_xxhash_package(h):
    """xxh64 equals the reference xxhash package for every length class and seeds."""
    rnd = random.Random(1)
    for n in list(range(0, 70)) + [100, 1000, 4097]:
        data = rnd.randbytes(n)
        for seed in (0, 1, 2**64 - 1, rnd.getrandbits(64)):
            assert h.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed), (n, seed)


def test_int_and_equal_float_share_a_key(h):
    """SQLite holds 1 == 1.0, so both must route to the same shard."""
    for v in (0, 1, -1, 2**53, -2**63):
        assert h.key_bytes(v) == h.key_bytes(float(v))
        assert h.keyspace_id(v) == h.keyspace_id(float(v))
        assert h.range_key(v) == h.range_key(float(v))
    assert h.key_bytes(-0.0) == h.key_bytes(0)
    assert h.key_bytes(True) == h.key_bytes(1)


def test_types_are_tagged(h):
    """Text '1', blob b'1' and int 1 are different keys."""
    keys = {h.key_bytes(1), h.key_bytes("1"), h.key_bytes(b"1"), h.key_bytes(1.5)}
    assert len(keys) == 4


@pytest.mark.parametrize("bad", [None, float("nan"), 2**63, [1], object()])
def test_bad_keys_refused(h, bad):
    """NULL, NaN, out-of-range ints and other types are refused with EncodeError."""
    with pytest.raises(EncodeError):
        h.keyspace_id(bad)
    with pytest.raises(EncodeError):
        h.range_key(bad)


def test_range_key_monotonic(h):
    """range_key is non-decreasing within numbers (ints and floats mixed) and within text."""
    rnd = random.Random(2)
    nums = [rnd.randint(-2**63, 2**63 - 1) for _ in range(300)] + \
           [rnd.uniform(-1e20, 1e20) for _ in range(300)] + [float("inf"), float("-inf"), 0.5, -0.5]
    nums.sort()
    keys = [h.range_key(v) for v in nums]
    assert keys == sorted(keys)
    texts = sorted("".join(rnd.choice("ab\u00e9\U0001f600") for _ in range(rnd.randint(0, 12)))
                   for _ in range(300))
    tk = [h.range_key(t) for t in texts]
    assert tk == sorted(tk)


def test_owners_batch_matches_single(h):
    """owners_batch gives, per key, the range [starts[i], starts[i+1]) holding its id."""
    starts = [0, 2**62, 2**63, 2**63 + 5, 3 * 2**62]
    vals = list(range(-50, 50)) + ["a", b"b", 1.5]
    for mode, key in (("hash", h.keyspace_id), ("range", h.range_key)):
        got = h.owners_batch(vals, starts, mode)
        for v, i in zip(vals, got):
            k = key(v)
            assert starts[i] <= k and (i + 1 == len(starts) or k < starts[i + 1])
    with pytest.raises(EncodeError):
        h.owners_batch([1], [5, 10], "hash")
    with pytest.raises(EncodeError):
        h.owners_batch([1], [0, 10, 10], "hash")
    with pytest.raises(EncodeError):
        h.owners_batch([1], [0], "modulo")
