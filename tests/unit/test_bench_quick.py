"""The load-testing suite in quick mode, so that benchmarks never rot.

Runs every discovered ``bench/*_bench.py`` and the suite's own benchmarks for a few seconds
each (no peers), and checks the pieces they stand on: the load driver (against a server
that validates every request), the runner's bookkeeping and failure detection, and the
report. Budget: well under 60 s on the 2-core machine.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from bench import driver, report, run, suites
from bench.cluster import REPO_ROOT

WORKLOADS = {
    "insert": driver.RqliteInsert(),
    "bulk": driver.RqliteBulk(rows=50),
    "query": driver.RqliteQuery("t", 100, "weak"),
    "mix": driver.Mix(driver.RqliteQuery("t", 100, "none"), driver.RqliteInsert(), 30),
    "etcd_put": driver.EtcdPut(),
    "etcd_get": driver.EtcdRange(100, True),
}
DRIVERS = (["wrk"] if driver.WRK else []) + ["asyncio"]


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen([sys.executable, "-m", "bench.testserver", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("drv", DRIVERS)
def test_driver_requests_are_well_formed(server, drv):
    """Every request each driver sends for every workload is accepted by a server that
    validates its shape (so the Lua and Python request builders cannot drift), the count
    bound holds, and the result is internally consistent."""
    url, pid = server
    wl = driver.Rotate(list(WORKLOADS.values()))
    res = driver.run_load(url, wl, 4, 1.0 if drv == "wrk" else 0.3, driver=drv,
                          max_requests=600, watch_pids=[pid])
    assert res.errors == {}, res.notes
    # enough requests that every builder was used by some connection
    assert len(WORKLOADS) * 4 <= res.requests <= 600
    assert 0 < res.p50_ms <= res.p99_ms <= res.p999_ms <= res.max_ms
    assert res.driver_cpu_s > 0 and res.server_cpu_frac is not None


@pytest.mark.parametrize("drv", DRIVERS)
def test_driver_rows_per_request(server, drv):
    """rows/s is requests/s times the rows each request carries."""
    url, _ = server
    wl = driver.RqliteBulk(rows=50)
    res = driver.run_load(url, wl, 2, 1.0 if drv == "wrk" else 0.2, driver=drv,
                          max_requests=200)
    assert res.errors == {} and res.rps > 0
    assert res.rows_per_s == pytest.approx(res.rps * 50, rel=0.01)


@pytest.mark.parametrize("drv", DRIVERS)
def test_driver_counts_failures(server, drv):
    """Non-2xx answers and 200s that carry an ``error`` are counted as errors by kind,
    never as throughput."""
    url, _ = server
    wl = driver.Rotate([driver.Static("GET", "/fail", check_body=True),
                        driver.Static("GET", "/apperr", check_body=True)])
    res = driver.run_load(url, wl, 2, 1.0 if drv == "wrk" else 0.2, driver=drv,
                          max_requests=100)
    assert res.requests > 0
    assert res.errors.get("status", 0) > 0 and res.errors.get("app", 0) > 0
    assert res.errors["status"] + res.errors["app"] == res.requests
    assert res.rps == 0
    assert any("failed" in n for n in res.notes)


def test_driver_reports_connect_errors():
    """A driver pointed at a closed port reports connection errors instead of hanging or
    reporting throughput (bounded by the duration)."""
    from bench.peers import free_ports
    port = free_ports(1)[0]
    t0 = time.monotonic()
    res = driver.run_asyncio(f"http://127.0.0.1:{port}", driver.RqliteInsert(), 2, 0.3)
    assert time.monotonic() - t0 < 5
    assert res.rps == 0 and res.errors.get("connect", 0) > 0


def test_percentiles_nearest_rank():
    """Percentiles follow the nearest-rank definition, in milliseconds."""
    samples = [i * 1_000_000 for i in range(1000, 0, -1)]  # 1..1000 ms, unsorted
    p = driver.percentiles_ms(samples)
    assert (p["p50"], p["p90"], p["p99"], p["p999"], p["max"]) == (500, 900, 990, 999, 1000)
    assert p["mean"] == pytest.approx(500.5)
    assert driver.percentiles_ms([])["p99"] == 0.0


def test_median_rows_keeps_the_median_run_whole():
    """Repeated measurements collapse to the run with median throughput (its own
    percentiles), keep every run's figure, and flag driver-bound if any run was."""
    rows = [{"workload": "w", "system": "s", "clients": 1, "rps": r, "p50_ms": r / 10,
             "driver_bound": r == 30} for r in (30, 10, 20)]
    (med,) = suites.median_rows(rows)
    assert med["rps"] == 20 and med["p50_ms"] == 2
    assert med["runs"] == [30, 10, 20] and med["driver_bound"] is True


