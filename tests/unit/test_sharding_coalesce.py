"""Coalesced routed calls (sharding/coalesce.py): concurrent calls to one group share a
network call, yet every caller gets exactly its own outcome."""
import asyncio

import pytest

from raftsqlite import errors
from raftsqlite.codec import decode_command
from raftsqlite.codec.model import Statement
from raftsqlite.sharding.coalesce import (Coalescer, RemoteExecutor, decode_batch, dump_requests,
                                          outcome_doc)


def test_calls_queue_behind_inflight_and_leave_together():
    """Invariant: with one call in flight per group, calls made meanwhile leave as one
    batch (in order); each caller gets its own result, a per-request error reaches only
    its caller, and calls to another group are not held back."""
    sent = []
    gate = asyncio.Event()

    async def send(group, kind, level, reqs):
        sent.append((group, list(reqs)))
        if len(sent) == 1:
            await gate.wait()
        return [errors.Moved(f"not {r}") if r == "bad" else f"{group}:{r}" for r in reqs]

    async def main():
        c = Coalescer(send, max_inflight=1)
        first = asyncio.ensure_future(c.call("g1", "execute", "weak", "r0"))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(c.call("g1", "execute", "weak", r))
                for r in ("r1", "bad", "r3")]
        other = await asyncio.wait_for(c.call("g2", "execute", "weak", "x"), 2)
        assert other == "g2:x"
        gate.set()
        outs = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 2)
        return c, outs
    c, outs = asyncio.run(main())
    assert outs[0] == "g1:r0" and outs[1] == "g1:r1" and outs[3] == "g1:r3"
    assert isinstance(outs[2], errors.Moved)
    assert [s for s in sent if s[0] == "g1"] == [("g1", ["r0"]), ("g1", ["r1", "bad", "r3"])]
    assert c.stats()["max_batch"] == 3 and c.stats()["sends"] == 3


def test_failed_send_fails_only_its_batch_and_cancelled_callers_are_not_sent():
    """Invariant: a network failure reaches the callers of that call only; a caller that
    gave up before its batch left is not sent at all."""
    sent = []
    gate = asyncio.Event()

    async def send(group, kind, level, reqs):
        sent.append(list(reqs))
        if len(sent) == 1:
            await gate.wait()
            raise errors.Unavailable("connection reset")
        return [f"ok:{r}" for r in reqs]

    async def main():
        c = Coalescer(send, max_inflight=1)
        a = asyncio.ensure_future(c.call("g", "execute", "weak", "a"))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(c.call("g", "execute", "weak", "b"))
        gone = asyncio.ensure_future(c.call("g", "execute", "weak", "gone"))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        return await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), 2)
    ra, rb = asyncio.run(main())
    assert isinstance(ra, errors.Unavailable)
    assert rb == "ok:b"
    assert sent == [["a"], ["b"]]


def test_batch_answer_round_trip_and_count_check():
    """Invariant: a batch answer decodes to one outcome per request in order (results,
    BLOBs restored, or the request's own error class); a wrong count is an error."""
    body = dump_requests([{"results": [{"last_insert_id": 1, "rows_affected": 1}]},
                          outcome_doc(errors.Fenced("range fenced")),
                          {"results": [{"columns": ["b"], "types": ["blob"], "values": [[b"\x00\xff"]]}]}])
    outs = decode_batch(body, 3)
    assert outs[0] == [{"last_insert_id": 1, "rows_affected": 1}]
    assert isinstance(outs[1], errors.Fenced) and "range fenced" in str(outs[1])
    assert outs[2][0]["values"] == [[b"\x00\xff"]]
    with pytest.raises(errors.Unavailable):
        decode_batch(body, 2)


