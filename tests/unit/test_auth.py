"""-auth (raftsqlite/http/auth.py): the credentials file parser, rqlite's permission rules,
the verified-credential cache, and the node's -join-as identity."""
import asyncio
import base64
import json

import pytest

from raftsqlite import errors
from raftsqlite.http.auth import PERMS, Credentials, basic_header, route_perms

try:
    import bcrypt
except ImportError:        # the bcrypt tests skip; the rest need no bcrypt
    bcrypt = None
needs_bcrypt = pytest.mark.skipif(bcrypt is None, reason="the bcrypt package is not installed")
# bcrypt.hashpw(b"pw", bcrypt.gensalt(4)): a fixed hash, so no test needs bcrypt to build one
PW_HASH = "$2b$04$QE7svWoqTv2eTXfbxiaJC.XznbZwifm5t5YJhvtC3ZMIGUXM4iN1G"


def creds(entries):
    return Credentials.parse(json.dumps(entries).encode())


def allowed(c, header, need):
    """True when a request with ``header`` may run something needing ``need``."""
    async def go():
        if c.check(header, need, "TEST /x") is None:
            await c.verify(header, need, "TEST /x")
        return True
    try:
        return asyncio.run(go())
    except errors.Unauthorized:
        return False


FILE = [
    {"username": "admin", "password": "s3cret", "perms": ["all"]},
    {"username": "reader", "password": "r", "perms": ["query"]},
    {"username": "writer", "password": "w", "perms": ["execute", "query"]},
    {"username": "*", "perms": ["status", "ready"]},
]


def test_plain_passwords_and_perms():
    """A user passes with the right password and a permission it holds (or `all`); a wrong
    password, an unknown user or a missing permission fails."""
    c = creds(FILE)
    assert allowed(c, basic_header("admin", "s3cret"), ("execute",))
    assert allowed(c, basic_header("admin", "s3cret"), ("load", "backup"))
    assert allowed(c, basic_header("reader", "r"), ("query",))
    assert not allowed(c, basic_header("reader", "r"), ("execute",))
    assert not allowed(c, basic_header("reader", "wrong"), ("query",))
    assert not allowed(c, basic_header("nobody", "r"), ("query",))
    assert not allowed(c, None, ("query",))
    # /db/request needs both
    assert not allowed(c, basic_header("reader", "r"), ("execute", "query"))
    assert allowed(c, basic_header("writer", "w"), ("execute", "query"))


def test_anonymous_star_perms():
    """Perms of `*` are granted to everyone, anonymous included, and (as rqlite's AA) even
    to a request with wrong credentials; other perms still need a user."""
    c = creds(FILE)
    assert allowed(c, None, ("status",))
    assert allowed(c, basic_header("admin", "nope"), ("ready",))
    assert not allowed(c, None, ("query",))
    # a user gets its own perms plus those of *
    assert allowed(c, basic_header("reader", "r"), ("query", "status"))
    c2 = creds([{"username": "*", "perms": ["all"]}])
    assert allowed(c2, None, ("load",))


def test_malformed_headers_fail_cleanly():
    """Garbage in Authorization is a 401 (Unauthorized), never a crash."""
    c = creds(FILE)
    for h in ("Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
              "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "basic"):
        assert not allowed(c, h, ("query",)), h
    # the scheme is case-insensitive, as in Go's BasicAuth
    h = "basic " + base64.b64encode(b"reader:r").decode()
    assert allowed(c, h, ("query",))
    # a password may contain colons: split at the first one
    c2 = creds([{"username": "u", "password": "a:b:c", "perms": ["query"]}])
    assert allowed(c2, basic_header("u", "a:b:c"), ("query",))


@needs_bcrypt
def test_bcrypt_and_cache():
    """A bcrypt-hashed password verifies only the plain password (not the hash itself),
    and a verified header is cached: the second request costs no bcrypt."""
    h = PW_HASH
    c = creds([{"username": "u", "password": h, "perms": ["query"]}])
    assert allowed(c, basic_header("u", "pw"), ("query",))
    assert c.counters["verified"] == 1
    assert allowed(c, basic_header("u", "pw"), ("query",))
    assert c.counters["verified"] == 1 and c.counters["auth_ok"] == 2
    assert not allowed(c, basic_header("u", h), ("query",))
    assert not allowed(c, basic_header("u", "PW"), ("query",))
    # a failed header is remembered too: no bcrypt again for the same wrong password
    n = c.counters["verified"]
    assert not allowed(c, basic_header("u", "PW"), ("query",))
    assert c.counters["verified"] == n
    # permissions are checked on cache hits too
    assert not allowed(c, basic_header("u", "pw"), ("execute",))


def test_cache_is_bounded():
    """The verified-header cache never grows past its bound."""
    c = Credentials({"u": "p"}, {"u": frozenset({"query"})}, cache_size=4)
    for i in range(10):
        allowed(c, basic_header("u", "p") + "=" * 0 + " " * i, ("query",))
        allowed(c, basic_header("u", f"bad{i}"), ("query",))
    assert len(c._good) <= 4 and len(c._bad) <= 4


@pytest.mark.parametrize("doc,words", [
    (b"{not json", "not valid JSON"),
    (b'{"username": "a"}', "JSON list"),
    (b'[1]', "not an object"),
    (b'[{"username": "a", "password": "p", "perms": ["exec"]}]', "unknown permission"),
    (b'[{"username": "a", "password": "p", "perms": "all"}]', "list of strings"),
    (b'[{"username": "", "password": "p", "perms": []}]', "non-empty string"),
    (b'[{"username": "a", "password": "", "perms": ["all"]}]', "empty password"),
    (b'[{"username": "a", "password": "p", "perms": []}, {"username": "a", "password": "q"}]',
     "twice"),
    (b'[{"username": "a", "password": "p", "perm": ["all"]}]', "unknown field"),
])
def test_bad_files_are_config_errors(doc, words):
    """Every malformed file is a ConfigError whose message names the problem."""
    with pytest.raises(errors.ConfigError, match=words):
        Credentials.parse(doc, source="f.json")


def test_unreadable_file(tmp_path):
    """A missing file is a ConfigError naming the path."""
    with pytest.raises(errors.ConfigError, match="cannot read"):
        Credentials.load(str(tmp_path / "missing.json"))
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(FILE))
    assert Credentials.load(str(p)).stats()["users"] == 4


