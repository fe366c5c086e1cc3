"""A run of group-committed one-statement requests of one SQL text, applied through one
cursor (the state machine's ``_run_singles``; see fsm.py and docs/design/store.md)."""
from raftsqlite.fsm_ops import (SystemContext, _OverBudget, _TxnLost, _dedup_lookup,
                                _dump_result, _load_result)


def run_singles(fsm, reqs, i, j, sql, pos, out):
    """Requests ``i..j-1`` of an EXECUTE entry, each one statement of text ``sql`` (no
    transaction, not poisoned), with exactly the results and effects of
    ``_execute_request`` on each in turn. -> (where the run ended, dedup rows added).

    First, for every request in order: its id is looked up (a hit answers it, as
    alone), then the request hooks run (they read only internal state, which user
    statements cannot change; nor can they change the dedup table). The run ends
    before a request whose id an earlier one of the run carries (its lookup must see
    that one's row). Then the statements of the requests neither answered nor
    refused run in order, the first through the traced path, and once one gave a
    write result the rest through one cursor (``run_user_many``; with ids,
    ``run_user_many_recorded``, which inserts each id's row right after its
    statement, where running them one by one puts it). A statement that ends the
    SQLite transaction raises ``_TxnLost`` for its own request, so the re-run marks
    exactly the request the statement-at-a-time path would."""
    db = fsm.db
    c = fsm.counters
    c["single_runs"] += 1
    ctx = (SystemContext(db, fsm._current[0], fsm._current[1])
           if fsm._request_hooks else None)     # one (read-only) context per run
    rids = [reqs[ri].request_id for ri in range(i, j)]
    seen = found = None
    if any(rids):
        seen = set()
        for k, rid in enumerate(rids):
            if rid:
                rid = rids[k] = bytes(rid)
                if rid in seen:
                    j = i + k
                    break
                seen.add(rid)
        # the run's ids looked up at once: only this run's own rows could change the
        # answers in between, and it ends before a repeated id
        found = _dedup_lookup(db, list(seen))
    results = [None] * (j - i)
    todo = []
    for ri in range(i, j):
        req = reqs[ri]
        rid = rids[ri - i]
        if rid:
            blob = found.get(rid)
            if blob is not None:
                c["dedup_hits"] += 1
                results[ri - i] = _load_result(blob)
                continue
        c["requests"] += 1
        refused = fsm._refusal(req, True, ctx) if ctx is not None else None
        if refused is not None:
            results[ri - i] = [refused]
        else:
            todo.append((ri, req.statements[0].params, rid))
    c["statements"] += len(todo)
    added = 0
    k = 0
    db.budget_begin()   # the run counts as one: past the budget, each is re-run alone
    while k < len(todo):
        ri, params, rid = todo[k]
        r = db.run_user(sql, params)
        if not db.in_transaction():
            raise _TxnLost((pos, ri))
        results[ri - i] = [r]
        if rid:
            db.internal("INSERT INTO _raftsqlite_requests(request_id, result) "
                        "VALUES (?, ?)", (rid, _dump_result([r])))
            fsm._note_seq()
            db.writer.set_last_insert_rowid(0)   # as the next request starts alone
            added += 1
        k += 1
        if "last_insert_id" not in r:
            continue        # an error, or rows came back: the next one alone too
        while k < len(todo):
            got = []
            rest = todo[k:]
            if seen is None:
                stop = db.run_user_many(sql, [p for _, p, _ in rest], got, True)
            else:
                first = []
                stop = db.run_user_many_recorded(sql, [p for _, p, _ in rest],
                                                 [d for _, _, d in rest], _dump_result,
                                                 got, first)
                if first and fsm._first_seq is None:
                    fsm._first_seq = first[0]
                # every statement that stayed in the transaction recorded its row
                added += sum(1 for _, _, d in rest[:len(got)] if d) if stop is not None \
                    else 0
            for m, r in enumerate(got):
                results[todo[k + m][0] - i] = [r]
            if stop is None:
                # the failing statement appended its error; one that succeeded and
                # still ended the transaction appended nothing
                bad = k + len(got) - 1 if got and "error" in got[-1] else k + len(got)
                raise _TxnLost((pos, todo[bad][0]))
            k += len(got)   # stop: an error on the last one; go on after it
    if db.budget_tripped or db.deadline_passed or db.result_refused or (
            db.req_written and db.check_rowid_limit()):
        raise _OverBudget([(pos, ri) for ri, _, _ in todo])
    out.extend(results)
    return j, added