def test_remote_executor_wire_shapes():
    """Invariant: a lone call uses the one-request /shard/call; coalesced calls use
    batch=1 with every request's own guard and transaction flag in one codec command."""
    posts = []
    gate = asyncio.Event()

    async def post(group, path, body):
        cmd = decode_command(body)
        posts.append((path, [(r.guard, r.transaction) for r in cmd.requests]))
        if len(posts) == 1:
            await gate.wait()
            return b'{"results":[{"rows_affected":1}]}'
        return dump_requests([{"results": [{"rows_affected": i}]} for i in range(len(cmd.requests))])

    async def main():
        ex = RemoteExecutor(post, max_inflight=1)
        a = asyncio.ensure_future(ex.execute("s1", [Statement("INSERT 1")], guard=b"G1"))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(ex.execute("s1", [Statement("INSERT 2")], guard=b"G2"))
        c = asyncio.ensure_future(ex.execute("s1", [Statement("INSERT 3")], transaction=True))
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.wait_for(asyncio.gather(a, b, c), 2)
    ra, rb, rc = asyncio.run(main())
    assert ra == [{"rows_affected": 1}] and rb == [{"rows_affected": 0}] and rc == [{"rows_affected": 1}]
    assert posts[0] == ("/shard/call?kind=execute&level=weak", [(b"G1", False)])
    assert posts[1] == ("/shard/call?kind=execute&level=weak&batch=1", [(b"G2", False), (None, True)])


def test_reads_are_never_held_behind_another_call():
    """Invariant: a read is sent at once, one request per call, even while another read
    to the same group is still running (no head-of-line blocking behind a long scan)."""
    posts = []
    slow = asyncio.Event()

    async def post(group, path, body):
        posts.append(path)
        if len(posts) == 1:
            await slow.wait()
        return b'{"results":[{"columns":["x"],"types":["integer"],"values":[[1]]}]}'

    async def main():
        ex = RemoteExecutor(post)
        scan = asyncio.ensure_future(ex.query("s1", [Statement("SELECT slow")], guard=b"G"))
        await asyncio.sleep(0)
        point = await asyncio.wait_for(ex.query("s1", [Statement("SELECT 1")], guard=b"G"), 2)
        assert not scan.done()
        slow.set()
        await asyncio.wait_for(scan, 2)
        return point
    point = asyncio.run(main())
    assert point[0]["values"] == [[1]]
    assert posts == ["/shard/call?kind=query&level=weak"] * 2


def test_callback_sender_gives_each_caller_its_own_outcome():
    """Invariant: with the callback form of send (no task per call), the coalescer keeps
    the same contract: calls made while one is in flight leave together in order, each
    caller gets its own result or error, a failed call fails only its own callers, and
    the next batch leaves as soon as the answer is in."""
    sent, pending = [], []

    def send_cb(group, kind, level, reqs, done):
        sent.append(list(reqs))
        pending.append((list(reqs), done))

    async def answer(ok=True):
        while not pending:
            await asyncio.sleep(0)
        reqs, done = pending.pop(0)
        done([errors.Moved(r) if r == "bad" else f"ok:{r}" for r in reqs] if ok
             else errors.Unavailable("reset"))

    async def main():
        c = Coalescer(None, max_inflight=1, send_cb=send_cb)
        a = asyncio.ensure_future(c.call("g", "execute", "weak", "a"))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(c.call("g", "execute", "weak", r)) for r in ("b", "bad", "d")]
        await asyncio.sleep(0)
        await answer(ok=False)
        await answer()
        more = asyncio.ensure_future(c.call("g", "execute", "weak", "e"))
        await answer()
        return c, await asyncio.wait_for(asyncio.gather(a, *rest, more, return_exceptions=True), 2)
    c, outs = asyncio.run(main())
    assert isinstance(outs[0], errors.Unavailable)
    assert outs[1] == "ok:b" and isinstance(outs[2], errors.Moved) and outs[3] == "ok:d"
    assert outs[4] == "ok:e"
    assert sent == [["a"], ["b", "bad", "d"], ["e"]]
    assert c.stats()["sends"] == 3 and c.stats()["max_batch"] == 3


