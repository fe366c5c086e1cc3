"""SlowDiskWatch (raft/diskwatch.py): when a leader's own log writes hold its group back."""
from raftsqlite.raft.diskwatch import SlowDiskWatch


def feed(w, t0, n, write_s, drag_s, step=0.1):
    out = []
    for k in range(n):
        out.append(w.observe(t0 + k * step, write_s, drag_s))
    return out


def test_hands_off_only_when_writes_are_slow_and_followers_were_faster():
    """Invariant: a hand-off needs a full window of writes whose median is at least the
    threshold AND a median drag (followers committed first) of at least half of it."""
    w = SlowDiskWatch(0.05, window=8)
    assert feed(w, 0, 8, 0.2, 0.0) == [False] * 8          # all members slow alike
    w = SlowDiskWatch(0.05, window=8)
    assert feed(w, 0, 8, 0.01, 0.009) == [False] * 8       # fast disk, whatever the drag
    w = SlowDiskWatch(0.05, window=8)
    assert feed(w, 0, 8, 0.1, 0.06) == [False] * 7 + [True]
    assert w.handoffs == 1 and w.stats()["slow_disk_handoffs"] == 1


def test_median_ignores_a_few_outliers():
    """Three slow writes among eight are a hiccup, not a slow disk."""
    w = SlowDiskWatch(0.05, window=8)
    res = feed(w, 0, 5, 0.002, 0.0) + feed(w, 0.5, 3, 0.5, 0.45)
    assert not any(res)


def test_window_must_be_recent_and_cooldown_bounds_handoffs():
    """Observations spread over more than ``span`` do not count; after a hand-off no
    other one comes before ``cooldown`` has passed, however slow the disk stays."""
    w = SlowDiskWatch(0.05, window=4, span=1.0, cooldown=60)
    assert feed(w, 0, 4, 0.1, 0.1, step=0.5) == [False] * 4
    w = SlowDiskWatch(0.05, window=4, span=10.0, cooldown=60)
    assert feed(w, 0, 4, 0.1, 0.1) == [False] * 3 + [True]
    assert not any(feed(w, 1, 40, 0.1, 0.1))
    assert feed(w, 70, 4, 0.1, 0.1)[-1] is True and w.handoffs == 2


def test_begin_committed_end_measure_the_drag():
    """The drag is the time from the followers' commit of the write's last entry to the
    end of the leader's write; a commit below that index does not start it."""
    w = SlowDiskWatch(0.05, window=1)
    w.begin(10)
    w.committed(9, 1.0)
    w.committed(10, 1.02)
    w.committed(11, 1.05)          # the first commit at or past 10 counts
    assert w.watching == 10
    assert w.end(1.1, 0.1) is True and w.watching == 0
    w2 = SlowDiskWatch(0.05, window=1)
    w2.begin(10)
    assert w2.end(1.1, 0.1) is False      # never committed by the followers: no drag


def test_off_when_threshold_is_zero():
    w = SlowDiskWatch(0.0, window=1)
    assert not w.on and w.observe(0, 10.0, 10.0) is False
