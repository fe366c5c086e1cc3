"""raftsqlite.client: convenience calls, pooled connections, transport errors as ours."""

import pytest

from raftsqlite import errors
from raftsqlite.client import Client, _flags_qs, base_url


def test_flags_and_urls():
    """Presence flags render bare; values are url-encoded; addresses get a scheme."""
    assert _flags_qs({"pretty": True, "level": "none", "x": False, "q": "a b"}) == \
        "?pretty&level=none&q=a+b"
    assert base_url("h:1") == "http://h:1" and base_url("https://h:1/") == "https://h:1"


def test_client_calls_and_errors(single, bgloop):
    """execute/query round-trip through a served app on one pooled connection; an
    unreachable node is Unreachable (nothing sent); a slow one is Timeout."""
    async def go():
        async with Client(timeout=5) as c:
            r = await c.execute(single.addr, ["CREATE TABLE t (x)", ["INSERT INTO t VALUES(?)", 3]])
            assert r.status == 200 and r.json()["results"][1]["rows_affected"] == 1
            r = await c.query(single.addr, ["SELECT x FROM t"], level="none")
            assert r.json()["results"][0]["values"] == [[3]]
            for _ in range(20):
                await c.query(single.addr, ["SELECT 1"], level="none")
            assert c.session.connector._conns  # keep-alive pool holds the connection
            with pytest.raises(errors.Unreachable):
                await c.request("GET", "127.0.0.1:1", "/status")
            single.store.delay = 2
            with pytest.raises(errors.Timeout):
                await c.query(single.addr, ["SELECT 1"], client_timeout=0.3)
            single.store.delay = 0
            assert c.stats()["requests"] >= 24 and c.stats()["failures"] == 2
    bgloop.run(go())
