"""Checkers over recorded histories: what a correct replicated database must never do.

Each checker returns a :class:`CheckResult`. ``valid`` is ``True``, ``False`` or
``None`` (inconclusive: a search budget ran out; never reported as a pass or as a
violation). ``lost_acked_writes`` counts writes the system acknowledged that are not
in the final state; ``violations`` lists everything else that is wrong, each with
enough detail to find the operations in the dumped history.

The checkers know nothing about HTTP or processes: they read :class:`History` objects
and final states, so they are tested with hand-built broken histories
(tests/faults/test_checkers.py).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from .history import FAILED, OK, UNKNOWN, History, Op

#: read levels whose results must be linearizable (rqlite's names)
LINEARIZABLE_LEVELS = ("linearizable", "strong")
MAX_REPORTED = 20


@dataclass
class CheckResult:
    name: str
    valid: bool | None
    violations: list = field(default_factory=list)
    lost_acked_writes: int = 0
    stats: dict = field(default_factory=dict)

    def add(self, kind: str, **detail) -> None:
        self.valid = False
        if len(self.violations) < MAX_REPORTED:
            self.violations.append({"kind": kind, **detail})
        self.stats["violation_count"] = self.stats.get("violation_count", 0) + 1

    @property
    def violation_count(self) -> int:
        return self.stats.get("violation_count", len(self.violations))

    def to_dict(self) -> dict:
        return {"name": self.name, "valid": self.valid, "violations": self.violations,
                "violation_count": self.violation_count,
                "lost_acked_writes": self.lost_acked_writes, "stats": self.stats}

    def __bool__(self):  # pragma: no cover - guard against `if result:` mistakes
        raise TypeError("use CheckResult.valid, not truthiness")


def _checked_read(op: Op) -> bool:
    """Reads whose answer is bound by real time (others may legitimately be stale)."""
    return op.ok and (op.level is None or op.level in LINEARIZABLE_LEVELS)


# ---------------------------------------------------------------------------------------
# bank
# ---------------------------------------------------------------------------------------
def check_bank(history: History, initial: dict, final_balances: dict | None = None,
               transfer_log: Iterable | None = None, groups: dict | None = None) -> CheckResult:
    """Money is neither created nor destroyed, and no account goes negative.

    ``initial``: account -> starting balance. Reads are ``read_all`` ops whose result
    is a dict account -> balance. Transfers are ``transfer`` ops with
    ``value = {"id", "from", "to", "amount"}`` and, when ok, ``result = {"applied": bool}``
    (the debit was refused for lack of funds when not applied).

    ``transfer_log`` (rows ``(id, from, to, amount)`` written in the same transaction as
    the balance updates) and ``final_balances`` come from a read after the heal. They
    prove durability (every acked applied transfer is in the log, so lost_acked_writes)
    and atomicity (final balances equal the initial ones plus the logged transfers).

    ``groups`` (branch -> accounts; the sharded bank): a read whose ``key`` names a
    branch must show exactly that branch's accounts summing to the branch's initial
    total (transfers stay inside a branch); a read with no key is checked whole.
    """
    res = CheckResult("bank", True)
    total = sum(initial.values())
    accounts = set(initial)
    reads = history.select("read_all", OK)
    for op in reads:
        bal = {_norm_key(k): v for k, v in (op.result or {}).items()}
        want, want_total = accounts, total
        if groups is not None and op.key is not None:
            members = groups.get(op.key, groups.get(_norm_key(op.key), ()))
            want = {_norm_key(a) for a in members}
            want_total = sum(initial[a] for a in members)
        if set(bal) != want:
            res.add("accounts_changed", op=op.id, node=op.node, key=op.key,
                    seen=sorted(bal, key=str))
            continue
        s = sum(bal.values())
        if s != want_total:
            res.add("wrong_total", op=op.id, node=op.node, level=op.level, key=op.key,
                    total=s, expected=want_total)
        neg = {k: v for k, v in bal.items() if v < 0}
        if neg:
            res.add("negative_balance", op=op.id, node=op.node, level=op.level,
                    accounts=neg)
    transfers = history.select("transfer")
    res.stats.update(reads=len(reads), transfers=len(transfers),
                     transfers_ok=sum(1 for t in transfers if t.ok),
                     transfers_applied=sum(1 for t in transfers
                                           if t.ok and (t.result or {}).get("applied")))
    if transfer_log is None:
        return res
    log = {}
    for row in transfer_log:
        tid, src, dst, amount = row
        if tid in log:
            res.add("duplicate_transfer", id=tid)
        log[tid] = (_norm_key(src), _norm_key(dst), amount)
    by_id = {t.value["id"]: t for t in transfers}
    for tid, t in by_id.items():
        applied = t.ok and (t.result or {}).get("applied")
        if applied and tid not in log:
            res.lost_acked_writes += 1
            res.add("lost_transfer", op=t.id, id=tid)
        elif tid in log and (t.outcome == FAILED or (t.ok and not applied)):
            res.add("phantom_transfer", op=t.id, id=tid, outcome=t.outcome)
    for tid in log:
        if tid not in by_id:
            res.add("unknown_transfer_in_log", id=tid)
    if final_balances is not None:
        expect = dict(initial)
        for src, dst, amount in log.values():
            if src in expect and dst in expect:
                expect[src] -= amount
                expect[dst] += amount
        final = {_norm_key(k): v for k, v in final_balances.items()}
        if final != expect:
            diff = {k: (final.get(k), expect.get(k)) for k in set(final) | set(expect)
                    if final.get(k) != expect.get(k)}
            res.add("balances_disagree_with_log", diff=diff)
    res.stats["logged_transfers"] = len(log)
    return res


def _norm_key(k):
    """JSON turns int dict keys into strings; compare accounts as ints when they are."""
    if isinstance(k, str) and k.lstrip("-").isdigit():
        return int(k)
    return k


# ---------------------------------------------------------------------------------------
# register: linearizability per key (Wing & Gong search with Lowe's memoisation)
# ---------------------------------------------------------------------------------------
_INF = math.inf
_BOTTOM = ("<a value nobody observed>",)


def _cas_applied(op: Op) -> bool:
    return bool(op.result.get("applied")) if isinstance(op.result, dict) else bool(op.result)


def _register_specs(ops: list[Op], initial):
    """Turn one key's ops into search steps: ``(op, spec, required, ret, interchangeable)``.

    ``spec`` is ``("w", new)``, ``("r", value)``, ``("c", old, new)`` (a CAS that
    applied) or ``("n", old)`` (a CAS that reported "not applied": the value was not old).

    Three prunings keep the search small; each relies on written values being unique
    per key (the register workload guarantees it; keys where it does not hold skip
    the prunings):
    - a value nobody ever observed (no read returned it, no CAS expected it) is
      replaced by one BOTTOM value, so states that differ only in such values merge;
    - an unknown write whose value *was* observed must have happened, before the
      earliest response of an op that observed it: it becomes required, with that
      response as its deadline;
    - unknown writes of unobserved values all have the same effect (state := BOTTOM)
      and no deadline, so only the earliest-invoked unplaced one is ever a candidate;
      when no "CAS not applied" exists they cannot matter at all and are dropped.
    Failed ops never happened; unknown and weak reads say nothing: all dropped.
    """
    kept = [op for op in ops if op.outcome in (OK, UNKNOWN)
            and not (op.f == "read" and not _checked_read(op))]
    written = [_hashable(op.value if op.f == "write" else op.value[1])
               for op in kept if op.f in ("write", "cas")]
    unique = len(written) == len(set(written)) and _hashable(initial) not in written
    observed = {_hashable(initial)}
    first_seen: dict = {}
    has_negative_cas = False
    for op in kept:
        if op.f == "read":
            v = _hashable(op.result)
            observed.add(v)
            first_seen[v] = min(first_seen.get(v, _INF), op.complete)
        elif op.f == "cas":
            v = _hashable(op.value[0])
            observed.add(v)
            if op.ok and not _cas_applied(op):
                has_negative_cas = True
            elif op.ok:
                first_seen[v] = min(first_seen.get(v, _INF), op.complete)

    def canon(v):
        return v if (not unique or _hashable(v) in observed) else _BOTTOM

    out = []
    for op in kept:
        optional = op.outcome == UNKNOWN
        ret = _INF if optional else op.complete
        swap = False
        if op.f == "read":
            spec = ("r", _hashable(op.result))
        elif op.f == "write":
            spec = ("w", _hashable(canon(op.value)))
        elif op.f == "cas":
            old, new = (_hashable(x) for x in op.value)
            if op.ok and not _cas_applied(op):
                spec = ("n", old)
            else:
                spec = ("c", old, _hashable(canon(new)))
        else:
            raise ValueError(f"register model has no operation {op.f!r}")
        if optional and unique:
            new = spec[-1]
            if new is not _BOTTOM and new in first_seen:
                optional, ret = False, first_seen[new]
            elif new is _BOTTOM and spec[0] == "w":
                if not has_negative_cas:
                    continue
                swap = True
        out.append((op, spec, not optional, ret, swap))
    return out


_ILLEGAL = ("<illegal>",)


def _hashable(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def _step(spec, state):
    kind = spec[0]
    if kind == "w":
        return spec[1]
    if kind == "r":
        return state if state == spec[1] else _ILLEGAL
    if kind == "c":
        return spec[2] if state == spec[1] else _ILLEGAL
    return state if state != spec[1] else _ILLEGAL        # "n"


def check_linearizable_key(ops: list[Op], initial=None, max_states: int = 200_000,
                           t0: float = 0.0) -> dict:
    """Search for a linearization of one key's operations (Wing & Gong with Lowe's
    memoisation of (placed set, state) pairs already explored).

    Returns ``{"valid": True|False|None, "states": n, ...}``; on failure, the op the
    deepest attempt could not place and the ops placed just before it.
    """
    init = _hashable(initial)
    steps = sorted(_register_specs(ops, initial), key=lambda s: s[0].invoke)
    n = len(steps)
    if n == 0:
        return {"valid": True, "states": 0, "ops": 0}
    inv = [s[0].invoke for s in steps]
    specs = [s[1] for s in steps]
    required = [s[2] for s in steps]
    ret = [s[3] for s in steps]
    swap = [s[4] for s in steps]
    required_mask = sum(1 << i for i in range(n) if required[i])

    seen: set = set()
    stack = [(0, init, 0, None, 0)]     # (mask, state, first unplaced, candidates, cursor)
    states = 0
    deepest = (0, None, [])
    path: list[int] = []
    while stack:
        mask, state, first, cands, cur = stack[-1]
        if cands is None:
            if mask & required_mask == required_mask:
                return {"valid": True, "states": states, "ops": n}
            key = (mask, state)
            if key in seen:
                stack.pop()
                if path:
                    path.pop()
                continue
            seen.add(key)
            states += 1
            if states > max_states:
                return {"valid": None, "states": states, "ops": n,
                        "reason": f"search budget of {max_states} states exhausted"}
            while first < n and mask >> first & 1:
                first += 1
            # Candidates: unplaced ops invoked before every unplaced op returned.
            minret = _INF
            scan = []
            i = first
            while i < n and inv[i] <= minret:
                if not mask >> i & 1:
                    scan.append(i)
                    if ret[i] < minret:
                        minret = ret[i]
                i += 1
            cands = []
            swap_taken = False
            for i in scan:
                if inv[i] > minret:
                    continue
                if not required[i]:
                    # An unknown op is only worth placing where it changes the state;
                    # left unplaced it constrains nothing (its deadline is infinite).
                    sp = specs[i]
                    if sp[-1] == state or (sp[0] == "c" and sp[1] != state):
                        continue
                if swap[i]:
                    if swap_taken:
                        continue
                    swap_taken = True
                cands.append(i)
            # Required ops first (earliest deadline first); optional ones last, so
            # histories where unknown writes did not happen are found quickly.
            cands.sort(key=lambda i: (not required[i], ret[i]))
            stack[-1] = (mask, state, first, cands, 0)
            cur = 0
            placed = bin(mask & required_mask).count("1")
            if placed >= deepest[0]:
                req = [i for i in cands if required[i]]
                deepest = (placed, req[0] if req else None, list(path))
        if cur >= len(cands):
            stack.pop()
            if path:
                path.pop()
            continue
        stack[-1] = (mask, state, first, cands, cur + 1)
        i = cands[cur]
        new_state = _step(specs[i], state)
        if new_state is _ILLEGAL:
            continue
        path.append(i)
        stack.append((mask | 1 << i, new_state, first, None, 0))
    placed, stuck, prefix = deepest
    out = {"valid": False, "states": states, "ops": n}
    if stuck is not None:
        op = steps[stuck][0]
        out["stuck_at"] = {"op": op.id, "f": op.f, "value": op.value, "result": op.result,
                           "node": op.node, "invoke": round(op.invoke - t0, 6),
                           "complete": round(op.complete - t0, 6)}
    out["placed_before"] = [steps[i][0].id for i in prefix[-8:]]
    return out


def check_register(history: History, initial=None, max_states: int = 200_000,
                   max_ops_per_key: int = 2000) -> CheckResult:
    """Every key's reads, writes and CASes are linearizable (a single-register model).

    ``initial`` is the value every key starts with (or a dict key -> value). A key with
    more than ``max_ops_per_key`` operations is checked on its first ``max_ops_per_key``
    only (the search is exponential in the worst case), which the stats record.
    """
    res = CheckResult("register", True)
    by_key: dict = {}
    for op in history.select(("read", "write", "cas")):
        by_key.setdefault(op.key, []).append(op)
    inconclusive, truncated, total_states = [], [], 0
    for key in sorted(by_key, key=str):
        ops = sorted(by_key[key], key=lambda o: o.invoke)
        if len(ops) > max_ops_per_key:
            truncated.append(key)
            ops = ops[:max_ops_per_key]
        init = initial.get(key) if isinstance(initial, dict) else initial
        r = check_linearizable_key(ops, init, max_states, t0=history.start)
        total_states += r["states"]
        if r["valid"] is None:
            inconclusive.append(key)
        elif not r["valid"]:
            res.add("not_linearizable", key=key, **{k: v for k, v in r.items()
                                                    if k not in ("valid",)})
    if inconclusive and res.valid:
        res.valid = None
    res.stats.update(keys=len(by_key), inconclusive_keys=inconclusive,
                     truncated_keys=truncated, states=total_states,
                     ops=sum(len(v) for v in by_key.values()))
    return res


# ---------------------------------------------------------------------------------------
# append
# ---------------------------------------------------------------------------------------
def check_append(history: History, final: dict) -> CheckResult:
    """Every acknowledged append is present exactly once, in one order seen by all.

    ``append`` ops: ``key``, unique ``value``. ``read`` ops: ``key``, ``result`` = the
    list in the order the database returned it. ``final``: key -> list read after the
    heal. Checks, per key: no duplicates anywhere; every acked append in the final list;
    no failed or never-invoked value anywhere; every linearizable read is a prefix of the
    final list (one order); and no read misses an element known to be committed before
    the read began (acked, or seen by a read that had completed) - a stale read.
    """
    res = CheckResult("append", True)
    appends = history.select("append")
    invoked = {}
    for op in appends:
        invoked[(op.key, _hashable(op.value))] = op
    reads = []
    for op in history.select("read"):
        if not _checked_read(op):
            continue
        if not isinstance(op.result, list):
            res.add("malformed_read", op=op.id, result=repr(op.result)[:100])
            continue
        reads.append(op)
    keys = {op.key for op in appends} | set(final)
    lost = 0
    for key in sorted(keys, key=str):
        flist = [_hashable(v) for v in final.get(key, final.get(str(key), [])) or []]
        pos = {}
        for i, v in enumerate(flist):
            if v in pos:
                res.add("duplicate", key=key, value=v, where="final")
            pos.setdefault(v, i)
            op = invoked.get((key, v))
            if op is None:
                res.add("never_appended", key=key, value=v, where="final")
            elif op.outcome == FAILED:
                res.add("failed_append_present", key=key, value=v, op=op.id)
        # Known-committed time of each final element: its ack, or the first read that saw it.
        known = {}
        for op in appends:
            if op.key == key and op.ok:
                v = _hashable(op.value)
                known[v] = op.complete
                if v not in pos:
                    lost += 1
                    res.add("lost_append", key=key, value=v, op=op.id)
        kreads = sorted((r for r in reads if r.key == key), key=lambda r: r.invoke)
        for r in kreads:
            vals = [_hashable(v) for v in r.result or []]
            if len(set(vals)) != len(vals):
                res.add("duplicate", key=key, op=r.id, where="read")
            if vals != flist[:len(vals)]:
                res.add("order_differs", key=key, op=r.id, node=r.node,
                        read=vals[:10], final=flist[:10])
            for v in vals:
                if v in known:
                    known[v] = min(known[v], r.complete)
                else:
                    known[v] = r.complete
                    if (key, v) not in invoked:
                        res.add("never_appended", key=key, value=v, op=r.id)
        # Sweep reads by invoke time against elements by known-committed time.
        events = sorted((t, pos[v]) for v, t in known.items() if v in pos)
        need, j = 0, 0
        for r in kreads:
            while j < len(events) and events[j][0] < r.invoke:
                need = max(need, events[j][1] + 1)
                j += 1
            if len(r.result or []) < need:
                res.add("stale_read", key=key, op=r.id, node=r.node, level=r.level,
                        length=len(r.result or []), expected_at_least=need)
    res.lost_acked_writes = lost
    res.stats.update(keys=len(keys), appends=len(appends), reads=len(reads),
                     acked=sum(1 for a in appends if a.ok))
    return res


# ---------------------------------------------------------------------------------------
# convergence
# ---------------------------------------------------------------------------------------
def table_checksum(columns: list, rows: Iterable) -> str:
    """An order-sensitive digest of a table's rows (callers sort them, e.g. by rowid)."""
    h = hashlib.sha256(json.dumps(columns).encode())
    n = 0
    for row in rows:
        h.update(json.dumps(row, separators=(",", ":"), default=repr).encode())
        h.update(b"\n")
        n += 1
    return f"{n}:{h.hexdigest()[:32]}"


