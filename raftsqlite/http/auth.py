"""``-auth FILE``: HTTP Basic authentication and per-endpoint permissions, as rqlite has them.

The file is rqlite's: a JSON list of ``{"username", "password", "perms"}``. ``*`` as a
username grants its perms to everyone, anonymous requests included; ``all`` grants every
permission. A request passes when (as rqlite's ``AA``) every permission its route needs is
granted to ``*``, or it carries Basic credentials of a user holding that permission (or
``all``). Passwords are plain, or bcrypt hashes (``$2a$``/``$2b$``/``$2y$``), checked with
the ``bcrypt`` package; verified headers are cached so bcrypt is paid once per header, not
per request. Every failure is a 401 (rqlite answers 401 both for bad credentials and for
a missing permission) with ``WWW-Authenticate``; the message says which.

``PERMS`` maps every route path to the permissions it needs; a route missing from it is
refused (fail closed), and tests/unit/test_auth_routes.py fails if any registered route is
unmapped. docs/design/security.md has the table and the rules for node-to-node calls.
"""
import asyncio
import base64
import binascii
import hmac

import orjson

from raftsqlite import errors

REALM = "rqlite"

#: rqlite's permission names (auth/credential_store.go), all of which we accept.
RQLITE_PERMS = frozenset({
    "all", "execute", "query", "load", "backup", "status", "ready", "join",
    "join-read-only", "join-read-replica", "remove", "leader-ops", "snapshot", "ui"})
KNOWN_PERMS = RQLITE_PERMS
ANONYMOUS = "*"
#: A /join of a non-voter is also allowed by these (rqlite: read-only/read-replica joins).
_NONVOTER_JOIN = ("join", "join-read-only", "join-read-replica")

#: route path -> permissions it needs (all of them). rqlite's mapping for its routes
#: (http/service.go); ours by what they can do (docs/design/security.md).
PERMS = {
    # rqlite's API
    "/db/execute": ("execute",),
    "/db/query": ("query",),
    "/db/request": ("execute", "query"),
    "/db/backup": ("backup",),
    "/db/load": ("load",),
    "/boot": ("load",),
    "/status": ("status",),
    "/nodes": ("status",),
    "/leader": ("leader-ops",),
    "/readyz": ("ready",),
    "/remove": ("remove",),
    "/snapshot": ("snapshot",),
    "/join": ("join",),          # a non-voter may instead hold join-read-only/-replica
    "/notify": ("join",),        # -bootstrap-expect nodes finding each other (as rqlite)
    "/metrics": ("status",),     # as rqlite's /debug/vars
    "/debug/vars": ("status",),
    # the seed's API
    "/execute": ("execute",),
    "/query": ("query",),
    # the sharding router: reads of the catalog, and changes to it (like DDL)
    "/tables": ("query",),
    "/table/explain": ("query",),
    "/shards": ("status",),
    "/table/rebalance/status": ("status",),
    "/table/register": ("execute",),
    "/table/add-to-shard": ("execute",),
    "/table/remove": ("execute",),
    "/table/remove-from-shard": ("execute",),
    "/table/rebalance": ("execute",),
    "/table/rebalance/cancel": ("execute",),
    "/table/split": ("execute",),
    "/table/move-range": ("execute",),
    # node-to-node: any SQL and catalog/ownership changes on a group, so only `all`
    "/shard/call": ("all",),
    "/shard/system": ("all",),
    "/shard/catalog": ("all",),
}


def _is_bcrypt(pw):
    return len(pw) == 60 and pw[:4] in ("$2a$", "$2b$", "$2y$")


