"""raftsqlite.raft.trace: off by default, and with RAFTSQLITE_TRACE set every stamp
reaches the member's file (bench/lat_trace.py reads them)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code, env_extra):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("RAFTSQLITE_TRACE", None)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)


def test_trace_off_by_default():
    """Without the variable nothing is traced (ON is False)."""
    r = _run("from raftsqlite.raft import trace; print(trace.ON)", {})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_trace_writes_every_stamp_in_order(tmp_path):
    """Stamps beyond one flush batch, from two threads, are all written at exit, each
    with a non-decreasing clock within its thread."""
    code = (
        "import threading\n"
        "from raftsqlite.raft import trace\n"
        "assert trace.ON\n"
        "def w(tag):\n"
        "    for i in range(5000):\n"
        "        trace.mark(f'{tag}{i}')\n"
        "t = threading.Thread(target=w, args=('b',)); t.start(); w('a'); t.join()\n")
    r = _run(code, {"RAFTSQLITE_TRACE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    files = list(tmp_path.glob("*.trace"))
    assert len(files) == 1
    # interval events (``ev:``, e.g. the garbage collections of this process) come too
    lines = [ln.split() for ln in files[0].read_text().splitlines() if " ev:" not in ln]
    tags = [t for _, t in lines]
    assert sorted(tags) == sorted([f"a{i}" for i in range(5000)] + [f"b{i}" for i in range(5000)])
    for prefix in "ab":
        ts = [int(t) for t, tag in lines if tag[0] == prefix]
        order = [int(tag[1:]) for _, tag in lines if tag[0] == prefix]
        assert order == sorted(order) and ts == sorted(ts)
