"""Self-tests of the checkers: broken histories MUST be rejected, correct ones accepted.

A checker that accepts everything would make the whole fault suite worthless, so each
kind of anomaly the suite claims to catch has a hand-built history here.
"""
import random

import pytest
from hypothesis import given, settings, strategies as st

from raftsqlite.testing.checkers import (check_append, check_bank, check_convergence,
                                         check_register, summarize, table_checksum)
from raftsqlite.testing.history import History


def hist():
    return History(clock=lambda: 0.0)


def op(h, proc, f, key, value, t0, t1, outcome="ok", result=None, level="linearizable"):
    o = h.invoke(proc, f, key, value, node="n1", level=level, at=t0)
    if outcome == "ok":
        h.ok(o, result, at=t1)
    elif outcome == "failed":
        h.fail(o, "refused", at=t1)
    elif outcome == "unknown":
        h.unknown(o, "timeout", at=t1)
    return o


# -- register -------------------------------------------------------------------------
def test_register_sequential_history_is_linearizable():
    """A history that a single register produces, one op at a time, passes."""
    h = hist()
    op(h, 1, "write", "k", 1, 0, 1)
    op(h, 2, "read", "k", None, 2, 3, result=1)
    op(h, 1, "cas", "k", [1, 2], 4, 5, result={"applied": True})
    op(h, 2, "cas", "k", [1, 3], 6, 7, result={"applied": False})
    op(h, 2, "read", "k", None, 8, 9, result=2)
    r = check_register(h, initial=0)
    assert r.valid is True, r.violations


def test_register_concurrent_ops_may_take_effect_in_either_order():
    """Overlapping ops can be ordered either way; a read overlapping a write may see either."""
    h = hist()
    op(h, 1, "write", "k", 1, 0, 10)
    op(h, 2, "read", "k", None, 1, 2, result=0)
    op(h, 3, "read", "k", None, 3, 4, result=1)
    op(h, 2, "write", "k", 2, 5, 6)
    op(h, 3, "read", "k", None, 11, 12, result=2)
    assert check_register(h, initial=0).valid is True


def test_register_stale_read_is_rejected():
    """A read that begins after a write completed must not return the older value."""
    h = hist()
    op(h, 1, "write", "k", 1, 0, 1)
    op(h, 1, "write", "k", 2, 2, 3)
    op(h, 2, "read", "k", None, 4, 5, result=1)
    r = check_register(h, initial=0)
    assert r.valid is False
    assert r.violations[0]["kind"] == "not_linearizable"
    assert r.violations[0]["stuck_at"]["f"] == "read"


def test_register_lost_write_is_rejected():
    """An acknowledged write followed by reads of the initial value is a lost write."""
    h = hist()
    op(h, 1, "write", "k", 7, 0, 1)
    op(h, 2, "read", "k", None, 2, 3, result=0)
    assert check_register(h, initial=0).valid is False


def test_register_non_linearizable_cas_is_rejected():
    """Two CASes from the same old value cannot both apply (no write restored it)."""
    h = hist()
    op(h, 1, "cas", "k", [0, 1], 0, 5, result={"applied": True})
    op(h, 2, "cas", "k", [0, 2], 1, 6, result={"applied": True})
    assert check_register(h, initial=0).valid is False


def test_register_cas_refused_while_value_matched_is_rejected():
    """A CAS that says 'not applied' although the register certainly held `old`."""
    h = hist()
    op(h, 1, "write", "k", 5, 0, 1)
    op(h, 2, "cas", "k", [5, 6], 2, 3, result={"applied": False})
    op(h, 1, "read", "k", None, 4, 5, result=5)
    assert check_register(h, initial=0).valid is False


def test_register_unknown_write_may_or_may_not_have_happened():
    """Unknown writes: seen later is fine, never seen is fine."""
    h = hist()
    op(h, 1, "write", "k", 1, 0, 1, outcome="unknown")
    op(h, 2, "read", "k", None, 5, 6, result=1)
    op(h, 1, "write", "a", 1, 0, 1, outcome="unknown")
    op(h, 2, "read", "a", None, 5, 6, result=0)
    assert check_register(h, initial=0).valid is True


