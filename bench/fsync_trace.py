"""Where a shard's log fdatasync spends its time (diagnosis for bench/shard_bench.py
``--trace-fsync``; Linux, root, tracefs). During one insert window two ftrace instances
of our own record: the bench processes' threads (fdatasync/fsync entry and exit) and the whole
machine (the scheduler's switches and wake-ups, block requests inserted). Each fdatasync
of a shard's log segment is then split into on-CPU, sleeping (waiting for the device)
and runnable (woken, waiting for a core), with the process the core was taken from
after each wait, and the share of calls that also wrote metadata (the inode block, on a
no-journal ext4, when the file's mtime changed). See docs/design/raft-io.md, "Shard
fsync contention"."""
import bisect
import collections
import os
import re

ROOT = "/sys/kernel/tracing/instances"
PROC_EVENTS = ("ext4/ext4_sync_file_enter", "ext4/ext4_sync_file_exit",
               # interrupts taken while a traced thread runs (its on-CPU time includes them)
               "irq/irq_handler_entry", "irq/irq_handler_exit", "irq/softirq_entry",
               "irq/softirq_exit")
# The scheduler's events unfiltered: with a pid filter, switches from the idle task to a
# traced thread were sometimes not recorded, which made a run look like a wait.
MACHINE_EVENTS = ("block/block_rq_insert", "sched/sched_switch", "sched/sched_wakeup")
_LINE = re.compile(r"^\s*.+?-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s?(.*)$")


def _w(path, s):
    with open(path, "w") as f:
        f.write(s)


class _Instance:
    def __init__(self, name, events, tids=None):
        self.d = f"{ROOT}/shard_bench_{name}_{os.getpid()}"
        os.mkdir(self.d)
        try:
            _w(f"{self.d}/trace_clock", "mono")
            _w(f"{self.d}/buffer_size_kb", "32768")
            if tids:
                _w(f"{self.d}/options/event-fork", "1")
                _w(f"{self.d}/set_event_pid", " ".join(map(str, tids)))
            for ev in events:
                _w(f"{self.d}/events/{ev}/enable", "1")
        except OSError:
            self.close()
            raise

    def on(self, flag=True):
        _w(f"{self.d}/tracing_on", "1" if flag else "0")

    def text(self):
        with open(f"{self.d}/trace", errors="replace") as f:
            return f.read()

    def close(self):
        try:
            _w(f"{self.d}/tracing_on", "0")
            _w(f"{self.d}/events/enable", "0")
        finally:
            os.rmdir(self.d)


def tids_of(pids):
    """{tid: process name} for every thread of the named processes."""
    out = {}
    for name, pid in pids.items():
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                out[int(t)] = name
        except OSError:
            pass
    return out


class Trace:
    """Started before a window, stopped after it; ``stop`` returns the split per shard,
    or raises OSError where tracing is unavailable (not root, no tracefs)."""

    def __init__(self, pids):
        self.tidmap = tids_of(pids)
        self.proc = _Instance("proc", PROC_EVENTS, sorted(self.tidmap))
        try:
            self.block = _Instance("machine", MACHINE_EVENTS)
        except OSError:
            self.proc.close()
            raise
        self.proc.on()
        self.block.on()

    def stop(self):
        try:
            self.proc.on(False)
            self.block.on(False)
            return analyze(self.proc.text(), self.block.text(), self.tidmap)
        finally:
            self.proc.close()
            self.block.close()


def _events(text):
    for line in text.splitlines():
        if not line.startswith("#"):
            m = _LINE.match(line)
            if m:
                yield (int(m.group(1)), float(m.group(3)), m.group(4), m.group(5),
                       int(m.group(2)))


def _holder(name, shard):
    if name is None:
        return "other processes"
    if name == shard:
        return "same shard"
    if name.startswith("shard"):
        return "other shard"
    return "routers" if name.startswith("router") else name


