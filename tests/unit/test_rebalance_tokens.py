"""Fencing tokens of rebalance moves once the moves end (rebalance.md "Fencing tokens").

A shard used to keep every move's newest token in its replicated ownership state forever
(bytes per move, in every snapshot). Now an ended move's coordinator releases it
(``own.release``): the shard forgets the entry and keeps one integer, the newest ended
token, below which a move it holds no entry for is refused. Tokens come from one counter
over all moves (``catalog.move_claim``), so every later claim is above it."""
import asyncio

import pytest

from raftsqlite.errors import CoordinatorFenced
from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.glue import ShardState
from raftsqlite.sharding.ownership import ShardOwnership, token_guard
from raftsqlite.sharding.rebalance import RebalanceConfig
from raftsqlite.sharding.rebalance_service import FakeMoveBackend, Rebalancer
from tests.unit.test_rebalance_resume import make, placed_once, two_shard_catalog

pytestmark = pytest.mark.timeout(60)


def test_ended_moves_leave_no_token_in_shard_state():
    """Invariant: however many moves ran (done or cancelled and rolled back), a shard's
    ownership state holds no token of an ended move: its size stays flat, and only the
    newest ended token is kept. Every row is still placed once."""
    cl = make(keys=20, per_key=2)
    rows0 = placed_once(cl)
    rb = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=8))
    cancel_next = {"on": False}

    def hook(step):
        if step == "copy_batch" and cancel_next["on"]:
            cancel_next["on"] = False

            async def cancel_all():
                for mid in list(rb.runners):
                    await rb.cancel(mid)
            return cancel_all()
    rb.hook = hook

    async def main():
        sizes, owner = [], "s1"
        for i in range(9):
            target = "s2" if owner == "s1" else "s1"
            cancel_next["on"] = i % 3 == 2
            rec = await rb.move_range("items", 0, None, target)
            phases = await rb.wait([rec["id"]], timeout=30)
            assert phases[rec["id"]] == ("cancelled" if i % 3 == 2 else "done"), phases
            if phases[rec["id"]] == "done":
                owner = target
            token = cl.catalog.moves[rec["id"]]["token"]
            for g in ("s1", "s2"):
                own = cl.groups[g].own
                assert own.tokens == {}, (i, g, own.tokens)
                assert own.floor == token, (i, g, own.floor, token)
            sizes.append(sum(len(cl.groups[g].own.to_bytes()) for g in ("s1", "s2")))
        return sizes
    sizes = asyncio.run(main())
    # the floor's digits may grow (one per shard here); an entry per move would add ~10
    assert max(sizes) - min(sizes) <= 2, sizes
    assert placed_once(cl) == rows0


def test_old_coordinator_refused_before_and_after_its_move_ended():
    """Invariant: an older coordinator of a move is refused while the move runs (its
    claim, writes, fence, release) and still after the move ended and the shard forgot
    the entry; a repeated release is a no-op; a move claimed later is accepted; a refused
    request changes nothing; the stored state (glue, as every member reads it) agrees."""
    own = ShardOwnership("s1")
    own.apply("own.set", {"colocation": "c", "epoch": 1, "tables": ["t"],
                          "ranges": [[0, None]]})
    own.apply("own.claim", {"move": "m1", "token": 1})
    own.apply("own.claim", {"move": "m1", "token": 2})     # a new coordinator
    before = own.to_bytes()
    for op, args in (("own.claim", {}), ("own.release", {}),
                     ("own.fence", {"colocation": "c", "start": 0, "end": None})):
        with pytest.raises(CoordinatorFenced):
            own.apply(op, dict(args, move="m1", token=1))
    assert own.to_bytes() == before
    assert own.apply("own.release", {"move": "m1", "token": 2}) == {"released": True}
    assert own.tokens == {} and own.floor == 2
    assert own.apply("own.release", {"move": "m1", "token": 2}) == {"released": False}
    after = own.to_bytes()
    for tok in (1, 2):
        with pytest.raises(CoordinatorFenced, match="ended"):
            own.apply("own.claim", {"move": "m1", "token": tok})
        with pytest.raises(CoordinatorFenced):
            own.take_token("m1", tok)
    assert own.to_bytes() == after
    assert ShardOwnership.from_bytes(after).floor == 2
    own.apply("own.claim", {"move": "m2", "token": 3})
    assert own.tokens == {"m2": 3}

    import sqlite3
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE _raftsqlite_meta (k TEXT PRIMARY KEY, v)")
    ex = lambda sql, p=(): conn.execute(sql, p).fetchall()     # noqa: E731
    conn.execute("INSERT INTO _raftsqlite_meta VALUES (?, ?)", (ShardState.key, after))
    st = ShardState("s1")
    with pytest.raises(CoordinatorFenced):
        st.take_token(ex, token_guard("m1", 2))               # a copy batch, after the end
    st.take_token(ex, token_guard("m2", 3))
    st._bytes = None
    assert st.load(ex).tokens == {"m2": 3} and st.load(ex).floor == 2


