"""The exposition writer (raftsqlite/metrics.py), its histogram, and the strict parser
the other metrics tests rely on (tests/promtext.py)."""
import math
import random

import pytest

from raftsqlite.metrics import (CONTENT_TYPE, Exposition, Histogram, format_value,
                                process_stats, write_process)
from tests.promtext import parse


def test_label_values_and_help_are_escaped_and_round_trip():
    """Backslash, double quote and newline in a label value (and backslash/newline in
    HELP) are escaped as the format requires; a parser gets the original text back."""
    nasty = 'a\\b"c\nd'
    exp = Exposition()
    exp.gauge("x_gauge", "help with \\ and\nnewline", samples=[({"peer": nasty}, 1)])
    text = exp.text()
    assert '{peer="a\\\\b\\"c\\nd"}' in text
    assert "# HELP x_gauge help with \\\\ and\\nnewline\n" in text
    fams = parse(text)
    assert fams["x_gauge"].value(peer=nasty) == 1
    assert fams["x_gauge"].help == "help with \\ and\nnewline"


def test_histogram_buckets_are_cumulative_and_end_in_inf():
    """Buckets are written cumulative, in bound order, ending in le="+Inf" equal to
    _count; _sum is the sum of the observations; a value equal to a bound falls in that
    bound's bucket (le is inclusive); one above every bound only in +Inf."""
    h = Histogram((0.1, 1.0, 10.0))
    for v in (0.05, 0.1, 0.5, 1.0, 5.0, 50.0, 0.0):
        h.observe(v)
    exp = Exposition()
    exp.histogram("lat_seconds", "latency", samples=[({"kind": "write"}, h.snapshot())])
    text = exp.text()
    lines = [ln for ln in text.splitlines() if ln.startswith("lat_seconds_bucket")]
    assert lines == ['lat_seconds_bucket{kind="write",le="0.1"} 3',
                     'lat_seconds_bucket{kind="write",le="1.0"} 5',
                     'lat_seconds_bucket{kind="write",le="10.0"} 6',
                     'lat_seconds_bucket{kind="write",le="+Inf"} 7']
    assert 'lat_seconds_count{kind="write"} 7\n' in text
    fams = parse(text)
    (s,) = [v for n, lab, v in fams["lat_seconds"].samples if n == "lat_seconds_sum"]
    assert s == pytest.approx(0.05 + 0.1 + 0.5 + 1.0 + 5.0 + 50.0)


def test_histogram_random_observations_match_a_direct_count():
    """For random values, each cumulative bucket equals the number of observations <=
    its bound (computed directly), and quantile() returns the bound holding the rank."""
    rng = random.Random(7)
    bounds = (0.001, 0.01, 0.1, 1.0)
    h = Histogram(bounds)
    vals = [rng.expovariate(20) for _ in range(2000)]
    for v in vals:
        h.observe(v)
    exp = Exposition()
    exp.histogram("h_seconds", "h", h.snapshot())
    fam = parse(exp.text())["h_seconds"]
    got = {lab["le"]: v for n, lab, v in fam.samples if n == "h_seconds_bucket"}
    for b in bounds:
        assert got[repr(b)] == sum(1 for v in vals if v <= b)
    assert got["+Inf"] == len(vals)
    med = sorted(vals)[len(vals) // 2]
    q = h.quantile(0.5)
    assert q == min(b for b in bounds + (math.inf,) if b >= med)


def test_histogram_rejects_bad_bounds():
    """Bounds must be finite and strictly increasing."""
    for bad in ((), (1.0, 1.0), (2.0, 1.0), (1.0, math.inf), (math.nan,)):
        with pytest.raises(ValueError):
            Histogram(bad)


def test_writer_refuses_what_would_be_invalid_exposition():
    """A counter not named *_total, a name used twice (also through a histogram's
    suffixes), a bad metric or label name, and 'le' on a histogram's own labels are
    bugs: the writer raises instead of producing text a scraper rejects."""
    exp = Exposition()
    with pytest.raises(ValueError):
        exp.counter("requests", "x", 1)
    exp.gauge("g", "x", 1)
    with pytest.raises(ValueError):
        exp.gauge("g", "x", 2)
    exp.histogram("h", "x", Histogram((1.0,)).snapshot())
    with pytest.raises(ValueError):
        exp.gauge("h_count", "x", 1)
    with pytest.raises(ValueError):
        exp.gauge("1bad", "x", 1)
    with pytest.raises(ValueError):
        exp.gauge("ok_name", "x", samples=[({"bad-label": "v"}, 1)])
    with pytest.raises(ValueError):
        exp.gauge("ok_name2", "x", samples=[({"__reserved": "v"}, 1)])
    with pytest.raises(ValueError):
        exp.histogram("h2", "x", samples=[({"le": "1"}, Histogram((1.0,)).snapshot())])


def test_values_are_formatted_as_the_format_expects():
    """Ints as ints, integral floats without a fraction, NaN/+Inf/-Inf spelled as the
    format spells them, booleans as 1/0; None leaves the sample out."""
    assert format_value(3) == "3"
    assert format_value(2.0) == "2"
    assert format_value(0.25) == "0.25"
    assert format_value(1e-7) == "1e-07"
    assert format_value(math.nan) == "NaN"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(True) == "1"
    exp = Exposition()
    exp.gauge("maybe", "x", None)
    exp.gauge("special", "x", samples=[({"k": "nan"}, math.nan), ({"k": "inf"}, math.inf)])
    fams = parse(exp.text())
    assert fams["maybe"].samples == []
    assert math.isnan(fams["special"].value(k="nan"))
    assert fams["special"].value(k="inf") == math.inf


def test_process_metrics_have_the_standard_names_and_sane_values():
    """process_* as the Go/Python clients name them; CPU and memory positive, the start
    time in the past, open fds counted."""
    p = process_stats()
    assert p["cpu_seconds_total"] > 0
    assert p["resident_memory_bytes"] > 1 << 20
    assert 0 < p["start_time_seconds"] <= __import__("time").time()
    assert p["open_fds"] >= 3
    exp = Exposition()
    write_process(exp)
    fams = parse(exp.text())
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_start_time_seconds", "process_open_fds"):
        assert fams[name].samples, name
    assert fams["process_cpu_seconds_total"].type == "counter"
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize("bad, why", [
    ("x 1", "newline"),
    ("x 1\n", "no TYPE"),
    ("# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n", "duplicate"),
    ("# TYPE x gauge\n# TYPE y gauge\nx 1\n", "outside its block"),
    ("# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\n# HELP x again\n", "resumed"),
    ("# TYPE c counter\nc 1\n", "_total"),
    ("# TYPE c_total counter\nc_total -1\n", "negative counter"),
    ("# TYPE x gauge\nx{a=\"\\t\"} 1\n", "bad escape"),
    ("# TYPE x gauge\nx{a=\"1} 1\n", "unterminated"),
    ("# TYPE x gauge\nx one\n", "bad value"),
    ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n"
     "h_count 1\n", "not cumulative"),
    ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "no +Inf"),
    ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", "count"),
    ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n", "no sum"),
])
def test_the_strict_parser_rejects_invalid_text(bad, why):
    """The parser the node-level tests use must itself be able to fail: each of these
    violates the format (or our stricter rules) and is refused."""
    with pytest.raises(ValueError):
        parse(bad)


