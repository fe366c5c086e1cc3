"""Deterministic simulator for the Raft core: N cores in one process on a simulated
network, disk and clock, all driven by one seeded ``random.Random``.

Faults: message delay, loss, duplication and reordering; partitions; crash and restart
losing every write not yet fsynced (a crash during a Ready keeps a random prefix of its
writes, as a torn append would); state machines that lose their own state back to the
last snapshot; membership changes (add learner, promote, demote, remove, the leader
included) and leadership transfers mid-run; snapshots with log compaction.

Checked continuously: at most one leader per term; log matching (same index and term ->
same entry and same previous term); leader completeness (a new leader of term T holds
every entry committed by a leader of a term < T); state-machine safety (one entry per
index, applied in order, everywhere). Checked at the end, after healing: every
acknowledged proposal is applied on every member and never lost; definitely failed ones
are absent; all members converge to the same state; a register workload (write, cas,
reads through the log and linearizable ReadIndex reads, on followers too) is
linearizable against the committed order.

    python -m raftsqlite.raft.sim --seeds 500          # seeds 0..499
    python -m raftsqlite.raft.sim --seed 1234 -v       # replay one seed
"""
import argparse
import heapq
import random
import sys
import time

from raftsqlite import errors
from raftsqlite.codec import decode_conf_change
from raftsqlite.codec.model import (ConfChange, ConfChangeType, EntryType, Member, Message,
                                    MsgType)
from raftsqlite.raft.core import CoreConfig, RaftCore
from raftsqlite.raft.memlog import MemLog
from raftsqlite.raft.reaper import Reaper
from raftsqlite.raft.simcheck import check_linearizable
from raftsqlite.raft.simfaults import FaultsMixin

TICK = 10            # ms of simulated time per core tick
OP_TIMEOUT = 400     # ms before a client gives up on an operation (outcome unknown)
KEYS = ("x", "y", "z")
DURATION = 3000     # ms of faults and load per seed, then heal and converge
STUCK = 10000       # ms without any progress after healing that count as a liveness failure


class SimFailure(AssertionError):
    pass


class Op:
    __slots__ = ("id", "kind", "key", "a", "b", "invoke", "complete", "status", "result",
                 "position", "client", "node")

    def __init__(self, oid, kind, key, a, b, invoke, client):
        self.id, self.kind, self.key, self.a, self.b = oid, kind, key, a, b
        self.invoke, self.client = invoke, client
        self.complete = None
        self.status = None     # "ok", "fail" (definitely no effect), "unknown"
        self.result = None
        self.position = None   # log index (log ops) or applied index read at (ReadIndex)
        self.node = None

    def data(self):
        return f"{self.id}:{self.kind}:{self.key}:{self.a}:{self.b}".encode()

    def __repr__(self):
        return (f"Op#{self.id}({self.kind} {self.key} {self.a} {self.b} on {self.node} "
                f"[{self.invoke},{self.complete}] {self.status} res={self.result} pos={self.position})")


class Params:
    """Everything a run varies, drawn from the seed's generator."""

    def __init__(self, rng, duration):
        self.n_initial = rng.choice((1, 3, 3, 3, 5, 5))
        self.loss = rng.choice((0.0, 0.0, 0.01, 0.05, 0.15))
        self.dup = rng.choice((0.0, 0.02, 0.1))
        self.delay_max = rng.choice((1, 3, 8, 20))
        self.spike = rng.choice((0.0, 0.01, 0.05))
        self.disk_max = rng.choice((0, 1, 2, 5))
        self.disk_spike = rng.choice((0.0, 0.0, 0.05, 0.3))   # share of fsyncs taking 20-60 ms
        self.crash_every = rng.choice((0, 150, 400, 1000))
        self.fsm_loss = rng.choice((0.0, 0.3))
        self.partition_every = rng.choice((0, 200, 500))
        self.member_every = rng.choice((0, 60, 150, 400))
        self.transfer_every = rng.choice((0, 100, 300))
        self.snap_every = rng.choice((3, 8, 30, 10**9))
        self.clients = rng.randint(1, 4)
        self.think_max = rng.choice((0, 5, 20))
        self.duration = duration
        self.cfg = CoreConfig(
            election_tick=10, heartbeat_tick=rng.choice((1, 1, 2, 3)),
            pre_vote=rng.random() < 0.8, check_quorum=rng.random() < 0.8,
            max_msg_bytes=rng.choice((40, 200, 1 << 20)),
            max_inflight=rng.choice((1, 2, 4, 64)),
            max_committed_bytes=rng.choice((40, 500, 1 << 20)))

    def __repr__(self):
        return " ".join(f"{k}={v}" for k, v in vars(self).items())