def test_register_failed_write_must_not_be_seen():
    """A definitely-failed write that a read observes means 'failed' was a lie."""
    h = hist()
    op(h, 1, "write", "k", 1, 0, 1, outcome="failed")
    op(h, 2, "read", "k", None, 5, 6, result=1)
    assert check_register(h, initial=0).valid is False


def test_register_unknown_write_can_explain_a_refused_cas():
    """The pruning of unobserved unknown writes must not drop one a refused CAS needs."""
    h = hist()
    op(h, 1, "write", "k", 1, 0, 1)
    op(h, 3, "write", "k", 99, 2, 3, outcome="unknown")
    op(h, 2, "cas", "k", [1, 2], 4, 5, result={"applied": False})
    assert check_register(h, initial=0).valid is True


def test_register_weak_reads_are_not_held_to_linearizability():
    """Reads at level weak/none may be stale by design; they are not checked."""
    h = hist()
    op(h, 1, "write", "k", 1, 0, 1)
    op(h, 2, "read", "k", None, 2, 3, result=0, level="none")
    assert check_register(h, initial=0).valid is True


def test_register_search_budget_gives_inconclusive_not_pass():
    """When the search budget runs out the answer is None, never True."""
    h = hist()
    for i in range(14):      # many concurrent writes, then reads forcing deep search
        op(h, i, "write", "k", i + 1, 0, 100)
    for i in range(14):
        op(h, 20 + i, "read", "k", None, 1, 100, result=14 - i)
    r = check_register(h, initial=0, max_states=50)
    assert r.valid is None


def _true_register_history(seed, n_ops=60, procs=4):
    """Ops on a real register, each taking effect at an instant inside its window."""
    rng = random.Random(seed)
    events = []
    for i in range(n_ops):
        t0 = rng.uniform(0, 100)
        lin = t0 + rng.uniform(0, 5)
        t1 = lin + rng.uniform(0, 5)
        f = rng.choice(["read", "write", "cas"])
        events.append((lin, t0, t1, f, i))
    state, h, nextv = 0, hist(), 1
    for lin, t0, t1, f, i in sorted(events):
        proc = i % procs
        if f == "write":
            op(h, proc, "write", "k", nextv, t0, t1)
            state = nextv
            nextv += 1
        elif f == "read":
            op(h, proc, "read", "k", None, t0, t1, result=state)
        else:
            old = state if rng.random() < 0.5 else state + 1000
            applied = old == state
            op(h, proc, "cas", "k", [old, nextv], t0, t1, result={"applied": applied})
            if applied:
                state = nextv
            nextv += 1
    return h


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**9))
def test_register_histories_of_a_true_register_pass(seed):
    """No false alarms: any history a real register produces is linearizable."""
    h = _true_register_history(seed)
    assert check_register(h, initial=0).valid is True


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**9))
def test_register_corrupted_read_is_caught(seed):
    """A read returning a value that no write ever wrote is always rejected."""
    h = _true_register_history(seed)
    reads = [o for o in h.ops if o.f == "read"]
    if not reads:
        return
    random.Random(seed).choice(reads).result = -5
    assert check_register(h, initial=0).valid is False


# -- bank -----------------------------------------------------------------------------
INITIAL = {1: 100, 2: 100, 3: 100}


def transfer(h, tid, src, dst, amount, t0, t1, outcome="ok", applied=True):
    return op(h, 1, "transfer", None, {"id": tid, "from": src, "to": dst, "amount": amount},
              t0, t1, outcome=outcome, result={"applied": applied})


