"""Table-driven tests of the Raft core: ReadIndex, leadership transfer, learners,
membership changes and snapshots (on MemNet, see raftsqlite/raft/memlog.py)."""
import pytest

from raftsqlite import errors
from raftsqlite.codec.model import ConfChange, ConfChangeType as CC, Message, MsgType
from raftsqlite.raft.core import CoreConfig
from raftsqlite.raft.memlog import MemNet
from raftsqlite.raft.types import Role

ET = 10


def change(net, leader, kind, nid, **kw):
    net.core(leader).propose_conf_change(ConfChange(kind, nid, **kw))
    net.pump()


# ---- ReadIndex ------------------------------------------------------------------------

def test_leader_read_index_after_quorum_round():
    """A leader answers a read with its commit index only after a quorum of heartbeat
    answers confirms it still leads."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    net.cut |= {("b", "a"), ("c", "a")}      # heartbeats go out, answers are lost
    a.read_index(b"r1")
    net.pump()
    assert net.nodes["a"].read_states == []
    net.heal()
    net.tick(1)
    assert [(r.index, r.context) for r in net.nodes["a"].read_states] == [(a.commit, b"r1")]


def test_concurrent_reads_share_one_round():
    """Reads arriving together cost one heartbeat per follower, not one per read."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    n0 = len(net.sent)
    for i in range(10):
        a.read_index(b"r%d" % i)
    net.pump()
    hbs = [m for m in net.sent[n0:] if m.type == MsgType.HEARTBEAT and m.context]
    assert len(hbs) == 2
    assert sorted(r.context for r in net.nodes["a"].read_states) == sorted(b"r%d" % i for i in range(10))


def test_follower_read_forwarded_to_leader():
    """A follower's read goes to the leader; the answer's index covers everything
    committed when the read was asked."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    want = a.commit
    net.core("b").read_index(b"f1")
    net.pump()
    rs = net.nodes["b"].read_states
    assert len(rs) == 1 and rs[0].context == b"f1" and rs[0].index >= want


def test_isolated_leader_never_answers_reads():
    """A deposed-but-unaware leader cannot confirm leadership, so it serves no read."""
    net = MemNet(["a", "b", "c"], cfg=CoreConfig(check_quorum=False))
    a = net.elect("a")
    net.isolate("a")
    net.elect("b")
    a.read_index(b"stale")
    net.tick(3 * ET, ids=["a"])
    assert net.nodes["a"].read_states == []


def test_new_leader_defers_reads_until_its_noop_commits():
    """A fresh leader's commit index may lag; it answers reads only after committing an
    entry of its own term."""
    net = MemNet(["a", "b", "c"])
    net.drop = lambda m: m.type == MsgType.APPEND_RESP
    a = net.elect("a")
    a.read_index(b"early")
    net.pump()
    assert net.nodes["a"].read_states == []
    net.drop = None
    net.tick(2)
    rs = net.nodes["a"].read_states
    assert len(rs) == 1 and a.log_term(rs[0].index) == a.term


def test_read_without_leader_is_a_clear_error():
    """A follower that knows no leader refuses a read at once (LeaderNotFound)."""
    net = MemNet(["a", "b", "c"])
    with pytest.raises(errors.LeaderNotFound):
        net.core("b").read_index(b"x")


# ---- leadership transfer ---------------------------------------------------------------

def test_transfer_to_caught_up_follower():
    """TIMEOUT_NOW makes the target campaign at once and win; the old leader follows."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    t = a.term
    a.transfer_leadership("b")
    net.pump()
    assert net.core("b").is_leader and net.core("b").term == t + 1
    assert a.role == Role.FOLLOWER and a.leader == "b"


def test_transfer_to_lagging_follower_catches_it_up_first():
    """The leader brings a lagging target up to date before sending TIMEOUT_NOW, so the
    target can win."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("c")
    for i in range(10):
        a.propose(b"x")
    net.pump()
    net.heal()
    a.transfer_leadership("c")
    net.tick(2)                        # heartbeat answers resume replication to c
    assert net.core("c").is_leader
    assert net.core("c").last_index >= 10


def test_proposals_refused_during_transfer_until_it_aborts():
    """While a transfer is pending the leader drops proposals (definitely not
    committed); after an election timeout without success the transfer is abandoned."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("c")
    a.transfer_leadership("c")
    net.pump()
    with pytest.raises(errors.ProposalDropped):
        a.propose(b"x")
    net.tick(ET, ids=["a", "b"])
    assert a.is_leader
    a.propose(b"x")


