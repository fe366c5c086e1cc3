"""Table-driven tests of the Raft core: elections, replication, conflicts, durability.

They run cores on MemNet, a synchronous in-process network (raftsqlite/raft/memlog.py)."""
import random

import pytest

from raftsqlite import errors
from raftsqlite.codec.model import Entry, Member, Message, MsgType
from raftsqlite.raft.core import CoreConfig, RaftCore
from raftsqlite.raft.memlog import MemLog, MemNet
from raftsqlite.raft.types import Role

ET = 10


def logs_equal(net, ids):
    views = []
    for i in ids:
        c = net.core(i)
        views.append([(k, c.log_term(k)) for k in range(c.first_index, c.last_index + 1)])
    return all(v == views[0] for v in views)


# ---- elections ------------------------------------------------------------------------

def test_single_node_elects_itself_within_two_timeouts():
    """A lone voter becomes leader after its randomized timeout, never later than 2*ET."""
    net = MemNet(["a"])
    for t in range(2 * ET + 1):
        if net.core("a").is_leader:
            break
        net.tick()
    assert net.core("a").is_leader and ET <= t <= 2 * ET


@pytest.mark.parametrize("seed", range(8))
def test_randomized_election_timeout_range(seed):
    """A follower with no leader campaigns after [ET, 2*ET) ticks, varying by rng."""
    net = MemNet(["a", "b", "c"], seed=seed * 10)
    net.isolate("a")
    c = net.core("a")
    for t in range(1, 3 * ET):
        c.tick()
        if c.role == Role.PRE_CANDIDATE:
            break
    assert ET <= t < 2 * ET


@pytest.mark.parametrize("n", [3, 5])
def test_exactly_one_leader_and_all_agree(n):
    """Ticking a healthy group yields one leader that every member follows."""
    ids = [f"n{i}" for i in range(n)]
    net = MemNet(ids, seed=n)
    for _ in range(3 * ET):
        net.tick()
    leaders = [i for i in ids if net.core(i).is_leader]
    assert len(leaders) == 1
    assert all(net.core(i).leader == leaders[0] for i in ids)
    assert len({net.core(i).term for i in ids}) == 1


def test_candidate_with_stale_log_cannot_win():
    """Election restriction: a voter refuses a candidate whose log is behind its own."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.cut |= {("a", "c"), ("c", "a")}
    for i in range(5):
        a.propose(b"x%d" % i)
    net.pump()
    net.isolate("a")
    net.core("c").campaign()     # pre-vote then vote; b has more entries
    net.pump()
    assert not net.core("c").is_leader
    net.elect("b")


@pytest.mark.parametrize("pre_vote,term_grows", [(True, False), (False, True)])
def test_prevote_keeps_partitioned_node_term(pre_vote, term_grows):
    """With PreVote a partitioned node does not inflate its term (and cannot depose the
    leader when it returns); without it, the term grows each timeout."""
    net = MemNet(["a", "b", "c"], cfg=CoreConfig(pre_vote=pre_vote))
    net.elect("a")
    t0 = net.core("c").term
    net.isolate("c")
    net.tick(5 * ET, ids=["c"])
    assert (net.core("c").term > t0) == term_grows


@pytest.mark.parametrize("check_quorum,steps_down", [(True, True), (False, False)])
def test_check_quorum_isolated_leader_steps_down(check_quorum, steps_down):
    """CheckQuorum: a leader that hears from no quorum within an election timeout
    steps down; without CheckQuorum it keeps believing it leads."""
    net = MemNet(["a", "b", "c"], cfg=CoreConfig(check_quorum=check_quorum))
    net.elect("a")
    net.isolate("a")
    net.tick(2 * ET, ids=["a"])
    assert net.core("a").is_leader != steps_down


def test_lease_ignores_disruptive_vote_request():
    """A follower that heard from its leader within the election timeout ignores a
    higher-term vote request (no term change), unless it comes from a transfer."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    b = net.core("b")
    t = b.term
    b.step(Message(MsgType.VOTE, frm="c", to="b", term=t + 5, index=100, log_term=t + 4))
    assert b.term == t and b.leader == "a"
    b.step(Message(MsgType.VOTE, frm="c", to="b", term=t + 5, index=100, log_term=t + 4,
                   context=b"transfer"))
    assert b.term == t + 5 and b.vote == "c"
    assert a.term == t


