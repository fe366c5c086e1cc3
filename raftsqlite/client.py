"""Async HTTP client for talking to raftsqlite (or rqlite) nodes.

Used by followers to forward requests to the leader, by the router to reach shard groups,
and by tests. One ``aiohttp`` session per client, with a pooled keep-alive connector, so
forwarding costs no TCP handshake per request. Transport failures become our errors:
``Unreachable`` (could not connect: nothing was sent, safe to retry), ``Unavailable`` (the
connection broke after sending: outcome unknown) and ``Timeout`` (no answer in time: a
write may or may not have been applied).
"""
import asyncio
from urllib.parse import urlencode

import aiohttp
import orjson

from raftsqlite import errors
from raftsqlite.tlsconf import cert_failure

#: Set on a request one node forwards to another; its value counts hops, so a request
#: never bounces between nodes that each believe the other leads.
FORWARDED_HEADER = "X-Raftsqlite-Forwarded"
MAX_HOPS = 3


def base_url(addr, scheme="http"):
    """``host:port`` or ``http(s)://host:port`` -> ``http://host:port`` (a scheme given
    in ``addr`` is kept: a node serving TLS advertises ``https://host:port``)."""
    addr = addr.strip().rstrip("/")
    if "://" not in addr:
        addr = scheme + "://" + addr
    return addr


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return orjson.loads(self.body)

    def __repr__(self):
        return f"Response({self.status}, {self.body[:200]!r})"


class Client:
    """``Client(timeout=30)``; create and close it on the loop that uses it (or use
    ``async with Client() as c``)."""

    def __init__(self, *, timeout=30.0, limit=256, limit_per_host=64, keepalive=60.0,
                 auth=None, ssl=None, server_hostname=None, scheme="http"):
        # TLS (tlsconf.TLSConfig.client_kw): ``ssl`` verifies https:// peers (and carries
        # our client certificate), ``scheme`` is used for addresses given without one.
        self._ssl = ssl
        self._name_kw = {"server_hostname": server_hostname} if server_hostname else {}
        self._scheme = scheme
        self.default_timeout = timeout
        #: ``Authorization`` sent when the caller names none (a node's -join-as identity).
        #: A caller relaying someone else's request names theirs, or None for none: it
        #: must never gain this node's rights (forward.forward_headers).
        self.auth = auth
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._keepalive = keepalive
        self._session = None
        self.requests = 0
        self.failures = 0

    @property
    def session(self):
        if self._session is None or self._session.closed:
            kw = {} if self._ssl is None else {"ssl": self._ssl}
            connector = aiohttp.TCPConnector(limit=self._limit,
                                             limit_per_host=self._limit_per_host,
                                             keepalive_timeout=self._keepalive,
                                             enable_cleanup_closed=True, **kw)
            # auto_decompress off: a forwarded body is relayed byte for byte.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def close(self):
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def stats(self):
        return {"requests": self.requests, "failures": self.failures}

    async def request(self, method, addr, path, *, params=None, body=None, headers=None,
                      timeout=None, allow_redirects=False):
        """One request; the whole body is read. ``path`` may carry a query string."""
        url = base_url(addr, self._scheme) + path
        if params:
            url += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        t = aiohttp.ClientTimeout(total=timeout or self.default_timeout)
        if self.auth is not None:
            headers = _with_auth(headers, self.auth)
        self.requests += 1
        try:
            async with self.session.request(method, url, data=body, headers=headers,
                                            timeout=t, allow_redirects=allow_redirects,
                                            **self._name_kw) as r:
                data = await r.read()
                return Response(r.status, r.headers, data)
        except asyncio.TimeoutError:
            self.failures += 1
            raise errors.Timeout(f"no answer from {addr} within {t.total:g}s; a write may "
                                 f"or may not have been applied") from None
        except aiohttp.ClientConnectorError as e:
            self.failures += 1
            # the cause is kept: tlsconf.refused tells a refused certificate from it
            raise errors.Unreachable(f"cannot reach {addr}: {cert_failure(e) or e} "
                                     f"(nothing was sent)") from e
        except aiohttp.ClientError as e:
            # The connection broke after the request may have been sent: outcome unknown.
            self.failures += 1
            raise errors.Unavailable(f"connection to {addr} failed: {cert_failure(e) or e}; "
                                     f"a write may or may not have been applied") from e

    async def stream(self, method, addr, path, *, body=None, headers=None, timeout=None):
        """A request whose response is consumed in chunks: returns (status, headers,
        async iterator of bytes). The caller must exhaust or ``aclose`` the iterator."""
        url = base_url(addr, self._scheme) + path
        t = aiohttp.ClientTimeout(total=None, sock_connect=timeout or self.default_timeout,
                                  sock_read=timeout or self.default_timeout)
        if self.auth is not None:
            headers = _with_auth(headers, self.auth)
        self.requests += 1
        try:
            r = await self.session.request(method, url, data=body, headers=headers, timeout=t,
                                           allow_redirects=False, **self._name_kw)
        except asyncio.TimeoutError:
            self.failures += 1
            raise errors.Timeout(f"no answer from {addr}") from None
        except aiohttp.ClientConnectorError as e:
            self.failures += 1
            raise errors.Unreachable(f"cannot reach {addr}: {e} (nothing was sent)") from None
        except aiohttp.ClientError as e:
            self.failures += 1
            raise errors.Unavailable(f"connection to {addr} failed: {e}") from None

        async def chunks():
            try:
                async for chunk in r.content.iter_chunked(1 << 16):
                    yield chunk
            finally:
                r.release()

        return r.status, r.headers, chunks()

    # ---- convenience calls (tests, router) -----------------------------------------

    async def execute(self, addr, statements, **flags):
        return await self._sql("/db/execute", addr, statements, flags)

    async def query(self, addr, statements, **flags):
        return await self._sql("/db/query", addr, statements, flags)

    async def request_sql(self, addr, statements, **flags):
        return await self._sql("/db/request", addr, statements, flags)

    async def _sql(self, path, addr, statements, flags):
        timeout = flags.pop("client_timeout", None)
        qs = _flags_qs(flags)
        r = await self.request("POST", addr, path + qs, body=orjson.dumps(statements),
                               headers={"Content-Type": "application/json"}, timeout=timeout)
        return r

    async def get_json(self, addr, path, timeout=None):
        r = await self.request("GET", addr, path, timeout=timeout)
        return r.status, (r.json() if r.body[:1] in (b"{", b"[") else r.body)


def _with_auth(headers, auth):
    """``headers`` with ``Authorization: auth`` unless they name one; an ``Authorization``
    of None means "send none"."""
    if not headers:
        return {"Authorization": auth}
    if "Authorization" not in headers:
        return dict(headers, Authorization=auth)
    if headers["Authorization"] is None:
        return {k: v for k, v in headers.items() if k != "Authorization"}
    return headers


def _flags_qs(flags):
    """``pretty=True`` -> ``?pretty``; ``level="none"`` -> ``?level=none``."""
    parts = []
    for k, v in flags.items():
        if v is True:
            parts.append(k)
        elif v is False or v is None:
            continue
        else:
            parts.append(urlencode({k: v}))
    return ("?" + "&".join(parts)) if parts else ""
