"""Prometheus text exposition (format 0.0.4), histograms cheap enough for hot paths, and
the standard ``process_*`` metrics. A leaf module: the Raft log and the state machine
import it for their histograms; ``raftsqlite/http/metrics.py`` builds ``GET /metrics``
from it and from the components' ``stats()``. See docs/design/metrics.md.

Written here rather than taken from ``prometheus_client``: the format is small, our
numbers already live in ``stats()`` dicts read at scrape time, and the client's metric
objects take a lock on every observation.
"""
from __future__ import annotations

import math
import os
import re
import sys
from bisect import bisect_left

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TYPES = ("counter", "gauge", "histogram", "untyped")

#: Upper bounds (seconds) for disk writes: 50 µs (page cache, no fsync) to 10 s (a stall)
DISK_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: Upper bounds (seconds) for request latency and state-machine applies
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative-at-scrape histogram: ``observe`` is one bisect, one list increment and
    one float add, no lock. Safe with one observing thread at a time (the driver runs
    applies one after another, and log writes one after another, on whichever thread);
    a scrape on another thread reads a copy of the counts, so its buckets are always
    monotonic and ``+Inf`` always equals ``_count``; ``_sum`` may lag by the
    observation in flight."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds=LATENCY_BUCKETS):
        bounds = tuple(float(b) for b in bounds)
        if not bounds or any(math.isnan(b) or math.isinf(b) for b in bounds) \
                or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError("histogram bounds must be finite and strictly increasing")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value):
        # bisect_left: the first bound >= value, i.e. Prometheus's ``le`` (inclusive)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self):
        """-> (bounds, per-bucket counts (not cumulative), sum)."""
        return self.bounds, list(self.counts), self.sum

    def count(self):
        return sum(self.counts)

    def quantile(self, q):
        """Upper bound of the bucket holding quantile ``q`` (/debug/vars gives these to
        tools that cannot do bucket arithmetic); None when empty, ``inf`` in +Inf."""
        counts = list(self.counts)
        total = sum(counts)
        if not total:
            return None
        rank, seen = q * total, 0
        for i, c in enumerate(counts):
            seen += c
            if seen >= rank and c:
                return self.bounds[i] if i < len(self.bounds) else math.inf
        return math.inf


# ---- the text format ------------------------------------------------------------------

def escape_label_value(v):
    return str(v).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(v):
    return str(v).replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v):
    """A sample value as the format writes it (Go's float syntax, ``+Inf``, ``NaN``)."""
    if v is True or v is False:
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _labels(labels):
    if not labels:
        return ""
    parts = []
    for k, v in labels.items():
        if not _LABEL.match(k) or k.startswith("__"):
            raise ValueError(f"bad label name {k!r}")
        parts.append(f'{k}="{escape_label_value(v)}"')
    return "{" + ",".join(parts) + "}"


