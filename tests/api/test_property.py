"""Property: no body or query string, however odd, produces a 500 or stops the node."""
import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftsqlite.http.params import PRESENCE_FLAGS

PATHS = ["/db/execute", "/db/query", "/db/request", "/execute", "/query", "/join", "/remove",
         "/leader", "/nodes", "/status", "/readyz", "/snapshot", "/db/load", "/db/backup",
         "/nope"]
METHODS = ["GET", "POST", "DELETE", "PUT"]
KEYS = list(PRESENCE_FLAGS) + ["level", "freshness", "timeout", "db_timeout", "q", "ver",
                               "fmt", "tables", "key", "retries", "auto_route", "shard_id"]
VALUES = st.one_of(st.sampled_from(["", "none", "weak", "strong", "linearizable", "auto",
                                    "1s", "0", "-1s", "2", "SELECT 1", "sql", "x", "1m",
                                    "SELECT * FROM t", "store.raft", "1e9999h"]),
                   st.text(max_size=20))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
    | st.sampled_from(["SELECT 1", "CREATE TABLE IF NOT EXISTS t (x)", "INSERT INTO t VALUES(?)",
                       "x'00ff'", "SELECT :a", "nonsense"]),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["query", "args", "id", "node_id", "raft_addr", "a",
                                       "voter"]) | st.text(max_size=5), children, max_size=4),
    max_leaves=20)

bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.lists(st.one_of(st.text(max_size=20), st.lists(json_values, max_size=4)),
             max_size=6).map(lambda v: json.dumps(v).encode()),
)


def query_strings():
    pair = st.tuples(st.sampled_from(KEYS) | st.text(max_size=6),
                     st.one_of(st.none(), VALUES))
    return st.lists(pair, max_size=6).map(
        lambda ps: "&".join(quote(k) if v is None else f"{quote(k)}={quote(v)}" for k, v in ps))


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), path=st.sampled_from(PATHS), qs=query_strings(),
       body=bodies, ctype=st.sampled_from(["application/json", "text/plain", "",
                                           "application/octet-stream"]))
def test_random_requests_never_500(trio, method, path, qs, body, ctype):
    """Random methods, paths, flags and bodies: never a 5xx other than the documented
    503/504 of cluster state, never a broken node; the error shape is always JSON."""
    _, follower, _ = trio
    headers = {"Content-Type": ctype} if ctype else {}
    r = follower.http.req(method, path + ("?" + qs if qs else ""), body or None, headers)
    assert r.status != 500, (method, path, qs, body, r)
    assert r.status < 500 or r.status in (503, 504), r
    if r.status >= 400:
        doc = json.loads(r.body)
        assert set(doc) == {"error", "code"}, r
    assert follower.http.get("/readyz?noleader").status == 200
