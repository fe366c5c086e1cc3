"""A tiny Raft-only process: a RaftNode with an in-memory key-value state machine and a
binary command port. Used by the real-process tests and bench/raft_bench.py to exercise
the engine without SQLite or HTTP.

    python -m raftsqlite.raft.demo --id n1 --data /tmp/n1 --raft 127.0.0.1:7001 \\
        --port 7101 --peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003

On a fresh data dir every member listed in ``--peers`` bootstraps the same membership;
on restart the log decides. Command protocol (pipelined): request ``u32 len, u32 id,
u8 op, payload``; response ``u32 len, u32 id, u8 status (0 ok, 1 error), payload``.
"""
import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import struct
import sys

from raftsqlite import errors
from raftsqlite.codec.model import EntryType, Member
from raftsqlite.raft.config import RaftConfig, split_addr
from raftsqlite.raft.driver import RaftNode

OP_PUT, OP_GET, OP_GET_LOCAL, OP_STATUS, OP_ADD, OP_REMOVE, OP_TRANSFER = range(1, 8)
_HDR = struct.Struct("<IIB")   # body length (after the first 4 bytes), id, op/status
_KV = struct.Struct("<I")


class KVStateMachine:
    """In memory: after a restart it is rebuilt from the latest snapshot plus the log."""

    def __init__(self):
        self.data = {}
        self.applied = 0
        self.applied_term = 0

    def applied_index(self):
        return self.applied

    def apply(self, entries):
        out = []
        data = self.data
        for e in entries:
            if e.type == EntryType.NORMAL and e.data:
                k = e.data.find(b"=")
                data[bytes(e.data[:k])] = bytes(e.data[k + 1:])
            out.append(e.index)
            self.applied = e.index
            self.applied_term = e.term
        return out

    def snapshot(self, path):
        with open(path, "wb") as f:
            for k, v in self.data.items():
                f.write(_KV.pack(len(k)) + k + _KV.pack(len(v)) + v)
            f.flush()
            os.fsync(f.fileno())
        return self.applied, self.applied_term

    def restore(self, path, meta):
        data = {}
        with open(path, "rb") as f:
            buf = f.read()
        off = 0
        while off < len(buf):
            (n,) = _KV.unpack_from(buf, off)
            k = buf[off + 4:off + 4 + n]
            off += 4 + n
            (n,) = _KV.unpack_from(buf, off)
            data[k] = buf[off + 4:off + 4 + n]
            off += 4 + n
        self.data = data
        self.applied = meta.index
        self.applied_term = meta.term

    def digest(self):
        h = hashlib.sha256()
        for k in sorted(self.data):
            h.update(k + b"\0" + self.data[k] + b"\0")
        return h.hexdigest()