def test_runner_detects_broken_benchmarks(tmp_path):
    """A benchmark whose last line is not JSON, that exits non-zero, or that overruns its
    time is reported failed, and an overrun is stopped within the bound."""
    py = sys.executable
    bad = run.run_one("bad", [py, "-c", "print('no json here')"], 10, True)
    assert bad["status"] == "failed" and "not JSON" in bad["error"]
    crash = run.run_one("crash", [py, "-c", "print('{\"a\": 1}'); raise SystemExit(3)"], 10, True)
    assert crash["status"] == "failed" and "exit code 3" in crash["error"]
    t0 = time.monotonic()
    slow = run.run_one("slow", [py, "-c", "import time; time.sleep(60)"], 1, True)
    assert slow["status"] == "failed" and "timed out" in slow["error"]
    assert time.monotonic() - t0 < 25
    good = run.run_one("good", [py, "-c", "print('x'); print('{\"v\": 2}')"], 10, True)
    assert good["status"] == "ok" and good["result"] == {"v": 2}


QUICK_NAMES = sorted(run.discover()) + list(run.QUICK_BUILTIN)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("name", QUICK_NAMES)
def test_quick_benchmark(tmp_path, name):
    """``python -m bench NAME --quick`` (what ``python -m bench --quick`` runs for each
    discovered bench module and the suite's own quick benchmarks) ends in one JSON line,
    finishes within the quick bound, and is recorded with machine, versions, command and
    time. A failure here means the benchmark has rotted (or does not accept --quick); a
    skipped one must say why."""
    # The runner's own bound (60 s: a quick run takes 5-30 s on a loaded 2-core machine)
    # plus its 20 s SIGTERM grace stay inside this wait and the test's timeout; the
    # runner and every benchmark die with their parent, so a timeout here leaves no
    # member running (test_children_die_with_their_parent).
    out = subprocess.run([sys.executable, "-m", "bench", name, "--quick", "--timeout", "60",
                          "--results-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    (f,) = os.listdir(tmp_path)
    rec = json.loads((tmp_path / f).read_text())
    assert rec["status"] in ("ok", "skipped"), (
        f"bench {name!r} {rec['status']}: {rec['error']}\n" + "\n".join(rec["output_tail"][-15:]))
    assert out.returncode == 0
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["status"] == rec["status"]
    if rec["status"] == "skipped":
        assert rec["error"], f"{name} skipped without saying why"
    assert rec["quick"] is True and rec["machine"]["cores"] and rec["command"]
    assert rec["versions"]["python"] and rec["time"].endswith("Z")
    if name == "driver":
        assert rec["result"]["asyncio_rps"] > 0


def test_quick_mode_selects_every_benchmark():
    """A bare ``python -m bench --quick`` covers every discovered module plus the suite's
    quick benchmarks, and nothing that needs peers."""
    class A:
        names, suite, quick = [], None, True
    names = run.resolve_names(A, run.discover())
    assert names == QUICK_NAMES
    assert "workloads" not in names and "peers" not in names


def test_report_renders_tables_and_plots(tmp_path):
    """The report makes one table per workload with raftsqlite's ratio to each peer, a
    headline table, feature tables, and real PNG plots, from whatever results exist."""
    def rec(name, result, when):
        r = {"name": name, "status": "ok", "time": when, "quick": False, "result": result,
             "machine": {"cpu": "test", "cores": 2}, "versions": {"python": "3"},
             "invocation": ["python", "-m", "bench", name]}
        (tmp_path / f"{name}-{when.replace(':', '')}.json").write_text(json.dumps(r))

    rows = []
    for c, ours, theirs in ((1, 400.0, 800.0), (64, 9000.0, 3000.0)):
        rows.append({"workload": f"insert_c{c}", "system": "raftsqlite", "clients": c,
                     "rps": ours, "p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0, "runs": [ours]})
        rows.append({"workload": f"insert_c{c}", "system": "etcd", "clients": c,
                     "rps": theirs, "p50_ms": 1.5, "p99_ms": 2.5, "p999_ms": 4.0,
                     "driver_bound": True})
    rec("workloads", {"rows": rows, "repeat": 3, "duration_s": 5}, "2026-01-01T00:00:00Z")
    rec("workloads", {"rows": rows[:1], "repeat": 1}, "2025-01-01T00:00:00Z")  # older: unused
    rec("codec", {"encode_decode_speedup_vs_twin": 12.5, "hash_batch_keys_per_s": 6e6},
        "2026-01-01T00:00:00Z")
    rec("headline", {"insert_rps": 9000.0, "etcd_put_rps": 3000.0, "ratio_vs_etcd": 3.0,
                     "p50_ms_1": 1.0, "etcd_p50_ms_1": 1.5, "targets_met": {}, "repeat": 3},
        "2026-01-01T00:00:00Z")
    out = tmp_path / "docs" / "performance.md"
    assert report.main(["--results-dir", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "### Single-row INSERT, 1 client (`insert_c1`)" in text
    assert "### Single-row INSERT, 64 clients (`insert_c64`)" in text
    assert "| etcd | 64 | 3,000 |" in text and "| 3.00 |" in text  # 9000 / 3000
    assert "| 0.50 |" in text  # 400 / 800 at 1 client
    assert "driver-bound" in text and "## Headline" in text
    assert "| encode_decode_speedup_vs_twin | 12.5 |" in text
    for png in ("throughput_vs_clients.png", "latency_percentiles.png"):
        data = (tmp_path / "docs" / "performance" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert f"performance/{png}" in text


def test_missing_peer_is_skipped_with_a_note(monkeypatch):
    """A peer that is not installed is skipped with a note naming it, and nothing is
    measured in its place."""
    from contextlib import ExitStack
    from bench.peers import etcd as etcd_peer

    monkeypatch.setattr(etcd_peer, "ETCD", None)

    class A:
        quick, duration, repeat, driver, root = False, 1.0, 1, "auto", REPO_ROOT
    ctx = suites.Ctx(A)
    with ExitStack() as stack:
        assert suites._start_etcd(ctx, stack) is None
    assert ctx.rows == [] and any("etcd is not installed" in n for n in ctx.notes)
    with pytest.raises(FileNotFoundError):
        etcd_peer.EtcdCluster(3)


def test_children_die_with_their_parent(tmp_path):
    """Invariant: a process the harness starts (a member, a benchmark under the runner)
    gets SIGTERM when its parent dies, even by SIGKILL, so an interrupted benchmark or a
    timed-out test leaves nothing running."""
    import signal
    code = ("import subprocess, sys, time\n"
            "from raftsqlite.testing.procs import die_with_parent\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " preexec_fn=die_with_parent())\n"
            "print(c.pid, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)                       # running while its parent lives
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # reaped by init once it exits; a zombie still answers kill(0)
                with open(f"/proc/{child}/stat") as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the child outlived its SIGKILLed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