def check_convergence(checksums: dict) -> CheckResult:
    """Every member holds an identical database: the same tables with the same digests.

    ``checksums``: member -> {table -> digest} (or -> None when the member could not be
    read, which is itself a violation: a healed cluster must answer from every member).
    """
    res = CheckResult("convergence", True)
    members = sorted(checksums)
    res.stats["members"] = len(members)
    if not members:
        res.add("no_members")
        return res
    ref_member = None
    for m in members:
        if checksums[m] is None:
            res.add("member_unreadable", member=m)
        elif ref_member is None:
            ref_member = m
    if ref_member is None:
        return res
    ref = checksums[ref_member]
    for m in members:
        cs = checksums[m]
        if cs is None or m == ref_member:
            continue
        for table in sorted(set(ref) | set(cs)):
            if ref.get(table) != cs.get(table):
                res.add("diverged", table=table, member=m, digest=cs.get(table),
                        reference=ref_member, reference_digest=ref.get(table))
    res.stats["tables"] = len(ref)
    return res


def summarize(results: list[CheckResult]) -> dict[str, Any]:
    return {"valid": all(r.valid is True for r in results),
            "inconclusive": [r.name for r in results if r.valid is None],
            "violations": sum(r.violation_count for r in results),
            "lost_acked_writes": sum(r.lost_acked_writes for r in results),
            "checks": {r.name: r.to_dict() for r in results}}
