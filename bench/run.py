"""Runs benchmarks and records their results.

    python -m bench                       # every bench/*_bench.py, then the workloads suite
    python -m bench codec raft            # the ones named
    python -m bench --suite headline      # the issue's headline figures (3 runs, medians)
    python -m bench --quick               # a few seconds each, no peers (what CI runs)
    python -m bench --list

Each benchmark runs as its own process: ``bench/NAME_bench.py`` modules written by each
feature, and the suite's own ``headline``, ``workloads``, ``peers`` and ``driver``
(``bench/suites.py``). A benchmark's last output line is one JSON object; the runner stores
it with the machine, versions, command and time as ``bench/results/NAME-STAMP.json``.
In quick mode each benchmark gets ``--quick`` and ``BENCH_QUICK=1`` and must finish within
``--timeout`` (default 30 s there).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

from raftsqlite.testing.procs import die_with_parent

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
BUILTIN = ("driver", "headline", "workloads", "peers")
#: what a bare ``python -m bench`` runs after the discovered modules
DEFAULT_BUILTIN = ("workloads",)
QUICK_BUILTIN = ("driver", "headline")
SUITES = {"headline": ["headline"], "peers": ["peers"], "workloads": ["workloads"],
          "quick": None, "all": None, "default": None}


def discover(bench_dir: str = BENCH_DIR) -> dict[str, str]:
    """``{name: path}`` for every ``bench/NAME_bench.py``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(bench_dir, "*_bench.py"))):
        out[os.path.basename(path)[: -len("_bench.py")]] = path
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine_info() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in _read("/proc/cpuinfo").splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((l.split()[1] for l in _read("/proc/meminfo").splitlines()
                if l.startswith("MemTotal")), "0")
    return {"hostname": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "mem_gb": round(int(mem) / 1024 / 1024, 1), "kernel": platform.release(),
            "platform": platform.platform(), "loadavg": list(os.getloadavg())}


