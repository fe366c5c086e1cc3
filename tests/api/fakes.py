"""A fake store honouring the HTTP layer's Store protocol (raftsqlite/http/backend.py),
running real SQL on stdlib sqlite3 so result shapes are realistic. Several fakes can
share one database to play the members of one group: the leader executes, followers
raise NotLeader for anything needing the leader, and read locally at level none."""
import sqlite3
import threading
import time
from types import SimpleNamespace

from raftsqlite import errors
from raftsqlite.codec.model import Member
from raftsqlite.db_shapes import storage_class


_type_of = storage_class   # rqlite's name for a value's type (db_shapes)


class Cluster:
    """Shared state of a fake group: one database, the members, who leads."""

    def __init__(self):
        self.conn = sqlite3.connect(":memory:", check_same_thread=False,
                                    isolation_level=None)
        self.lock = threading.Lock()
        self.members = []
        self.leader_id = None
        self.raft_index = 0


class FakeStore:
    def __init__(self, cluster, node_id, http_addr="", raft_addr="", voter=True):
        self.cluster = cluster
        self.node_id = node_id
        self.member = Member(node_id, raft_addr or f"{node_id}:raft", http_addr, voter)
        cluster.members.append(self.member)
        self.calls = []
        self.is_ready = True
        self.delay = 0.0
        self.stale = False
        self.fail_with = None  # an exception every SQL call raises

    # ---- roles ----
    def leader(self):
        for m in self.cluster.members:
            if m.node_id == self.cluster.leader_id:
                return m
        return None

    def is_leader(self):
        return self.cluster.leader_id == self.node_id

    def members(self):
        return list(self.cluster.members)

    def ready(self):
        return self.is_ready

    def _need_leader(self):
        if not self.is_leader():
            m = self.leader()
            raise errors.NotLeader(leader_id=m.node_id if m else None,
                                   leader_addr=m.http_addr if m else None)

    # ---- SQL ----
    def _run(self, statements, transaction, reads_only=False):
        conn = self.cluster.conn
        out = []
        with self.cluster.lock:
            if transaction:
                conn.execute("BEGIN")
            for st in statements:
                t0 = time.perf_counter()
                try:
                    cur = conn.execute(st.sql, st.params if st.params is not None else ())
                    if cur.description is not None:
                        rows = [list(r) for r in cur.fetchall()]
                        cols = [d[0] for d in cur.description]
                        types = [_type_of(rows[0][i]) if rows else "" for i in range(len(cols))]
                        r = {"columns": cols, "types": types, "values": rows}
                    else:
                        r = {"last_insert_id": cur.lastrowid or 0,
                             "rows_affected": max(cur.rowcount, 0)}
                except (sqlite3.Error, OverflowError, ValueError) as e:
                    r = {"error": str(e)}
                r["time"] = time.perf_counter() - t0
                out.append(r)
                if "error" in r and transaction:
                    conn.execute("ROLLBACK")
                    transaction = False
                    break
            if transaction:
                conn.execute("COMMIT")
        return out

    async def _pre(self, name, kw):
        self.calls.append((name, kw))
        if self.fail_with is not None:
            raise self.fail_with
        if self.delay:
            import asyncio
            await asyncio.sleep(self.delay)

    async def execute(self, statements, *, transaction=False, request_id=None, timeout=None,
                      lazy_results=False):
        await self._pre("execute", {"n": len(statements), "transaction": transaction,
                                    "timeout": timeout, "request_id": request_id})
        self._need_leader()
        res = self._run(statements, transaction)
        self.cluster.raft_index += 1
        return {"results": res, "raft_index": self.cluster.raft_index}

    async def query(self, statements, *, level="weak", freshness=None, freshness_strict=False,
                    transaction=False, db_timeout=None, timeout=None):
        await self._pre("query", {"level": level, "freshness": freshness,
                                  "freshness_strict": freshness_strict,
                                  "db_timeout": db_timeout, "timeout": timeout})
        if level != "none":
            self._need_leader()
        elif self.stale and freshness_strict:
            raise errors.StaleRead("stale read")
        return {"results": self._run(statements, transaction)}

    async def request(self, statements, *, transaction=False, request_id=None, level="weak",
                      freshness=None, freshness_strict=False, db_timeout=None, timeout=None):
        await self._pre("request", {"level": level, "request_id": request_id})
        self._need_leader()
        self.cluster.raft_index += 1
        return {"results": self._run(statements, transaction),
                "raft_index": self.cluster.raft_index}

    # ---- membership ----
    async def join(self, node_id, raft_addr, http_addr, voter=True):
        await self._pre("join", {"node_id": node_id, "voter": voter})
        self._need_leader()
        if not any(m.node_id == node_id for m in self.cluster.members):
            self.cluster.members.append(Member(node_id, raft_addr, http_addr, voter))

    async def remove(self, node_id):
        await self._pre("remove", {"node_id": node_id})
        self._need_leader()
        before = len(self.cluster.members)
        self.cluster.members = [m for m in self.cluster.members if m.node_id != node_id]
        if len(self.cluster.members) == before:
            raise errors.NotFound(f"node {node_id} is not a member")

    async def transfer_leadership(self, to=None):
        await self._pre("transfer", {"to": to})
        self._need_leader()
        others = [m for m in self.cluster.members if m.node_id != self.node_id and m.voter]
        target = to or (others[0].node_id if others else None)
        if target is None or not any(m.node_id == target for m in others):
            raise errors.BadRequest(f"cannot transfer leadership to {target!r}")
        self.cluster.leader_id = target

    async def snapshot(self):
        await self._pre("snapshot", {})
        return True

    async def backup(self, path, *, fmt="binary", tables=None):
        await self._pre("backup", {"fmt": fmt, "tables": tables})
        with self.cluster.lock:
            if fmt == "sql":
                with open(path, "w") as f:
                    for line in self.cluster.conn.iterdump():
                        f.write(line + "\n")
            else:
                dst = sqlite3.connect(path)
                self.cluster.conn.backup(dst)
                dst.close()

    async def load(self, path, *, fmt="sqlite"):
        await self._pre("load", {"fmt": fmt})
        self._need_leader()
        with self.cluster.lock:
            if fmt == "sqlite":
                try:
                    src = sqlite3.connect(path)
                    src.backup(self.cluster.conn)
                    src.close()
                except sqlite3.DatabaseError as e:
                    raise errors.BadRequest(f"not a valid SQLite database: {e}") from None
                return {"results": []}
            with open(path) as f:
                try:
                    self.cluster.conn.executescript(f.read())
                except sqlite3.Error as e:
                    return {"results": [{"error": str(e)}]}
            return {"results": [{"last_insert_id": 0, "rows_affected": 0}]}

    # ---- status ----
    def status(self):
        ldr = self.leader()
        return {
            "raft": {"state": "Leader" if self.is_leader() else "Follower",
                     "voter": self.member.voter, "commit_index": self.cluster.raft_index,
                     "applied_index": self.cluster.raft_index,
                     "last_log_index": self.cluster.raft_index, "last_snapshot_index": 0},
            "leader": {"node_id": ldr.node_id if ldr else "",
                       "addr": ldr.raft_addr if ldr else ""},
            "fsm_index": self.cluster.raft_index,
            "db_applied_index": self.cluster.raft_index,
            "sqlite3": {"path": ":memory:"},
        }

    def stats(self):
        return {"calls": len(self.calls)}


class FakeNode:
    def __init__(self, store, **config):
        self.store = store
        cfg = {"node_id": store.node_id, "voter": store.member.voter}
        cfg.update(config)
        self.config = SimpleNamespace(**cfg)

    def stats(self):
        return {"store": self.store.stats(), "raft": {"term": 1}}
