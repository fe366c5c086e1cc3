"""HTTP implementations of the interfaces the move workflow and the router need, for a
coordinator that reaches groups over the network:

- ``HttpExecutor``: the router's ``GroupExecutor`` over ``/db/execute`` and
  ``/db/query?level=linearizable`` (with ``shard_id``) of a group's members, or, when a
  guard is given, over ``POST /shard/call`` (which hands the guard to the shard's FSM).
- ``HttpMoveBackend``: ``MoveBackend`` with the catalog read from / ops proposed to the
  default group, own ops proposed to shard groups.

Member addresses come from the catalog (``groups[g]["members"][*]["http_addr"]``) or
from ``static`` ``{group: [addr, ...]}``. A request fails over to the next member on a
connection error or 503. The paths of the SYSTEM-op and catalog routes are parameters,
so the integrated node can serve them wherever it likes.
"""
import asyncio

import aiohttp
import orjson

from raftsqlite import errors
from raftsqlite.sharding.catalog import DEFAULT_GROUP, Catalog
from raftsqlite.b64json import unb64

_CODES = {"moved": errors.Moved, "fenced": errors.Fenced, "not_leader": errors.NotLeader,
          "coordinator_fenced": errors.CoordinatorFenced}


def _raise_for(status, body):
    code = body.get("code") if isinstance(body, dict) else None
    msg = body.get("error") if isinstance(body, dict) else str(body)
    cls = _CODES.get(code)
    if cls is not None:
        raise cls(msg or code)
    if status in (502, 503, 504):
        raise errors.Unavailable(msg or f"HTTP {status}")
    if status == 404:
        raise errors.NotFound(msg or "not found")
    raise errors.BadRequest(msg or f"HTTP {status}")


class _Http:
    def __init__(self, static=None, timeout=30.0):
        self.static = {g: list(a) for g, a in (static or {}).items()}
        self.cat = None
        self.timeout = timeout
        self._session = None

    def session(self):
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def close(self):
        if self._session is not None:
            await self._session.close()

    def addrs(self, group):
        if group in self.static:
            return self.static[group]
        if self.cat is not None and group in self.cat.groups:
            return [m["http_addr"] for m in self.cat.groups[group]["members"].values() if m.get("http_addr")]
        raise errors.NotFound(f"no address known for group {group!r}")

    async def call(self, group, method, path, body=None, params=None, raw=False):
        last = None
        for a in self.addrs(group):
            url = ("" if "://" in a else "http://") + a + path
            kw = {"data": body, "headers": {"Content-Type": "application/octet-stream"}} if raw \
                else {"json": body}
            try:
                async with self.session().request(method, url, params=params,
                                                  allow_redirects=True, **kw) as r:
                    data = await r.read()
                    if r.headers.get("Content-Type", "").startswith("application/octet-stream"):
                        return {"bytes": data}
                    try:
                        j = unb64(orjson.loads(data)) if data else {}
                    except orjson.JSONDecodeError:
                        j = {"error": data.decode(errors="replace")}
                    if r.status == 200:
                        return j
                    if r.status in (502, 503, 504) and j.get("code") not in _CODES:
                        last = errors.Unavailable(j.get("error", f"HTTP {r.status}"))
                        continue
                    _raise_for(r.status, j)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                last = errors.Unavailable(f"{group} at {a}: {type(e).__name__}: {e}")
        raise last or errors.Unavailable(f"group {group} has no member")


def _stmts(statements):
    return [[s.sql] + (list(s.params) if isinstance(s.params, (list, tuple)) else []) if not isinstance(s.params, dict)
            else [s.sql, s.params] for s in statements]


def _check_results(res):
    for r in res:
        code = r.get("code") if isinstance(r, dict) else None
        if code in ("moved", "fenced", "coordinator_fenced"):
            raise _CODES[code](r.get("error") or code)
    return res


class HttpExecutor(_Http):
    """Guarded writes go codec-encoded (with their guard) to ``POST /shard/call`` of the
    group, which hands the guard to its FSM; everything else to ``/db/*`` with
    ``shard_id=<group>`` (so the receiving node runs it on its own group, unrouted)."""

    async def execute(self, group, statements, *, transaction=False, guard=None):
        if guard is not None:
            from raftsqlite.codec import encode_command
            from raftsqlite.codec.model import Command, CommandType, Request
            body = encode_command(Command(CommandType.EXECUTE,
                                          [Request(list(statements), bool(transaction), None, bytes(guard))]))
            j = await self.call(group, "POST", "/shard/call", body, params={"kind": "execute"}, raw=True)
        else:
            params = {"shard_id": group}
            if transaction:
                params["transaction"] = "true"
            j = await self.call(group, "POST", "/db/execute", _stmts(statements), params=params)
        return _check_results(j.get("results", []))

    async def query(self, group, statements, *, guard=None, **opts):
        j = await self.call(group, "POST", "/db/query", _stmts(statements),
                            params={"level": "linearizable", "types": "false", "shard_id": group})
        return j.get("results", [])

    async def request(self, group, statements, *, transaction=False, **opts):
        return await self.execute(group, statements, transaction=transaction)


class HttpCatalogSource:
    """The router's ``CatalogSource`` over ``GET /shard/catalog`` of the default group."""

    def __init__(self, http, catalog_path="/shard/catalog?after=-1"):
        self.http = http
        self.path = catalog_path
        self.cat = Catalog()
        self.refreshes = 0

    def current(self):
        return self.cat

    async def refresh(self):
        self.refreshes += 1
        j = await self.http.call(DEFAULT_GROUP, "GET", self.path)
        self.cat = Catalog.from_bytes(j["bytes"]) if "bytes" in j else Catalog.from_dict(j["catalog"])
        self.http.cat = self.cat
        return self.cat


class HttpMoveBackend:
    def __init__(self, executor, catalog_path="/shard/catalog?after=-1", system_path="/shard/system",
                 local_catalog=None, local_system=None):
        self.executor = executor
        self.source = HttpCatalogSource(executor, catalog_path)
        self.system_path = system_path
        self.local_catalog = local_catalog    # coroutine fns when running inside the node
        self.local_system = local_system

    async def catalog(self):
        if self.local_catalog is not None:
            c = await self.local_catalog()
            self.executor.cat = c
            return c
        return await self.source.refresh()

    async def _system(self, group, name, args):
        if group == DEFAULT_GROUP and self.local_system is not None:
            return await self.local_system(name, args)
        import base64
        j = await self.executor.call(group, "POST", self.system_path, {"ops": [[
            name, base64.b64encode(orjson.dumps(args)).decode()]]})
        r = j["results"][0]
        if isinstance(r, dict) and r.get("error") and set(r) <= {"error", "code", "time"}:
            if r.get("code") == errors.CoordinatorFenced.code:
                raise errors.CoordinatorFenced(r["error"])
            raise errors.BadRequest(r["error"])
        return r

    async def catalog_op(self, name, args):
        return await self._system(DEFAULT_GROUP, "catalog." + name, args)

    async def own_op(self, group, name, args):
        if self.executor.cat is None:
            await self.catalog()
        return await self._system(group, "own." + name, args)