def _cmd_out(cmd: list[str], timeout: float = 10, any_exit: bool = False) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
        if r.returncode != 0 and not any_exit:
            return None
        return (r.stdout or r.stderr).strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    from .driver import WRK
    from .peers import apsw_peer, etcd, pysyncobj_peer
    v = {"python": platform.python_version(), "apsw": apsw_peer.version(),
         "etcd": etcd.version(), "pysyncobj": pysyncobj_peer.version(),
         "wrk": None}
    if WRK:  # `wrk -v` prints its version with the usage text and exits 1
        v["wrk"] = ((_cmd_out([WRK, "-v"], any_exit=True) or "?").splitlines()[0]
                    .split(" Copyright")[0].strip())
    commit = _cmd_out(["git", "rev-parse", "HEAD"])
    dirty = _cmd_out(["git", "status", "--porcelain", "--untracked-files=no"])
    v["raftsqlite_commit"] = (commit + ("+dirty" if dirty else "")) if commit else None
    v["raftsqlite_codec"] = _cmd_out(
        [sys.executable, "-c", "import raftsqlite.codec as c; print(c.IMPLEMENTATION)"])
    for mod in ("sanic", "uvloop", "aiohttp", "orjson", "sqlglot"):
        try:
            v[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            v[mod] = None
    return v


# A full run measures what the benchmark's issue asks for: shard_bench's figures on real
# groups (insert_rps_1_group, scale_ratio) need --cluster; its default is in-process only.
FULL_ARGS = {"shard": ["--cluster"]}


def command_for(name: str, args, modules: dict[str, str]) -> list[str]:
    if name in BUILTIN:
        cmd = [sys.executable, "-m", "bench.suites", name]
        if args.repeat:
            cmd += ["--repeat", str(args.repeat)]
        if args.duration:
            cmd += ["--duration", str(args.duration)]
        if args.driver != "auto":
            cmd += ["--driver", args.driver]
        if args.root:
            cmd += ["--root", args.root]
    else:
        cmd = [sys.executable, modules[name]]
    if args.quick:
        cmd.append("--quick")
    else:
        cmd += FULL_ARGS.get(name, [])
    return cmd


def run_one(name: str, cmd: list[str], timeout: float, quick: bool) -> dict:
    """Run one benchmark process, echoing its output; parse its last line as JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    if quick:
        env["BENCH_QUICK"] = "1"
    print(f"=== {name}: {' '.join(cmd)}", flush=True)
    lines: list[str] = []
    t0 = time.monotonic()
    # The benchmark gets SIGTERM if this runner dies (SIGKILL included), and stops the
    # clusters it started (a quick run timed out by pytest left its nodes running).
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            preexec_fn=die_with_parent())

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            del lines[:-400]  # the tail is enough; bounded memory for chatty benchmarks
            print(f"  {line.rstrip()[:300]}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # Overdue, or this runner interrupted: SIGTERM first (every benchmark stops the
        # clusters it started when asked to), then SIGKILL.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    reader.join(5)
    elapsed = time.monotonic() - t0
    result, status, error = None, "ok", None
    last = next((l for l in reversed(lines) if l.strip()), "")
    try:
        result = json.loads(last)
        if not isinstance(result, dict):
            raise ValueError("last line is not a JSON object")
    except ValueError as e:
        result, status, error = None, "failed", f"last line is not JSON ({e}): {last[:200]!r}"
    if result and result.get("status") in ("skipped", "partial"):
        status = result["status"]  # the benchmark's notes say what was not measured
        error = "; ".join(result.get("notes") or []) or None
    if timed_out:
        status, error = "failed", f"timed out after {timeout:.0f}s"
    elif proc.returncode != 0:
        status, error = "failed", f"exit code {proc.returncode}"
    return {"name": name, "status": status, "error": error, "command": cmd,
            "elapsed_s": round(elapsed, 1), "result": result, "output_tail": lines[-40:]}


def save(record: dict, results_dir: str) -> str:
    os.makedirs(results_dir, exist_ok=True)
    stamp = record["time"].replace(":", "").replace("-", "")
    path = os.path.join(results_dir, f"{record['name']}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)
    return path


def _headline_figures(result: dict | None) -> str:
    if not result:
        return ""
    keys = [k for k, v in result.items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k not in ("repeat", "duration_s", "elapsed_s")]
    return ", ".join(f"{k}={result[k]}" for k in keys[:6])


def resolve_names(args, modules) -> list[str]:
    if args.names:
        names = list(args.names)
    elif args.suite in ("headline", "peers", "workloads"):
        names = SUITES[args.suite]
    elif args.suite == "all":
        names = list(modules) + ["workloads", "headline"]
    elif args.quick or args.suite == "quick":
        names = list(modules) + list(QUICK_BUILTIN)
    else:
        names = list(modules) + list(DEFAULT_BUILTIN)
    unknown = [n for n in names if n not in modules and n not in BUILTIN]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(modules) + list(BUILTIN))}")
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    p.add_argument("--suite", choices=sorted(SUITES), help="a named set of benchmarks")
    p.add_argument("--quick", action="store_true", help="a few seconds each, no peers")
    p.add_argument("--repeat", type=int, default=0, help="runs per measurement (suites)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds per measurement (suites)")
    p.add_argument("--driver", choices=["auto", "wrk", "asyncio"], default="auto")
    p.add_argument("--root", default=None, help="directory holding the raftsqlite package")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="seconds per benchmark before it is stopped (default 30 quick, 3600)")
    p.add_argument("--results-dir", default=RESULTS_DIR)
    p.add_argument("--no-save", action="store_true", help="do not write result files")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    if args.suite == "quick":
        args.quick = True
    modules = discover()
    if args.list:
        for n, path in modules.items():
            print(f"{n:<12} {os.path.relpath(path, REPO_ROOT)}")
        for n in BUILTIN:
            print(f"{n:<12} bench/suites.py (built in)")
        return 0
    names = resolve_names(args, modules)
    timeout = args.timeout or (30.0 if args.quick else 3600.0)
    machine, vers = machine_info(), versions()
    records = []
    for name in names:
        rec = run_one(name, command_for(name, args, modules), timeout, args.quick)
        rec.update(time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   quick=args.quick, machine=machine, versions=vers,
                   invocation=["python", "-m", "bench"] + (argv if argv is not None
                                                            else sys.argv[1:]))
        if not args.no_save:
            rec["saved_to"] = os.path.relpath(save(rec, args.results_dir), REPO_ROOT)
        records.append(rec)
        print(f"=== {name}: {rec['status']} in {rec['elapsed_s']}s"
              + (f" ({rec['error']})" if rec["error"] else ""), flush=True)
    print("\nsummary:")
    for r in records:
        print(f"  {r['name']:<12} {r['status']:<7} {r['elapsed_s']:>7.1f}s  "
              f"{_headline_figures(r['result'])}")
    if len(records) == 1:
        last = dict(records[0]["result"] or {"error": records[0]["error"]})
        last.pop("rows", None)
        last["status"] = records[0]["status"]
    else:
        last = {r["name"]: {"status": r["status"],
                            **{k: v for k, v in (r["result"] or {}).items() if k != "rows"}}
                for r in records}
    print(json.dumps(last, default=str))
    # Skipped and partial runs are not failures: what could not run is named in the notes.
    return 0 if all(r["status"] != "failed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