def test_follower_asks_leader_to_transfer():
    """transfer_leadership on a follower is forwarded to the leader."""
    net = MemNet(["a", "b", "c"])
    net.elect("a")
    net.core("b").transfer_leadership("c")
    net.pump()
    assert net.core("c").is_leader


@pytest.mark.parametrize("target,error", [("zz", errors.BadRequest), ("l", errors.BadRequest)])
def test_transfer_to_non_voter_refused(target, error):
    """Only voters can take over leadership."""
    net = MemNet(["a", "b", "l"], learners=["l"])
    a = net.elect("a")
    with pytest.raises(error):
        a.transfer_leadership(target)


# ---- learners -----------------------------------------------------------------------

def test_learner_replicates_but_does_not_count():
    """A learner receives and applies every entry, yet its acknowledgement never makes
    a quorum."""
    net = MemNet(["a", "b", "l"], learners=["l"])
    a = net.elect("a")
    assert net.core("l").role == Role.LEARNER
    a.propose(b"x")
    net.pump()
    assert [e.data for e in net.nodes["l"].applied] == [e.data for e in net.nodes["a"].applied]
    net.isolate("b")
    c0 = a.commit
    a.propose(b"y")
    net.pump()
    assert a.commit == c0 and net.core("l").last_index == a.last_index


def test_learner_never_campaigns():
    """A learner alone for many timeouts neither campaigns nor changes term."""
    net = MemNet(["a", "b", "l"], learners=["l"])
    net.elect("a")
    t = net.core("l").term
    net.isolate("l")
    net.tick(5 * ET, ids=["l"])
    assert net.core("l").role == Role.LEARNER and net.core("l").term == t


# ---- membership -----------------------------------------------------------------------

def test_add_learner_then_promote():
    """A new node joins as a learner, catches up, is promoted, then counts in quorums."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"before")
    net.pump()
    net.add_node("d")
    change(net, "a", CC.ADD_LEARNER, "d", raft_addr="r-d", http_addr="h-d")
    assert net.core("d").last_index == a.last_index
    assert net.core("d").member("d").raft_addr == "r-d" and not net.core("d").member("d").voter
    change(net, "a", CC.PROMOTE, "d")
    assert a.voters == {"a", "b", "c", "d"} and net.core("d").voters == a.voters
    net.isolate("b")
    net.isolate("c")
    net.heal()
    net.cut |= {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
    c0 = a.commit
    a.propose(b"needs-3-of-4")
    net.pump()
    assert a.commit == c0              # only a and d: 2 of 4 is no quorum


def test_one_membership_change_at_a_time():
    """A second change is refused while the first is uncommitted."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("b")
    net.isolate("c")
    a.propose_conf_change(ConfChange(CC.ADD_LEARNER, "d"))
    with pytest.raises(errors.ProposalDropped):
        a.propose_conf_change(ConfChange(CC.ADD_LEARNER, "e"))


def test_new_leader_must_commit_before_changing_membership():
    """Ongaro's single-server-change fix: no change before an own-term entry commits."""
    net = MemNet(["a", "b", "c"])
    net.drop = lambda m: m.type == MsgType.APPEND_RESP
    a = net.elect("a")
    with pytest.raises(errors.ProposalDropped):
        a.propose_conf_change(ConfChange(CC.ADD_LEARNER, "d"))


@pytest.mark.parametrize("kind,nid", [
    (CC.ADD_LEARNER, "b"),       # already a member
    (CC.PROMOTE, "b"),           # not a learner
    (CC.REMOVE, "zz"),           # not a member
    (CC.DEMOTE, "zz"),
])
def test_invalid_membership_changes_refused(kind, nid):
    """Nonsensical changes get a clear BadRequest and change nothing."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    last = a.last_index
    with pytest.raises(errors.BadRequest):
        a.propose_conf_change(ConfChange(kind, nid))
    assert a.last_index == last


def test_last_voter_cannot_be_removed():
    """Removing or demoting the only voter would leave no quorum: refused."""
    net = MemNet(["a"])
    a = net.elect("a")
    for kind in (CC.REMOVE, CC.DEMOTE):
        with pytest.raises(errors.BadRequest):
            a.propose_conf_change(ConfChange(kind, "a"))


def test_remove_follower_shrinks_quorum():
    """After removing c, a and b alone form a quorum of the new configuration."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    change(net, "a", CC.REMOVE, "c")
    assert a.voters == {"a", "b"} and "c" not in a.progress()
    net.isolate("c")
    a.propose(b"x")
    net.pump()
    assert a.commit == a.last_index


