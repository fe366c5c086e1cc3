"""rqlite's exact JSON on /db/execute, /db/query and /db/request, flag by flag."""
import base64
import json

import pytest


def setup_table(h):
    r = h.post("/db/execute", ["CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT, "
                               "score REAL, data BLOB)"])
    assert r.status == 200 and r.body == b'{"results":[{}]}', r


def test_create_table_renders_empty_object(single):
    """CREATE TABLE answers exactly {"results":[{}]} (zero fields omitted)."""
    setup_table(single.http)
    assert single.http.post("/db/execute", ["DROP TABLE foo"]).body == b'{"results":[{}]}'


def test_write_and_read_exact_text(single):
    """Writes render last_insert_id/rows_affected; reads columns/types/values; compact."""
    h = single.http
    setup_table(h)
    r = h.post("/db/execute", [["INSERT INTO foo(name, score) VALUES(?, ?)", "fiona", 2.5]])
    assert r.body == b'{"results":[{"last_insert_id":1,"rows_affected":1}]}'
    assert r.headers["content-type"].startswith("application/json")
    r = h.get("/db/query?q=SELECT+id,name,score+FROM+foo")
    assert r.body == (b'{"results":[{"columns":["id","name","score"],'
                      b'"types":["integer","text","real"],"values":[[1,"fiona",2.5]]}]}')


def test_empty_read_has_no_values(single):
    """A read with no rows has columns and types but no values key."""
    h = single.http
    setup_table(h)
    res = h.get("/db/query?q=SELECT+id+FROM+foo").json()["results"][0]
    assert "values" not in res and res["columns"] == ["id"]


def test_sql_error_is_200_with_error_field(single):
    """A failing statement is HTTP 200 with an error in its result; others still run."""
    h = single.http
    setup_table(h)
    r = h.post("/db/execute", ["INSERT INTO nope VALUES(1)", "INSERT INTO foo(name) VALUES('x')"])
    assert r.status == 200
    assert r.body == (b'{"results":[{"error":"no such table: nope"},'
                      b'{"last_insert_id":1,"rows_affected":1}]}')
    r = h.get("/db/query?q=SELECT+*+FROM+nope")
    assert r.status == 200 and r.body == b'{"results":[{"error":"no such table: nope"}]}'


def test_transaction_flag_reaches_store(single):
    """?transaction runs the request as one transaction: a failure rolls back the rest."""
    h = single.http
    setup_table(h)
    r = h.post("/db/execute?transaction", ["INSERT INTO foo(name) VALUES('a')",
                                           "INSERT INTO nope VALUES(1)"])
    assert r.status == 200 and "error" in r.json()["results"][1]
    assert "values" not in h.get("/db/query?q=SELECT+*+FROM+foo").json()["results"][0]
    assert single.store.calls[-2][1]["transaction"] is True


def test_blobs_base64_and_blob_array(single):
    """BLOBs render base64 by default, as byte arrays with blob_array; x'..' params work."""
    h = single.http
    setup_table(h)
    h.post("/db/execute", [["INSERT INTO foo(data) VALUES(?)", [0, 1, 255]],
                           ["INSERT INTO foo(data) VALUES(?)", "x'cafe'"]])
    vals = h.get("/db/query?q=SELECT+data+FROM+foo+ORDER+BY+id").json()["results"][0]["values"]
    assert vals == [[base64.b64encode(b"\x00\x01\xff").decode()], [base64.b64encode(b"\xca\xfe").decode()]]
    r = h.get("/db/query?q=SELECT+data+FROM+foo+ORDER+BY+id&blob_array")
    assert r.json()["results"][0]["values"] == [[[0, 1, 255]], [[202, 254]]]


def test_pretty_is_four_space_indent(single):
    """pretty indents like Go's MarshalIndent with four spaces."""
    h = single.http
    setup_table(h)
    r = h.post("/db/execute?pretty", ["INSERT INTO foo(name) VALUES('a')"])
    assert r.text == ('{\n    "results": [\n        {\n            "last_insert_id": 1,\n'
                      '            "rows_affected": 1\n        }\n    ]\n}')


