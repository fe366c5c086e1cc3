"""Raft engine throughput and latency: ours against pysyncobj 0.3.17, in one invocation.

    python bench/raft_bench.py [--seconds 5] [--json-only] [--quick] [--log-only]

First a micro-benchmark of the log alone: one-entry appends, each made durable by
fdatasync, into a preallocated segment and (for comparison) into a growing one, plus the
raw syscalls (pwrite+fdatasync into a growing file and into a zero-filled one).
``--log-only`` stops after it. ``--quick`` (what ``python -m bench --quick`` runs) does a
short micro-benchmark and a short run of ours only (no pysyncobj), a few seconds in all.

Each system runs as a 3-member group of separate processes on 127.0.0.1 with a journal on
disk: ours fsyncs every batch (fdatasync before entries count), pysyncobj uses its file
journal (its fastest durable-looking setting; it never fsyncs). The same load generator
(this process, uvloop, pipelined binary protocol) sends 100-byte proposals to the leader
with 1 and with 256 in flight and records each proposal's latency until the leader
answers that it is committed and applied. pysyncobj runs with its default batching and
with batching off; the better of the two at each point is the one compared. The last line
is one JSON object.
"""
import argparse
import asyncio
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.peers import free_ports  # noqa: E402
from raftsqlite.testing.procs import die_with_parent, stop_procs  # noqa: E402

_HDR = struct.Struct("<IIB")
OP_PUT, OP_STATUS = 1, 4
VALUE = b"v" * 100


# ---- the pysyncobj member process -----------------------------------------------------

