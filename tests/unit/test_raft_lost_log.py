"""A member that lost its log (storage wiped, restarted with the same id) answers the
leader's APPENDs with an empty log, below what it acknowledged. The leader must notice,
say so in its stats (and so in /status), and replicate to it again from what it really
has, instead of probing at its old match index forever (MemNet, raft/memlog.py)."""
from raftsqlite.codec.model import MsgType
from raftsqlite.raft.memlog import MemLog, MemNet


def _wipe(net, nid):
    """The member's disk is lost: a fresh log, nothing applied, same identity."""
    net.crash(nid)
    n = net.nodes[nid]
    n.log = MemLog()
    n.applied = []
    return net.restart(nid)


def _appends_to(net, nid, since):
    return [m for m in net.sent[since:] if m.type == MsgType.APPEND and m.to == nid]


def test_leader_detects_a_follower_that_lost_its_log_and_refills_it():
    """Invariant: a follower whose log ends below the index it acknowledged is reported
    by the leader (stats ``lost_logs``, progress) and gets the leader's log again, so it
    applies exactly the leader's entries; the leader's commit index never goes back."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    for i in range(10):
        a.propose(b"x%d" % i)
    net.pump()
    acked = a.progress()["c"]["match"]
    assert acked == a.last_index
    commit0 = a.commit
    c = _wipe(net, "c")
    assert c.last_index == 0
    n0 = len(net.sent)
    net.tick(6)
    st = a.stats()
    assert st["lost_logs_detected"] == 1, st
    rep = st["lost_logs"]["c"]
    assert rep["acknowledged"] == acked and rep["log_end"] == 0, rep
    assert a.commit >= commit0
    a.propose(b"after")
    net.pump()
    net.tick(2)
    assert a.progress()["c"]["match"] == a.last_index
    assert [e.data for e in net.nodes["c"].applied] == [e.data for e in net.nodes["a"].applied]
    assert len(_appends_to(net, "c", n0)) < 20      # no endless probing


def test_lost_log_refilled_by_snapshot_when_the_leader_compacted():
    """Invariant: when the leader no longer has the entries the wiped follower needs,
    it sends a snapshot (the ordinary path once the follower's real end is known)."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    for i in range(20):
        a.propose(b"x%d" % i)
    net.pump()
    net.compact("a")
    _wipe(net, "c")
    net.tick(6)
    assert a.stats()["lost_logs_detected"] == 1
    assert any(m.type == MsgType.SNAPSHOT and m.to == "c" for m in net.sent)
    a.propose(b"after")
    net.pump()
    assert [e.data for e in net.nodes["c"].applied] == [e.data for e in net.nodes["a"].applied]


def test_a_lagging_follower_is_not_reported_as_lost():
    """Invariant: a follower that is merely behind (it never acknowledged the entries it
    lacks) or whose answers were lost is never reported: no false alarms."""
    net = MemNet(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("c")
    for i in range(10):
        a.propose(b"x%d" % i)
    net.pump()
    net.heal()
    net.tick(4)
    net.drop = lambda m: m.type == MsgType.APPEND_RESP and m.frm == "b"
    for i in range(5):
        a.propose(b"y%d" % i)
    net.pump()
    net.heal()
    net.tick(4)
    assert a.stats()["lost_logs_detected"] == 0, a.stats()
    assert [e.data for e in net.nodes["c"].applied] == [e.data for e in net.nodes["a"].applied]


def test_heartbeat_answer_with_lost_log_survives_the_wire():
    """Invariant: the follower's "my log ends at N" heartbeat answer keeps its fields
    through both codecs (compiled and pure), so a real leader sees what MemNet's does."""
    from raftsqlite.codec import decode_message, encode_message
    from raftsqlite.codec import fallback
    from raftsqlite.codec.model import Message
    m = Message(MsgType.HEARTBEAT_RESP, frm="c", to="a", term=3, context=b"\x01",
                reject=True, reject_hint=0)
    for enc, dec in ((encode_message, decode_message),
                     (fallback.encode_message, fallback.decode_message)):
        r = dec(enc(m))
        r = r[1] if isinstance(r, tuple) else r
        assert (r.type, r.reject, r.reject_hint, r.context) == (MsgType.HEARTBEAT_RESP, True, 0, b"\x01")