class Exposition:
    """Builds one exposition. Each family is written whole (HELP, TYPE, then every
    sample), so samples of a family are always contiguous; a name used twice, a counter
    not ending in ``_total`` or an invalid name raises ``ValueError`` (a bug, not data).
    Samples whose value is None are left out (a number a component does not have)."""

    def __init__(self):
        self._out = []
        self._names = set()

    def _family(self, name, typ, help_):
        if not _NAME.match(name):
            raise ValueError(f"bad metric name {name!r}")
        if typ not in _TYPES:
            raise ValueError(f"bad metric type {typ!r}")
        if typ == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        reserved = (name + "_bucket", name + "_sum", name + "_count") \
            if typ == "histogram" else ()
        for n in (name,) + reserved:
            if n in self._names:
                raise ValueError(f"metric {n!r} written twice")
            self._names.add(n)
        self._out.append(f"# HELP {name} {escape_help(help_)}\n# TYPE {name} {typ}\n")

    def _samples(self, name, samples):
        out = self._out
        for labels, value in samples:
            if value is None:
                continue
            out.append(f"{name}{_labels(labels)} {format_value(value)}\n")

    def counter(self, name, help_, value=None, *, samples=None):
        """``value`` for an unlabelled counter, or ``samples``: [(labels dict, value)]."""
        self._family(name, "counter", help_)
        self._samples(name, samples if samples is not None else [(None, value)])

    def gauge(self, name, help_, value=None, *, samples=None):
        self._family(name, "gauge", help_)
        self._samples(name, samples if samples is not None else [(None, value)])

    def histogram(self, name, help_, snapshot=None, *, samples=None):
        """``snapshot``: ``Histogram.snapshot()`` (bounds, counts, sum); or ``samples``:
        [(labels dict, snapshot)]. Buckets are written cumulative, ending in ``+Inf``,
        whose count is ``_count``."""
        self._family(name, "histogram", help_)
        out = self._out
        for labels, snap in (samples if samples is not None else [(None, snapshot)]):
            if snap is None:
                continue
            bounds, counts, total = snap
            if len(counts) != len(bounds) + 1:
                raise ValueError("histogram counts must have one slot per bound plus +Inf")
            base = dict(labels or {})
            if "le" in base:
                raise ValueError("'le' is reserved for histogram buckets")
            cum = 0
            for b, c in zip(bounds + (math.inf,), counts):
                cum += c
                le = "+Inf" if math.isinf(b) else repr(float(b))
                out.append(f"{name}_bucket{_labels({**base, 'le': le})} {cum}\n")
            lab = _labels(base)
            out.append(f"{name}_sum{lab} {format_value(total)}\n")
            out.append(f"{name}_count{lab} {cum}\n")

    def text(self):
        return "".join(self._out)


# ---- process metrics (the names the Go and Python clients use) --------------------------

def _boot_time():
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


_BTIME = None


def process_stats(start_fallback=None):
    """-> dict of the standard process numbers this platform can give (Linux: /proc)."""
    global _BTIME
    out = {}
    t = os.times()
    out["cpu_seconds_total"] = t.user + t.system
    try:
        with open("/proc/self/stat", "rb") as f:
            raw = f.read()
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = raw[raw.rindex(b")") + 2:].split()
        ticks = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        out["virtual_memory_bytes"] = int(fields[20])
        out["resident_memory_bytes"] = int(fields[21]) * page
        if _BTIME is None:
            _BTIME = _boot_time()
        if _BTIME is not None:
            out["start_time_seconds"] = _BTIME + int(fields[19]) / ticks
    except (OSError, ValueError, IndexError):
        pass
    if "start_time_seconds" not in out and start_fallback is not None:
        out["start_time_seconds"] = start_fallback
    try:
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            out["max_fds"] = soft
    except (ImportError, OSError, ValueError):
        pass
    try:
        out["threads"] = len(os.listdir("/proc/self/task"))
    except OSError:
        pass
    return out


def write_process(exp, start_fallback=None):
    p = process_stats(start_fallback)
    exp.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                p.get("cpu_seconds_total"))
    exp.gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
              p.get("resident_memory_bytes"))
    exp.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
              p.get("virtual_memory_bytes"))
    exp.gauge("process_start_time_seconds",
              "Start time of the process since unix epoch in seconds.",
              p.get("start_time_seconds"))
    exp.gauge("process_open_fds", "Number of open file descriptors.", p.get("open_fds"))
    exp.gauge("process_max_fds", "Maximum number of open file descriptors.", p.get("max_fds"))
    exp.gauge("process_threads", "Number of OS threads in the process.", p.get("threads"))
    v = sys.version_info
    exp.gauge("python_info", "Python platform information.", samples=[(
        {"implementation": sys.implementation.name, "major": v.major, "minor": v.minor,
         "patchlevel": v.micro, "version": f"{v.major}.{v.minor}.{v.micro}"}, 1)])
    return p


__all__ = ["CONTENT_TYPE", "DISK_BUCKETS", "LATENCY_BUCKETS", "Exposition", "Histogram",
           "escape_help", "escape_label_value", "format_value", "process_stats",
           "write_process"]