def pysyncobj_member(args):
    """One pysyncobj member speaking the demo's command protocol (PUT and STATUS)."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KV(SyncObj):
        def __init__(self, me, partners, conf):
            super().__init__(me, partners, conf)
            self.d = {}

        @replicated
        def put(self, k, v):
            self.d[k] = v
            return len(self.d)

    conf = SyncObjConf(journalFile=args.journal,
                       appendEntriesUseBatch=not args.pso_nobatch,
                       appendEntriesPeriod=args.pso_period,
                       dynamicMembershipChange=False)
    kv = KV(args.self_addr, args.partners.split(","), conf)

    async def serve():
        loop = asyncio.get_running_loop()

        class Conn(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.buf = bytearray()

            def reply(self, rid, status, payload):
                if not self.tr.is_closing():
                    self.tr.write(_HDR.pack(5 + len(payload), rid, status) + payload)

            def data_received(self, data):
                buf = self.buf
                buf += data
                pos = 0
                while len(buf) - pos >= 9:
                    blen, rid, op = _HDR.unpack_from(buf, pos)
                    if len(buf) - pos < 4 + blen:
                        break
                    payload = bytes(buf[pos + 9:pos + 4 + blen])
                    pos += 4 + blen
                    if op == OP_PUT:
                        k, _, v = payload.partition(b"=")

                        def cb(res, err, rid=rid):
                            loop.call_soon_threadsafe(
                                self.reply, rid, 0 if err == 0 else 1,
                                struct.pack("<Q", res or 0) if err == 0
                                else json.dumps({"error": str(err)}).encode())
                        kv.put(k, v, callback=cb)
                    elif op == OP_STATUS:
                        st = kv.getStatus()
                        lead = st.get("leader")
                        me = st.get("self")
                        self.reply(rid, 0, json.dumps({
                            "role": "leader" if lead is not None and str(lead) == str(me)
                            else "follower", "ready": kv.isReady()}).encode())
                del buf[:pos]
        await loop.create_server(Conn, "127.0.0.1", args.port)
        print("READY", flush=True)
        await asyncio.Event().wait()
    asyncio.run(serve())


# ---- log micro-benchmark ------------------------------------------------------------------

def _pcts(lat):
    lat = sorted(lat)
    if not lat:
        return {"p50_ms": None, "p99_ms": None, "n": 0}
    return {"p50_ms": round(lat[len(lat) // 2] * 1e3, 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 3),
            "mean_ms": round(sum(lat) / len(lat) * 1e3, 3), "n": len(lat)}


class _LogTarget:
    """``RaftLog.persist`` of one entry (prepare + pwrite + fdatasync + finish), in steady
    state: past the plain start segment, in a preallocated one if enabled."""

    def __init__(self, workdir, preallocate, entry_bytes=120):
        from raftsqlite.codec.model import Entry
        from raftsqlite.raft.log import PLAIN_SEGMENT_BYTES, RaftLog
        self.Entry = Entry
        self.dir = tempfile.mkdtemp(prefix="logmicro-", dir=workdir)
        self.log = RaftLog(self.dir, preallocate=preallocate)
        self.log.open()
        self.data = b"x" * entry_bytes
        self.idx = PLAIN_SEGMENT_BYTES // entry_bytes + 10
        self.log.persist(None, [Entry(1, i, data=self.data) for i in range(1, self.idx + 1)])
        if preallocate and not self.log.wait_spare(30):
            raise RuntimeError("spare segment not prepared within 30 s")

    def step(self):
        self.idx += 1
        self.log.persist(None, [self.Entry(1, self.idx, data=self.data)])

    def close(self):
        self.extra = {"segments_from_spare": self.log.stats()["segments_from_spare"]}
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class _RawTarget:
    """The syscalls alone: pwrite a record after the last one + fdatasync, into a file that
    grows with each write or one that is already zero-filled and synced."""

    def __init__(self, workdir, zero_filled, n, rec_bytes=150):
        self.path = os.path.join(workdir, f"raw-{int(zero_filled)}")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        if zero_filled:
            os.write(self.fd, bytes(-(-(n * rec_bytes + 4096) // 4096) * 4096))
            os.fdatasync(self.fd)
        self.rec = b"r" * rec_bytes
        self.off = 0
        self.extra = {}

    def step(self):
        os.pwrite(self.fd, self.rec, self.off)
        os.fdatasync(self.fd)
        self.off += len(self.rec)

    def close(self):
        os.close(self.fd)
        os.unlink(self.path)


def run_micro(workdir, n, quiet, raw=True, block=50):
    """Append + fdatasync latency per case. The cases take turns in blocks of ``block``
    appends (long enough that each runs as it would alone, short enough that a change in
    the machine's background load hits all of them alike)."""
    targets = {}
    if raw:
        targets["raw_growing"] = _RawTarget(workdir, False, n)
        targets["raw_zero_filled"] = _RawTarget(workdir, True, n)
    targets["log_growing"] = _LogTarget(workdir, False)
    targets["log_preallocated"] = _LogTarget(workdir, True)
    lat = {k: [] for k in targets}
    try:
        done = 0
        while done < n:
            m = min(block, n - done)
            for k, t in targets.items():
                for _ in range(m):
                    t0 = time.perf_counter()
                    t.step()
                    lat[k].append(time.perf_counter() - t0)
            done += m
    finally:
        for t in targets.values():
            t.close()
    out = {}
    for k, t in targets.items():
        out[k] = r = dict(_pcts(lat[k]), **t.extra)
        if not quiet:
            print(f"micro {k:17s}: append+fdatasync p50 {r['p50_ms']} ms  "
                  f"p99 {r['p99_ms']} ms  mean {r['mean_ms']} ms  (n={r['n']})", flush=True)
    return out


# ---- load generator ---------------------------------------------------------------------

class Load(asyncio.Protocol):
    """Keeps ``inflight`` PUTs outstanding; one write per batch of replies."""

    def __init__(self, inflight, deadline, prefix):
        self.inflight = inflight
        self.deadline = deadline
        self.prefix = prefix
        self.sent = {}
        self.lat = []
        self.errors = 0
        self.seq = 0
        self.buf = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def _req(self, now):
        self.seq += 1
        body = self.prefix + b"%d=" % self.seq + VALUE
        self.sent[self.seq] = now
        return _HDR.pack(5 + len(body), self.seq, OP_PUT) + body

    def connection_made(self, tr):
        self.tr = tr
        now = time.perf_counter()
        tr.write(b"".join(self._req(now) for _ in range(self.inflight)))

    def data_received(self, data):
        buf = self.buf
        buf += data
        pos = 0
        now = time.perf_counter()
        out = []
        more = now < self.deadline
        while len(buf) - pos >= 9:
            blen, rid, status = _HDR.unpack_from(buf, pos)
            if len(buf) - pos < 4 + blen:
                break
            pos += 4 + blen
            t = self.sent.pop(rid, None)
            if status == 0 and t is not None:
                self.lat.append(now - t)
            else:
                self.errors += 1
            if more:
                out.append(self._req(now))
        del buf[:pos]
        if out:
            self.tr.write(b"".join(out))
        if not self.sent and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def measure(port, inflight, seconds, prefix):
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    tr, proto = await loop.create_connection(
        lambda: Load(inflight, t0 + seconds, prefix), "127.0.0.1", port)
    await asyncio.wait_for(proto.done, seconds + 30)
    dt = time.perf_counter() - t0
    tr.close()
    lat = sorted(proto.lat)
    if not lat:
        return {"commits_s": 0.0, "p50_ms": None, "p99_ms": None, "errors": proto.errors}
    return {"commits_s": round(len(lat) / dt, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1e3, 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 3),
            "n": len(lat), "errors": proto.errors}


async def request(port, op, payload=b"", timeout=2.0):
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        w.write(_HDR.pack(5 + len(payload), 1, op) + payload)
        blen, _, status = _HDR.unpack(await asyncio.wait_for(r.readexactly(9), timeout))
        return status, await asyncio.wait_for(r.readexactly(blen - 5), timeout)
    finally:
        w.close()


async def find_leader(ports, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in ports:
            try:
                status, body = await request(p, OP_STATUS)
                if status == 0 and json.loads(body).get("role") == "leader":
                    return p
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                pass
        await asyncio.sleep(0.1)
    raise RuntimeError("no leader elected")


# ---- running a system ------------------------------------------------------------------------

class Group:
    def __init__(self, name, cmds, workdir):
        self.name = name
        self.procs = []
        env = dict(os.environ, PYTHONPATH=ROOT)
        for i, cmd in enumerate(cmds):
            logf = open(os.path.join(workdir, f"{name}-{i}.log"), "wb")
            self.procs.append(subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                               env=env, cwd=workdir,
                                               preexec_fn=die_with_parent()))
            logf.close()

    def stop(self):
        stop_procs(self.procs, 5)


def ours_cmds(workdir, fsync=True):
    ports = free_ports(6)
    raft = [f"127.0.0.1:{p}" for p in ports[:3]]
    peers = ",".join(f"n{i + 1}={a}" for i, a in enumerate(raft))
    cmds = []
    for i in range(3):
        c = [sys.executable, "-m", "raftsqlite.raft.demo", "--id", f"n{i + 1}",
             "--data", os.path.join(workdir, f"ours{i + 1}"), "--raft", raft[i],
             "--port", str(ports[3 + i]), "--peers", peers]
        if not fsync:
            c.append("--no-fsync")
        cmds.append(c)
    return cmds, ports[3:]


def pysyncobj_cmds(workdir, period, nobatch):
    ports = free_ports(6)
    raft = [f"127.0.0.1:{p}" for p in ports[:3]]
    cmds = []
    for i in range(3):
        cmds.append([sys.executable, os.path.abspath(__file__), "--pysyncobj-member",
                     "--self-addr", raft[i],
                     "--partners", ",".join(a for j, a in enumerate(raft) if j != i),
                     "--port", str(ports[3 + i]),
                     "--journal", os.path.join(workdir, f"pso{i + 1}-{nobatch}.journal"),
                     "--pso-period", str(period)] + (["--pso-nobatch"] if nobatch else []))
    return cmds, ports[3:]


# pysyncobj settings tried; the best result at each point is the one compared, so the
# ratio is never flattered by a badly tuned peer. Its defaults batch appends every 0.1 s
# (high throughput, ~100 ms latency); without batching it sends per command (low latency).
PSO_SETTINGS = [("pysyncobj", 0.1, False), ("pysyncobj-nobatch", 0.1, True)]


async def bench_system(name, cmds, ports, workdir, seconds, quiet, warm=1.0):
    g = Group(name, cmds, workdir)
    try:
        leader = await find_leader(ports)
        await measure(leader, 16, warm, b"warm-")        # connections, caches, JIT-free warmup
        leader = await find_leader(ports)
        res = {}
        for inflight in (1, 256):
            r = await measure(leader, inflight, seconds, b"%s-%d-" % (name.encode(), inflight))
            res[inflight] = r
            if not quiet:
                print(f"{name:10s} in-flight {inflight:4d}: {r['commits_s']:9.1f} commits/s  "
                      f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
                      f"(n={r.get('n', 0)}, errors={r['errors']})", flush=True)
        return res
    finally:
        g.stop()


async def amain(args):
    from raftsqlite import codec
    workdir = tempfile.mkdtemp(prefix="raft-bench-")
    quiet = args.json_only
    if not quiet:
        print(f"# python {platform.python_version()} on {platform.machine()}, "
              f"{os.cpu_count()} cpus; codec {codec.IMPLEMENTATION}; "
              f"workdir {workdir}", flush=True)
        print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}",
              flush=True)
        print("# 3 member processes each, 127.0.0.1, 100-byte proposals, "
              f"{args.seconds}s per point; ours fsync=on, pysyncobj file journal (no fsync)",
              flush=True)
    empty = {k: {"commits_s": 0.0, "p50_ms": None, "p99_ms": None} for k in (1, 256)}
    try:
        micro = run_micro(workdir, args.micro_n, quiet, raw=not args.quick)
        if args.log_only:
            print(json.dumps({"log_micro": micro, "codec": codec.IMPLEMENTATION}), flush=True)
            return
        if args.skip_ours:
            ours = empty
        else:
            cmds, ports = ours_cmds(workdir)
            ours = await bench_system("ours", cmds, ports, workdir, args.seconds, quiet,
                                      warm=0.3 if args.quick else 1.0)
        pso_all = {}
        for name, period, nobatch in ([] if args.quick else PSO_SETTINGS):
            cmds, ports = pysyncobj_cmds(workdir, period, nobatch)
            pso_all[name] = await bench_system(name, cmds, ports, workdir, args.seconds, quiet)
        pso = ({k: max((r[k] for r in pso_all.values()), key=lambda r: r["commits_s"])
                for k in (1, 256)} if pso_all else empty)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    out = {
        "ours_commits_s": ours[256]["commits_s"],
        "pysyncobj_commits_s": pso[256]["commits_s"],
        "ratio": (round(ours[256]["commits_s"] / pso[256]["commits_s"], 2)
                  if pso[256]["commits_s"] else None),
        "ours_p50_ms_1": ours[1]["p50_ms"],
        "ours_p99_ms_1": ours[1]["p99_ms"],
        "ours_p50_ms_256": ours[256]["p50_ms"],
        "ours_p99_ms_256": ours[256]["p99_ms"],
        "ours_commits_s_1": ours[1]["commits_s"],
        "pysyncobj_commits_s_1": pso[1]["commits_s"],
        "pysyncobj_p50_ms_1": pso[1]["p50_ms"],
        "pysyncobj_p50_ms_256": pso[256]["p50_ms"],
        "pysyncobj_p99_ms_256": pso[256]["p99_ms"],
        "pysyncobj_by_setting": {n: {k: r[k]["commits_s"] for k in (1, 256)}
                                 for n, r in pso_all.items()},
        "codec": codec.IMPLEMENTATION,
        "fsync": True,
        "seconds": args.seconds,
        "quick": args.quick,
        "log_micro": micro,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per point")
    p.add_argument("--json-only", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds in all: short micro-benchmark, ours only, 0.5 s points")
    p.add_argument("--log-only", action="store_true", help="only the log micro-benchmark")
    p.add_argument("--micro-n", type=int, default=None,
                   help="appends per micro-benchmark case (default 1000; 150 with --quick)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, journals)")
    p.add_argument("--pysyncobj-member", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--self-addr", help=argparse.SUPPRESS)
    p.add_argument("--partners", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--journal", help=argparse.SUPPRESS)
    p.add_argument("--pso-period", type=float, default=0.1, help=argparse.SUPPRESS)
    p.add_argument("--pso-nobatch", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-ours", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pysyncobj_member:
        pysyncobj_member(args)
        return
    if args.micro_n is None:
        args.micro_n = 150 if args.quick else 1000
    if args.quick and "--seconds" not in sys.argv:
        args.seconds = 0.5
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