def test_one_vote_per_term_and_vote_persisted_before_answer():
    """A voter grants at most one vote per term, and the Ready carrying the grant also
    carries the hard state recording it (persisted before the message is sent)."""
    log = MemLog()
    c = RaftCore("b", log, CoreConfig(), random.Random(1))
    c.bootstrap([Member("a"), Member("b"), Member("c")])
    c.advance(_persist(log, c.ready()))
    c.step(Message(MsgType.VOTE, frm="a", to="b", term=5, index=6, log_term=1))
    rd = c.ready()
    grants = [m for m in rd.messages if m.type == MsgType.VOTE_RESP and not m.reject]
    assert [m.to for m in grants] == ["a"]
    assert rd.hard_state.term == 5 and rd.hard_state.vote == "a"
    assert not rd.send_early
    c.advance(_persist(log, rd))
    c.step(Message(MsgType.VOTE, frm="c", to="b", term=5, index=9, log_term=1))
    rd = c.ready()
    assert [m.reject for m in rd.messages if m.type == MsgType.VOTE_RESP] == [True]


def _persist(log, rd):
    log.apply_ready(rd)
    return rd


# ---- replication ------------------------------------------------------------------------

def test_proposals_commit_and_apply_identically():
    """Every member applies the same entries in the same order."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    for i in range(50):
        a.propose(b"v%d" % i)
        if i % 7 == 0:
            net.pump()
    net.pump()
    seqs = [[(e.index, e.term, e.data) for e in net.nodes[i].applied] for i in "abc"]
    assert seqs[0] == seqs[1] == seqs[2]
    assert [e.data for e in net.nodes["a"].applied if e.data.startswith(b"v")] == \
        [b"v%d" % i for i in range(50)]


@pytest.mark.parametrize("max_bytes,want_msgs", [(1 << 20, 1), (24 + 10, 20)])
def test_append_batching_bounded_by_bytes(max_bytes, want_msgs):
    """Proposals made between two Ready cycles travel in as few APPENDs as the byte bound
    allows (entries of 10 bytes + 24 overhead here)."""
    net = MemNet(["a", "b"], cfg=CoreConfig(max_msg_bytes=max_bytes, max_inflight=1000))
    a = net.elect("a")
    n0 = len(net.sent)
    for i in range(20):
        a.propose(b"0123456789")
    net.pump()
    apps = [m for m in net.sent[n0:] if m.type == MsgType.APPEND and m.to == "b" and m.entries]
    assert len(apps) == want_msgs
    assert sum(len(m.entries) for m in apps) == 20


@pytest.mark.parametrize("max_inflight", [1, 3, 8])
def test_inflight_appends_bounded(max_inflight):
    """Without acknowledgements a leader sends at most max_inflight APPENDs to a follower."""
    net = MemNet(["a", "b", "c"], cfg=CoreConfig(max_inflight=max_inflight))
    a = net.elect("a")
    net.drop = lambda m: m.type == MsgType.APPEND_RESP
    n0 = len(net.sent)
    for i in range(20):
        a.propose(b"x")
        net.pump()
    apps = [m for m in net.sent[n0:] if m.type == MsgType.APPEND and m.to == "b"]
    assert len(apps) == max_inflight


def test_leader_counts_own_entries_only_once_durable():
    """A lone leader does not commit an entry until advance() says it is persisted."""
    net = MemNet(["a"])
    a = net.elect("a")
    c0 = a.commit
    term, idx = a.propose(b"x")
    rd = a.ready()
    assert [e.index for e in rd.entries] == [idx]
    assert a.commit == c0 and not rd.committed
    net.nodes["a"].log.apply_ready(rd)
    a.advance(rd)
    assert a.commit == idx
    assert [e.data for e in a.ready().committed] == [b"x"]


def test_no_commit_without_quorum():
    """A leader cut off from every follower never commits new entries."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    c0 = a.commit
    net.isolate("a")
    a.propose(b"x")
    net.pump()
    assert a.commit == c0


def test_commits_only_current_term_entries_by_counting():
    """Figure 8 rule: a leader does not commit an older-term entry just because a
    quorum holds it; it commits once an entry of its own term is on a quorum."""
    cfg = CoreConfig(max_msg_bytes=1, max_inflight=1, check_quorum=False)   # no lease wait
    net = MemNet(["a", "b", "c"], cfg=cfg)
    a = net.elect("a")
    # X reaches b only, and a never learns it (no commit).
    net.drop = lambda m: (m.type == MsgType.APPEND and m.to == "c") or \
        (m.type == MsgType.APPEND_RESP and m.to == "a")
    _, x = a.propose(b"X")
    net.pump()
    assert net.core("b").log_term(x) == a.term and a.commit < x
    net.isolate("a")
    net.drop = None
    b = net.core("b")
    # b leads a higher term; X (old term) reaches c, b's own no-op does not.
    probes = []

    def drop(m):    # let the first probe through (c rejects it), then hold back b's no-op
        if m.type == MsgType.APPEND and m.to == "c" and any(e.index > x for e in m.entries):
            probes.append(m)
            return len(probes) > 1
        return False
    net.drop = drop
    b.campaign()
    net.pump()
    assert b.is_leader and b.term > net.core("a").term
    assert net.core("c").log_term(x) is not None
    assert b.commit < x, "committed an old-term entry by counting replicas"
    net.drop = None
    net.tick(2)
    assert b.commit >= x + 1


