"""bench/tail_trace.py: member events are parsed and matched to the requests they overlap."""
import gc

from bench.tail_trace import analyse, load_events, overlaps
from raftsqlite.raft import trace

MS = 1_000_000


def test_events_parse_from_trace_lines(tmp_path):
    """Invariant: an ``ev:<kind>[+flags][:detail]:<t0>`` line stamped at t1 becomes one
    interval (kind, detail, t0, t1); plain stage stamps are not events."""
    p = tmp_path / "1.trace"
    p.write_text("100 h_in\n"
                 f"{50 * MS} ev:logw+seg:106015:{10 * MS}\n"
                 f"{30 * MS} ev:ckpt_bg:1000:1000:{20 * MS}\n"
                 f"{9 * MS} ev:spare_fill:{1 * MS}\n")
    assert load_events(str(p)) == [("spare_fill", "", 1 * MS, 9 * MS),
                                   ("logw", "+seg:106015", 10 * MS, 50 * MS),
                                   ("ckpt_bg", "1000:1000", 20 * MS, 30 * MS)]


def test_only_overlapping_events_count_and_the_tail_is_told_apart():
    """Invariant: an event is attributed to a request only if it overlaps it by at least
    1 ms, and the per-kind table tells tail requests (>= p99) from median ones."""
    evs = {1: [("logw", "", 300 * MS, 700 * MS), ("ckpt", "", 1000 * MS, 1100 * MS)]}
    reqs = [(i * 10 * MS, i * 10 * MS + 5 * MS + i * 1000, 1, 200, False) for i in range(99)]
    reqs.append((1000 * MS, 1150 * MS, 2, 200, False))          # the slow one
    assert [o[1] for o in overlaps(reqs[-1], evs)] == ["ckpt"]
    assert overlaps((1100 * MS - 500_000, 1200 * MS, 0, 200, False), evs) == []
    p, table, slow = analyse(reqs, evs, top=1)
    assert slow[0] is reqs[-1]
    assert table["ckpt"]["tail_share"] == 0.5 and table["ckpt"]["median_share"] == 0.0
    assert table["logw"]["tail_share"] == 0.0 and table["logw"]["median_share"] > 0


def test_gc_callback_stamps_a_span(monkeypatch):
    """Invariant: with tracing on, each garbage collection becomes one ``gc<gen>`` event."""
    got = []
    monkeypatch.setattr(trace, "mark", got.append)
    trace._gc_cb("start", {"generation": 2})
    trace._gc_cb("stop", {"generation": 2, "collected": 7})
    assert len(got) == 1 and got[0].startswith("ev:gc2:7:")
    gc.collect()   # the real callback is only installed when RAFTSQLITE_TRACE is set
