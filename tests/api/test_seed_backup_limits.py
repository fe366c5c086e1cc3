"""The seed's endpoints, backup/load, limits, and the one error shape on every route."""
import gzip
import sqlite3

import pytest

from raftsqlite import errors
from raftsqlite.http.backend import HTTPConfig

from tests.api.fakes import Cluster, FakeNode, FakeStore


def test_seed_readme_examples(single):
    """The seed README's execute and query examples answer the seed's shapes."""
    h = single.http
    r = h.post("/execute", '{"query":"CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY,'
                           ' name TEXT, email TEXT)"}')
    assert r.status == 200 and r.json() == {"last_insert_id": 0, "rows_affected": 0}
    r = h.post("/execute", '{"query":"INSERT INTO users (name, email) VALUES (?, ?)", '
                           '"args":["John Doe", "john@example.com"]}')
    assert r.body == b'{"last_insert_id":1,"rows_affected":1}'
    r = h.get("/query?q=SELECT%20*%20FROM%20users")
    assert r.json() == [{"id": 1, "name": "John Doe", "email": "john@example.com"}]
    # auto_route arrives in the body's trailing form part (curl -d ... -d auto_route=true)
    r = h.post("/execute", '{"query":"INSERT INTO users (id, name, email) VALUES (?, ?, ?)", '
                           '"args":["456", "Jane Doe", "jane@example.com"]}&auto_route=true')
    assert r.status == 200, r
    r = h.get("/query?q=SELECT+name+FROM+users+WHERE+id=456&auto_route=true")
    assert r.json() == [{"name": "Jane Doe"}]


def test_seed_errors_are_4xx(single):
    """On the seed's API a failing statement is a 400 in the one error shape."""
    h = single.http
    r = h.post("/execute", {"query": "INSERT INTO nope VALUES(1)"})
    assert r.status == 400 and r.json() == {"error": "no such table: nope", "code": "sql_error"}
    r = h.get("/query?q=SELECT+*+FROM+nope")
    assert r.status == 400 and r.json()["code"] == "sql_error"
    assert h.get("/query").status == 400
    assert h.post("/execute", "{not json").status == 400


def test_backup_binary_sql_compressed_and_load(single, serve, tmp_path):
    """Backup a database as a SQLite file, as SQL, gzip-compressed; load the file and the
    dump into fresh nodes and find identical content."""
    h = single.http
    h.post("/db/execute", ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB)"])
    h.post("/db/execute", [["INSERT INTO t(v, b) VALUES(?, ?)", f"row{i}", [i % 256]]
                           for i in range(200)])
    want = h.get("/db/query?q=SELECT+*+FROM+t+ORDER+BY+id").body

    r = h.get("/db/backup")
    assert r.status == 200 and r.body.startswith(b"SQLite format 3\x00")
    assert r.headers["content-type"] == "application/octet-stream"
    f = tmp_path / "b.db"
    f.write_bytes(r.body)
    assert sqlite3.connect(f).execute("SELECT count(*) FROM t").fetchone() == (200,)
    dump = h.get("/db/backup?fmt=sql")
    assert dump.headers["content-type"] == "application/sql"
    assert b"CREATE TABLE t" in dump.body
    z = h.get("/db/backup?compress")
    assert z.headers["content-encoding"] == "gzip" and gzip.decompress(z.body) == r.body

    for body in (r.body, dump.body):
        cl = Cluster()
        st = FakeStore(cl, "fresh")
        cl.leader_id = "fresh"
        fresh = serve(FakeNode(st))
        res = fresh.http.post("/db/load", body, headers={"Content-Type": "application/octet-stream"})
        assert res.status == 200, res
        assert fresh.http.get("/db/query?q=SELECT+*+FROM+t+ORDER+BY+id").body == want


def test_backup_and_load_through_follower(trio):
    """A follower relays the leader's backup stream and forwards a load's file."""
    leader, follower, _ = trio
    follower.store.cluster.conn.execute("CREATE TABLE k (x)")
    r = follower.http.get("/db/backup")
    assert r.status == 200 and r.body.startswith(b"SQLite format 3")
    assert r.headers["x-rqlite-served-by"] == leader.addr
    r = follower.http.post("/db/load", "INSERT INTO k VALUES(42);")
    assert r.status == 200, r
    assert leader.store.calls[-1][0] == "load"


