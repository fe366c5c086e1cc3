"""Where the time of one 1-client write goes: per-stage medians from the members' traces.

    python -m bench.lat_trace [--root .] [--duration 4] [--clients 1]

Starts a 3-member cluster (fsync on) with ``RAFTSQLITE_TRACE`` set (raftsqlite/raft/trace.py:
every member stamps its stages with ``time.monotonic_ns()``, one clock for all processes),
runs single-row INSERTs through ``POST /db/execute`` from one client, stops the cluster and
cuts the merged stamps into one window per request (at 1 client requests never overlap:
a window runs from one request's bytes arriving at the leader to the next one's). For
every stage it prints the median time from the previous stage and from the request's
arrival, for the leader and for the follower that answered first and second. Stamps cost
~1 µs each; the client-side p50 of the traced run is printed beside them.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile

from .cluster import RaftsqliteCluster
from .driver import RqliteInsert, run_load


def _is(tag):
    return lambda t: t == tag


def _pre(prefix):
    return lambda t: t.startswith(prefix)


def _rdy(entries=None, committed=None):
    def f(t):
        if not t.startswith("d_rdy:"):
            return False
        _, e, c, _ = t.split(":")
        return (entries is None or (int(e) > 0) == entries) and \
            (committed is None or (int(c) > 0) == committed)
    return f


LEADER_IN = [
    ("http bytes in", _is("h_in")),
    ("handler task runs", _is("h_run")),
    ("store submit", _is("s_sub")),
    ("proposed to driver", _is("d_prop")),
    ("Ready task wakes", _is("d_wake")),
    ("Ready with the entry", _rdy(entries=True)),
    ("APPENDs sent", _is("d_early")),
    ("persist handed over", _is("p_sub")),
    ("persist thread runs", _is("w0")),
    ("pwrite done", _is("w_fs")),
    ("fdatasync done", _is("w_fs1")),
    ("loop has it back", _is("p_back")),
]
LEADER_OUT = [
    ("first APPEND_RESP in", _pre("m_in:APPEND_RESP")),
    ("Ready with the commit", _rdy(committed=True)),
    ("applied", _is("d_applied")),
    ("store resolves", _is("s_done")),
    ("response written", _is("h_out")),
]
FOLLOWER = [
    ("APPEND in", lambda t: t.startswith("m_in:APPEND:") and not t.startswith("m_in:APPEND:0:")),
    ("Ready task wakes", _is("d_wake")),
    ("Ready with the entry", _rdy(entries=True)),
    ("persist handed over", _is("p_sub")),
    ("persist thread runs", _is("w0")),
    ("pwrite done", _is("w_fs")),
    ("fdatasync done", _is("w_fs1")),
    # from the persist thread (w_sent), or by the loop once it has the write back
    ("APPEND_RESP sent", lambda t: t == "w_sent" or t == "d_late"),
]


def load(path):
    out = []
    with open(path) as f:
        for line in f:
            t, _, tag = line.rstrip("\n").partition(" ")
            out.append((int(t), tag))
    out.sort()
    return out


def walk(events, lo, hi, stages, start=None):
    """Times of ``stages`` in order within [lo, hi): each the first match at or after the
    previous one. -> list of ns or None."""
    import bisect
    i = bisect.bisect_left(events, (lo if start is None else start, ""))
    res = []
    for _, pred in stages:
        j = i
        while j < len(events) and events[j][0] < hi and not pred(events[j][1]):
            j += 1
        if j < len(events) and events[j][0] < hi:
            res.append(events[j][0])
            i = j
        else:
            res.append(None)
    return res


def analyse(leader, followers):
    starts = [t for t, tag in leader if tag == "h_in"]
    rows = []
    for k in range(len(starts) - 1):
        lo, hi = starts[k], starts[k + 1]
        lin = walk(leader, lo, hi, LEADER_IN)
        if lin[2] is None or lin[6] is None:
            continue   # not a write (a status poll, the warm-up's reads)
        sent = lin[6]
        fol = []
        for ev in followers:
            f = walk(ev, sent, hi, FOLLOWER)
            if f[-1] is not None:
                fol.append(f)
        fol.sort(key=lambda f: f[-1])
        acks = walk(leader, sent, hi, LEADER_OUT[:1])
        after = max(x for x in (lin[-1], acks[0]) if x is not None) if acks[0] else lin[-1]
        lout = acks + walk(leader, after or sent, hi, LEADER_OUT[1:])
        if lout[-1] is None:
            continue
        rows.append((lo, lin, lout, fol))
    return rows


def report(rows):
    def med(xs):
        xs = [x for x in xs if x is not None]
        return f"{statistics.median(xs) / 1000:8.0f}" if xs else "       -"

    print(f"{len(rows)} writes traced; µs, medians: from the previous stage | from arrival")
    sections = [("leader", LEADER_IN, lambda r: r[1]),
                ("first follower (from APPENDs sent)", FOLLOWER, lambda r: r[3][0] if r[3] else None),
                ("second follower", FOLLOWER, lambda r: r[3][1] if len(r[3]) > 1 else None),
                ("leader, commit side", LEADER_OUT, lambda r: r[2])]
    for title, stages, get in sections:
        print(f"-- {title}")
        prev_of = {}
        for k, (name, _) in enumerate(stages):
            d, a = [], []
            for r in rows:
                ts = get(r)
                if ts is None or ts[k] is None:
                    continue
                a.append(ts[k] - r[0])
                if k:
                    if ts[k - 1] is not None:
                        d.append(ts[k] - ts[k - 1])
                elif title.startswith("leader, commit"):
                    d.append(ts[k] - r[1][6])      # from the APPENDs leaving
                elif "follower" in title:
                    d.append(ts[k] - r[1][6])
            prev_of[name] = d
            print(f"  {name:<26}{med(d)} |{med(a)}")
    tot = [r[2][-1] - r[0] for r in rows]
    own = [r[1][11] - r[1][6] for r in rows if r[1][11] is not None]
    f1 = [r[2][0] - r[1][6] for r in rows if r[2][0] is not None]
    print(f"  whole request inside the leader: {med(tot)} µs; APPENDs out -> own persist back "
          f"{med(own)}, -> first APPEND_RESP in {med(f1)}")
    pairs = [r for r in rows if r[3] and r[2][0] is not None and r[3][0][0] is not None]
    out = [r[3][0][0] - r[1][6] for r in pairs]
    back = [r[2][0] - r[3][0][-1] for r in pairs]
    late = sum(1 for r in rows if r[1][11] is not None and r[2][0] is not None
               and r[1][11] > r[2][0])
    print(f"  paired: APPENDs sent -> first follower has them {med(out)}; its APPEND_RESP "
          f"sent -> leader has it {med(back)}; own persist back after the first "
          f"APPEND_RESP arrived in {late} of {len(rows)} writes")


def thread_cpu(pids):
    """{(member, thread name): CPU seconds} from /proc (user + system)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for k, pid in enumerate(pids):
        for tdir in glob.glob(f"/proc/{pid}/task/*"):
            try:
                with open(os.path.join(tdir, "stat")) as f:
                    st = f.read()
            except OSError:
                continue
            fields = st[st.rindex(")") + 2:].split()
            key = (k, "loop" if os.path.basename(tdir) == str(pid) else "threads")
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def start_traced_cluster(keep, prefix, root, extra_args=()):
    """A 3-member cluster whose members write trace files (RAFTSQLITE_TRACE) into ``keep``
    (emptied of old traces) or a new temp dir: -> (that dir, the started cluster)."""
    tdir = keep or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(tdir, exist_ok=True)
    for f in glob.glob(os.path.join(tdir, "*.trace")):
        os.unlink(f)
    os.environ["RAFTSQLITE_TRACE"] = tdir
    try:
        c = RaftsqliteCluster(3, root=os.path.abspath(root), extra_args=list(extra_args)).start()
    finally:
        del os.environ["RAFTSQLITE_TRACE"]
    return tdir, c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--driver", choices=["auto", "wrk", "asyncio"], default="auto")
    ap.add_argument("--keep", default=None, help="keep the trace files in this directory")
    a = ap.parse_args(argv)
    tdir, c = start_traced_cluster(a.keep, "lat-trace-", a.root)
    try:
        c.execute([["CREATE TABLE IF NOT EXISTS bench(id INTEGER PRIMARY KEY, v TEXT)"]])
        url = c.leader_url()
        lpid = c.pids[c.urls.index(url)]
        pids = list(c.pids)
        run_load(url, RqliteInsert(), a.clients, 1.0, driver=a.driver)
        cpu0 = thread_cpu(pids)
        res = run_load(url, RqliteInsert(), a.clients, a.duration, driver=a.driver,
                       watch_pids=pids).to_dict()
        cpu1 = thread_cpu(pids)
    finally:
        c.stop()
    cpu_us = (res.get("server_cpu_frac") or 0) / max(res["rps"], 1e-9) * 1e6
    print(f"client: p50={res['p50_ms']:.3f} ms p99={res['p99_ms']:.3f} ms rps={res['rps']:.0f} "
          f"cpu_us/req={cpu_us:.0f}")
    n = max(res["requests"], 1)
    li = pids.index(lpid)
    parts = []
    for key in sorted(cpu1):
        d = cpu1[key] - cpu0.get(key, 0.0)
        if d > 0:
            who = "leader" if key[0] == li else f"follower{key[0]}"
            parts.append(f"{who}/{key[1]} {d / n * 1e6:.0f}")
    print("CPU µs per request by thread: " + ", ".join(parts))
    if not os.path.exists(os.path.join(tdir, f"{lpid}.trace")):
        print(f"no trace files in {tdir} (a checkout without raftsqlite/raft/trace.py?)")
        return
    leader = load(os.path.join(tdir, f"{lpid}.trace"))
    followers = [load(os.path.join(tdir, f"{p}.trace")) for p in pids if p != lpid]
    report(analyse(leader, followers))
    if not a.keep:
        for p in glob.glob(os.path.join(tdir, "*.trace")):
            os.unlink(p)
        os.rmdir(tdir)


if __name__ == "__main__":
    sys.exit(main())
