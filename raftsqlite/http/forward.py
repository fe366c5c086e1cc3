"""Getting a request to the leader: forward it (default), or answer 301 (``redirect``).

A follower's store raises ``NotLeader`` for anything that needs the leader. The handler
then hands the ORIGINAL request (method, path, query string, body) to the leader over the
pooled client, and relays the leader's answer byte for byte, so the client sees exactly
what the leader said. A hop counter header stops a request bouncing between nodes that
each believe the other leads (possible for a moment during an election).
"""
from sanic.response import HTTPResponse

from raftsqlite import errors
from raftsqlite.client import FORWARDED_HEADER, MAX_HOPS, base_url

SERVED_BY = "X-RQLITE-SERVED-BY"
_RELAYED = ("content-type", "location", "content-encoding", "content-disposition")


def leader_http_addr(ctx, exc=None):
    addr = getattr(exc, "leader_addr", None) if exc is not None else None
    if not addr:
        try:
            m = ctx.store.leader()
        except Exception:
            m = None
        addr = getattr(m, "http_addr", None) if m is not None else None
    return addr or None


def redirect_location(request, addr):
    qs = request.query_string
    return base_url(addr) + request.path + (("?" + qs) if qs else "")


def _hops(request):
    try:
        return int(request.headers.get(FORWARDED_HEADER, "0") or 0)
    except ValueError:
        return MAX_HOPS


def forward_target(request, p, exc):
    """Where the request must go, or a ready 301 response; raises when it cannot go
    anywhere (no leader, or too many hops)."""
    ctx = request.app.ctx
    addr = leader_http_addr(ctx, exc)
    if not addr:
        ctx.counters["leader_not_found"] += 1
        raise errors.LeaderNotFound("leader not found")
    if p is not None and p.redirect:
        ctx.counters["redirects"] += 1
        return addr, HTTPResponse(b"", status=301,
                                  headers={"Location": redirect_location(request, addr)})
    if _hops(request) >= MAX_HOPS:
        raise errors.LeaderNotFound(
            f"leader not found: the request was forwarded {MAX_HOPS} times without reaching "
            f"the leader (an election is probably in progress; retry)")
    return addr, None


def forward_headers(request):
    h = {FORWARDED_HEADER: str(_hops(request) + 1)}
    ct = request.headers.get("content-type")
    if ct:
        h["Content-Type"] = ct
    rid = request.headers.get("x-request-id")
    if rid:
        h["X-Request-Id"] = rid   # the leader must see the same id to deduplicate
    # The leader checks the client's own credentials (as rqlite forwards them); with none,
    # None keeps a client with -join-as from sending this node's identity instead.
    a = request.headers.get("authorization")
    if a or request.app.ctx.identity is not None:
        h["Authorization"] = a or None
    return h


async def forward(request, p, exc, body=None):
    """Send the request to the leader and relay its answer (or 301 with ``redirect``)."""
    ctx = request.app.ctx
    addr, ready = forward_target(request, p, exc)
    if ready is not None:
        return ready
    qs = request.query_string
    timeout = (p.timeout if p is not None and p.timeout else ctx.settings.default_timeout)
    ctx.counters["forwarded"] += 1
    try:
        r = await ctx.client.request(request.method, addr,
                                     request.path + (("?" + qs) if qs else ""),
                                     body=request.body if body is None else body,
                                     headers=forward_headers(request), timeout=timeout)
    except errors.Unreachable:
        # Nothing was sent. A node that does not know the leader (a shard member sending
        # an admin call to the default group) names the next member to try.
        rest = getattr(exc, "alternates", None)
        if not rest:
            raise
        return await forward(request, p, alternate(exc, rest), body)
    headers = {k: v for k, v in r.headers.items() if k.lower() in _RELAYED}
    headers.setdefault(SERVED_BY, addr)
    return HTTPResponse(r.body, status=r.status, headers=headers)


def alternate(exc, addrs):
    """A ``NotLeader`` naming ``addrs[0]``, with the others to try when it cannot be
    reached (``forward`` tries them in turn, each only after a connection failure)."""
    e = errors.NotLeader(str(exc), leader_addr=addrs[0])
    e.alternates = list(addrs[1:])
    return e


async def on_leader(request, p, call, body=None):
    """Run ``call()`` here; if this node is not the leader, forward. Returns the call's
    result, or an HTTPResponse (the leader's answer, or a redirect)."""
    try:
        return await call()
    except errors.NotLeader as e:
        return await forward(request, p, e, body)
