"""Routed calls to one group that are in flight at the same time leave together.

A router with many concurrent clients sends many small requests to the same shard. Each
``POST /shard/call`` costs an HTTP round trip on both sides (about 50 us of CPU in the
router and as much in the shard node, more than the insert itself), so the calls that
queue up while earlier ones to the same group are in flight are coalesced into one
``/shard/call`` carrying several requests (``?batch=1``). The shard runs each request as
it would run it alone (its own guard, statements, transaction and results, so the store's
group commit isolates them by savepoint) and answers one outcome per request: results, or
the error that request alone met. A ``Moved`` for one key therefore never touches the
request beside it.

Batching is natural, never timed: a call to a group with fewer than ``max_inflight``
calls in flight leaves at once (a lone client sees one plain round trip), the rest wait
for a slot and then leave together, like the store's group commit. One call in flight
per group (the default) gave about twice the requests per call of two, and less CPU per
routed insert on both sides (``bench/shard_bench.py --cluster --inflight N``). Only
writes are coalesced (see ``ShardCaller.call``).

Wire format of a batch (``/shard/call?kind=...&level=...&batch=1``): the body is one
codec ``Command`` with N requests; the answer is ``{"requests": [{"results": [...]} |
{"error": "...", "code": "..."}, ...]}`` in request order.
"""
import asyncio
import collections

import orjson

from raftsqlite import errors
from raftsqlite.b64json import b64_default, unb64
from raftsqlite.codec import encode_command
from raftsqlite.codec.model import Command, CommandType, Request

_CODES = {}
for _name in dir(errors):
    _cls = getattr(errors, _name)
    if isinstance(_cls, type) and issubclass(_cls, errors.RaftSQLiteError):
        _CODES.setdefault(_cls.code, _cls)


def error_for(code, message):
    """An error code and message from an answer -> the exception it stands for."""
    cls = _CODES.get(code, errors.Unavailable)
    if cls is errors.NotLeader:
        cls = errors.LeaderNotFound
    return cls(message or code or "error")


def dump_results(results):
    return orjson.dumps({"results": results}, default=b64_default)


def dump_requests(outcomes):
    """A coalesced call's answer: one ``{"results"}`` or ``{"error", "code"}`` per request."""
    return orjson.dumps({"requests": outcomes}, default=b64_default)


def _has_blobs(body):
    # A BLOB travels as {"$b64": ...}; without that tag the walk back is a no-op (a
    # string that merely contains the text only costs the walk).
    return b'"$b64"' in body


def load_results(body):
    doc = orjson.loads(body)
    return (unb64(doc) if _has_blobs(body) else doc)["results"]


_REFUSALS = {"moved": errors.Moved, "fenced": errors.Fenced,
             "stale_catalog": errors.StaleCatalog,
             "coordinator_fenced": errors.CoordinatorFenced}


def guard_refusal(results):
    """A routed request refused as a whole -> raise its ``Moved``/``Fenced``."""
    if results and len(results) == 1 and results[0].get("code") in _REFUSALS:
        cls = _REFUSALS[results[0]["code"]]
        raise cls(results[0].get("error") or results[0]["code"])
    return results


def _refusal_or(results):
    """A results list that is a whole-request refusal -> its exception, else the list."""
    if type(results) is list and len(results) == 1:
        r = results[0]
        if type(r) is dict and r.get("code") in _REFUSALS:
            return _REFUSALS[r["code"]](r.get("error") or r["code"])
    return results


def encode_call(kind, requests):
    ctype = CommandType.QUERY if kind == "query" else CommandType.EXECUTE
    return encode_command(Command(ctype, requests))


def outcome_doc(exc):
    return {"error": str(exc), "code": getattr(exc, "code", "error")}


def decode_batch(body, n):
    """A batch answer -> one outcome per request: its results list, or an exception."""
    doc = orjson.loads(body)
    items = doc.get("requests") if isinstance(doc, dict) else None
    if not isinstance(items, list) or len(items) != n:
        raise errors.Unavailable(f"a batched routed call answered {len(items or [])} outcomes "
                                 f"for {n} requests")
    out = []
    blobs = _has_blobs(body)
    for it in items:
        if "results" in it:
            out.append(unb64(it["results"]) if blobs else it["results"])
        else:
            out.append(error_for(it.get("code"), it.get("error")))
    return out


