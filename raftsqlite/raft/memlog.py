"""An in-memory LogReader with the write side a driver needs: the "disk" of the unit
tests and the simulator. Only what ``apply_ready`` stored is here, so dropping the core
and keeping this object is exactly a crash that loses everything not yet fsynced."""
import random

from raftsqlite.codec.model import SnapshotMeta
from raftsqlite.raft.types import HardState


class MemLog:
    def __init__(self):
        self._snap = SnapshotMeta(0, 0, [])
        self._ents = []          # entries after the snapshot, contiguous
        self._hs = HardState()
        self.snapshot_data = None   # opaque state-machine image matching _snap (sim use)

    # ---- LogReader ----
    def first_index(self):
        return self._snap.index + 1

    def last_index(self):
        return self._snap.index + len(self._ents)

    def term(self, index):
        si = self._snap.index
        if index == si:
            return self._snap.term
        k = index - si - 1
        if k < 0 or k >= len(self._ents):
            raise IndexError(f"term({index}) outside [{si}, {self.last_index()}]")
        return self._ents[k].term

    def entries(self, lo, hi, max_bytes):
        si = self._snap.index
        if lo <= si or hi > self.last_index() + 1 or lo >= hi:
            raise IndexError(f"entries({lo}, {hi}) outside ({si}, {self.last_index() + 1}]")
        out = []
        size = 0
        for e in self._ents[lo - si - 1:hi - si - 1]:
            size += len(e.data) + 24
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def snapshot_meta(self):
        return self._snap

    def hard_state(self):
        return HardState(self._hs.term, self._hs.vote, self._hs.commit)

    # ---- write side ----
    def append(self, entries):
        """Overwrite semantics: drop everything from entries[0].index, then append."""
        if not entries:
            return
        si = self._snap.index
        first = entries[0].index
        if first <= si:
            raise ValueError(f"append at {first} at or below snapshot {si}")
        if first > self.last_index() + 1:
            raise ValueError(f"append at {first} leaves a gap after {self.last_index()}")
        del self._ents[first - si - 1:]
        self._ents.extend(entries)

    def set_hard_state(self, hs):
        self._hs = HardState(hs.term, hs.vote, hs.commit)

    def install_snapshot(self, meta, data=None):
        """Reset the log to a received snapshot."""
        self._snap = SnapshotMeta(meta.index, meta.term, meta.members)
        self._ents = []
        self.snapshot_data = data
        if self._hs.commit < meta.index:
            self._hs = HardState(self._hs.term, self._hs.vote, meta.index)

    def compact(self, index, members, data=None):
        """Take a snapshot at ``index`` (applied) and drop the entries up to it."""
        si = self._snap.index
        if index <= si:
            return
        if index > self.last_index():
            raise ValueError(f"compact to {index} beyond last index {self.last_index()}")
        t = self.term(index)
        del self._ents[:index - si]
        self._snap = SnapshotMeta(index, t, members)
        self.snapshot_data = data

    def apply_ready(self, rd, snapshot_data=None):
        """Step 1 of the Ready cycle, all at once."""
        if rd.snapshot is not None:
            self.install_snapshot(rd.snapshot, snapshot_data)
        if rd.entries:
            self.append(rd.entries)
        if rd.hard_state is not None:
            self.set_hard_state(rd.hard_state)


class MemNode:
    """One member of a MemNet: a core, its MemLog "disk" and what it applied."""

    def __init__(self, nid, cfg, seed):
        self.id = nid
        self.cfg = cfg
        self.seed = seed
        self.log = MemLog()
        self.applied = []            # applied entries (the state machine), snapshot-covered ones too
        self.read_states = []
        self.core = None
        self.snap_inbox = {}

    def start(self):
        from raftsqlite.raft.core import RaftCore
        self.core = RaftCore(self.id, self.log, self.cfg, random.Random(self.seed),
                             applied=len(self.applied))
        return self.core


