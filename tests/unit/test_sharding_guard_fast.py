"""The shard's guard check fast paths: the one-key shape checked without decoding, and
the stored ownership read once until it may have changed."""
import contextlib
import os
from types import SimpleNamespace

import orjson
from hypothesis import given, settings, strategies as st

from raftsqlite.db import Database
from raftsqlite.errors import Fenced, Moved
from raftsqlite.fsm import FSM, SystemContext
from raftsqlite.sharding.glue import ShardState, op_args
from raftsqlite.sharding.ownership import GuardItem, ShardOwnership, encode_guard

U64 = st.integers(min_value=0, max_value=2 ** 64 - 1)


def _outcome(fn):
    try:
        fn()
        return "ok"
    except (Moved, Fenced) as e:
        return type(e).__name__


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(U64, min_size=1, max_size=4, unique=True), fence=st.booleans(),
       table=st.sampled_from(["users", "orders", "other", "üñí"]), kid=U64,
       epoch=st.integers(0, 5), write=st.booleans(), extra=st.booleans())
def test_fast_check_agrees_with_the_full_check(cuts, fence, table, kid, epoch, write, extra):
    """Invariant: for any ownership and any guard, checking the guard's bytes gives the
    same outcome (pass, Moved or Fenced) as checking its decoded items."""
    cuts = sorted(cuts)
    ranges = [[cuts[i], cuts[i + 1]] for i in range(0, len(cuts) - 1, 2)] or [[cuts[0], None]]
    o = ShardOwnership("s1")
    o.apply("own.set_all", orjson.dumps({"group": "s1", "cols": {"users": {
        "epoch": 3, "shard_func": "hash", "tables": ["users", "orders", "üñí"], "ranges": ranges}}}))
    if fence:
        o.apply("own.fence", orjson.dumps({"colocation": "users", "start": ranges[0][0],
                                           "end": ranges[0][1]}))
    items = [GuardItem(table, epoch, [kid])] + ([GuardItem("users", 3, None)] if extra else [])
    g = encode_guard(items)
    assert _outcome(lambda: o.check(g, write=write)) == \
        _outcome(lambda: o.check(items, write=write))


class _Rig:
    """A shard's database, FSM and ShardState, driven the way the apply thread does."""

    def __init__(self, tmp_path):
        self.db = Database(os.path.join(tmp_path, "x.db"))
        self.fsm = FSM(self.db)
        self.shard = ShardState("s1")
        self.shard.register(self.fsm)
        self._own = self.shard.handler("own.set_all")
        self.reads = []

    def op(self, index, ranges, epoch):
        """own.set_all as entry ``index`` (inside the caller's transaction)."""
        self._own(SystemContext(self.db, index, 1), op_args({"group": "s1", "cols": {"users": {
            "epoch": epoch, "shard_func": "hash", "tables": ["users"], "ranges": ranges}}}))

    def set_ranges(self, index, ranges, epoch):
        self.db.internal("BEGIN")
        self.op(index, ranges, epoch)
        self.db.internal("COMMIT")

    def check(self, index, kid):
        ctx = SystemContext(self.db, index, 1)
        guard = encode_guard([GuardItem("users", 1, [kid])])
        return _outcome(lambda: self.shard.check(ctx.execute, guard, index=index))

    @contextlib.contextmanager
    def counting_reads(self):
        """Every internal statement run meanwhile is appended to ``reads``."""
        real = self.db.internal

        def counting(sql, params=None):
            self.reads.append(sql)
            return real(sql, params)
        self.db.internal = counting
        try:
            yield
        finally:
            self.db.internal = real


def test_ownership_read_once_per_entry_and_changes_seen_next_entry(tmp_path):
    """Invariant: a check at a later entry sees an ownership change made by an own.*
    op in between (the memo never hides it), and a reader thread's load of
    another snapshot does not change what the writer's checks use."""
    rig = _Rig(tmp_path)
    rig.set_ranges(1, [[0, 100]], 1)
    with rig.counting_reads():
        assert [rig.check(2, k) for k in (5, 50, 99, 150)] == ["ok", "ok", "ok", "Moved"]
    assert len(rig.reads) == 1             # one read of the stored ownership for entry 2
    rig.set_ranges(3, [[100, 200]], 2)     # the range moved: entry 3 is an own.* op
    assert rig.check(4, 5) == "Moved" and rig.check(4, 150) == "ok"
    rig.shard.load(lambda sql, params=None: [[ShardOwnership("s1").to_bytes()]])  # a reader's view
    assert rig.check(4, 150) == "ok"
    rig.db.close()


@settings(max_examples=300, deadline=None)
@given(table=st.text(min_size=1, max_size=20), epoch=st.integers(0, 2 ** 64 - 1), kid=U64)
def test_one_key_guard_bytes_are_the_general_encoding(table, epoch, kid):
    """Invariant: the one-table one-key shortcut of encode_guard writes exactly the bytes
    of the general layout (magic, count, name, epoch, key count, keys), so shards of
    any version read it the same."""
    import struct
    from raftsqlite.sharding.ownership import decode_guard
    name = table.encode("utf-8")
    general = (b"G\x01" + struct.pack(">H", 1) + struct.pack(">H", len(name)) + name
               + struct.pack(">QI", epoch, 1) + struct.pack(">Q", kid))
    assert encode_guard([GuardItem(table, epoch, [kid])]) == general
    assert decode_guard(general) == [GuardItem(table, epoch, [kid])]


def test_ownership_memo_outlives_entries_until_a_change_rollback_or_restore(tmp_path):
    """Invariant: the apply thread reads the stored ownership once for a run of entries,
    yet a check never uses ranges other than the stored ones: an own.* op, a rolled-back
    batch re-run from a lower index, and a snapshot restore are all seen by the next
    check."""
    rig = _Rig(tmp_path)
    db, check = rig.db, rig.check
    rig.set_ranges(1, [[0, 100]], 1)
    snap = os.path.join(tmp_path, "snap.db")
    rig.fsm.snapshot(snap)                   # holds ranges [0, 100)
    with rig.counting_reads():
        assert [check(i, 50) for i in (2, 3, 4)] == ["ok"] * 3
        assert check(4, 150) == "Moved"
    assert len(rig.reads) == 1               # one read for entries 2-4
    db.internal("BEGIN")
    rig.op(5, [[100, 200]], 2)               # an own.* op moves the range
    assert check(6, 50) == "Moved" and check(6, 150) == "ok"
    db.internal("COMMIT")
    db.internal("BEGIN")
    rig.op(7, [[0, 300]], 3)
    assert check(8, 250) == "ok"
    db.internal("ROLLBACK")                  # the batch 7-8 is undone and re-run from 7
    assert check(7, 250) == "Moved" and check(7, 150) == "ok"
    assert check(8, 150) == "ok"
    rig.fsm.restore(snap, SimpleNamespace(index=20, term=1))
    assert check(21, 50) == "ok" and check(21, 150) == "Moved"
    db.close()
