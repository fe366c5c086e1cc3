"""Reaping silent members (raft/reaper.py) and what a removed member learns, on cores in
a MemNet (raft/memlog.py): the policy's safety rules, each as its own test, and the
core's answers to a removed member's campaign."""
import pytest

from raftsqlite import errors
from raftsqlite.codec.model import ConfChange, ConfChangeType
from raftsqlite.raft.core import CoreConfig
from raftsqlite.raft.memlog import MemNet
from raftsqlite.raft.reaper import Reaper

ET = 10   # CoreConfig's default election_tick


def _reap(net, leader_id, reaper):
    """What the driver does on a tick: pick, propose the REMOVE, let it commit."""
    core = net.core(leader_id)
    pick = reaper.pick(core)
    if pick is not None:
        core.propose_conf_change(ConfChange(ConfChangeType.REMOVE, pick[0]))
        net.pump()
    return pick


def _silence(net, nid):
    net.isolate(nid)


def _tick_until_pick(net, lead, reaper, limit, ids=None):
    for k in range(1, limit + 1):
        net.tick(1, ids=ids)
        pick = reaper.pick(net.core(lead))
        if pick is not None:
            return k, pick
    return None, None


def test_a_silent_voter_is_picked_after_its_timeout_and_not_before():
    """Invariant: a voter the leader has not heard from for ``voter_ticks`` ticks is
    picked (with its silence), not one tick sooner, and never the leader itself."""
    net = MemNet(["a", "b", "c"])
    net.elect("a")
    reaper = Reaper(voter_ticks=30, election_tick=ET)
    _silence(net, "c")
    k, pick = _tick_until_pick(net, "a", reaper, 60, ids=["a", "b"])
    assert pick == ("c", 30, True), pick
    assert k == 30
    _reap(net, "a", reaper)
    assert {m.node_id for m in net.core("a").members} == {"a", "b"}
    assert net.core("b").commit == net.core("a").commit      # it committed with b alone
    # the group goes on with two voters
    net.core("a").propose(b"after")
    net.pump()
    assert net.nodes["b"].applied[-1].data == b"after"


def test_the_leader_never_picks_itself():
    """Invariant: silence is only counted for peers; a group whose other members answer
    has nobody to reap however long it runs."""
    net = MemNet(["a", "b", "c"])
    net.elect("a")
    reaper = Reaper(voter_ticks=12, learner_ticks=12, election_tick=ET)
    for _ in range(100):
        net.tick(1)
        assert reaper.pick(net.core("a")) is None
    assert "a" not in net.core("a").silent_ticks()


def test_only_the_read_only_timeout_leaves_voters_alone():
    """Invariant: with only the non-voter timeout set, a silent voter stays a member and
    a silent learner is picked."""
    net = MemNet(["a", "b", "c", "r"], learners=("r",))
    net.elect("a")
    reaper = Reaper(voter_ticks=0, learner_ticks=20, election_tick=ET)
    _silence(net, "c")
    _silence(net, "r")
    k, pick = _tick_until_pick(net, "a", reaper, 40, ids=["a", "b"])
    assert pick == ("r", 20, False), pick
    _reap(net, "a", reaper)
    for _ in range(60):
        net.tick(1, ids=["a", "b"])
        assert reaper.pick(net.core("a")) is None
    assert {m.node_id for m in net.core("a").members} == {"a", "b", "c"}


def test_nothing_is_reaped_while_a_membership_change_is_pending():
    """Invariant: one membership change at a time: while one is uncommitted the reaper
    proposes nothing (here the pending change cannot commit: b is cut off too)."""
    net = MemNet(["a", "b", "c", "d", "e"], cfg=CoreConfig(check_quorum=False))
    a = net.elect("a")
    reaper = Reaper(voter_ticks=15, election_tick=ET)
    for nid in ("c", "d", "e"):
        _silence(net, nid)
    a.propose_conf_change(ConfChange(ConfChangeType.DEMOTE, "b"))
    net.pump()
    assert not a.conf_change_allowed()
    for _ in range(40):
        net.tick(1, ids=["a", "b"])
        assert reaper.pick(a) is None


def test_nothing_is_reaped_without_a_quorum_that_answers():
    """Invariant: a removal is proposed only when the voters left after it that answered
    within an election timeout are a quorum of them; a leader cut off from most of its
    group (CheckQuorum off, so it keeps leading) reaps nobody."""
    net = MemNet(["a", "b", "c"], cfg=CoreConfig(check_quorum=False))
    a = net.elect("a")
    reaper = Reaper(voter_ticks=15, election_tick=ET)
    _silence(net, "b")
    _silence(net, "c")
    for _ in range(60):
        net.tick(1, ids=["a"])
        assert a.is_leader
        assert reaper.pick(a) is None
    assert len(a.voters) == 3


def test_a_new_leader_restarts_the_clock():
    """Invariant: a new leader counts every peer's silence from its own election: a
    member silent for most of the timeout under the old leader is not reaped at once by
    the new one, only after the new one waited the whole timeout itself."""
    net = MemNet(["a", "b", "c", "d", "e"])
    net.elect("a")
    reaper = Reaper(voter_ticks=30, election_tick=ET)
    _silence(net, "e")
    net.tick(25, ids=["a", "b", "c", "d"])
    assert net.core("a").silent_ticks()["e"] == 25
    b = net.elect("b")
    assert b.silent_ticks()["e"] == 0
    k, pick = _tick_until_pick(net, "b", reaper, 60, ids=["a", "b", "c", "d"])
    assert pick is not None and pick[0] == "e" and k == 30, (k, pick)
    # a leader elected again starts over too (its tick count is per leadership)
    a = net.elect("a")
    assert a.silent_ticks()["e"] == 0
    assert reaper.pick(a) is None