def test_bank_consistent_history_passes():
    """Reads that sum to the total and a log matching the balances pass."""
    h = hist()
    transfer(h, "t1", 1, 2, 30, 0, 1)
    transfer(h, "t2", 2, 3, 500, 2, 3, applied=False)
    transfer(h, "t3", 3, 1, 10, 4, 5, outcome="unknown")
    op(h, 2, "read_all", None, None, 6, 7, result={1: 70, 2: 130, 3: 100})
    r = check_bank(h, INITIAL, final_balances={1: 80, 2: 130, 3: 90},
                   transfer_log=[("t1", 1, 2, 30), ("t3", 3, 1, 10)])
    assert r.valid is True, r.violations
    assert r.lost_acked_writes == 0


def test_bank_wrong_total_and_negative_balance_are_rejected():
    """A read where money appeared, or an account below zero, is a violation."""
    h = hist()
    op(h, 2, "read_all", None, None, 0, 1, result={1: 100, 2: 130, 3: 100})
    op(h, 2, "read_all", None, None, 2, 3, result={"1": -10, "2": 210, "3": 100})
    r = check_bank(h, INITIAL)
    kinds = sorted(v["kind"] for v in r.violations)
    assert r.valid is False and kinds == ["negative_balance", "wrong_total"]


def test_bank_lost_transfer_is_rejected():
    """An acknowledged, applied transfer missing from the final log is a lost write."""
    h = hist()
    transfer(h, "t1", 1, 2, 30, 0, 1)
    r = check_bank(h, INITIAL, final_balances=dict(INITIAL), transfer_log=[])
    assert r.valid is False and r.lost_acked_writes == 1


def test_bank_failed_transfer_that_applied_is_rejected():
    """A transfer reported failed (definite) must not be in the log."""
    h = hist()
    transfer(h, "t1", 1, 2, 30, 0, 1, outcome="failed")
    r = check_bank(h, INITIAL, final_balances={1: 70, 2: 130, 3: 100},
                   transfer_log=[("t1", 1, 2, 30)])
    assert r.valid is False and r.violations[0]["kind"] == "phantom_transfer"


def test_bank_half_applied_transfer_is_rejected():
    """Balances that do not match the logged transfers mean a transaction was torn."""
    h = hist()
    transfer(h, "t1", 1, 2, 30, 0, 1)
    r = check_bank(h, INITIAL, final_balances={1: 70, 2: 100, 3: 100},
                   transfer_log=[("t1", 1, 2, 30)])
    assert r.valid is False and r.violations[0]["kind"] == "balances_disagree_with_log"


def test_bank_branch_reads_are_checked_per_branch():
    """Sharded bank: a read of one branch must show exactly that branch's accounts at
    its initial total (money moved between branches, or an account of another branch
    in the answer, is a violation); a whole read is still checked against everything."""
    initial = {1: 100, 2: 100, 3: 100, 4: 100}
    branches = {0: [1, 2], 1: [3, 4]}
    h = hist()
    op(h, 2, "read_all", 0, None, 0, 1, result={1: 70, 2: 130})           # fine
    op(h, 2, "read_all", None, None, 2, 3, result={1: 70, 2: 130, 3: 100, 4: 100})
    assert check_bank(h, initial, groups=branches).valid is True
    op(h, 2, "read_all", 1, None, 4, 5, result={3: 90, 4: 100})           # 10 vanished
    op(h, 2, "read_all", 0, None, 6, 7, result={1: 100, 2: 100, 3: 0})    # foreign row
    op(h, 2, "read_all", None, None, 8, 9, result={1: 100, 2: 100, 3: 100})  # lost row
    r = check_bank(h, initial, groups=branches)
    kinds = sorted(v["kind"] for v in r.violations)
    assert r.valid is False and kinds == ["accounts_changed", "accounts_changed",
                                          "wrong_total"], r.violations