class Coalescer:
    """``await call(group, kind, level, request) -> results`` (raises that request's
    error). ``send(group, kind, level, requests) -> [results | exception]`` does one
    network call for a list of requests; it may raise, and then every request of that
    call gets the exception."""

    def __init__(self, send, max_inflight=2, max_batch=256):
        self.send = send
        self.max_inflight = max_inflight
        self.max_batch = max_batch
        self._lanes = {}
        self.counts = {"calls": 0, "sends": 0, "max_batch": 0}

    def call(self, group, kind, level, request):
        key = (group, kind, level)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = [collections.deque(), 0]
        fut = asyncio.get_running_loop().create_future()
        lane[0].append((request, fut))
        self.counts["calls"] += 1
        if lane[1] < self.max_inflight:
            self._flush(key, lane)
        return fut

    def _flush(self, key, lane):
        q = lane[0]
        while q and lane[1] < self.max_inflight:
            batch = []
            while q and len(batch) < self.max_batch:
                item = q.popleft()
                if not item[1].done():          # a caller that gave up is not sent
                    batch.append(item)
            if not batch:
                continue
            lane[1] += 1
            asyncio.get_running_loop().create_task(self._send(key, lane, batch))

    async def _send(self, key, lane, batch):
        self.counts["sends"] += 1
        if len(batch) > self.counts["max_batch"]:
            self.counts["max_batch"] = len(batch)
        try:
            try:
                outs = await self.send(*key, [r for r, _ in batch])
            except Exception as e:      # noqa: BLE001 - every caller of the call learns it
                outs = [e] * len(batch)
            for (_, fut), o in zip(batch, outs):
                if fut.done():
                    continue
                if isinstance(o, BaseException):
                    fut.set_exception(o)
                else:
                    fut.set_result(o)
        finally:
            lane[1] -= 1
            if lane[0]:
                self._flush(key, lane)

    def stats(self):
        c = dict(self.counts)
        c["avg_batch"] = round(c["calls"] / c["sends"], 2) if c["sends"] else 0
        return c


def request_for(statements, transaction, guard, request_id=None):
    return Request(statements, bool(transaction), request_id or None,
                   bytes(guard) if guard is not None else None)


class ShardCaller:
    """The remote half of a ``GroupExecutor``: routed requests to ``POST /shard/call``,
    coalesced per group. ``post(group, path, body: bytes) -> bytes`` sends to a member
    of the group and returns the body of a 200 answer (raising the error of any other)."""

    def __init__(self, post, max_inflight=1, max_batch=256):
        self.post = post
        self._paths = {}
        self.coalescer = Coalescer(self._send, max_inflight, max_batch)

    def call(self, group, kind, statements, transaction=False, guard=None, level="weak",
             request_id=None):
        """-> an awaitable of the request's results (raising its error). A write is the
        coalescer's future itself: no coroutine frame per routed insert."""
        req = Request(statements, bool(transaction), request_id or None,
                      None if guard is None else bytes(guard))
        if kind == "execute":
            return self.coalescer.call(group, kind, level, req)
        # Reads are not coalesced: a batch answers when its slowest request is done,
        # so a point read would wait behind a long scan. (Writes of one entry finish
        # together anyway: the group commit applies them in one transaction.)
        return self._one(group, kind, level, req)

    async def _one(self, group, kind, level, req):
        res = (await self._send(group, kind, level, [req]))[0]
        if isinstance(res, BaseException):
            raise res
        return res

    async def _send(self, group, kind, level, requests):
        """One ``/shard/call``: one outcome per request, a refused guard as its exception."""
        body = encode_call(kind, requests)
        path = self._paths.get((kind, level))
        if path is None:
            path = self._paths[(kind, level)] = f"/shard/call?kind={kind}&level={level}"
        if len(requests) == 1:
            return [_refusal_or(load_results(await self.post(group, path, body)))]
        return [_refusal_or(o) for o in
                decode_batch(await self.post(group, path + "&batch=1", body), len(requests))]

    def stats(self):
        return self.coalescer.stats()


class RemoteExecutor:
    """A ``GroupExecutor`` for a router outside any node (beside the application, like
    vtgate): every call goes to the group over ``ShardCaller``."""

    def __init__(self, post, **kw):
        self.caller = ShardCaller(post, **kw)

    def execute(self, group, statements, *, transaction=False, guard=None, request_id=None):
        return self.caller.call(group, "execute", statements, transaction, guard,
                                request_id=request_id)

    def query(self, group, statements, *, guard=None, level="weak", **opts):
        return self.caller.call(group, "query", statements, False, guard, level)

    def request(self, group, statements, *, transaction=False, level="weak", **opts):
        return self.caller.call(group, "request", statements, transaction, None, level)

    def stats(self):
        return self.caller.stats()


__all__ = ["Coalescer", "RemoteExecutor", "ShardCaller", "decode_batch", "dump_requests",
           "dump_results", "encode_call", "error_for", "guard_refusal", "load_results",
           "outcome_doc", "request_for", "unb64"]