def test_bcrypt_missing_is_refused(monkeypatch):
    """A file with a bcrypt hash and no bcrypt package refuses to load, saying so."""
    import sys
    h = PW_HASH
    monkeypatch.setitem(sys.modules, "bcrypt", None)
    with pytest.raises(errors.ConfigError, match="bcrypt"):
        creds([{"username": "u", "password": h, "perms": ["all"]}])


@needs_bcrypt
def test_join_as_identity():
    """-join-as sends that user's plain password; an unknown user, `*`, or a bcrypt-hashed
    password (the node cannot know the plain one) is a ConfigError."""
    h = PW_HASH
    c = creds(FILE + [{"username": "hashed", "password": h, "perms": ["all"]}])
    assert c.identity_header("admin") == basic_header("admin", "s3cret")
    for bad in ("nobody", "*", "hashed"):
        with pytest.raises(errors.ConfigError):
            c.identity_header(bad)


def test_node_refuses_bad_auth(tmp_path):
    """A node with a bad -auth file, or -join-as without -auth, refuses to start."""
    from raftsqlite.config import NodeConfig
    from raftsqlite.node import Node
    p = tmp_path / "a.json"
    p.write_text('[{"username": "a", "password": "p", "perms": ["nope"]}]')
    with pytest.raises(errors.ConfigError, match="unknown permission"):
        Node(NodeConfig(data_dir=str(tmp_path / "d"), auth_file=str(p)))
    with pytest.raises(errors.ConfigError, match="needs -auth"):
        Node(NodeConfig(data_dir=str(tmp_path / "d"), join_as="a"))
    assert not (tmp_path / "d").exists()


def test_cli_flags():
    """-auth/--auth and -join-as reach the node config."""
    from raftsqlite.cli import config_from_args
    cfg, _ = config_from_args(["-auth", "/x.json", "--join-as", "admin"])
    assert cfg.auth_file == "/x.json" and cfg.join_as == "admin"
    cfg, _ = config_from_args(["--auth=/y.json"])
    assert cfg.auth_file == "/y.json" and cfg.join_as == ""


def test_join_perm_depends_on_voter():
    """/join of a voter needs `join`; a non-voter may use join-read-only/-replica."""
    assert route_perms("/join", "POST", b'{"id": "n", "addr": "a:1"}') == ("join",)
    nv = route_perms("/join", "POST", b'{"id": "n", "addr": "a:1", "voter": false}')
    assert set(nv) == {"join", "join-read-only", "join-read-replica"}
    assert route_perms("/nope", "GET") is None
    assert PERMS["/db/request"] == ("execute", "query")


def test_joining_without_join_as_is_refused(tmp_path):
    """With -auth, a node that joins (-join) without -join-as would call its peers
    anonymously and never catch up: refused, unless `*` holds `all`."""
    from raftsqlite.config import NodeConfig
    from raftsqlite.node import Node
    p = tmp_path / "a.json"
    p.write_text(json.dumps(FILE))
    with pytest.raises(errors.ConfigError, match="-join-as"):
        Node(NodeConfig(data_dir=str(tmp_path / "d"), auth_file=str(p), join=("h:1",)))
    p.write_text(json.dumps([{"username": "*", "perms": ["all"]}]))
    creds_ = Credentials.load(str(p))
    import logging
    creds_.check_anonymous_node(True, logging.getLogger("t"))     # no error