class _Conn(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.buf = bytearray()
        self.tr = None

    def connection_made(self, tr):
        self.tr = tr

    def data_received(self, data):
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 9:
            (blen,) = _KV.unpack_from(buf, pos)
            if n - pos < 4 + blen:
                break
            _, rid, op = _HDR.unpack_from(buf, pos)
            payload = bytes(buf[pos + 9:pos + 4 + blen])
            pos += 4 + blen
            self.server.handle(self, rid, op, payload)
        if pos:
            del buf[:pos]

    def reply(self, rid, status, payload):
        if not self.tr.is_closing():
            self.tr.write(_HDR.pack(5 + len(payload), rid, status) + payload)


class DemoServer:
    def __init__(self, node, fsm):
        self.node = node
        self.fsm = fsm
        self.loop = asyncio.get_running_loop()

    def handle(self, conn, rid, op, payload):
        if op == OP_PUT:
            try:
                fut = self.node.propose_future(payload)
            except Exception as e:
                fut = self.loop.create_future()
                fut.set_exception(e)
            fut.add_done_callback(lambda f: self._done(conn, rid, f, _u64))
        elif op == OP_GET_LOCAL:
            conn.reply(rid, 0, self.fsm.data.get(payload, b""))
        elif op == OP_STATUS:
            s = self.node.stats()
            s.update(keys=len(self.fsm.data), digest=self.fsm.digest(), pid=os.getpid(),
                     members=[m.node_id for m in self.node.members])
            conn.reply(rid, 0, json.dumps(s, default=str).encode())
        else:
            t = asyncio.ensure_future(self._slow(op, payload))
            t.add_done_callback(lambda f: self._done(conn, rid, f, lambda r: r or b""))

    async def _slow(self, op, payload):
        if op == OP_GET:
            await self.node.read_index()
            return self.fsm.data.get(payload, b"")
        args = json.loads(payload or b"{}")
        if op == OP_ADD:
            await self.node.add_member(args["id"], args["raft"], "", args.get("voter", True))
        elif op == OP_REMOVE:
            await self.node.remove_member(args["id"])
        elif op == OP_TRANSFER:
            await self.node.transfer_leadership(args.get("to"))
        else:
            raise errors.BadRequest(f"unknown op {op}")
        return b""

    def _done(self, conn, rid, fut, render):
        exc = fut.exception()
        if exc is None:
            conn.reply(rid, 0, render(fut.result()))
        else:
            body = {"code": getattr(exc, "code", "error"), "error": str(exc),
                    "leader": getattr(exc, "leader_id", None)}
            conn.reply(rid, 1, json.dumps(body).encode())


def _u64(v):
    return struct.pack("<Q", v)


class DemoError(Exception):
    def __init__(self, body):
        super().__init__(body.get("error"))
        self.code = body.get("code")
        self.leader = body.get("leader")


class DemoClient:
    """Pipelined asyncio client of the command port."""

    def __init__(self):
        self.reader = self.writer = None
        self.waiting = {}
        self.next_id = 0
        self.task = None

    async def connect(self, host, port, timeout=5.0):
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), timeout)
        self.task = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def _read_loop(self):
        try:
            while True:
                hdr = await self.reader.readexactly(9)
                blen, rid, status = _HDR.unpack(hdr)
                payload = await self.reader.readexactly(blen - 5)
                fut = self.waiting.pop(rid, None)
                if fut is not None and not fut.done():
                    if status == 0:
                        fut.set_result(payload)
                    else:
                        fut.set_exception(DemoError(json.loads(payload)))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            for f in self.waiting.values():
                if not f.done():
                    f.set_exception(ConnectionError(f"connection closed: {e!r}"))
            self.waiting.clear()

    def request_nowait(self, op, payload=b""):
        self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        fut = asyncio.get_running_loop().create_future()
        if self.task.done():
            fut.set_exception(ConnectionError("connection closed"))
            return fut
        self.waiting[self.next_id] = fut
        self.writer.write(_HDR.pack(5 + len(payload), self.next_id, op) + payload)
        return fut

    async def request(self, op, payload=b"", timeout=10.0):
        return await asyncio.wait_for(self.request_nowait(op, payload), timeout)

    async def put(self, key, value, timeout=10.0):
        return struct.unpack("<Q", await self.request(OP_PUT, key + b"=" + value, timeout))[0]

    async def status(self, timeout=5.0):
        return json.loads(await self.request(OP_STATUS, b"", timeout))

    async def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m raftsqlite.raft.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--raft", required=True, help="host:port of the Raft transport")
    p.add_argument("--port", type=int, required=True, help="command port on 127.0.0.1")
    p.add_argument("--peers", default="", help="id=host:port,... initial members "
                                               "(bootstrapped on a fresh data dir)")
    p.add_argument("--join", action="store_true", help="start empty; wait to be added")
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--tick", type=float, default=RaftConfig.tick_interval)
    p.add_argument("--snapshot-threshold", type=int, default=RaftConfig.snapshot_threshold)
    p.add_argument("--snapshot-trailing", type=int, default=RaftConfig.snapshot_trailing)
    p.add_argument("--segment-bytes", type=int, default=RaftConfig.segment_bytes)
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


async def amain(args):
    cfg = RaftConfig(node_id=args.id, data_dir=args.data, raft_addr=args.raft,
                     fsync=not args.no_fsync, tick_interval=args.tick,
                     snapshot_threshold=args.snapshot_threshold,
                     snapshot_trailing=args.snapshot_trailing,
                     segment_bytes=args.segment_bytes,
                     cluster_id="raftsqlite-demo")
    fsm = KVStateMachine()
    node = RaftNode(cfg, fsm)
    await node.start()
    if args.peers and not args.join and node.last_log_index == 0 \
            and node.last_snapshot_index == 0:
        members = []
        for part in args.peers.split(","):
            nid, _, addr = part.partition("=")
            split_addr(addr)
            members.append(Member(nid, addr, "", True))
        await node.bootstrap(members)
    server = DemoServer(node, fsm)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _Conn(server), "127.0.0.1", args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {args.id} pid={os.getpid()}", flush=True)
    await stop.wait()
    srv.close()
    await node.stop()


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s {args.id} %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(amain(args))
    except errors.RaftSQLiteError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
