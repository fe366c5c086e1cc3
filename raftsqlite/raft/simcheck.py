"""The simulator's linearizability check for its register workload.

Raft gives every operation a point in one total order: a log operation (write,
compare-and-set, read through the log) sits at its log index; a ReadIndex read sits at
the applied index it read at. The history is linearizable iff (1) every result matches
that order (the register's value there) and (2) no operation is placed before one that
completed before it was invoked (strictly before, for log operations). This is exact for
histories whose points are known, so no search (Wing-Gong) is needed.
"""


def check_linearizable(global_log, ops, keys, fail):
    """``global_log``: index -> (term, data) of the committed log; ``ops``: objects with
    kind, key, a, b, invoke, complete, status, result, position; ``fail(msg)`` raises."""
    # register value per key after each index
    hist = {k: [(0, None)] for k in keys}
    vals = {}
    for i in range(1, max(global_log, default=0) + 1):
        term, data = global_log[i]
        if not data or data[:1] not in b"0123456789":
            continue
        oid, kind, key, a, b = data.decode().split(":")
        cur = vals.get(key)
        if kind == "w" or (kind == "c" and cur == a):
            vals[key] = a if kind == "w" else b
            hist[key].append((i, vals[key]))

    def value_at(key, i):   # after applying index i
        h = hist[key]
        lo, hi = 0, len(h)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if h[mid][0] <= i:
                lo = mid
            else:
                hi = mid
        return h[lo][1]

    ok = [op for op in ops if op.status == "ok"]
    for op in ok:
        if op.kind == "ri" or op.kind == "r":
            want = value_at(op.key, op.position if op.kind == "ri" else op.position - 1)
            if op.result != want:
                fail(f"{op} read {op.result!r}, committed order says {want!r}")
        elif op.kind == "c":
            want = value_at(op.key, op.position - 1) == op.a
            if op.result != want:
                fail(f"{op} cas result {op.result}, committed order says {want}")
    by_complete = sorted(ok, key=lambda o: (o.complete, o.id))
    k = 0
    best = None
    for op in sorted(ok, key=lambda o: (o.invoke, o.id)):
        while k < len(by_complete) and by_complete[k].complete < op.invoke:
            c = by_complete[k]
            if best is None or c.position > best.position:
                best = c
            k += 1
        if best is None:
            continue
        if op.position < best.position or (op.kind != "ri" and op.position == best.position):
            fail(f"not linearizable: {op} invoked after {best} completed, "
                      f"but ordered before it")