def test_catalog_tokens_are_one_counter_with_compare_and_set_claims():
    """Invariant: every claim of any move gets a token above every earlier claim's (what
    the shard's floor relies on); a claim with ``expect_token`` is refused once another
    coordinator claimed the move since; a catalog from before the counter resumes above
    its moves' tokens."""
    cat = two_shard_catalog()
    a = cat.apply("catalog.move_create", {"table": "t", "start": 0, "end": 1 << 62,
                                          "target": "s2"})["id"]
    b = cat.apply("catalog.move_create", {"table": "t", "start": 1 << 62, "end": None,
                                          "target": "s2"})["id"]
    got = [cat.apply("catalog.move_claim", {"move_id": m})["token"] for m in (a, b, a)]
    assert got == [1, 2, 3]
    assert cat.apply("catalog.move_claim", {"move_id": b, "expect_token": 2})["token"] == 4
    snap = cat.to_bytes()
    with pytest.raises(CoordinatorFenced):
        cat.apply("catalog.move_claim", {"move_id": b, "expect_token": 2})
    assert cat.to_bytes() == snap
    d = cat.to_dict()
    del d["claims"]
    old = Catalog.from_dict(d)
    assert old.apply("catalog.move_claim", {"move_id": a})["token"] == 5


class _HeldClaims(FakeMoveBackend):
    """Holds the first ``own.claim`` of move ``hold`` until ``gate`` opens: a coordinator
    whose claim reaches the shard late (here: after another move ended there)."""

    def __init__(self, cluster):
        super().__init__(cluster)
        self.hold, self.gate, self.held = None, asyncio.Event(), asyncio.Event()

    async def own_op(self, group, name, args):
        if name == "claim" and args.get("move") == self.hold and not self.gate.is_set():
            self.held.set()
            await self.gate.wait()
        return await super().own_op(group, name, args)


def test_claim_that_arrives_after_another_move_ended_claims_again():
    """Invariant: a running move's coordinator whose claim reaches a shard only after a
    move claimed later has ended there (its token is below the shard's floor) is not
    stopped for good: it claims once more (compare-and-set on its own token) and finishes;
    every row is placed once."""
    cl = make(keys=20, per_key=2)
    rows0 = placed_once(cl)
    be = _HeldClaims(cl)
    rb = Rebalancer(be, RebalanceConfig(batch_rows=8))
    # Moves of one colocation group run one after another on a coordinator; the other
    # move here runs beside it (another colocation group's, or another coordinator's).
    rb2 = Rebalancer(FakeMoveBackend(cl), RebalanceConfig(batch_rows=8))

    async def main():
        be.hold = "m1"                      # the catalog's first move id
        late = await rb.move_range("items", 1 << 62, None, "s2")
        assert late["id"] == "m1", late
        await asyncio.wait_for(be.held.wait(), 10)
        first = cl.catalog.moves["m1"]["token"]
        other = await rb2.move_range("items", 0, 1 << 62, "s2", wait=True)
        assert cl.catalog.moves[other["id"]]["phase"] == "done"
        assert cl.groups["s2"].own.floor > first
        be.gate.set()
        phases = await rb.wait(["m1"], timeout=30)
        return phases, first
    phases, first = asyncio.run(main())
    assert phases == {"m1": "done"}
    assert cl.catalog.moves["m1"]["token"] > first + 1
    assert all(cl.groups[g].own.tokens == {} for g in ("s1", "s2"))
    assert placed_once(cl) == rows0