def test_writer_output_agrees_with_prometheus_client_parser():
    """When prometheus_client is installed, its own parser reads our exposition to the
    same families and values (a second opinion on the format)."""
    parser = pytest.importorskip("prometheus_client.parser")
    h = Histogram((0.5, 1.0))
    h.observe(0.7)
    exp = Exposition()
    exp.counter("req_total", "requests", samples=[({"route": '/t/"x"'}, 3)])
    exp.histogram("lat_seconds", "lat", h.snapshot())
    fams = {f.name: f for f in parser.text_string_to_metric_families(exp.text())}
    # the client strips _total from a counter's family name
    (s,) = fams["req"].samples
    assert s.labels == {"route": '/t/"x"'} and s.value == 3
    buckets = [x for x in fams["lat_seconds"].samples if x.name == "lat_seconds_bucket"]
    assert [x.value for x in buckets] == [0, 1, 1]


def _raft_section(raft_stats):
    from raftsqlite.http.metrics import _raft
    exp = Exposition()
    _raft(exp, object(), {"raft": raft_stats}, "g1")
    return parse(exp.text())


def test_a_fail_stopped_leader_is_not_reported_as_leader():
    """A member whose Raft driver fail-stopped may still have a core that says leader;
    /metrics reports it as state shutdown, is_leader 0 and failed 1, so a per-group
    "no leader" alert fires; a healthy leader reports is_leader 1."""
    base = {"role": "leader", "leader": "n1", "term": 3, "node_id": "n1",
            "core": {"last_index": 10, "voters": ["n1", "n2", "n3"], "learners": []},
            "progress": {"n1": {"match": 10}, "n2": {"match": 7}, "n3": {"match": 10}}}
    ok = _raft_section(base)
    assert ok["raftsqlite_raft_is_leader"].value(group="g1") == 1
    assert ok["raftsqlite_raft_failed"].value(group="g1") == 0
    assert ok["raftsqlite_raft_replication_lag_entries"].values() == {
        frozenset({"group": "g1", "peer": "n2"}.items()): 3,
        frozenset({"group": "g1", "peer": "n3"}.items()): 0}
    bad = _raft_section(dict(base, failed="apply failed at index 9: OSError()", leader=None))
    assert bad["raftsqlite_raft_is_leader"].value(group="g1") == 0
    assert bad["raftsqlite_raft_failed"].value(group="g1") == 1
    assert bad["raftsqlite_raft_state"].value(group="g1", state="shutdown") == 1
    assert bad["raftsqlite_raft_state"].value(group="g1", state="leader") == 0
    assert bad["raftsqlite_raft_has_leader"].value(group="g1") == 0
    assert not bad["raftsqlite_raft_replication_lag_entries"].samples