def test_remote_executor_over_http_end_to_end():
    """Invariant: ``RemoteExecutor.over_http`` (the client-side router's executor over
    callclient) sends the same wire shapes as before and maps every answer as ``post``
    did: a lone call's results, a refused guard as Moved for its request only, an error
    answer as the error class of its code, and reads over the awaited path."""
    seen = []

    async def conn(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int([ln for ln in head.split(b"\r\n")
                         if ln.lower().startswith(b"content-length:")][0].split(b":")[1])
                cmd = decode_command(await reader.readexactly(n))
                path = head.split(b" ")[1].decode()
                seen.append((path, [r.guard for r in cmd.requests]))
                await asyncio.sleep(0.02)      # let calls pile up behind this one
                if any(r.guard == b"DOWN" for r in cmd.requests):
                    status, body = 503, b'{"error":"leader not found","code":"leader_not_found"}'
                elif "batch=1" in path:
                    status, body = 200, dump_requests([
                        outcome_doc(errors.Moved("key moved")) if r.guard == b"MOVED" else
                        {"results": [{"last_insert_id": i, "rows_affected": 1}]}
                        for i, r in enumerate(cmd.requests)])
                else:
                    status, body = 200, b'{"results":[{"last_insert_id":7,"rows_affected":1}]}'
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
                             + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        srv = await asyncio.start_server(conn, "127.0.0.1", 0)
        addr = "127.0.0.1:%d" % srv.sockets[0].getsockname()[1]
        ex = RemoteExecutor.over_http({"s1": addr}, max_inflight=1)
        try:
            lone = await ex.execute("s1", [Statement("INSERT 1")], guard=b"G0")
            first = asyncio.ensure_future(ex.execute("s1", [Statement("INSERT 1")], guard=b"G1"))
            await asyncio.sleep(0)
            batch = [asyncio.ensure_future(ex.execute("s1", [Statement("INSERT x")], guard=g))
                     for g in (b"G2", b"MOVED", b"G4")]
            outs = await asyncio.wait_for(asyncio.gather(first, *batch, return_exceptions=True), 5)
            down = await asyncio.gather(ex.execute("s1", [Statement("INSERT 9")], guard=b"DOWN"),
                                        return_exceptions=True)
            read = await ex.query("s1", [Statement("SELECT 1")])
            return lone, outs, down[0], read
        finally:
            ex.client.close()
            srv.close()
    lone, outs, down, read = asyncio.run(main())
    assert lone == [{"last_insert_id": 7, "rows_affected": 1}]
    assert outs[0] == lone
    assert outs[1] == [{"last_insert_id": 0, "rows_affected": 1}]
    assert isinstance(outs[2], errors.Moved) and "key moved" in str(outs[2])
    assert outs[3] == [{"last_insert_id": 2, "rows_affected": 1}]
    assert isinstance(down, errors.LeaderNotFound)
    assert read == lone
    assert seen[2] == ("/shard/call?kind=execute&level=weak&batch=1", [b"G2", b"MOVED", b"G4"])
    assert seen[-1][0] == "/shard/call?kind=query&level=weak"


def test_callback_sender_that_raises_or_answers_twice():
    """Invariant: a callback sender that raises fails only the callers of that call and
    frees its slot (the next call leaves); a second answer for the same call changes
    nothing (each caller's outcome is set once)."""
    answers = []

    def send_cb(group, kind, level, reqs, done):
        if reqs == ["boom"]:
            raise errors.Unavailable("cannot encode")
        done([f"ok:{r}" for r in reqs])
        answers.append(done)

    async def main():
        c = Coalescer(None, max_inflight=1, send_cb=send_cb)
        bad = await asyncio.gather(c.call("g", "execute", "weak", "boom"), return_exceptions=True)
        good = await asyncio.wait_for(c.call("g", "execute", "weak", "x"), 2)
        answers[0](["late:x"])          # a stray second answer for the finished call
        again = await asyncio.wait_for(c.call("g", "execute", "weak", "y"), 2)
        return bad[0], good, again, c
    bad, good, again, c = asyncio.run(main())
    assert isinstance(bad, errors.Unavailable)
    assert good == "ok:x" and again == "ok:y"
    assert c._lanes[("g", "execute", "weak")][1] == 0