def test_remove_leader_steps_down_and_group_continues():
    """A leader that removes itself leads until the change commits, then steps down and
    hands over at once (TIMEOUT_NOW); it can never campaign again."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    change(net, "a", CC.REMOVE, "a")
    assert not a.is_leader
    new = net.leader()
    assert new in ("b", "c") and net.core(new).voters == {"b", "c"}
    net.core(new).propose(b"after")
    net.pump()
    net.isolate(new)
    net.tick(5 * ET, ids=["a"])
    assert not a.is_leader and a.role == Role.FOLLOWER


def test_demote_voter_to_learner():
    """A demoted voter keeps replicating as a learner."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    change(net, "a", CC.DEMOTE, "c")
    assert a.voters == {"a", "b"} and a.learners == {"c"}
    assert net.core("c").role == Role.LEARNER
    a.propose(b"x")
    net.pump()
    assert net.core("c").last_index == a.last_index


def test_uncommitted_change_rolled_back_with_its_entry():
    """A change takes effect when appended; if its entry is overwritten by a new
    leader, the member reverts to the previous configuration."""
    ids = ["a", "b", "c", "d", "e"]
    net = MemNet(ids)
    a = net.elect("a")
    net.cut |= {("a", x) for x in "cde"} | {("b", "a")}   # only b receives, a never hears back
    a.propose_conf_change(ConfChange(CC.REMOVE, "e"))
    net.pump()
    assert net.core("b").voters == {"a", "b", "c", "d"}
    net.heal()
    net.isolate("a")
    net.core("c").campaign(force=True)      # wins with c, d, e; b refuses (longer log)
    net.pump()
    assert net.core("c").is_leader
    assert net.core("b").voters == set(ids)
    assert net.core("b").stats()["truncations"] == 1


def test_restart_rebuilds_membership_from_snapshot_and_log():
    """Membership survives a restart: snapshot members plus later changes in the log."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.add_node("d")
    change(net, "a", CC.ADD_LEARNER, "d")
    net.compact("b")
    change(net, "a", CC.PROMOTE, "d")
    change(net, "a", CC.REMOVE, "c")
    want = sorted((m.node_id, m.voter) for m in net.core("b").members)
    net.crash("b")
    b = net.restart("b")
    assert sorted((m.node_id, m.voter) for m in b.members) == want == \
        [("a", True), ("b", True), ("d", True)]
    assert a.voters == {"a", "b", "d"}


# ---- snapshots ------------------------------------------------------------------------

def test_far_behind_follower_catches_up_by_snapshot():
    """A follower missing compacted entries receives a SNAPSHOT (metadata only from the
    core), installs it via Ready.snapshot, then continues with APPENDs."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("c")
    for i in range(20):
        a.propose(b"x%d" % i)
    net.pump()
    net.compact("a")
    net.compact("b")
    net.heal()
    net.tick(2)
    sent = [m for m in net.sent if m.type == MsgType.SNAPSHOT and m.to == "c"]
    assert len(sent) == 1 and sent[0].snapshot.index == net.nodes["a"].log.snapshot_meta().index
    a.propose(b"after")
    net.pump()
    c = net.core("c")
    assert c.first_index == sent[0].snapshot.index + 1
    assert [e.data for e in net.nodes["c"].applied] == [e.data for e in net.nodes["a"].applied]
    assert sorted(c.voters) == ["a", "b", "c"]


def test_failed_snapshot_is_retried():
    """A snapshot stream that fails (report_snapshot(ok=False)) is sent again later."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("c")
    for i in range(5):
        a.propose(b"x")
    net.pump()
    net.compact("a")
    net.heal()
    drops = []
    net.drop = lambda m: m.type == MsgType.SNAPSHOT and not drops.append(m)
    net.tick(2)
    assert drops
    net.drop = None
    net.tick(3)
    assert net.core("c").commit == a.commit


def test_snapshot_already_covered_by_log_only_moves_commit():
    """A follower whose log holds the snapshot's last entry does not reinstall."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    b = net.core("b")
    idx = b.last_index
    net.core("b").commit = idx - 1        # it has the entry, not yet known committed
    b.step(Message(MsgType.SNAPSHOT, frm="a", to="b", term=a.term, done=True,
                   snapshot=net.nodes["a"].log.snapshot_meta().__class__(idx, b.log_term(idx), a.members)))
    rd = b.ready()
    assert rd.snapshot is None and b.commit == idx


def test_stale_snapshot_ignored():
    """A snapshot at or below the commit index changes nothing."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    b = net.core("b")
    last = b.last_index
    meta = net.nodes["a"].log.snapshot_meta().__class__(2, 1, a.members)
    b.step(Message(MsgType.SNAPSHOT, frm="a", to="b", term=a.term, done=True, snapshot=meta))
    rd = b.ready()
    assert rd.snapshot is None and b.last_index == last