class MemNet:
    """A synchronous in-process network of cores for table-driven tests.

    ``pump()`` runs every core's Ready cycle and delivers queued messages (FIFO) until
    nothing moves. Links can be cut; ``drop`` (a predicate on Message) loses messages;
    every delivered or dropped message is recorded in ``sent``. Snapshots are "streamed"
    whole: the receiver gets the sender's applied entries up to the snapshot index."""

    def __init__(self, ids, cfg=None, seed=0, bootstrap=True, learners=()):
        from raftsqlite.codec.model import Member
        from raftsqlite.raft.core import CoreConfig
        self.cfg = cfg or CoreConfig()
        self.nodes = {}
        self.queue = []
        self.sent = []
        self.cut = set()
        self.drop = None
        self.readies = None       # set to a list to record (node id, Ready) pairs
        self._seed = seed
        for i, nid in enumerate(ids):
            self.add_node(nid)
        if bootstrap:
            members = [Member(n, f"raft-{n}", f"http-{n}", n not in learners) for n in ids]
            for nid in ids:
                self.nodes[nid].core.bootstrap(members)
            self.pump()

    def add_node(self, nid):
        self._seed += 1
        n = MemNode(nid, self.cfg, self._seed)
        self.nodes[nid] = n
        n.start()
        return n

    def core(self, nid):
        return self.nodes[nid].core

    def leader(self):
        ls = [n.id for n in self.nodes.values() if n.core is not None and n.core.is_leader]
        return max(ls, key=lambda i: self.nodes[i].core.term) if ls else None

    def _drain(self, n):
        core = n.core
        while core is not None and core.has_ready():
            rd = core.ready()
            if self.readies is not None:
                self.readies.append((n.id, rd))
            data = None
            if rd.snapshot is not None:
                data = n.snap_inbox.pop((rd.snapshot.index, rd.snapshot.term))
                n.applied = list(data)
            n.log.apply_ready(rd, data)
            self.queue.extend(rd.messages)
            for e in rd.committed:
                if e.index > len(n.applied):
                    assert e.index == len(n.applied) + 1, (n.id, e.index, len(n.applied))
                    n.applied.append(e)
            n.read_states.extend(rd.read_states)
            core.advance(rd)

    def pump(self, limit=100000):
        for _ in range(limit):
            for n in list(self.nodes.values()):
                self._drain(n)
            if not self.queue:
                return
            q, self.queue = self.queue, []
            for m in q:
                self._deliver(m)
        raise RuntimeError("MemNet.pump did not settle")

    def _deliver(self, m):
        self.sent.append(m)
        dst = self.nodes.get(m.to)
        src = self.nodes.get(m.frm)
        lost = (dst is None or dst.core is None or (m.frm, m.to) in self.cut
                or (self.drop is not None and self.drop(m)))
        from raftsqlite.codec.model import Message, MsgType
        if m.type == MsgType.SNAPSHOT:
            if not lost:
                meta = src.log.snapshot_meta()
                dst.snap_inbox[(meta.index, meta.term)] = list(src.applied[:meta.index])
                dst.core.step(Message(MsgType.SNAPSHOT, frm=m.frm, to=m.to, term=m.term,
                                      snapshot=meta, done=True))
            if src is not None and src.core is not None:
                src.core.report_snapshot(m.to, not lost)
            return
        if not lost:
            dst.core.step(m)

    def tick(self, n=1, ids=None):
        for _ in range(n):
            for nid in (ids or list(self.nodes)):
                c = self.nodes[nid].core
                if c is not None:
                    c.tick()
            self.pump()

    def elect(self, nid):
        self.nodes[nid].core.campaign(force=True)
        self.pump()
        assert self.nodes[nid].core.is_leader, f"{nid} did not win: {self.nodes[nid].core.stats()}"
        return self.nodes[nid].core

    def isolate(self, nid):
        for o in self.nodes:
            if o != nid:
                self.cut.add((nid, o))
                self.cut.add((o, nid))

    def heal(self):
        self.cut.clear()
        self.drop = None

    def crash(self, nid):
        """Lose the core (volatile state); the MemLog keeps what was persisted."""
        self.nodes[nid].core = None

    def restart(self, nid):
        return self.nodes[nid].start()

    def compact(self, nid, index=None):
        """Take a snapshot at ``index`` (default: applied) and drop the log before it."""
        n = self.nodes[nid]
        index = len(n.applied) if index is None else index
        n.log.compact(index, n.core.members_at(index))
