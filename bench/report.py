"""Turns the latest benchmark results into ``docs/performance.md`` with PNG plots.

    python bench/report.py [--results-dir bench/results] [--out docs/performance.md]

For every benchmark name the newest full (non-quick) result is used. The page has the
headline figures, a table per workload (raftsqlite, each peer, and raftsqlite's ratio to
it), plots of throughput against clients and of latency percentiles, and one table per
feature benchmark (``bench/*_bench.py``) from its last-line JSON.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.run import REPO_ROOT, RESULTS_DIR  # noqa: E402

SYSTEM_ORDER = ["raftsqlite", "etcd", "pysyncobj", "apsw"]
WORKLOAD_TITLES = {
    "insert_c1": "Single-row INSERT, 1 client",
    "insert_c16": "Single-row INSERT, 16 clients",
    "insert_c64": "Single-row INSERT, 64 clients",
    "bulk_1000": "1000-row batches",
    "read_none": "Point reads, level none",
    "read_weak": "Point reads, level weak",
    "read_linearizable": "Point reads, level linearizable",
    "mix_90_10": "90% reads / 10% writes",
}
SYSTEM_NOTES = {
    "raftsqlite": "3 members on loopback, fsync on, HTTP `POST /db/execute` via the load driver",
    "etcd": "3 members on loopback (etcd fsyncs its WAL), HTTP/JSON gateway `/v3/kv/put`, "
            "`/v3/kv/range`",
    "pysyncobj": "3 processes, file journal (never fsynced), load inside the leader process "
                 "(no HTTP, no SQL): proposals in flight = clients",
    "apsw": "raw SQLite in one process, WAL, one thread, no network",
}


def load_latest(results_dir: str, include_quick: bool = False) -> dict[str, dict]:
    """``{name: record}``: the newest usable record of each benchmark."""
    latest: dict[str, dict] = {}
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or not rec.get("result") or rec.get("status") == "failed":
            continue
        if rec.get("quick") and not include_quick:
            continue
        name = rec.get("name")
        if name and (name not in latest or rec.get("time", "") > latest[name].get("time", "")):
            latest[name] = rec
    return latest


def _fmt(v, digits=None) -> str:
    """Numbers for tables: thousands separated; ``digits`` fixes the decimals (ratios,
    latencies), otherwise three significant figures below 10."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if digits is not None:
            return f"{v:.{digits}f}"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _label(r: dict) -> str:
    extra = [r[k] for k in ("synchronous", "variant") if r.get(k)]
    return r["system"] + (f" ({', '.join(extra)})" if extra else "")


def _sys_key(r: dict):
    s = r["system"]
    return (SYSTEM_ORDER.index(s) if s in SYSTEM_ORDER else 99, _label(r))