# ---- conflicts ------------------------------------------------------------------------

def test_divergent_tail_truncated_and_replaced():
    """An old leader's uncommitted entries are replaced by the new leader's log."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("a")
    for i in range(5):
        a.propose(b"lost%d" % i)
    net.pump()
    net.heal()
    net.isolate("a")
    b = net.elect("b")
    for i in range(3):
        b.propose(b"kept%d" % i)
    net.pump()
    net.heal()
    net.tick(3)
    assert not a.is_leader
    assert logs_equal(net, "abc")
    assert a.stats()["truncations"] >= 1
    assert not any(e.data.startswith(b"lost") for e in net.nodes["a"].applied)


def test_fast_backoff_needs_few_rejections():
    """Fast back-off: a follower with a long divergent tail is repaired in a few round
    trips, not one per entry."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("a")
    for i in range(60):
        a.propose(b"lost")
        net.pump()
    net.heal()
    net.isolate("a")
    b = net.elect("b")
    for i in range(60):
        b.propose(b"kept")
        net.pump()
    net.elect("c")       # a new leader starts probing at its own (long) last index
    net.heal()
    n0 = len(net.sent)
    net.tick(3)
    rejects = [m for m in net.sent[n0:] if m.type == MsgType.APPEND_RESP and m.reject and m.frm == "a"]
    assert logs_equal(net, "abc")
    assert 1 <= len(rejects) <= 3


def test_never_truncates_below_commit():
    """An APPEND whose entries conflict below the commit index changes nothing; the
    follower answers with its commit index."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    b = net.core("b")
    ci = b.commit
    want = [(i, b.log_term(i)) for i in range(1, b.last_index + 1)]
    b.step(Message(MsgType.APPEND, frm="a", to="b", term=b.term, index=ci - 2,
                   log_term=b.log_term(ci - 2), commit=ci,
                   entries=[Entry(b.term + 1, ci - 1, data=b"evil"), Entry(b.term + 1, ci)]))
    assert [(i, b.log_term(i)) for i in range(1, b.last_index + 1)] == want
    rd = b.ready()
    assert [(m.type, m.index, m.reject) for m in rd.messages] == [(MsgType.APPEND_RESP, ci, False)]


def test_stale_duplicate_append_does_not_truncate():
    """A re-delivered older APPEND whose entries match never shortens the log."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"1")
    net.pump()
    old = [m for m in net.sent if m.type == MsgType.APPEND and m.to == "b" and m.entries][-1]
    for i in range(5):
        a.propose(b"more")
    net.pump()
    b = net.core("b")
    last = b.last_index
    b.step(old)
    net.pump()
    assert b.last_index == last and b.stats()["truncations"] == 0


# ---- durability across restarts -------------------------------------------------------------

def test_restart_keeps_term_vote_commit_and_membership():
    """A restarted core resumes from its persisted hard state, log and membership."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    for i in range(5):
        a.propose(b"x")
    net.pump()
    b = net.core("b")
    before = (b.term, b.vote, b.commit, b.last_index, sorted(b.voters))
    net.crash("b")
    b2 = net.restart("b")
    assert (b2.term, b2.vote, b2.commit, b2.last_index, sorted(b2.voters)) == before
    a.propose(b"y")
    net.pump()
    assert b2.last_index == a.last_index


def test_unpersisted_entries_are_lost_on_crash():
    """Entries handed out in a Ready but not persisted do not survive a crash."""
    net = MemNet(["a"])
    a = net.elect("a")
    last = a.last_index
    a.propose(b"never-synced")
    a.ready()          # the driver took it, then the process died before fsync
    net.crash("a")
    a2 = net.restart("a")
    assert a2.last_index == last


def test_bootstrap_refuses_another_history_and_repeats_harmlessly():
    """bootstrap() on a node with another history is a clear error, not a silent reset;
    with the same members it is a no-op."""
    net = MemNet(["a"])
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    last = a.last_index
    assert net.core("a").bootstrap([Member("a", "raft-a", "http-a")]) is False
    assert a.last_index == last and a.is_leader
    with pytest.raises(errors.ConfigError):
        net.core("a").bootstrap([Member("a"), Member("b")])


def test_ready_entries_handed_out_once():
    """Unstable entries appear in exactly one Ready (no double appends)."""
    net = MemNet(["a"])
    a = net.elect("a")
    a.propose(b"1")
    r1 = a.ready()
    a.propose(b"2")
    net.nodes["a"].log.apply_ready(r1)
    a.advance(r1)
    r2 = a.ready()
    assert [e.data for e in r1.entries] == [b"1"] and [e.data for e in r2.entries] == [b"2"]


def test_send_early_only_for_stable_leader():
    """Messages may go out before the fsync only for a leader whose term and vote did
    not change in this Ready."""
    net = MemNet(["a", "b", "c"])
    a = net.core("a")
    a.campaign()
    rd = a.ready()
    assert rd.hard_state is None or not rd.send_early
    net.nodes["a"].log.apply_ready(rd)
    a.advance(rd)
    net.queue.extend(rd.messages)
    net.pump()
    assert a.is_leader
    a.propose(b"x")
    rd = a.ready()
    assert rd.send_early and rd.entries


def test_idle_group_has_no_ready():
    """Once messages settle, no core reports work: a driver's has_ready loop ends."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    assert not any(net.core(i).has_ready() for i in "abc")