class SimNode:
    def __init__(self, nid):
        self.id = nid
        self.disk = MemLog()
        self.core = None
        self.inc = 0                 # incarnation: events of a crashed life are ignored
        self.state = {}              # the register state machine (durable, like SQLite)
        self.applied = 0
        self.busy = None             # (Ready, sent_early) while its step 1 is "on disk"
        self.props = {}              # index -> (term, Op)
        self.reads = {}              # context -> Op waiting for a ReadState
        self.read_wait = []          # (read index, Op) waiting for apply
        self.recv_snaps = {}         # (index, term) -> snapshot image received
        self.removed = False         # its removal is committed: it will be shut down
        self.gone = False            # shut down for good
        self.boot = None             # members to bootstrap with (the initial nodes)
        self.commit_seen = 0


class Sim(FaultsMixin):
    def __init__(self, seed, duration=DURATION, verbose=False, reap=None):
        self.seed = seed
        # reap=(voter ticks, learner ticks): leaders reap silent members (raft/reaper.py).
        # Off by default, and drawing nothing from the seed's generator, so every seed
        # without it replays as before.
        self.rng = random.Random(seed)
        self.p = Params(self.rng, duration)
        self.reaper = Reaper(reap[0], reap[1], self.p.cfg.election_tick) if reap else None
        self.verbose = verbose
        self.now = 0
        self._q = []
        self._seq = 0
        self.nodes = {}
        self._next_node = 1
        self._next_op = 1
        self.groups = None           # partition: node id -> side
        self.loss = self.p.loss
        self.active = True
        self.global_log = {}         # index -> (term, data) of the first apply anywhere
        self.commit_term = {}        # index -> lowest leader term that committed it
        self.leaders = {}            # term -> node id
        self.seen = {}               # (index, term) -> (data, previous term)
        self.op_index = {}           # op id -> log index it committed at
        self.ops = []
        self.client_leader = {}
        self.stats = {"events": 0, "msgs": 0, "crashes": 0, "partitions": 0,
                      "conf_changes": 0, "transfers": 0, "snapshots": 0,
                      "snapshots_installed": 0, "leaders": 0, "reaped": 0}

    # ---- event queue -------------------------------------------------------------

    def at(self, t, fn, *args):
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, fn, args))

    def log(self, *a):
        if self.verbose:
            print(f"[{self.now:6d}]", *a)

    def fail(self, msg):
        raise SimFailure(f"seed {self.seed} at t={self.now}: {msg}")

    # ---- nodes -----------------------------------------------------------------------

    def _new_node(self):
        nid = f"n{self._next_node}"
        self._next_node += 1
        node = SimNode(nid)
        self.nodes[nid] = node
        return node

    def _start(self, node):
        if node.gone:
            return
        d = node.disk
        if node.applied < d.snapshot_meta().index:
            # A crash between the log reset and the state-machine restore of a snapshot
            # install: the driver restores from the snapshot file at start.
            node.state = dict(d.snapshot_data)
            node.applied = d.snapshot_meta().index
        node.core = RaftCore(node.id, d, self.p.cfg, random.Random(self.rng.random()),
                             applied=node.applied)
        if node.boot:
            node.core.bootstrap(node.boot)     # completes one a crash cut short
        node.commit_seen = node.core.commit
        self.at(self.now + self.rng.randint(1, TICK), self._tick, node, node.inc)

    def live(self):
        return [n for n in self.nodes.values() if n.core is not None]

    def leader(self):
        best = None
        for n in self.live():
            if n.core.is_leader and (best is None or n.core.term > best.core.term):
                best = n
        return best

    # ---- driving a core ----------------------------------------------------------------

    def _after(self, node):
        core = node.core
        if core is None:
            return
        if core.is_leader:
            t = core.term
            who = self.leaders.get(t)
            if who is None:
                self.leaders[t] = node.id
                self.log(node.id, "leader of term", t)
                self._check_leader_completeness(node)
            elif who != node.id:
                self.fail(f"two leaders in term {t}: {who} and {node.id}")
            for i in range(node.commit_seen + 1, core.commit + 1):
                ct = self.commit_term.get(i)
                if ct is None or ct[0] > t:
                    self.commit_term[i] = (t, core.log_term(i))
        if core.commit > node.commit_seen:
            node.commit_seen = core.commit
        self._pump(node)

    def _check_leader_completeness(self, node):
        core = node.core
        first = core.first_index
        for i, (ct, et) in self.commit_term.items():
            if ct < core.term and i >= first and core.log_term(i) != et:
                self.fail(f"leader {node.id} of term {core.term} lacks entry {i} (term {et}) "
                          f"committed in term {ct}; has term {core.log_term(i)}")

    def _pump(self, node):
        while node.core is not None and node.busy is None and node.core.has_ready():
            rd = node.core.ready()
            if rd.send_early:
                for m in rd.messages:
                    self._send(node, m)
            prev_t = node.core.log_term(rd.entries[0].index - 1) if rd.entries else None
            node.busy = (rd, rd.send_early, prev_t)
            needs_disk = rd.entries or rd.hard_state is not None or rd.snapshot is not None
            p = self.p
            if needs_disk and (p.disk_max or p.disk_spike):
                d = self.rng.randint(0, p.disk_max)
                if p.disk_spike and self.rng.random() < p.disk_spike:
                    d += self.rng.randint(20, 60)
                self.at(self.now + d, self._ready_done, node, node.inc)
                return
            self._ready_done(node, node.inc, pump=False)

    def _ready_done(self, node, inc, pump=True):
        if node.inc != inc or node.busy is None:
            return
        rd, sent, prev_t = node.busy
        data = None
        if rd.snapshot is not None:
            s = rd.snapshot
            data = node.recv_snaps.get((s.index, s.term))
            if data is None:
                self.fail(f"{node.id}: snapshot {s.index}/{s.term} installed but never received")
            node.recv_snaps = {k: v for k, v in node.recv_snaps.items() if k[0] > s.index}
            self._drop_pending(node, s.index)
        if rd.entries:
            self._check_entries(node, rd.entries, prev_t)
        node.disk.apply_ready(rd, data)
        if rd.snapshot is not None:
            node.state = dict(data)
            node.applied = rd.snapshot.index
            self.stats["snapshots_installed"] += 1
        if not sent:
            for m in rd.messages:
                self._send(node, m)
        for e in rd.committed:
            self._apply(node, e)
        for rs in rd.read_states:
            op = node.reads.pop(rs.context, None)
            if op is not None:
                node.read_wait.append((rs.index, op))
        self._serve_reads(node)
        node.busy = None
        node.core.advance(rd)
        if rd.entries and node.core.alone:
            # As the driver: a leader alone in its group applies what just became
            # durable in the same pass (no second Ready). A group with peers never
            # gets here, so its runs are unchanged.
            for e in node.core.take_committed():
                self._apply(node, e)
            self._serve_reads(node)
        self._maybe_compact(node)
        if pump:
            self._after(node)

    def _check_entries(self, node, ents, prev_t):
        for e in ents:
            key = (e.index, e.term)
            got = self.seen.get(key)
            if got is None:
                self.seen[key] = (e.data, prev_t)
            elif got != (e.data, prev_t):
                self.fail(f"log matching: {node.id} entry {key} {e.data!r} prev term {prev_t} "
                          f"!= {got}")
            prev_t = e.term

    def _maybe_compact(self, node):
        d = node.disk
        si = d.snapshot_meta().index
        if node.applied - si >= self.p.snap_every and node.applied <= d.last_index():
            d.compact(node.applied, node.core.members_at(node.applied), dict(node.state))
            self.stats["snapshots"] += 1

    # ---- the replicated state machine ------------------------------------------------

    def _apply(self, node, e):
        i = e.index
        if i <= node.applied:
            return  # replay after a restart: the state machine already has it
        if i != node.applied + 1:
            self.fail(f"{node.id} applies {i} after {node.applied}")
        g = self.global_log.get(i)
        if g is None:
            self.global_log[i] = (e.term, e.data)
            self._first_apply(e)
        elif g != (e.term, e.data):
            self.fail(f"state machine safety: {node.id} applies {i} = {(e.term, e.data)} "
                      f"but another member applied {g}")
        node.applied = i
        result = None
        if e.type == EntryType.NORMAL and e.data:
            oid, kind, key, a, b = e.data.decode().split(":")
            cur = node.state.get(key)
            if kind == "w":
                node.state[key] = a
            elif kind == "c":
                result = cur == a
                if result:
                    node.state[key] = b
            elif kind == "r":
                result = cur
        p = node.props.pop(i, None)
        if p is not None:
            term, op = p
            if term == e.term:
                self._complete(op, "ok", result, i)
            else:
                self._complete(op, "fail")

    def _first_apply(self, e):
        if e.type == EntryType.CONF_CHANGE:
            cc = decode_conf_change(e.data)
            self.stats["conf_changes"] += 1
            self.log("conf change applied", e.index, cc)
            if cc.type == ConfChangeType.REMOVE:
                n = self.nodes.get(cc.node_id)
                if n is not None and not n.removed:
                    n.removed = True
                    self.at(self.now + self.rng.randint(0, 300), self._shutdown, n)
        elif e.data:
            oid = int(e.data.split(b":", 1)[0])
            if oid in self.op_index:
                self.fail(f"op {oid} committed twice: {self.op_index[oid]} and {e.index}")
            self.op_index[oid] = e.index

    def _serve_reads(self, node):
        if not node.read_wait:
            return
        keep = []
        for idx, op in node.read_wait:
            if node.applied >= idx:
                self._complete(op, "ok", node.state.get(op.key), node.applied)
            else:
                keep.append((idx, op))
        node.read_wait = keep

    def _drop_pending(self, node, upto):
        for i in [i for i in node.props if i <= upto]:
            self._complete(node.props.pop(i)[1], "unknown")

    # ---- network -----------------------------------------------------------------------

    def _cut(self, a, b):
        g = self.groups
        return g is not None and a in g and b in g and g[a] != g[b]

    def _delay(self):
        d = self.rng.randint(1, self.p.delay_max)
        if self.p.spike and self.rng.random() < self.p.spike:
            d += self.rng.randint(20, 150)
        return d

    def _send(self, src, m):
        self.stats["msgs"] += 1
        dst = self.nodes.get(m.to)
        if dst is None:
            return
        lost = self._cut(src.id, m.to) or (self.loss and self.rng.random() < self.loss)
        if m.type == MsgType.SNAPSHOT:
            if lost:
                self.at(self.now + self._delay(), self._snap_report, src, src.inc, m.to, False)
                return
            meta = src.disk.snapshot_meta()
            msg = Message(MsgType.SNAPSHOT, frm=m.frm, to=m.to, term=m.term, snapshot=meta, done=True)
            self.at(self.now + self._delay() * 3, self._deliver_snap, dst, msg,
                    dict(src.disk.snapshot_data or {}), src, src.inc)
            return
        if lost:
            return
        self.at(self.now + self._delay(), self._deliver, dst, m)
        if self.p.dup and self.rng.random() < self.p.dup:
            self.at(self.now + self._delay(), self._deliver, dst, m)

    def _deliver(self, dst, m):
        if dst.core is None or self._cut(m.frm, dst.id):
            return
        dst.core.step(m)
        self._after(dst)

    def _deliver_snap(self, dst, m, data, src, src_inc):
        ok = dst.core is not None and not self._cut(m.frm, dst.id)
        if ok:
            dst.recv_snaps[(m.snapshot.index, m.snapshot.term)] = data
            dst.core.step(m)
            self._after(dst)
        self.at(self.now + self._delay(), self._snap_report, src, src_inc, dst.id, ok)

    def _snap_report(self, src, inc, to, ok):
        if src.inc == inc and src.core is not None:
            src.core.report_snapshot(to, ok)
            self._after(src)

    # ---- time (faults: simfaults.py) ------------------------------------------------

    def _tick(self, node, inc):
        if node.inc != inc or node.core is None:
            return
        node.core.tick()
        if self.reaper is not None and node.core.is_leader:
            self._reap(node.core)
        self._after(node)
        self.at(self.now + TICK, self._tick, node, inc)

    def _reap(self, core):
        pick = self.reaper.pick(core)
        if pick is None:
            return
        try:
            core.propose_conf_change(ConfChange(ConfChangeType.REMOVE, pick[0]))
        except (errors.ProposalDropped, errors.BadRequest) as e:
            self.fail(f"reaper picked {pick} but the core refused: {e}")
        self.stats["reaped"] += 1
        self.log("reap", pick)

    # ---- clients ---------------------------------------------------------------------

    def _client(self, cid):
        if not self.active:
            return
        rng = self.rng
        kind = rng.choice(("w", "w", "c", "r", "ri", "ri"))
        key = rng.choice(KEYS)
        op = Op(self._next_op, kind, key, None, None, self.now, cid)
        self._next_op += 1
        if kind == "w":
            op.a = str(op.id)
        elif kind == "c":
            op.a, op.b = rng.choice(("None", str(rng.randint(1, op.id)))), str(op.id)
        else:
            op.a = ""
        self.ops.append(op)
        live = self.live()
        if not live:
            self._complete(op, "fail")
            return
        if kind == "ri":
            node = rng.choice(live)
            op.node = node.id
            ctx = str(op.id).encode()
            try:
                node.core.read_index(ctx)
            except errors.LeaderNotFound:
                self._complete(op, "fail")
                return
            node.reads[ctx] = op
        else:
            guess = self.nodes.get(self.client_leader.get(cid))
            node = guess if guess is not None and guess.core is not None else rng.choice(live)
            for _hop in range(2):
                try:
                    term, index = node.core.propose(op.data())
                except errors.NotLeader as e:
                    nxt = self.nodes.get(e.leader_id)
                    if nxt is None or nxt.core is None:
                        break
                    node = nxt
                    continue
                except errors.ProposalDropped:
                    break
                op.node = node.id
                self.client_leader[cid] = node.id
                node.props[index] = (term, op)
                break
            else:
                pass
            if op.node is None:
                self._complete(op, "fail")
                return
        self.at(self.now + OP_TIMEOUT, self._timeout, op)
        self._after(node)

    def _timeout(self, op):
        if op.status is None:
            self._complete(op, "unknown" if op.kind != "ri" else "fail")

    def _complete(self, op, status, result=None, position=None):
        if op.status is not None:
            return
        op.status, op.result, op.position, op.complete = status, result, position, self.now
        if self.active:
            pause = self.p.think_max if status == "ok" else 30   # back off after a failure
            self.at(self.now + 1 + self.rng.randint(0, pause), self._client, op.client)

    # ---- the run -----------------------------------------------------------------------

    def run(self):
        p = self.p
        first = [self._new_node() for _ in range(p.n_initial)]
        boot = [Member(n.id, f"raft-{n.id}", f"http-{n.id}") for n in first]
        for n in first:
            n.boot = boot
            self._start(n)
            self._after(n)
        for cid in range(p.clients):
            self.at(self.rng.randint(0, 50), self._client, cid)
        if p.crash_every:
            self.at(self.rng.randint(1, p.crash_every), self._fault_crash)
        if p.partition_every:
            self.at(self.rng.randint(1, p.partition_every), self._fault_partition)
        if p.member_every:
            self.at(self.rng.randint(1, p.member_every), self._fault_member)
        if p.transfer_every:
            self.at(self.rng.randint(1, p.transfer_every), self._fault_transfer)
        self.at(p.duration, self._heal)
        # Liveness after healing: fail when nothing moved for STUCK ms (a slow catch-up
        # with tiny batches is fine), or after a hard cap.
        cap = p.duration + 120000
        moved_at, sig = p.duration, None
        q = self._q
        while q:
            t, _, fn, args = heapq.heappop(q)
            self.now = t
            self.stats["events"] += 1
            fn(*args)
            if not self.active and t >= self._next_check:
                if self._converged():
                    break
                self._next_check = t + 50
                now_sig = self._progress_signature()
                if now_sig != sig:
                    sig, moved_at = now_sig, t
                if t - moved_at > STUCK or t > cap:
                    self.fail(f"no convergence after healing (stuck since t={moved_at}): "
                              + self._describe())
        self._final_checks()
        return self

    def _heal(self):
        self.log("heal all; stop faults and clients")
        self.active = False
        self.groups = None
        self.loss = 0.0
        for n in self.nodes.values():
            if n.core is None and not n.gone and not n.removed:
                self.at(self.now + self.rng.randint(1, 50), self._restart, n)
        self._next_check = self.now + OP_TIMEOUT

    def _progress_signature(self):
        return tuple((n.id, n.applied, n.core.commit, n.core.last_index, n.core.term)
                     for n in self.live())

    def _converged(self):
        lead = self.leader()
        if lead is None or lead.busy is not None:
            return False
        c = lead.core
        if c.commit != c.last_index or lead.applied != c.commit:
            return False
        if any(op.status is None for op in self.ops):
            return False
        for m in c.members:
            n = self.nodes.get(m.node_id)
            if n is None or n.core is None or n.busy is not None or n.applied != c.commit:
                return False
        return True

    def _describe(self):
        out = []
        for n in self.nodes.values():
            if n.core is None:
                out.append(f"{n.id}: down gone={n.gone} removed={n.removed}")
            else:
                c = n.core
                out.append(f"{n.id}: {c.role.value} term={c.term} leader={c.leader} commit={c.commit} "
                           f"applied={n.applied} last={c.last_index} members={[m.node_id + ('' if m.voter else '~') for m in c.members]}"
                           f" progress={c.progress()}")
        return "\n  " + "\n  ".join(out)

    def _final_checks(self):
        lead = self.leader()
        members = [self.nodes[m.node_id] for m in lead.core.members]
        ref = members[0].state
        for n in members:
            if n.state != ref:
                self.fail(f"state of {n.id} {n.state} != {members[0].id} {ref}")
        top = lead.core.commit
        for op in self.ops:
            if op.kind == "ri":
                continue
            idx = self.op_index.get(op.id)
            if op.status == "ok":
                if idx != op.position:
                    self.fail(f"acknowledged {op} committed at {idx}")
                if idx > top:
                    self.fail(f"acknowledged {op} beyond final commit {top}")
            elif op.status == "fail" and idx is not None:
                self.fail(f"definitely failed {op} was committed at {idx}")
        self._check_linearizable()

    def _check_linearizable(self):
        check_linearizable(self.global_log, self.ops, KEYS, self.fail)

    def totals(self):
        """Counters for the aggregate line of a multi-seed run (what got exercised)."""
        t = dict(self.stats)
        t["leaders"] = len(self.leaders)
        for op in self.ops:
            k = f"{op.kind}_{op.status}"
            t[k] = t.get(k, 0) + 1
        return t

    def summary(self):
        st = {}
        for op in self.ops:
            st[op.status] = st.get(op.status, 0) + 1
        return (f"seed {self.seed}: t={self.now} ops={st} leaders={len(self.leaders)} "
                f"commit={max(self.global_log, default=0)} nodes={len(self.nodes)} {self.stats}")


