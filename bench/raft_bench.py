"""Raft engine throughput and latency: ours against pysyncobj 0.3.17, in one invocation.

    python bench/raft_bench.py [--seconds 5] [--json-only]

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
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_HDR = struct.Struct("<IIB")
OP_PUT, OP_STATUS = 1, 4
VALUE = b"v" * 100


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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
                                               env=env, cwd=workdir))
            logf.close()

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


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


async def bench_system(name, cmds, ports, workdir, seconds, quiet):
    g = Group(name, cmds, workdir)
    try:
        leader = await find_leader(ports)
        await measure(leader, 16, 1.0, b"warm-")         # connections, caches, JIT-free warmup
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
    try:
        if args.skip_ours:
            ours = {k: {"commits_s": 0.0, "p50_ms": None, "p99_ms": None} for k in (1, 256)}
        else:
            cmds, ports = ours_cmds(workdir)
            ours = await bench_system("ours", cmds, ports, workdir, args.seconds, quiet)
        pso_all = {}
        for name, period, nobatch in PSO_SETTINGS:
            cmds, ports = pysyncobj_cmds(workdir, period, nobatch)
            pso_all[name] = await bench_system(name, cmds, ports, workdir, args.seconds, quiet)
        pso = {k: max((r[k] for r in pso_all.values()), key=lambda r: r["commits_s"])
               for k in (1, 256)}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    out = {
        "ours_commits_s": ours[256]["commits_s"],
        "pysyncobj_commits_s": pso[256]["commits_s"],
        "ratio": round(ours[256]["commits_s"] / max(pso[256]["commits_s"], 1e-9), 2),
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
    }
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per point")
    p.add_argument("--json-only", action="store_true")
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
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