# -- append ---------------------------------------------------------------------------
def test_append_consistent_history_passes():
    """Reads that are prefixes of the final order and contain all earlier acks pass."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 1)
    op(h, 2, "append", "k", "b", 0, 3, outcome="unknown")
    op(h, 3, "read", "k", None, 2, 4, result=["a"])
    op(h, 1, "append", "k", "c", 5, 6)
    op(h, 3, "read", "k", None, 7, 8, result=["a", "b", "c"])
    op(h, 1, "append", "k", "d", 9, 10, outcome="failed")
    r = check_append(h, {"k": ["a", "b", "c"]})
    assert r.valid is True, r.violations


def test_append_lost_append_is_rejected():
    """An acknowledged append absent at the end is lost."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 1)
    op(h, 1, "append", "k", "b", 2, 3)
    r = check_append(h, {"k": ["a"]})
    assert r.valid is False and r.lost_acked_writes == 1


def test_append_duplicate_is_rejected():
    """An append applied twice (e.g. a retried request without dedup) is caught."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 1)
    r = check_append(h, {"k": ["a", "a"]})
    assert r.valid is False and r.violations[0]["kind"] == "duplicate"


def test_append_stale_read_is_rejected():
    """A read that starts after an append was acked must contain it."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 1)
    op(h, 1, "append", "k", "b", 2, 3)
    op(h, 2, "read", "k", None, 4, 5, result=["a"])
    r = check_append(h, {"k": ["a", "b"]})
    assert r.valid is False and r.violations[0]["kind"] == "stale_read"


def test_append_read_after_a_longer_read_must_not_shrink():
    """Once a read saw an (unacked) element, a later read must see it too."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 20, outcome="unknown")
    op(h, 2, "read", "k", None, 1, 2, result=["a"])
    op(h, 3, "read", "k", None, 3, 4, result=[])
    r = check_append(h, {"k": ["a"]})
    assert r.valid is False and r.violations[0]["kind"] == "stale_read"


def test_append_readers_disagreeing_on_order_is_rejected():
    """Two readers seeing different orders of the same appends is a violation."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 1)
    op(h, 2, "append", "k", "b", 0, 1)
    op(h, 3, "read", "k", None, 2, 3, result=["b", "a"])
    r = check_append(h, {"k": ["a", "b"]})
    assert r.valid is False and r.violations[0]["kind"] == "order_differs"


def test_append_failed_or_invented_value_is_rejected():
    """A failed append, or a value nobody appended, must not appear."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 1, outcome="failed")
    r = check_append(h, {"k": ["a", "zz"]})
    kinds = {v["kind"] for v in r.violations}
    assert kinds == {"failed_append_present", "never_appended"}


# -- convergence ----------------------------------------------------------------------
def test_convergence():
    """Identical digests pass; one differing table or an unreadable member fails."""
    a = table_checksum(["id", "v"], [[1, "x"], [2, "y"]])
    b = table_checksum(["id", "v"], [[1, "x"], [2, "z"]])
    assert a != b
    assert check_convergence({"n1": {"t": a}, "n2": {"t": a}}).valid is True
    r = check_convergence({"n1": {"t": a}, "n2": {"t": b}, "n3": {"t": a}})
    assert r.valid is False and r.violations[0]["member"] == "n2"
    assert check_convergence({"n1": {"t": a}, "n2": {}}).valid is False
    assert check_convergence({"n1": {"t": a}, "n2": None}).valid is False


def test_summary_counts_lost_writes_and_violations():
    """The summary is invalid as soon as one checker found something."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 1)
    s = summarize([check_append(h, {"k": []}), check_convergence({"n1": {}})])
    assert s["valid"] is False and s["lost_acked_writes"] == 1 and s["violations"] == 1


def test_history_roundtrip(tmp_path):
    """A dumped history loads back with the same ops and outcomes."""
    h = hist()
    op(h, 1, "append", "k", "a", 0, 1)
    op(h, 1, "append", "k", "b", 2, 3, outcome="unknown")
    h.event("kill", at=1.5, member="n1")
    h.dump(tmp_path / "h.jsonl")
    h2 = History.load(tmp_path / "h.jsonl")
    assert [(o.f, o.value, o.outcome) for o in h2] == [(o.f, o.value, o.outcome) for o in h]
    assert h2.events[0].kind == "kill"
    with pytest.raises(ValueError):
        h.ok(h.ops[0])
