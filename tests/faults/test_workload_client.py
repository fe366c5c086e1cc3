"""How workload clients classify answers, and how unavailability is measured.

Calling a write ``failed`` when it may still commit would make the checkers report
false losses; calling everything ``unknown`` would make them blind. These tests pin
the rule against a fake HTTP server.
"""
import asyncio
import json
import random

import aiohttp
import pytest
from aiohttp import web

from raftsqlite.testing.cluster import free_port
from raftsqlite.testing.history import History
from raftsqlite.testing.nemesis import unavailability
from raftsqlite.testing.workloads import Bank, NodeClient, Register

pytestmark = pytest.mark.timeout(60)

ANSWERS = {
    "ok": (200, {"results": [{"rows_affected": 1}, {}, {}]}),
    "insufficient": (200, {"results": [{}, {}, {}]}),
    "stmt_error": (200, {"results": [{"error": "no such table: bank_transfers"}]}),
    "leader_not_found": (503, {"error": "leader not found", "code": "leader_not_found"}),
    "dropped": (503, {"error": "proposal dropped", "code": "proposal_dropped"}),
    "outcome_unknown": (503, {"error": "leadership lost", "code": "outcome_unknown"}),
    "timeout_504": (504, {"error": "timed out", "code": "timeout"}),
    "bad_request": (400, {"error": "bad json", "code": "bad_request"}),
    "internal": (500, {"error": "boom"}),
    "slow": None,
}


async def _server(mode):
    async def handler(request):
        if mode["answer"] == "slow":
            await asyncio.sleep(1.0)
        status, body = ANSWERS[mode["answer"]]
        return web.Response(status=status, text=json.dumps(body),
                            content_type="application/json")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, port


@pytest.mark.parametrize("answer,outcome,applied", [
    ("ok", "ok", True),
    ("insufficient", "ok", False),
    ("stmt_error", "failed", None),
    ("leader_not_found", "failed", None),
    ("dropped", "failed", None),
    ("bad_request", "failed", None),
    ("outcome_unknown", "unknown", None),
    ("timeout_504", "unknown", None),
    ("internal", "unknown", None),
    ("slow", "unknown", None),
])
def test_transfer_outcome_classification(answer, outcome, applied):
    """Only answers that promise no effect are 'failed'; a lost answer is 'unknown'."""
    async def main():
        runner, port = await _server({"answer": answer})
        try:
            async with aiohttp.ClientSession() as s:
                h = History()
                bank = Bank(h, random.Random(1))
                bank.rng.random = lambda: 0.9            # force a transfer
                op = await bank.op(1, NodeClient(s, "n1", f"127.0.0.1:{port}", timeout=0.3))
                assert op.f == "transfer" and op.outcome == outcome, op
                if applied is not None:
                    assert op.result == {"applied": applied}
        finally:
            await runner.cleanup()
    asyncio.run(main())


def test_connection_refused_is_definite():
    """Nothing was sent to a member that is down: the op failed, it cannot commit."""
    async def main():
        async with aiohttp.ClientSession() as s:
            h = History()
            reg = Register(h, random.Random(1))
            reg.rng.random = lambda: 0.5                 # force a write
            op = await reg.op(1, NodeClient(s, "n1", f"127.0.0.1:{free_port()}", timeout=1))
            assert op.f == "write" and op.outcome == "failed"
    asyncio.run(main())


def test_unavailability_is_time_to_first_ack_invoked_after_the_fault():
    """Measured from the fault to the first acknowledged write invoked after it; a
    window with no such write counts in full and is flagged as not recovered; a
    "leader" fault that found no leader (a random member was hit) is flagged so the
    headline figure leaves it out."""
    h = History(clock=lambda: 20.0)
    h.event("kill_leader", at=1.0, member="n1")
    w = h.invoke(1, "write", "k", 1, at=0.5)
    h.ok(w, at=1.5)                                    # invoked before the fault
    w = h.invoke(1, "write", "k", 2, at=1.2)
    h.unknown(w, at=4.0)
    w = h.invoke(2, "write", "k", 3, at=2.0)
    h.ok(w, at=2.6)                                    # first ack after: 1.6 s
    h.event("heal", at=4.0)
    h.event("pause_leader", at=10.0, member="n2", was_leader=False)   # nothing acked after
    r = unavailability(h, ("write",))
    assert r == [{"kind": "kill_leader", "member": "n1", "seconds": 1.6, "recovered": True,
                  "was_leader": True},
                 {"kind": "pause_leader", "member": "n2", "seconds": 10.0,
                  "recovered": False, "was_leader": False}]


def test_key_rotation_bounds_ops_per_key():
    """Each key gets at most ops_per_key operations; retired keys stay listed for the
    final reads."""
    from raftsqlite.testing.workloads import KeyRotation
    kr = KeyRotation(random.Random(3), active=3, ops_per_key=10)
    picks = [kr.pick() for _ in range(200)]
    counts = {k: picks.count(k) for k in set(picks)}
    assert max(counts.values()) <= 10
    assert set(picks) <= set(kr.used) and len(kr.active) == 3
    assert len(kr.used) >= 200 // 10