def test_boot_seeds_a_single_node_from_a_sqlite_file(single, serve, trio):
    """rqlite's POST /boot: a SQLite file seeds a single-node cluster (same content as a
    load); a SQL dump, or a cluster of several voters, is refused with a 400 that says
    to use /db/load, and nothing changes."""
    h = single.http
    h.post("/db/execute", ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
    h.post("/db/execute", [["INSERT INTO t(v) VALUES(?)", f"r{i}"] for i in range(50)])
    want = h.get("/db/query?q=SELECT+*+FROM+t+ORDER+BY+id").body
    blob = h.get("/db/backup").body
    cl = Cluster()
    st = FakeStore(cl, "fresh")
    cl.leader_id = "fresh"
    fresh = serve(FakeNode(st))
    r = fresh.http.post("/boot", h.get("/db/backup?fmt=sql").body)
    assert r.status == 400 and "/db/load" in r.json()["error"]
    assert "no such table" in fresh.http.get("/db/query?q=SELECT+*+FROM+t").body.decode()
    r = fresh.http.post("/boot", blob, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200, r
    assert fresh.http.get("/db/query?q=SELECT+*+FROM+t+ORDER+BY+id").body == want
    leader, _, _ = trio
    r = leader.http.post("/boot", blob, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 400 and "single-node" in r.json()["error"]
    assert not [c for c in leader.store.calls if c[0] == "load"]


def test_load_refuses_empty_and_gzip(single):
    """Empty or compressed load bodies get a clear 400."""
    assert single.http.post("/db/load", b"").status == 400
    r = single.http.post("/db/load", gzip.compress(b"SELECT 1;"))
    assert r.status == 400 and "compressed" in r.json()["error"]


def test_limits_answer_413(serve):
    """Body larger than max_body_bytes, or more statements than max_statements -> 413
    with a message naming the limit; the node keeps serving."""
    cl = Cluster()
    st = FakeStore(cl, "n")
    cl.leader_id = "n"
    s = serve(FakeNode(st), settings=HTTPConfig(max_body_bytes=4096, max_statements=3,
                                                max_load_bytes=8192))
    r = s.http.post("/db/execute", ["SELECT 1"] * 4)
    assert r.status == 413 and "limit is 3" in r.json()["error"]
    r = s.http.post("/db/execute", ["SELECT '" + "x" * 5000 + "'"])
    assert r.status == 413 and "4096" in r.json()["error"]
    r = s.http.post("/db/load", b"-- " + b"x" * 10000)
    assert r.status == 413
    assert s.http.post("/db/execute", ["SELECT 1"]).status == 200


@pytest.mark.parametrize("exc,status,code", [
    (errors.Timeout("slow"), 504, "timeout"),
    (errors.OutcomeUnknown("lost leadership"), 503, "outcome_unknown"),
    (errors.ProposalDropped("dropped"), 503, "proposal_dropped"),
    (errors.StatementRefused("ATTACH is refused"), 400, "statement_refused"),
    (errors.Moved("moved"), 503, "moved"),
    (errors.RaftSQLiteError("cannot snapshot now"), 503, "error"),
    (RuntimeError("bug"), 500, "internal"),
])
def test_store_errors_map_once(single, exc, status, code):
    """Store exceptions become the one error shape with the status from wire.STATUS."""
    single.store.fail_with = exc
    r = single.http.post("/db/execute", ["SELECT 1"])
    assert r.status == status and r.json()["code"] == code and r.json()["error"]


ROUTES = [("POST", "/db/execute"), ("GET", "/db/query"), ("POST", "/db/query"),
          ("POST", "/db/request"), ("POST", "/db/load"), ("POST", "/execute"),
          ("GET", "/query"), ("POST", "/join"), ("DELETE", "/remove"), ("POST", "/leader")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_answers_bad_input_in_one_shape(single, method, path):
    """Bad input on any route: a 4xx whose body is exactly {"error", "code"}."""
    r = single.http.req(method, path + "?level=bogus", b"{bad json",
                        headers={"Content-Type": "application/json"})
    assert 400 <= r.status < 500, (path, r)
    assert set(r.json()) == {"error", "code"}, r


def test_unknown_route_and_method_in_one_shape(single):
    """404 and 405 use the same shape."""
    assert set(single.http.get("/nope").json()) == {"error", "code"}
    r = single.http.req("PUT", "/db/query")
    assert r.status == 405 and set(r.json()) == {"error", "code"}


def test_stale_spool_files_removed_at_start(serve, tmp_path):
    """Spool files a killed node left behind are removed when the app starts; other files
    in the directory are not touched."""
    (tmp_path / ".load-abc").write_bytes(b"x")
    (tmp_path / ".backup-def").write_bytes(b"x")
    (tmp_path / "db.sqlite").write_bytes(b"keep")
    cl = Cluster()
    st = FakeStore(cl, "n")
    cl.leader_id = "n"
    serve(FakeNode(st), settings=HTTPConfig(spool_dir=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite"]


def test_large_load_is_streamed_not_buffered(single):
    """A 150 MB /db/load body goes to disk in chunks: the server's memory high-water mark
    grows by far less than the body, and the store sees the whole file."""
    import http.client
    import resource

    seen = {}

    async def load(path, *, fmt="sqlite"):
        import os
        seen["size"], seen["fmt"] = os.path.getsize(path), fmt
        return {"results": []}
    single.store.load = load
    chunk = b"INSERT INTO t VALUES(1);\n" * 40_000          # ~1 MB of SQL text
    n = 150
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    conn = http.client.HTTPConnection("127.0.0.1", single.port, timeout=60)
    conn.request("POST", "/db/load", body=(chunk for _ in range(n)), encode_chunked=True,
                 headers={"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    conn.close()
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert seen == {"size": len(chunk) * n, "fmt": "sql"}
    assert grew_mb < 50, f"memory high-water grew {grew_mb:.0f} MB for a {n} MB body"


def test_short_load_body_cut_inside_a_character_is_400(single):
    """Invariant: a /db/load body shorter than a SQLite header that ends inside a UTF-8
    character is refused as not SQL text (400), never a 500."""
    r = single.http.post("/db/load", b"\xc2", headers={"Content-Type": "application/json"})
    assert r.status == 400 and "UTF-8" in r.json()["error"], r