def analyze(proc_text, machine_text, tidmap):
    """Per shard process: its log fdatasyncs (the inodes it fdatasynced 20 times or more)
    split into means in µs: on-CPU, I/O sleep, waiting for a core; waits per call; who
    held the core (µs per call); share of calls that wrote metadata."""
    shard_of = {t: n for t, n in tidmap.items() if n.startswith("shard")}
    state, open_, done, irq_at = {}, {}, [], {}
    events = sorted(list(_events(proc_text)) + [e for e in _events(machine_text)
                                                 if e[2] != "block_rq_insert"],
                    key=lambda e: e[1])
    for tid, ts, ev, det, cpu in events:
        st = state.get(tid)
        if st and st[0] == "runnable" and tid in open_:
            # an event in this thread's own context: it runs, though the switch that
            # gave it the core was not recorded (seen for switches out of the idle task)
            o = open_[tid]
            o["t"]["runnable"] += ts - max(st[1], o["t0"])
            o["who"]["unrecorded"] += ts - max(st[1], o["t0"])
            o["waits"] += 1
            state[tid] = ("run", ts)
        if ev in ("irq_handler_entry", "softirq_entry"):
            if tid in open_:
                irq_at[(tid, ev[:3])] = ts
            continue
        if ev in ("irq_handler_exit", "softirq_exit"):
            t_in = irq_at.pop((tid, ev[:3]), None)
            if t_in is not None and tid in open_:
                o = open_[tid]
                o["t"]["irq"] += ts - max(t_in, o["t0"])
                m = re.search(r"action=(\w+)", det)
                kind = "softirq " + m.group(1) if ev == "softirq_exit" and m else "hardirq"
                o["irqs"][kind] += ts - max(t_in, o["t0"])
            continue
        if ev == "sched_switch":
            m = re.search(r"prev_pid=(\d+) .*prev_state=(\S+) ==> .*next_pid=(\d+)", det)
            if not m:
                continue
            prev, pst, nxt = int(m.group(1)), m.group(2), int(m.group(3))
            for t, new in ((prev, "runnable" if pst.startswith("R") else "sleep"), (nxt, "run")):
                st, o = state.get(t), open_.get(t)
                if o and st:
                    o["t"][st[0]] += ts - max(st[1], o["t0"])
                    if t == nxt and st[0] == "runnable":
                        o["who"][_holder(tidmap.get(prev), shard_of[t])] += ts - max(st[1], o["t0"])
                        o["waits"] += 1
                state[t] = (new, ts)
        elif ev == "sched_wakeup":
            m = re.search(r" pid=(\d+)", det)
            w = int(m.group(1)) if m else None
            st = state.get(w)
            if st and st[0] == "sleep":
                if w in open_:
                    open_[w]["t"]["sleep"] += ts - max(st[1], open_[w]["t0"])
                tgt = re.search(r"target_cpu=(\d+)", det)
                if tid == 0 and tgt and int(tgt.group(1)) == cpu:
                    # woken from the idle task of its own target CPU: the core is free
                    state[w] = ("run", ts)
                    if w in open_:
                        open_[w]["waits"] += 1
                else:
                    state[w] = ("runnable", ts)
        elif ev == "ext4_sync_file_enter" and tid in shard_of:
            m = re.search(r"ino (\d+) .*datasync (\d)", det)
            if m:
                state[tid] = ("run", ts)
                open_[tid] = {"t0": ts, "ino": int(m.group(1)), "ds": m.group(2) == "1",
                              "t": collections.Counter(), "who": collections.Counter(),
                              "waits": 0, "tid": tid, "irqs": collections.Counter()}
        elif ev == "ext4_sync_file_exit" and tid in open_:
            o = open_.pop(tid)
            st = state.get(tid)
            if st:
                o["t"][st[0]] += ts - max(st[1], o["t0"])
            o["t1"] = ts
            done.append(o)
    # metadata writes (rwbs W..M) inserted by a shard thread; a call wrote metadata if
    # one of its thread's falls inside it (the two instances stamp with the same clock)
    meta = collections.defaultdict(list)
    for tid, ts, ev, det, _ in _events(machine_text):
        if ev == "block_rq_insert" and tid in shard_of and re.search(r" W\w*M ", det):
            meta[tid].append(ts)

    def wrote_meta(o):
        xs = meta.get(o["tid"], ())
        i = bisect.bisect_left(xs, o["t0"])
        return i < len(xs) and xs[i] <= o["t1"]

    out = {}
    for shard in sorted(set(shard_of.values())):
        mine = [o for o in done if shard_of[o["tid"]] == shard]
        count = collections.Counter(o["ino"] for o in mine if o["ds"])
        log = [o for o in mine if o["ds"] and count[o["ino"]] >= 20]
        n = len(log)
        if not n:
            continue
        t, who, irqs = collections.Counter(), collections.Counter(), collections.Counter()
        for o in log:
            t.update(o["t"])
            who.update(o["who"])
            irqs.update(o["irqs"])
        out[shard] = {
            "calls": n,
            "mean_us": round(sum(o["t1"] - o["t0"] for o in log) / n * 1e6),
            "cpu_us": round(t["run"] / n * 1e6), "irq_us": round(t["irq"] / n * 1e6),
            "irq_kinds_us": {k: round(v / n * 1e6, 1) for k, v in irqs.most_common(4)}, "io_sleep_us": round(t["sleep"] / n * 1e6),
            "core_wait_us": round(t["runnable"] / n * 1e6),
            "waits_per_call": round(sum(o["waits"] for o in log) / n, 2),
            "core_held_by_us": {k: round(v / n * 1e6) for k, v in who.most_common()},
            "metadata_write_share": round(sum(1 for o in log if wrote_meta(o)) / n, 2)}
    return out


def describe(split):
    return "; ".join(
        f"{s}: {v['calls']} log fdatasyncs, mean {v['mean_us']} us = on-CPU {v['cpu_us']} "
        f"(of which interrupts {v['irq_us']}: {v['irq_kinds_us']}) + I/O "
        f"sleep {v['io_sleep_us']} + waiting for a core {v['core_wait_us']} "
        f"({v['waits_per_call']} waits/call; core held by {v['core_held_by_us']}), "
        f"{v['metadata_write_share']:.0%} also wrote metadata" for s, v in split.items())