def test_timings(single):
    """timings adds time to every result and at the top level, after results."""
    h = single.http
    setup_table(h)
    r = h.post("/db/execute?timings", ["INSERT INTO foo(name) VALUES('a')"])
    doc = json.loads(r.body)
    assert list(doc) == ["results", "time"] and doc["time"] > 0
    assert list(doc["results"][0]) == ["last_insert_id", "rows_affected", "time"]
    assert "time" not in h.post("/db/execute", ["INSERT INTO foo(name) VALUES('b')"]).json()


def test_associative(single):
    """associative: rows as objects plus a types map; writes carry rows: null; an empty
    read has rows: []; a failed read on /db/query has rows: [] too."""
    h = single.http
    setup_table(h)
    r = h.post("/db/execute?associative", ["INSERT INTO foo(name, score) VALUES('a', 1.5)"])
    assert r.body == b'{"results":[{"last_insert_id":1,"rows_affected":1,"rows":null}]}'
    r = h.get("/db/query?associative&q=SELECT+id,name+FROM+foo")
    assert r.body == (b'{"results":[{"types":{"id":"integer","name":"text"},'
                      b'"rows":[{"id":1,"name":"a"}]}]}')
    r = h.get("/db/query?associative&q=SELECT+id+FROM+foo+WHERE+id>5")
    assert r.json()["results"][0]["rows"] == []
    r = h.get("/db/query?associative&q=SELECT+*+FROM+nope")
    assert r.body == b'{"results":[{"rows":[],"error":"no such table: nope"}]}'


def test_raft_index(single):
    """raft_index appears at the top level only when asked for."""
    h = single.http
    setup_table(h)
    r = h.post("/db/execute?raft_index", ["INSERT INTO foo(name) VALUES('a')"]).json()
    assert r["raft_index"] == single.store.cluster.raft_index > 0
    assert "raft_index" not in h.post("/db/execute", ["INSERT INTO foo(name) VALUES('a')"]).json()


def test_request_endpoint_mixes_reads_and_writes(single):
    """/db/request returns write and read results in statement order."""
    h = single.http
    setup_table(h)
    r = h.post("/db/request", ["INSERT INTO foo(name) VALUES('a')", "SELECT name FROM foo"])
    assert r.body == (b'{"results":[{"last_insert_id":1,"rows_affected":1},'
                      b'{"columns":["name"],"types":["text"],"values":[["a"]]}]}')


def test_query_forms(single):
    """GET ?q=, POST JSON array, and text/plain bodies are all accepted by /db/query."""
    h = single.http
    setup_table(h)
    h.post("/db/execute", ["INSERT INTO foo(name) VALUES('a')"])
    want = h.get("/db/query?q=SELECT+name+FROM+foo").body
    assert h.post("/db/query", [["SELECT name FROM foo WHERE id = ?", 1]]).body == want
    assert h.post("/db/query", "SELECT name FROM foo",
                  headers={"Content-Type": "text/plain"}).body == want
    r = h.post("/db/execute", "INSERT INTO foo(name) VALUES('p')",
               headers={"Content-Type": "text/plain"})
    assert r.json() == {"results": [{"last_insert_id": 2, "rows_affected": 1}]}


def test_query_flags_reach_store(single):
    """level, freshness, freshness_strict, db_timeout and timeout reach the store typed."""
    h = single.http
    h.get("/db/query?q=SELECT+1&level=none&freshness=1m&freshness_strict&db_timeout=2s"
          "&timeout=3s")
    name, kw = single.store.calls[-1]
    assert name == "query"
    assert kw == {"level": "none", "freshness": 60.0, "freshness_strict": True,
                  "db_timeout": 2.0, "timeout": 3.0}
    h.get("/db/query?q=SELECT+1&level=linearizable&linearizable_timeout=250ms")
    assert single.store.calls[-1][1]["timeout"] == 0.25
    assert h.get("/db/query?q=SELECT+1&linearizable_timeout=x").status == 400
    h.get("/db/query?q=SELECT+1&level=auto")
    assert single.store.calls[-1][1]["level"] == "weak"  # a voter reads at weak