def workload_tables(rows: list[dict]) -> list[str]:
    out = []
    names = sorted({r["workload"] for r in rows},
                   key=lambda w: list(WORKLOAD_TITLES).index(w) if w in WORKLOAD_TITLES else 99)
    for w in names:
        wrows = sorted([r for r in rows if r["workload"] == w], key=_sys_key)
        ours = next((r for r in wrows if r["system"] == "raftsqlite"), None)
        bulk = w.startswith("bulk")
        metric = "rows_per_s" if bulk else "rps"
        out += [f"### {WORKLOAD_TITLES.get(w, w)} (`{w}`)", "",
                f"| system | clients | {'rows/s' if bulk else 'req/s'} | p50 ms | p99 ms "
                f"| p99.9 ms | raftsqlite ÷ this | server CPU (cores) | runs | notes |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in wrows:
            ratio = (ours[metric] / r[metric]) if ours and r.get(metric) else None
            notes = []
            if r.get("driver_bound"):
                notes.append("driver-bound (a floor)")
            if r.get("error_count"):
                notes.append(f"{r['error_count']} errors")
            runs = ", ".join(_fmt(x) for x in (r.get("runs") or []))
            out.append(f"| {_label(r)} | {r['clients']} | {_fmt(r.get(metric))} | "
                       f"{_fmt(r.get('p50_ms'), 3)} | {_fmt(r.get('p99_ms'), 3)} | "
                       f"{_fmt(r.get('p999_ms'), 3)} | "
                       f"{'–' if r is ours else _fmt(ratio, 2)} | "
                       f"{_fmt(r.get('server_cpu_frac'), 2)} | {runs} | {'; '.join(notes)} |")
        out.append("")
    return out


def _colors(rows: list[dict]) -> dict[str, str]:
    """One colour per system label, the same in every plot."""
    labels = sorted({_label(r) for r in rows},
                    key=lambda l: (SYSTEM_ORDER.index(l.split(" ")[0])
                                   if l.split(" ")[0] in SYSTEM_ORDER else 99, l))
    return {l: f"C{i % 10}" for i, l in enumerate(labels)}


def plot_throughput(rows: list[dict], path: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series: dict[str, list] = {}
    for r in rows:
        if r["workload"].startswith("insert_c") and r.get("rps"):
            series.setdefault(_label(r), []).append((r["clients"], r["rps"]))
    if not series:
        return False
    colors = _colors(rows)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in sorted(series, key=lambda s: (SYSTEM_ORDER.index(s.split(" ")[0])
                                               if s.split(" ")[0] in SYSTEM_ORDER else 99, s)):
        pts = sorted(series[label])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                color=colors[label])
    ax.set_xscale("log", base=2)
    ticks = sorted({p[0] for pts in series.values() for p in pts})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_yscale("log")
    ax.set_xlabel("clients (connections, or proposals in flight)")
    ax.set_ylabel("single-row writes / s")
    ax.set_title("Write throughput against clients")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_latency(rows: list[dict], path: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r.get("p50_ms") is not None and r.get("p99_ms") is not None]
    workloads = [w for w in WORKLOAD_TITLES if any(r["workload"] == w for r in rows)]
    workloads += sorted({r["workload"] for r in rows} - set(workloads))
    if not workloads:
        return False
    cols = 2
    nrows = -(-len(workloads) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 3.2 * nrows), squeeze=False)
    # One line per system across p50 -> p99 -> p99.9, on a log axis: the shape of the tail
    # is what matters, and lines (unlike bars) do not pretend a log axis starts at zero.
    colors = _colors(rows)
    keys = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
    for ax, w in zip(axes.flat, workloads):
        for r in sorted([r for r in rows if r["workload"] == w], key=_sys_key):
            pts = [(i, r[k]) for i, (k, _) in enumerate(keys) if r.get(k)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(r),
                    color=colors[_label(r)])
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([name for _, name in keys])
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(WORKLOAD_TITLES.get(w, w), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _load(rec: dict) -> str:
    la = (rec.get("machine") or {}).get("loadavg")
    return f"; load average at start {la[0]:.1f} on {rec['machine'].get('cores')} cores" if la else ""


def _headline_section(rec: dict) -> list[str]:
    r = rec["result"]
    tm = r.get("targets_met", {})
    lines = ["## Headline", "", f"`{' '.join(rec.get('invocation', []))}`, {rec.get('time')}, "
             f"median of {r.get('repeat')} runs of {r.get('duration_s')} s each"
             f"{_load(rec)}.", "",
             "| figure | raftsqlite | peer | ratio | target | met |", "|---|---:|---:|---:|---|---|",
             f"| single-row INSERTs/s, 64 clients vs etcd PUTs/s | {_fmt(r.get('insert_rps'))} | "
             f"{_fmt(r.get('etcd_put_rps'))} | {_fmt(r.get('ratio_vs_etcd'), 2)} | ≥ 2 | "
             f"{_fmt(tm.get('ratio_vs_etcd>=2'))} |",
             f"| p50 ms, 1 client | {_fmt(r.get('p50_ms_1'), 3)} | {_fmt(r.get('etcd_p50_ms_1'), 3)}"
             f" | – | ≤ etcd's | {_fmt(tm.get('p50_ms_1<=etcd_p50_ms_1'))} |",
             f"| 1000-row batches, rows/s vs raw apsw ({r.get('apsw_bulk_synchronous') or '–'}) | "
             f"{_fmt(r.get('bulk_rows_per_s'))} | {_fmt(r.get('apsw_bulk_rows_per_s'))} | "
             f"{_fmt(r.get('bulk_fraction_of_apsw'), 2)} | ≥ 0.5 | "
             f"{_fmt(tm.get('bulk_fraction_of_apsw>=0.5'))} |", ""]
    if r.get("ratio_vs_etcd_runs"):
        lines.append("- ratio to etcd in each repeat: "
                     + ", ".join(_fmt(x, 2) for x in r["ratio_vs_etcd_runs"]))
    if r.get("raftsqlite"):
        info = r["raftsqlite"]
        lines.append(f"- raftsqlite: {info.get('members')} members, fsync "
                     f"{'on' if info.get('fsync') else 'off'}, codec {info.get('codec')}; "
                     f"1000-row batches over {r.get('bulk_connections', 4)} connections; "
                     "apsw is the faster of synchronous=FULL and NORMAL")
    for n in r.get("notes") or []:
        lines.append(f"- {n}")
    if r.get("driver_bound"):
        lines.append(f"- driver-bound runs (throughput is a floor): {', '.join(r['driver_bound'])}")
    return lines + [""]


def _feature_section(name: str, rec: dict) -> list[str]:
    r = rec["result"]
    lines = [f"### `{name}`", "", f"`{' '.join(rec.get('invocation') or rec.get('command', []))}`"
             f", {rec.get('time')}, status {rec.get('status')}", "", "| figure | value |",
             "|---|---:|"]
    for k, v in r.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            if k not in ("suite", "status"):
                lines.append(f"| {k} | {_fmt(v)} |")
    return lines + [""]


def render(latest: dict[str, dict], img_dir: str, out_path: str) -> str:
    any_rec = max(latest.values(), key=lambda r: r.get("time", ""), default=None)
    lines = ["# Performance", "",
             "Generated by `python bench/report.py` from the newest results in `bench/results/` "
             "(written by `python -m bench`). Every peer was measured in the same run as "
             "raftsqlite, so ratios hold on a noisy machine better than absolute figures. "
             "How it is measured: [design/bench.md](design/bench.md).", ""]
    if any_rec:
        m, v = any_rec.get("machine", {}), any_rec.get("versions", {})
        lines += [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gb')} GB, "
                  f"Linux {m.get('kernel')}; shared with other work, so absolute figures vary "
                  "between runs.", "",
                  "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val), ""]
    if "headline" in latest:
        lines += _headline_section(latest["headline"])
    suite = latest.get("workloads") or latest.get("peers")
    if suite:
        rows = suite["result"].get("rows", [])
        lines += ["## Workloads", "",
                  f"`{' '.join(suite.get('invocation', []))}`, {suite.get('time')}, median of "
                  f"{suite['result'].get('repeat')} runs of {suite['result'].get('duration_s')} s"
                  f"{_load(suite)}.",
                  ""]
        lines += [f"- **{s}**: {SYSTEM_NOTES[s]}" for s in SYSTEM_ORDER
                  if any(r["system"] == s for r in rows)]
        lines.append("- *server CPU*: cores used by the system's processes during the run (all "
                     "members together); on a shared 2-core machine a low figure with a low "
                     "throughput means the servers were starved or waiting (fsync), not busy.")
        lines += [f"- {n}" for n in suite["result"].get("notes") or []]
        lines.append("")
        os.makedirs(img_dir, exist_ok=True)
        rel = os.path.relpath(img_dir, os.path.dirname(out_path))
        if plot_throughput(rows, os.path.join(img_dir, "throughput_vs_clients.png")):
            lines += [f"![write throughput against clients]({rel}/throughput_vs_clients.png)", ""]
        if plot_latency(rows, os.path.join(img_dir, "latency_percentiles.png")):
            lines += [f"![latency percentiles per workload]({rel}/latency_percentiles.png)", ""]
        lines += workload_tables(rows)
    features = {n: r for n, r in sorted(latest.items())
                if n not in ("headline", "workloads", "peers", "driver")}
    if features:
        lines += ["## Feature benchmarks", "",
                  "Each `bench/NAME_bench.py`'s last-line JSON, as recorded by the runner.", ""]
        for n, rec in features.items():
            lines += _feature_section(n, rec)
    if "driver" in latest:
        lines += ["## Load driver ceiling", ""] + _feature_section("driver", latest["driver"])[2:]
    if not latest:
        lines += ["No results yet: run `python -m bench` first.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default=RESULTS_DIR)
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "docs", "performance.md"))
    p.add_argument("--img-dir", default=None, help="default: docs/performance/ beside --out")
    p.add_argument("--include-quick", action="store_true",
                   help="also use quick-mode results (for testing the report)")
    a = p.parse_args(argv)
    img_dir = a.img_dir or os.path.join(os.path.dirname(os.path.abspath(a.out)), "performance")
    latest = load_latest(a.results_dir, a.include_quick)
    text = render(latest, img_dir, os.path.abspath(a.out))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    print(f"wrote {a.out} from {len(latest)} benchmark(s): {', '.join(sorted(latest)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