def run_seed(seed, duration=DURATION, verbose=False, reap=None):
    return Sim(seed, duration, verbose, reap).run()


def replay_command(seed, duration, reap=None):
    extra = f" --duration {duration}" if duration != DURATION else ""
    if reap:
        extra += f" --reap {reap[0]},{reap[1]}"
    return f"python -m raftsqlite.raft.sim --seed {seed}{extra} -v"


def bench(total=50000, size=100):
    """Throughput of the core alone: 3 cores in one process on MemNet (no disk, no
    sockets), proposals of ``size`` bytes made in batches between Ready cycles."""
    import json
    from raftsqlite.raft.memlog import MemNet
    out = {}
    for batch in (1, 16, 64, 256):
        n = total // 10 if batch == 1 else total
        net = MemNet(["a", "b", "c"])
        a = net.elect("a")
        data = b"x" * size
        t0 = time.perf_counter()
        for _ in range(n // batch):
            for _ in range(batch):
                a.propose(data)
            net.pump()
        dt = time.perf_counter() - t0
        out[f"commits_s_batch_{batch}"] = round(n // batch * batch / dt)
        print(f"batch {batch:4d}: {out[f'commits_s_batch_{batch}']:8d} proposals/s committed "
              f"and applied by 3 in-process cores")
    print(json.dumps(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=100, help="number of seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--seed", type=int, help="run exactly this seed")
    ap.add_argument("--duration", type=int, default=DURATION, help="simulated ms of faults and load")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--bench", action="store_true", help="measure core throughput instead")
    ap.add_argument("--reap", metavar="VOTER,LEARNER",
                    help="leaders reap members silent this many ticks (0 = never), "
                         "e.g. 30,20 (raft/reaper.py)")
    a = ap.parse_args(argv)
    if a.bench:
        bench()
        return 0
    seeds = [a.seed] if a.seed is not None else range(a.start, a.start + a.seeds)
    reap = tuple(int(x) for x in a.reap.split(",")) if a.reap else None
    t0 = time.time()
    failures = 0
    n = 0
    totals = {}
    for seed in seeds:
        n += 1
        try:
            sim = run_seed(seed, a.duration, a.verbose, reap)
            if a.verbose or a.seed is not None:
                print(sim.summary())
            for k, v in sim.totals().items():
                totals[k] = totals.get(k, 0) + v
        except Exception as e:  # noqa: BLE001 - any failure of a seed is reported the same way
            failures += 1
            print(f"FAIL seed {seed}: {type(e).__name__}: {e}", file=sys.stderr)
            print(f"  replay: {replay_command(seed, a.duration, reap)}", file=sys.stderr)
        if n % 100 == 0:
            print(f"{n} seeds, {failures} failures, {time.time() - t0:.1f}s", flush=True)
    print("exercised: " + " ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    print(f"ran {n} seeds from {seeds[0]}: {failures} failures in {time.time() - t0:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