def test_stale_read_is_inline_error(single):
    """freshness_strict on a stale node answers as rqlite: 200, empty results, error."""
    single.store.stale = True
    r = single.http.get("/db/query?q=SELECT+1&level=none&freshness=1s&freshness_strict")
    assert r.status == 200 and r.body == b'{"results":[],"error":"stale read"}'


def test_queued_writes(single):
    """queue answers at once with a sequence number; wait returns once written."""
    h = single.http
    setup_table(h)
    r1 = h.post("/db/execute?queue", ["INSERT INTO foo(name) VALUES('q1')"]).json()
    r2 = h.post("/db/execute?queue&wait", ["INSERT INTO foo(name) VALUES('q2')"]).json()
    assert r1["results"] == [] and r2["results"] == []
    assert r2["sequence_number"] > r1["sequence_number"] > 0
    vals = h.get("/db/query?q=SELECT+name+FROM+foo+ORDER+BY+id").json()["results"][0]["values"]
    assert vals == [["q1"], ["q2"]]


@pytest.mark.parametrize("tx", [False, True])
def test_queued_batch_in_one_transaction_with_write_queue_tx(serve, tx):
    """Invariant: with -write-queue-tx (queue_tx) a queued batch is all-or-nothing: a
    failing statement leaves none of the batch written; without it the other statements of
    the batch are written."""
    from raftsqlite.http.backend import HTTPConfig
    from tests.api.fakes import Cluster, FakeNode, FakeStore
    cl = Cluster()
    store = FakeStore(cl, "node1")
    cl.leader_id = "node1"
    s = serve(FakeNode(store), HTTPConfig(queue_tx=tx, queue_interval=30))
    h = s.http
    assert h.post("/db/execute", ["CREATE TABLE q (x INTEGER PRIMARY KEY)"]).status == 200
    h.post("/db/execute?queue", ["INSERT INTO q VALUES (1)"])
    h.post("/db/execute?queue&wait", ["INSERT INTO q VALUES (1)"])   # same batch; fails
    vals = h.get("/db/query?q=SELECT+x+FROM+q").json()["results"][0].get("values", [])
    assert vals == ([] if tx else [[1]])


def test_queue_wait_timeout_is_408(single):
    """?queue&wait that outlives its timeout answers 408 (rqlite's status) in our shape."""
    single.store.delay = 1.5
    r = single.http.post("/db/execute?queue&wait&timeout=200ms", ["SELECT 1"])
    assert r.status == 408 and r.json() == {"error": "queue wait timeout",
                                            "code": "queue_wait_timeout"}


def test_odd_values_render_as_valid_json(single):
    """Infinite REALs render as null (plain or pretty); lone surrogates never break
    rendering."""
    h = single.http
    for flags in ("", "&pretty"):
        r = h.get("/db/query?q=SELECT+1e999,+-1e999" + flags)
        assert r.status == 200 and r.json()["results"][0]["values"] == [[None, None]]
    # A lone surrogate cannot arrive in a JSON body (it is refused, clearly) ...
    r = h.post("/db/query", '[["SELECT ?", "a\\ud800b"]]')
    assert r.status == 400 and "surrogate" in r.json()["error"]
    # ... but if a value holds one, rendering still produces valid JSON.
    from raftsqlite.http.wire import dumps
    assert json.loads(dumps({"v": "a\ud800b"})) == {"v": "a\ud800b"}
    assert json.loads(dumps({"v": "a\ud800b"}, pretty=True)) == {"v": "a\ud800b"}
