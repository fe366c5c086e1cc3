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


_FROM_CODES = dict(_CODES, partial_write=errors.RaftSQLiteError)


def error_from(status, body):
    """An HTTP error answer (the one error body) -> the exception it stands for."""
    try:
        d = orjson.loads(body)
        msg, code = d.get("error", ""), d.get("code", "error")
    except (orjson.JSONDecodeError, AttributeError):
        msg, code = body[:300].decode("utf-8", "replace"), "error"
    cls = _FROM_CODES.get(code, errors.Unavailable)
    if cls is errors.NotLeader:
        cls = errors.LeaderNotFound
    return cls(msg or f"HTTP {status}")


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
    call gets the exception. ``send_cb(group, kind, level, requests, done)``, when given,
    is used instead: the same call in callback form (``done`` called once with the list
    or one exception for all), so a call costs no task and no coroutine chain."""

    def __init__(self, send, max_inflight=2, max_batch=256, send_cb=None):
        self.send = send
        self.send_cb = send_cb
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
            if self.send_cb is not None:
                self._send_now(key, lane, batch)
            else:
                asyncio.get_running_loop().create_task(self._send(key, lane, batch))

    def _send_now(self, key, lane, batch):
        self.counts["sends"] += 1
        if len(batch) > self.counts["max_batch"]:
            self.counts["max_batch"] = len(batch)
        once = [False]

        def done(outs):
            if once[0]:
                return
            once[0] = True
            self._deliver(key, lane, batch, outs)
        try:
            self.send_cb(*key, [r for r, _ in batch], done)
        except Exception as e:      # noqa: BLE001 - every caller of the call learns it
            done(e)

    def _deliver(self, key, lane, batch, outs):
        try:
            if isinstance(outs, BaseException):
                outs = [outs] * len(batch)
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

    async def _send(self, key, lane, batch):
        self.counts["sends"] += 1
        if len(batch) > self.counts["max_batch"]:
            self.counts["max_batch"] = len(batch)
        try:
            outs = await self.send(*key, [r for r, _ in batch])
        except Exception as e:      # noqa: BLE001 - every caller of the call learns it
            outs = e
        except BaseException:
            lane[1] -= 1            # cancelled: free the lane as before, answer no one
            if lane[0]:
                self._flush(key, lane)
            raise
        self._deliver(key, lane, batch, outs)

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

    def __init__(self, post, max_inflight=1, max_batch=256, send=None):
        self.post = post
        # send(group, path, body, done): ``post`` in callback form (done gets the body of
        # a 200 answer or the exception post would raise); writes then use it
        self.send = send
        self._paths = {}
        self.coalescer = Coalescer(self._send, max_inflight, max_batch,
                                   send_cb=self._send_cb if send is not None else None)

    def _path(self, kind, level):
        path = self._paths.get((kind, level))
        if path is None:
            path = self._paths[(kind, level)] = f"/shard/call?kind={kind}&level={level}"
        return path

    def _send_cb(self, group, kind, level, requests, done):
        """``_send`` in callback form: ``done`` gets one outcome per request (a refused
        guard as its exception), or one exception for the whole call."""
        body = encode_call(kind, requests)
        n = len(requests)
        if n == 1:
            def got(res):
                if isinstance(res, BaseException):
                    done(res)
                    return
                try:
                    out = [_refusal_or(load_results(res))]
                except Exception as e:      # noqa: BLE001 - as _send raising it
                    done(e)
                    return
                done(out)
            self.send(group, self._path(kind, level), body, got)
            return

        def got_batch(res):
            if isinstance(res, BaseException):
                done(res)
                return
            try:
                out = [_refusal_or(o) for o in decode_batch(res, n)]
            except Exception as e:          # noqa: BLE001 - as _send raising it
                done(e)
                return
            done(out)
        self.send(group, self._path(kind, level) + "&batch=1", body, got_batch)

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

    async def call_alone(self, group, statements):
        """A write in a ``/shard/call`` of its own, never coalesced with others (a VACUUM
        must be the only request of its entry; the shard refuses it in a batch)."""
        return await self._one(group, "execute", "weak", Request(statements, False, None, None))

    async def _one(self, group, kind, level, req):
        res = (await self._send(group, kind, level, [req]))[0]
        if isinstance(res, BaseException):
            raise res
        return res

    async def _send(self, group, kind, level, requests):
        """One ``/shard/call``: one outcome per request, a refused guard as its exception."""
        body = encode_call(kind, requests)
        path = self._path(kind, level)
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
        self.client = None

    @classmethod
    def over_http(cls, addrs, client=None, **kw):
        """The executor of a router beside the application: every call goes over one
        ``callclient.CallClient`` (``client``, or a new one) to ``addrs[group]``, an HTTP
        address of a member of the group (its leader's saves a hop: a follower forwards
        the call). Writes take the client's callback form (no task or coroutine per
        call); reads and connects use ``post``. Create and use it on one event loop."""
        from raftsqlite.sharding.callclient import CallClient
        client = client or CallClient()

        async def post(group, path, body):
            r = await client.post(addrs[group], path, body)
            if r.status != 200:
                raise error_from(r.status, r.body)
            return r.body

        def send(group, path, body, done):
            def got(r):
                if isinstance(r, BaseException):
                    done(r)
                elif r.status != 200:
                    done(error_from(r.status, r.body))
                else:
                    done(r.body)
            client.send(addrs[group], path, body, got)
        ex = cls(post, send=send, **kw)
        ex.client = client
        return ex

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
           "dump_results", "encode_call", "error_for", "error_from", "guard_refusal", "load_results",
           "outcome_doc", "request_for", "unb64"]
