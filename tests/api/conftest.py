"""In-process app tests: each app is served on a free 127.0.0.1 port by a uvloop loop in a
background thread (so real HTTP, keep-alive and forwarding are exercised), and tests talk
to it with a small synchronous client."""
import asyncio
import http.client
import json
import threading

import pytest
import uvloop

from raftsqlite.http import create_app, start_server, stop_server
from raftsqlite.testing.procs import free_port
from tests.api.fakes import Cluster, FakeNode, FakeStore


class Loop:
    def __init__(self):
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self):
        return self.body.decode()

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Resp({self.status}, {self.body[:300]!r})"


class HTTP:
    """Keep-alive synchronous client for one server."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)

    def req(self, method, path, body=None, headers=None):
        if isinstance(body, (list, dict)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        elif isinstance(body, str):
            body = body.encode()
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
                if attempt:
                    raise

    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.req("POST", path, body, **kw)

    def close(self):
        self.conn.close()


class Served:
    def __init__(self, loop, node, settings=None):
        self.loop = loop
        self.node = node
        self.store = node.store
        self.port = free_port()
        self.app = create_app(node, settings=settings)
        self.srv = loop.run(start_server(self.app, "127.0.0.1", self.port))
        self.http = HTTP(self.port)
        self.addr = f"127.0.0.1:{self.port}"

    def stop(self):
        self.http.close()
        self.loop.run(stop_server(self.srv))


@pytest.fixture(scope="session")
def bgloop():
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture
def serve(bgloop):
    """serve(node, settings=None) -> Served; everything is stopped after the test."""
    started = []

    def _serve(node, settings=None):
        s = Served(bgloop, node, settings)
        started.append(s)
        return s

    yield _serve
    for s in started:
        s.stop()


@pytest.fixture
def single(serve):
    """One leader node with its own database."""
    cl = Cluster()
    store = FakeStore(cl, "node1")
    cl.leader_id = "node1"
    s = serve(FakeNode(store))
    store.member.http_addr = s.addr
    return s


@pytest.fixture
def trio(serve):
    """Three fake members sharing one database: node1 leads."""
    cl = Cluster()
    served = []
    for i in (1, 2, 3):
        st = FakeStore(cl, f"node{i}")
        s = serve(FakeNode(st))
        st.member.http_addr = s.addr
        served.append(s)
    cl.leader_id = "node1"
    return served
