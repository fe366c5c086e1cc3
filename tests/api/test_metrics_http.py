"""GET /metrics and GET /debug/vars on an in-process app: both HTTP lanes count requests
by route template and status class, and the whole exposition parses strictly."""
import json

from raftsqlite.metrics import CONTENT_TYPE
from tests.api.test_fastpath import _exchange, _request
from tests.promtext import parse


def _metrics(s):
    r = s.http.get("/metrics")
    assert r.status == 200, r
    assert r.headers["content-type"] == CONTENT_TYPE
    return parse(r.text)


def test_requests_are_counted_per_route_and_status_class_in_both_lanes(single):
    """Writes and reads sent whole (the fast lane) and split in two writes (Sanic), a
    malformed write on each lane (400), an unknown path (Sanic's 404) and /status are
    each counted under their route template and status class, whichever lane served
    them; the latency histograms count every answered write and read; the scrape itself
    is the one request in flight; no section of the exposition failed."""
    s = single
    s.http.post("/db/execute", [["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]])
    before = _metrics(s)
    fast0 = s.app.ctx.counters["fast_lane"]
    n = 5
    write = _request(b"/db/execute", b'[["INSERT INTO t(v) VALUES(?)", "x"]]')
    read = (b"GET /db/query?q=SELECT+count(*)+FROM+t HTTP/1.1\r\nHost: t\r\n\r\n", b"")
    bad = _request(b"/db/execute", b"[not json")
    for _ in range(n):
        for head, body in (write, read):
            for parts in ([head + body], [head, body] if body else [head[:10], head[10:]]):
                (resp,) = _exchange(s.port, parts)
                assert resp.startswith(b"HTTP/1.1 200"), resp
    for parts in ([bad[0] + bad[1]], list(bad)):
        (resp,) = _exchange(s.port, parts)
        assert resp.startswith(b"HTTP/1.1 400"), resp
    assert s.http.get("/no/such/route").status == 404
    assert s.http.get("/status").status == 200
    # one whole write, one whole read per round and the whole bad write took the lane
    assert s.app.ctx.counters["fast_lane"] - fast0 == 2 * n + 1
    after = _metrics(s)
    req = after["raftsqlite_http_requests_total"]
    old = before["raftsqlite_http_requests_total"]

    def delta(route, status):
        key = frozenset({"route": route, "status": status}.items())
        return req.values().get(key, 0) - old.values().get(key, 0)

    assert delta("/db/execute", "2xx") == 2 * n
    assert delta("/db/execute", "4xx") == 2
    assert delta("/db/query", "2xx") == 2 * n
    assert delta("unmatched", "4xx") == 1
    assert delta("/status", "2xx") == 1
    assert delta("/db/execute", "5xx") == 0
    dur = after["raftsqlite_http_request_duration_seconds"]
    odur = before["raftsqlite_http_request_duration_seconds"]

    def count(fams, kind):
        (v,) = [v for name, lab, v in fams.samples
                if name.endswith("_count") and lab == {"kind": kind}]
        return v
    assert count(dur, "write") - count(odur, "write") == 2 * n + 2
    assert count(dur, "read") - count(odur, "read") == 2 * n
    assert after["raftsqlite_http_requests_in_flight"].value() == 1
    assert after["raftsqlite_scrape_errors_total"].value() == 0


def test_route_labels_stay_bounded(single):
    """Raw paths never become label values: many distinct unknown paths add one
    'unmatched' series, not one series each."""
    s = single
    _metrics(s)     # request bookkeeping starts with the first scrape
    for i in range(20):
        s.http.get(f"/nothing/here/{i}")
    routes = {lab["route"] for _, lab, _ in _metrics(s)["raftsqlite_http_requests_total"].samples}
    assert "unmatched" in routes
    assert not any(r.startswith("/nothing") for r in routes)


def test_debug_vars_is_expvar_shaped_json(single):
    """/debug/vars answers one JSON object of maps (cmdline, memstats, http, store, ...);
    ?key= narrows it to that variable, and an unknown key gives {} (as rqlite)."""
    s = single
    assert s.http.get("/debug/vars").status == 200    # turns request bookkeeping on
    s.http.post("/db/execute", [["CREATE TABLE t (id INTEGER PRIMARY KEY)"]])
    r = s.http.get("/debug/vars")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert isinstance(doc["cmdline"], list)
    assert doc["memstats"]["resident_memory_bytes"] > 0
    assert doc["http"]["route /db/execute"] >= 1
    assert isinstance(doc["store"], dict)
    only = s.http.get("/debug/vars?key=http").json()
    assert list(only) == ["http"]
    assert json.loads(s.http.get("/debug/vars?key=nope").body) == {}


def test_requests_are_not_counted_before_the_first_scrape(single):
    """A node nobody scrapes does no per-request bookkeeping: requests before the first
    /metrics are not in its counters; those after it are."""
    s = single
    for _ in range(3):
        assert s.http.post("/db/execute", [["SELECT 1"]]).status == 200
    ok = frozenset({"route": "/db/execute", "status": "2xx"}.items())
    first = _metrics(s)["raftsqlite_http_requests_total"].values()
    assert first[ok] == 0
    for _ in range(3):
        assert s.http.post("/db/execute", [["SELECT 1"]]).status == 200
    assert _metrics(s)["raftsqlite_http_requests_total"].values()[ok] == 3
