"""Every HTTP route a node serves has a permission in auth.PERMS, in both lanes (Sanic's
router and the fast lane), and with -auth off nothing is wrapped or added."""
import asyncio
import json

import pytest

from raftsqlite.config import NodeConfig
from raftsqlite.http import create_app, start_server, stop_server
from raftsqlite.http.auth import KNOWN_PERMS, PERMS
from raftsqlite.node import Node
from raftsqlite.testing.procs import free_port


def _node(tmp_path, **kw):
    cfg = NodeConfig(data_dir=str(tmp_path / "d"), http_addr=f"127.0.0.1:{free_port()}",
                     raft_addr=f"127.0.0.1:{free_port()}", **kw)
    return Node(cfg)


@pytest.fixture
def auth_file(tmp_path):
    p = tmp_path / "auth.json"
    p.write_text(json.dumps([{"username": "a", "password": "p", "perms": ["all"]}]))
    return str(p)


def test_every_route_is_mapped(tmp_path, auth_file):
    """Each route of a real node's app (rqlite's, the seed's, the sharding router's, the
    rebalancer's, and any added later) and each fast-lane route has a permission; an
    unmapped route would be refused to everyone, so this fails before users see it."""
    node = _node(tmp_path, auth_file=auth_file)
    app = create_app(node)

    async def serve_once():
        # listeners add fast-lane routes when the server starts (the router's /shard/call)
        srv = await start_server(app, "127.0.0.1", free_port())
        try:
            return dict(app.ctx.fast_routes)
        finally:
            await stop_server(srv)
    fast_table = asyncio.run(serve_once())
    paths = {"/" + r.path.lstrip("/") for r in app.router.routes}
    assert len(paths) >= 25          # the enumeration itself works
    missing = sorted(p for p in paths if p not in PERMS)
    assert not missing, f"routes without a permission in auth.PERMS: {missing}"
    fast = {p.decode() for _, p in fast_table}
    assert "/shard/call" in fast and "/db/execute" in fast
    assert not sorted(p for p in fast if p not in PERMS)
    # every fast-lane handler checks credentials, also those added at server start
    assert all(hasattr(h, "__wrapped__") for h in fast_table.values())
    for perms in PERMS.values():
        assert set(perms) <= KNOWN_PERMS


def test_fast_lane_is_guarded_only_with_auth(tmp_path, auth_file):
    """With -auth, every fast-lane handler checks credentials first; without it, the fast
    lane holds the plain handlers and no request middleware is registered (hot path
    unchanged)."""
    on = create_app(_node(tmp_path, auth_file=auth_file))
    assert all(hasattr(h, "__wrapped__") for h in on.ctx.fast_routes.values())
    assert on.request_middleware
    off = create_app(_node(tmp_path / "off"))
    assert off.ctx.auth is None and off.ctx.identity is None
    assert not any(hasattr(h, "__wrapped__") for h in off.ctx.fast_routes.values())
    assert not off.request_middleware