def test_a_paused_member_that_answers_again_is_not_reaped():
    """Invariant: silence shorter than the timeout resets when the member answers."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    reaper = Reaper(voter_ticks=30, election_tick=ET)
    _silence(net, "c")
    net.tick(25, ids=["a", "b"])
    net.heal()
    net.tick(3)
    assert a.silent_ticks()["c"] <= 2
    for _ in range(25):
        net.tick(1)
        assert reaper.pick(a) is None


def test_a_member_added_later_gets_the_whole_timeout():
    """Invariant: a member's silence counts from its addition, not from the leader's
    election (a new member is not reaped the moment it is added)."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.tick(50)
    net.add_node("d")
    a.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d", "raft-d", "http-d"))
    net.pump()
    assert a.silent_ticks()["d"] == 0


def test_reaper_from_seconds_rounds_up_to_ticks():
    """Invariant: a timeout in seconds never becomes fewer ticks than it is long."""
    r = Reaper.from_seconds(2.0, 0.0, 0.05, 20)
    assert (r.voter_ticks, r.learner_ticks, r.on) == (40, 0, True)
    assert Reaper.from_seconds(0.11, 0, 0.05, 20).voter_ticks == 3
    assert not Reaper.from_seconds(0, 0, 0.05, 20).on


@pytest.mark.parametrize("pre_vote,check_quorum", [(True, True), (True, False), (False, True)])
def test_a_reaped_member_that_comes_back_learns_it_and_disrupts_nothing(pre_vote,
                                                                        check_quorum):
    """Invariant: a voter removed while it was away campaigns with its old configuration
    when it is back; the leader refuses it without raising its own term and says why, so
    the member reports itself removed; with PreVote or CheckQuorum on (a node has both)
    the followers refuse it without a term change too. Once added back (same id) it is a
    member again. (With both off, a follower adopts the removed node's higher term and
    the leader steps down: standard Raft, thesis 4.2.3; not tested as a guarantee.)"""
    cfg = CoreConfig(pre_vote=pre_vote, check_quorum=check_quorum)
    net = MemNet(["a", "b", "c"], cfg=cfg)
    a = net.elect("a")
    reaper = Reaper(voter_ticks=25, election_tick=ET)
    _silence(net, "c")
    _tick_until_pick(net, "a", reaper, 40, ids=["a", "b"])
    assert _reap(net, "a", reaper)[0] == "c"
    term = a.term
    net.heal()
    c = net.core("c")
    assert c.removed is None            # it cannot know yet
    net.tick(4 * ET)
    assert a.is_leader and a.term == term, a.stats()
    assert net.core("b").term == term
    assert c.removed is not None and "a" in c.removed, c.removed
    assert {m.node_id for m in a.members} == {"a", "b"}
    a.propose(b"still")
    net.pump()
    assert net.nodes["b"].applied[-1].data == b"still"
    # added back (same id): replicated to again, so no longer "removed"
    a.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "c", "raft-c", "http-c"))
    net.pump()
    # (without PreVote c's term grew while it was away: re-adding it forces an election)
    net.tick(4 * ET)
    assert c.removed is None and c.leader in ("a", "b"), c.stats()


def test_a_leader_that_removes_itself_knows_it():
    """Invariant: a node whose own removal is in its log reports itself removed."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "a"))
    net.pump()
    net.tick(2)
    assert a.removed is not None and not a.is_leader
    assert net.core("b").removed is None


def test_a_learner_cut_off_forgets_its_leader():
    """Invariant: a member that cannot campaign (a learner) stops naming a leader after
    two election timeouts without hearing from one (its /readyz then fails), and names
    it again when it hears from it."""
    net = MemNet(["a", "b", "c", "r"], learners=("r",))
    net.elect("a")
    r = net.core("r")
    assert r.leader == "a"
    _silence(net, "r")
    net.tick(2 * ET + 1)
    assert r.leader is None
    net.heal()
    net.tick(2)
    assert r.leader == "a"


def test_reaping_refused_while_transferring_or_before_the_first_commit():
    """Invariant: conf_change_allowed is exactly propose_conf_change's precondition."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    assert a.conf_change_allowed()
    _silence(net, "c")
    a.transfer_leadership("c")
    assert not a.conf_change_allowed()
    with pytest.raises(errors.ProposalDropped):
        a.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "b"))


def test_simulator_seeds_with_reaping_keep_every_check():
    """Invariant: with leaders reaping silent members under the simulator's crashes,
    partitions, membership changes and transfers, every safety check (one leader per
    term, log matching, leader completeness, state-machine safety) and the final ones
    (convergence, acknowledged writes kept, linearizable history) still hold; and
    reaping really happens in these runs (else this test would prove nothing)."""
    from raftsqlite.raft.sim import replay_command, run_seed
    reaped, failures = 0, []
    for seed in range(20):
        try:
            reaped += run_seed(seed, reap=(25, 15)).stats["reaped"]
        except Exception as e:  # noqa: BLE001 - reported with its replay command
            failures.append(f"{e}\n  replay: {replay_command(seed, 3000, (25, 15))}")
    assert not failures, "\n".join(failures[:5])
    assert reaped >= 3, reaped
