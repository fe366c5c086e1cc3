"""A leader alone in its group (a shard group of one member) commits what it has durably
appended in the same pass (``core.take_committed`` right after ``advance``), not in a
second Ready. Groups with peers are untouched."""
from raftsqlite.codec.model import MsgType
from raftsqlite.raft.memlog import MemNet


def _cycle(net, core):
    """One Ready for a single proposal: hand out, persist, advance."""
    rd = core.ready()
    net.nodes[core.node_id].log.apply_ready(rd)
    core.advance(rd)
    return rd


def test_lone_leader_proposal_needs_one_ready():
    """Invariant: a lone leader's proposal is handed out in one Ready; once that Ready is
    persisted and advanced, take_committed returns the entry and nothing else is ready
    (no second Ready per proposal)."""
    net = MemNet(["a"])
    a = net.elect("a")
    assert a.alone and not a.has_ready()
    for i in range(5):
        term, idx = a.propose(b"v%d" % i)
        assert a.has_ready()
        rd = _cycle(net, a)
        assert [e.index for e in rd.entries] == [idx] and not rd.committed
        assert [e.data for e in a.take_committed()] == [b"v%d" % i]
        assert a.commit == a.applied == idx
        assert not a.has_ready(), "a lone leader's proposal took a second Ready"


def test_lone_leader_commits_nothing_before_the_persist():
    """Invariant: between ready() and advance() (the write not yet durable) a lone
    leader's commit does not move and take_committed hands out nothing; the entry is
    committed only by advance()."""
    net = MemNet(["a"])
    a = net.elect("a")
    c0 = a.commit
    _, idx = a.propose(b"x")
    rd = a.ready()
    assert a.take_committed() == [] and a.commit == c0
    assert rd.hard_state is None or rd.hard_state.commit < idx
    net.nodes["a"].log.apply_ready(rd)
    assert a.take_committed() == [] and a.commit == c0   # written, not yet reported
    a.advance(rd)
    assert a.commit == idx and [e.index for e in a.take_committed()] == [idx]


def test_lone_leader_commit_index_reaches_the_next_ready():
    """Invariant: the commit index a lone leader skips a Ready for is handed out with its
    next Ready's hard state (never above what is durable), so the lazy on-disk commit
    still follows."""
    net = MemNet(["a"])
    a = net.elect("a")
    _, i1 = a.propose(b"x")
    _cycle(net, a)
    a.take_committed()
    _, i2 = a.propose(b"y")
    rd = _cycle(net, a)
    assert rd.hard_state is not None and rd.hard_state.commit == i1 < i2
    assert a.hard_state().commit == i2    # what a clean stop would write


def test_groups_with_peers_keep_the_ready_path():
    """Invariant: with a follower or only a learner beside the leader, take_committed
    hands out nothing and the commit comes through Ready as before (and followers are
    told the commit)."""
    for ids, learners in ((["a", "b", "c"], ()), (["a", "b"], ("b",))):
        net = MemNet(ids, learners=learners)
        a = net.elect("a")
        assert not a.alone
        a.propose(b"x")
        net.pump()
        assert a.take_committed() == []
        assert net.nodes["a"].applied[-1].data == b"x"
        assert net.nodes["b"].applied[-1].data == b"x"
        assert any(m.type == MsgType.APPEND and m.to == "b" for m in net.sent)


def test_a_lone_leader_that_gains_a_learner_stops_committing_alone():
    """Invariant: once a learner is added (the change takes effect when appended), the
    leader is no longer alone: its entries reach the learner through APPENDs."""
    from raftsqlite.codec.model import ConfChange, ConfChangeType
    net = MemNet(["a"])
    a = net.elect("a")
    net.add_node("b")
    a.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "b", "raft-b", "http-b"))
    assert not a.alone
    net.pump()
    a.propose(b"x")
    net.pump()
    assert a.take_committed() == []
    assert net.nodes["b"].applied and net.nodes["b"].applied[-1].data == b"x"
