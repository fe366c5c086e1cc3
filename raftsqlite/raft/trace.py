"""Per-stage timestamps of the write path, off unless ``RAFTSQLITE_TRACE`` names a directory.

At one client every write is one Raft round on its own, so its latency is the sum of the
hand-offs on its path (HTTP, store, Ready cycle, persist thread, transport, the followers'
turn, apply, response). To see which one costs what, the members stamp each stage with
``time.monotonic_ns()`` (one clock for every process on the machine) and
``bench/lat_trace.py`` merges the three members' files and cuts them into one window per
request. Off (the default) a stamp costs one global lookup and a branch at the call site:
``if trace.ON: trace.mark("tag")``.

Stamps go to an in-memory list (``list.append`` is atomic under the GIL, so the persist
thread stamps too) and are written to ``<dir>/<pid>.trace`` every few thousand stamps and
at exit, one ``<ns> <tag>`` per line. Bounded: at most ``_MAX`` stamps per process.
"""
import atexit
import os
import threading
from time import monotonic_ns

_DIR = os.environ.get("RAFTSQLITE_TRACE") or ""
ON = bool(_DIR)
_FLUSH_AT = 4096
_MAX = 2_000_000

_buf = []
_lock = threading.Lock()
_written = 0


def mark(tag):
    """Stamp ``tag`` now (callers test ``ON`` first)."""
    _buf.append((monotonic_ns(), tag))
    if len(_buf) >= _FLUSH_AT:
        flush()


def flush():
    global _written
    with _lock:
        # Copy, then delete what was copied: each is one C call, so a stamp appended by
        # another thread meanwhile stays for the next flush instead of being lost.
        n = len(_buf)
        b = _buf[:n]
        del _buf[:n]
        if not b or _written >= _MAX:
            return
        _written += len(b)
        try:
            with open(os.path.join(_DIR, f"{os.getpid()}.trace"), "a") as f:
                f.write("".join(f"{t} {tag}\n" for t, tag in b))
        except OSError:
            pass


if ON:
    os.makedirs(_DIR, exist_ok=True)
    atexit.register(flush)


def span(name, t0):
    """Stamp the end of an event that began at ``t0`` (``monotonic_ns``): one line
    ``<end> ev:<name>:<t0>`` that bench/tail_trace.py turns into an interval."""
    mark(f"ev:{name}:{t0}")


_tick_due = [0]


def tick(interval):
    """Called by every Raft tick: one that ran more than 3 ms late means the loop was
    blocked (or had no core) that long; stamped as ``loop_late``. One clock per process:
    a member process runs one node."""
    now = monotonic_ns()
    due = _tick_due[0]
    if due and now - due > 3_000_000:
        span("loop_late", due)
    _tick_due[0] = now + int(interval * 1e9)


def traced_apply(apply):
    """``apply`` (entries -> results) that stamps each call as ``apply:<n>:<bytes>``."""
    def run(chunk):
        t0 = monotonic_ns()
        try:
            return apply(chunk)
        finally:
            span(f"apply:{len(chunk)}:{sum(len(e.data) for e in chunk)}", t0)
    return run


_gc_t0 = [0]


def _gc_cb(phase, info):
    # Collections run on whichever thread allocated; the GIL is held throughout, so a
    # gen-2 pass stalls the loop, the apply thread and the persist thread's hand-back.
    if phase == "start":
        _gc_t0[0] = monotonic_ns()
    elif _gc_t0[0]:
        span(f"gc{info.get('generation', '?')}:{info.get('collected', 0)}", _gc_t0[0])
        _gc_t0[0] = 0


if ON:
    import gc
    gc.callbacks.append(_gc_cb)
