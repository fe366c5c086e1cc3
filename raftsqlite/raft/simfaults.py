"""Fault injection of the Raft simulator (``sim.Sim``): crashes that lose unsynced writes
(a torn append keeps a random prefix of a Ready's entries), restarts, partitions,
membership changes and leadership transfers, each rescheduling itself on the simulated
clock from the simulation's one seeded ``random.Random`` (so a seed replays exactly)."""
from raftsqlite import errors
from raftsqlite.codec.model import ConfChange, ConfChangeType


class FaultsMixin:
    """Mixed into ``Sim``; uses its clock (``at``, ``now``), nodes, rng and checkers."""

    def _crash(self, node):
        if node.core is None:
            return
        self.stats["crashes"] += 1
        self.log("crash", node.id)
        if node.busy is not None:
            rd, _, prev_t = node.busy
            if rd.snapshot is not None:
                if self.rng.random() < 0.5:
                    s = rd.snapshot
                    node.disk.install_snapshot(s, node.recv_snaps.get((s.index, s.term)))
            else:
                k = self.rng.randint(0, len(rd.entries))
                if k:
                    self._check_entries(node, rd.entries[:k], prev_t)
                    node.disk.append(rd.entries[:k])
                if rd.hard_state is not None and self.rng.random() < 0.5:
                    node.disk.set_hard_state(rd.hard_state)
        node.core = None
        node.busy = None
        node.inc += 1
        for i in list(node.props):
            self._complete(node.props.pop(i)[1], "unknown")
        for op in list(node.reads.values()) + [op for _, op in node.read_wait]:
            self._complete(op, "fail")
        node.reads, node.read_wait, node.recv_snaps = {}, [], {}
        if self.p.fsm_loss and self.rng.random() < self.p.fsm_loss:
            node.state = dict(node.disk.snapshot_data or {})
            node.applied = node.disk.snapshot_meta().index
        self.at(self.now + self.rng.randint(10, 300), self._restart, node)

    def _restart(self, node):
        if node.core is None and not node.gone:
            self.log("restart", node.id)
            self._start(node)

    def _shutdown(self, node):
        if not node.gone:
            self.log("shutdown (removed)", node.id)
            if node.core is not None:
                self._crash(node)
            node.gone = True

    def _fault_crash(self):
        if not self.active:
            return
        cands = [n for n in self.live() if not n.removed]
        lead = self.leader()
        r = self.rng.random()
        if r < 0.1:
            for n in cands:       # power loss: every member loses its unsynced writes
                self._crash(n)
        elif r < 0.3:
            busy = [n for n in cands if n.busy is not None]
            if busy:              # in the middle of an fsync
                self._crash(self.rng.choice(busy))
        elif lead is not None and not lead.removed and r < 0.65:
            self._crash(lead)     # leaders with unreplicated entries make the hard cases
        elif cands:
            self._crash(self.rng.choice(cands))
        self.at(self.now + self.rng.randint(1, 2 * self.p.crash_every), self._fault_crash)

    def _fault_partition(self):
        if not self.active:
            return
        if self.groups is not None:
            self.groups = None
            self.log("heal")
        else:
            ids = [n.id for n in self.nodes.values() if not n.gone]
            self.groups = {i: self.rng.randint(0, 1) for i in ids}
            lead = self.leader()
            if lead is not None and self.rng.random() < 0.5:   # isolate the leader
                self.groups = {i: int(i == lead.id) for i in ids}
            self.stats["partitions"] += 1
            self.log("partition", self.groups)
        self.at(self.now + self.rng.randint(1, 2 * self.p.partition_every), self._fault_partition)

    def _fault_member(self):
        if not self.active:
            return
        self.at(self.now + self.rng.randint(1, 2 * self.p.member_every), self._fault_member)
        lead = self.leader()
        if lead is None:
            return
        core = lead.core
        members = core.members
        voters = [m.node_id for m in members if m.voter]
        learners = [m.node_id for m in members if not m.voter]
        prog = core.progress()
        r = self.rng.random()
        cc = None
        caught = [i for i in learners if i in prog and prog[i]["match"] >= core.commit - 2]
        if caught and r < 0.6:
            cc = ConfChange(ConfChangeType.PROMOTE, self.rng.choice(caught))
        elif len(members) < 5 and r < 0.8:
            node = self._new_node()
            self._start(node)
            cc = ConfChange(ConfChangeType.ADD_LEARNER, node.id, f"raft-{node.id}", f"http-{node.id}")
        elif len(voters) > 1:
            victim = self.rng.choice(voters + learners)
            kind = ConfChangeType.DEMOTE if (victim in voters and self.rng.random() < 0.3) \
                else ConfChangeType.REMOVE
            cc = ConfChange(kind, victim)
        if cc is None:
            return
        try:
            core.propose_conf_change(cc)
            self.log("propose", cc)
        except (errors.ProposalDropped, errors.BadRequest, errors.NotLeader) as e:
            self.log("conf change refused:", e)
        self._after(lead)

    def _fault_transfer(self):
        if not self.active:
            return
        self.at(self.now + self.rng.randint(1, 2 * self.p.transfer_every), self._fault_transfer)
        lead = self.leader()
        if lead is None:
            return
        voters = sorted(lead.core.voters - {lead.id})
        to = self.rng.choice(voters + [None]) if voters else None
        try:
            lead.core.transfer_leadership(to)
            self.stats["transfers"] += 1
        except errors.RaftSQLiteError:
            pass
        self._after(lead)