def basic_header(username, password):
    """The ``Authorization`` value for HTTP Basic credentials."""
    raw = f"{username}:{password}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _parse_basic(value):
    """``Basic <base64 user:password>`` -> (user, password), or None (as Go's BasicAuth:
    scheme case-insensitive, split at the first colon)."""
    if not value or value[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, pw = raw.partition(":")
    return (user, pw) if sep else None


class Credentials:
    """The loaded ``-auth`` file. ``check``/``verify`` answer for one request."""

    def __init__(self, users, perms, *, source="", cache_size=1024):
        self.source = source
        self._pw = users                    # user -> password or bcrypt hash
        self._perms = perms                 # user -> frozenset of perms
        anon = perms.get(ANONYMOUS, frozenset())
        self._anon = anon
        self._cache_size = cache_size
        self._good = {}                     # header -> (user, perms incl. anonymous ones)
        self._bad = {}                      # header -> message (no bcrypt twice per header)
        self._bcrypt_slots = None
        self._anon_ok = {}                  # need -> whether `*` alone grants it
        self.counters = {"auth_ok": 0, "auth_fail": 0, "verified": 0}

    # ---- loading --------------------------------------------------------------------
    @classmethod
    def load(cls, path):
        """Parse an rqlite credentials file; any problem is a ``ConfigError`` naming it."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise errors.ConfigError(f"-auth: cannot read {path}: {e.strerror or e}") from None
        return cls.parse(data, source=path)

    @classmethod
    def parse(cls, data, source="<auth>"):
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise errors.ConfigError(f"-auth {source}: not valid JSON: {e}") from None
        if not isinstance(doc, list):
            raise errors.ConfigError(f"-auth {source}: must be a JSON list of "
                                     f'{{"username", "password", "perms"}} objects')
        users, perms = {}, {}
        hashed = False
        for i, c in enumerate(doc):
            where = f"-auth {source}: entry {i}"
            if not isinstance(c, dict):
                raise errors.ConfigError(f"{where} is not an object")
            extra = set(c) - {"username", "password", "perms"}
            if extra:
                raise errors.ConfigError(f"{where}: unknown field(s) {sorted(extra)}")
            name = c.get("username", "")
            pw = c.get("password", "")
            plist = c.get("perms", [])
            if not isinstance(name, str) or not name:
                raise errors.ConfigError(f"{where}: username must be a non-empty string")
            where = f"-auth {source}: user {name!r}"
            if not isinstance(pw, str):
                raise errors.ConfigError(f"{where}: password must be a string")
            if not isinstance(plist, list) or not all(isinstance(p, str) for p in plist):
                raise errors.ConfigError(f"{where}: perms must be a list of strings")
            unknown = sorted(set(plist) - KNOWN_PERMS)
            if unknown:
                raise errors.ConfigError(
                    f"{where}: unknown permission(s) {unknown}; known: {sorted(KNOWN_PERMS)}")
            if name in users:
                raise errors.ConfigError(f"{where} appears twice")
            if name != ANONYMOUS and not pw:
                raise errors.ConfigError(f"{where}: empty password")
            hashed = hashed or _is_bcrypt(pw)
            users[name] = pw
            perms[name] = frozenset(plist)
        if hashed:
            try:
                import bcrypt  # noqa: F401
            except ImportError:
                raise errors.ConfigError(
                    f"-auth {source}: has bcrypt-hashed passwords but the 'bcrypt' package "
                    f"is not installed (pip install bcrypt)") from None
        return cls(users, perms, source=source)

    # ---- node identity ----------------------------------------------------------------
    def identity_header(self, username):
        """The ``Authorization`` this node sends on its own calls as ``-join-as USER``."""
        if username not in self._pw or username == ANONYMOUS:
            raise errors.ConfigError(f"-join-as {username!r}: no such user in the -auth file "
                                     f"{self.source}")
        pw = self._pw[username]
        if _is_bcrypt(pw):
            # rqlite issue #1488: with only the hash, the node cannot prove it knows the
            # password to its peers.
            raise errors.ConfigError(
                f"-join-as {username!r}: that user's password in {self.source} is a bcrypt "
                f"hash; a node needs the plain password to authenticate to other nodes "
                f"(give the -join-as user a plain password, and keep the file private)")
        return basic_header(username, pw)

    def check_anonymous_node(self, joining, log):
        """A node with -auth but no -join-as calls other nodes anonymously: the join
        needs ``*`` to hold ``join``, the catalog catch-up and routed calls ``all``. With
        -join (a member that will be a follower) that would leave it never ready, so it
        is refused unless ``*`` holds ``all``; a first node only gets a warning."""
        if "all" in self._anon:
            return
        msg = ("-auth without -join-as: this node calls other members anonymously, and they "
               "refuse that unless '*' holds the 'all' permission (join, catalog catch-up, "
               "routed shard calls); give -join-as USER, a user with 'all'")
        if joining:
            raise errors.ConfigError(msg)
        log.warning("%s (fine while this node is alone)", msg)

    # ---- per request ------------------------------------------------------------------
    def _effective(self, user):
        p = self._perms.get(user, frozenset()) | self._anon
        return KNOWN_PERMS if "all" in p else p

    def anonymous_ok(self, need):
        a = self._anon
        return "all" in a or all(p in a for p in need)

    def check(self, header, need, what):
        """Fast answer for one request needing all of ``need``: True (allowed), or None
        (the header must be verified first: ``await verify``); raises ``Unauthorized``."""
        anon = self._anon_ok.get(need)
        if anon is None:
            anon = self._anon_ok[need] = self.anonymous_ok(need)
        if anon:
            self.counters["auth_ok"] += 1
            return True
        hit = self._good.get(header)
        if hit is not None:
            # the common case, in one step: a cached header holding every perm needed
            have = hit[1]
            for p in need:
                if p not in have:
                    break
            else:
                self.counters["auth_ok"] += 1
                return True
        if not header:
            self.counters["auth_fail"] += 1
            raise errors.Unauthorized(f"unauthorized: {what} needs credentials (HTTP Basic "
                                      f"auth) with the {_names(need)} permission", REALM)
        hit = self._good.get(header)
        if hit is None:
            bad = self._bad.get(header)
            if bad is not None:
                self.counters["auth_fail"] += 1
                raise errors.Unauthorized(bad, REALM)
            return None
        return self._grant(hit, need, what)      # raises: a perm is missing

    def _grant(self, hit, need, what):
        user, have = hit
        for p in need:
            if p not in have:
                self.counters["auth_fail"] += 1
                raise errors.Unauthorized(
                    f"unauthorized: user {user!r} lacks the {p!r} permission needed for "
                    f"{what}", REALM)
        self.counters["auth_ok"] += 1
        return True

    async def verify(self, header, need, what):
        """Check the credentials in ``header`` (bcrypt off the loop), cache the result,
        then the permissions."""
        self.counters["verified"] += 1
        cred = _parse_basic(header)
        ok = False
        if cred is not None and cred[0] in self._pw and cred[0] != ANONYMOUS:
            user, pw = cred
            stored = self._pw[user]
            if _is_bcrypt(stored):
                ok = await self._bcrypt(pw, stored)
            else:
                ok = hmac.compare_digest(pw.encode("utf-8"), stored.encode("utf-8"))
        if not ok:
            msg = ("unauthorized: malformed Authorization header (want HTTP Basic)"
                   if cred is None else "unauthorized: invalid username or password")
            _remember(self._bad, header, msg, self._cache_size)
            self.counters["auth_fail"] += 1
            raise errors.Unauthorized(msg, REALM)
        hit = (cred[0], self._effective(cred[0]))
        _remember(self._good, header, hit, self._cache_size)
        return self._grant(hit, need, what)

    async def _bcrypt(self, pw, stored):
        import bcrypt
        if self._bcrypt_slots is None:
            # bcrypt takes tens of ms by design: in a thread (it releases the GIL), and
            # at most two at a time, so a flood of wrong passwords cannot take every core.
            self._bcrypt_slots = asyncio.Semaphore(2)
        async with self._bcrypt_slots:
            return await asyncio.get_running_loop().run_in_executor(
                None, bcrypt.checkpw, pw.encode("utf-8"), stored.encode("ascii"))

    async def authorize(self, header, need, what):
        if self.check(header, need, what) is None:
            await self.verify(header, need, what)

    def stats(self):
        return dict(self.counters, users=len(self._pw), cached=len(self._good),
                    cached_bad=len(self._bad))


def _remember(d, key, value, limit):
    if len(d) >= limit:
        d.pop(next(iter(d)))          # oldest first: dicts keep insertion order
    d[key] = value


def _names(need):
    return " and ".join(repr(p) for p in need)


def route_perms(path, method, body=b""):
    """Permissions a request to ``path`` needs, or None when the route is unmapped."""
    need = PERMS.get(path)
    if path == "/join" and need is not None:
        from raftsqlite.http.params import parse_join
        try:
            voter = parse_join(body)[3]
        except errors.RaftSQLiteError:
            voter = True            # the handler answers the 400; ask for the most
        if not voter:
            return _NONVOTER_JOIN   # any one of them (see ``AppAuth.check_request``)
    return need


class AppAuth:
    """What the HTTP app holds when ``-auth`` is on: the credentials and the request
    check shared by Sanic's middleware and the fast lane."""

    def __init__(self, creds):
        self.creds = creds

    async def check_request(self, request):
        """Raise ``Unauthorized`` unless the request may run."""
        route = request.route
        if route is None:
            # Sanic runs request middleware before answering a routing error: no route,
            # nothing to protect; the 404/405 goes out as without -auth (rqlite: 404).
            return
        path = "/" + route.path.lstrip("/")
        need = route_perms(path, request.method, request.body or b"")
        what = f"{request.method} {path}"
        header = request.headers.get("authorization")
        if need is None:
            raise errors.Unauthorized(f"unauthorized: no permission is defined for {what}",
                                      REALM)
        if need is _NONVOTER_JOIN:
            last = None
            for p in need:
                try:
                    return await self.creds.authorize(header, (p,), what)
                except errors.Unauthorized as e:
                    last = e
            raise last
        await self.creds.authorize(header, need, what)

    def fast_routes(self, table):
        """The fast lane's route table with every handler, including those other layers
        add later (the sharding router adds /shard/call when the server starts), wrapped
        by ``guard``."""
        return _GuardedRoutes(self, table)

    def guard(self, handler, path, method):
        """A fast-lane handler that checks credentials before ``handler``."""
        need = PERMS.get(path)
        creds = self.creds
        what = f"{method} {path}"

        async def guarded(request):
            if need is None:        # fail closed, as check_request
                raise errors.Unauthorized(
                    f"unauthorized: no permission is defined for {what}", REALM)
            if creds.check(request.headers.get("authorization"), need, what) is None:
                await creds.verify(request.headers.get("authorization"), need, what)
            return await handler(request)

        guarded.__wrapped__ = handler
        return guarded

    def stats(self):
        return self.creds.stats()


class _GuardedRoutes(dict):
    """``{(method, path): handler}`` whose handlers always check credentials first, also
    when set after construction. Lookups stay ``dict.get`` (the fast lane's only use)."""
    __slots__ = ("_auth",)

    def __init__(self, auth, table):
        super().__init__()
        self._auth = auth
        for k, h in table.items():
            self[k] = h

    def __setitem__(self, key, handler):
        method, path = (k.decode() if isinstance(k, bytes) else k for k in key)
        super().__setitem__(key, self._auth.guard(handler, path, method))

    def update(self, *a, **kw):
        for k, h in dict(*a, **kw).items():
            self[k] = h

    def setdefault(self, key, handler=None):
        if key not in self:
            self[key] = handler
        return self[key]