def test_report_unreachable_moves_follower_to_probe():
    """After the transport reports a follower unreachable, the leader stops pipelining
    to it and probes again."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    assert a.progress()["b"]["state"] == "replicate"
    a.report_unreachable("b")
    assert a.progress()["b"]["state"] == "probe"


def test_members_at_follows_history():
    """members_at(index) gives the configuration in force at a committed index (what a
    snapshot taken there must record)."""
    from raftsqlite.codec.model import ConfChange, ConfChangeType
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    before = a.commit
    a.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    net.pump()
    assert sorted(m.node_id for m in a.members_at(before)) == ["a", "b", "c"]
    assert sorted(m.node_id for m in a.members_at(a.commit)) == ["a", "b"]
    assert a.member("a").http_addr == "http-a"


@pytest.mark.parametrize("kept", [0, 1, 3])
@pytest.mark.parametrize("with_hs", [False, True])
def test_bootstrap_resumes_after_a_torn_first_write(kept, with_hs):
    """A crash while the bootstrap entries are written leaves a prefix; bootstrapping
    again completes it, and the node can lead."""
    net = MemNet(["a"], bootstrap=False)
    n = net.nodes["a"]
    members = [Member("a"), Member("b")]
    rd = n.core.ready() if n.core.has_ready() else None
    if rd is not None:
        n.core.advance(rd)
    n.core.bootstrap(members)
    rd = n.core.ready()
    n.log.append(rd.entries[:kept])     # torn: some entries...
    if with_hs:
        n.log.set_hard_state(rd.hard_state)   # ...and maybe the hard state
    net.crash("a")
    c = net.restart("a")
    assert c.commit < 4
    assert c.bootstrap(members) is True
    net.pump()
    assert c.term == 1 and c.voters == {"a", "b"} and c.commit == 4
    assert c.bootstrap(members) is False
    with pytest.raises(errors.ConfigError):
        c.bootstrap([Member("a")])


def test_persisted_commit_never_covers_entries_not_yet_durable():
    """A Ready's hard-state commit covers only entries durable before it: a follower
    replacing a stale tail must not persist a commit index that, after a crash, would
    apply the stale entry still on disk (sim seed 303011)."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("a")
    for i in range(3):
        a.propose(b"stale")
    net.pump()
    net.heal()
    net.isolate("a")
    b = net.elect("b")
    for i in range(3):
        b.propose(b"new")
    net.pump()
    net.heal()
    net.readies = []
    net.tick(3)
    trunc = [rd for nid, rd in net.readies if nid == "a" and rd.entries
             and rd.entries[0].index <= b.commit]
    assert trunc, "a never received the replacing entries"
    for rd in trunc:
        assert rd.hard_state is None or rd.hard_state.commit < rd.entries[0].index
    assert [e.data for e in net.nodes["a"].applied if e.data] == \
        [e.data for e in net.nodes["b"].applied if e.data]


def test_hard_state_for_shutdown_is_durable_safe():
    """core.hard_state() never claims a commit beyond the durable log."""
    net = MemNet(["a"])
    a = net.elect("a")
    a.propose(b"x")
    rd = a.ready()               # taken, not persisted
    assert a.hard_state().commit <= net.nodes["a"].log.last_index()
    net.nodes["a"].log.apply_ready(rd)
    a.advance(rd)
    net.pump()
    assert a.hard_state().commit == a.commit
