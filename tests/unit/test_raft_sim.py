"""The deterministic simulator over many seeds, and proof that its checkers bite.

RAFTSQLITE_SIM_SEEDS (default 500) and RAFTSQLITE_SIM_START (default 0) choose the
seeds CI runs; the long mode is
``python -m raftsqlite.raft.sim --seeds 100000``."""
import os

import pytest

from raftsqlite.raft import sim as simmod
from raftsqlite.raft.core import RaftCore
from raftsqlite.raft.sim import Sim, SimFailure, replay_command, run_seed

SEEDS = int(os.environ.get("RAFTSQLITE_SIM_SEEDS", "500"))
START = int(os.environ.get("RAFTSQLITE_SIM_START", "0"))


def test_simulator_many_seeds():
    """Safety (one leader per term, log matching, leader completeness, state-machine
    safety), durability of acknowledged proposals and linearizability of the register
    workload hold over SEEDS random fault schedules."""
    failures = []
    for seed in range(START, START + SEEDS):
        try:
            run_seed(seed)
        except Exception as e:  # noqa: BLE001 - every failure is reported with its replay
            failures.append(f"{type(e).__name__}: {str(e)[:300]}\n  replay: {replay_command(seed, simmod.DURATION)}")
    assert not failures, f"{len(failures)} of {SEEDS} seeds failed:\n" + "\n".join(failures[:10])


def test_simulator_is_deterministic():
    """One seed replays exactly: same events, same committed log, same history."""
    a, b = Sim(7).run(), Sim(7).run()
    assert a.stats == b.stats and a.global_log == b.global_log
    assert [(o.id, o.status, o.result, o.position) for o in a.ops] == \
        [(o.id, o.status, o.result, o.position) for o in b.ops]


def _finished(seed=3):
    s = Sim(seed).run()
    assert any(o.status == "ok" for o in s.ops)
    return s


def test_checker_rejects_stale_read():
    """A ReadIndex read placed before a write that completed before it began is caught."""
    s = _finished()
    writes = [o for o in s.ops if o.status == "ok" and o.kind == "w"]
    w = writes[len(writes) // 2]
    fake = simmod.Op(10**6, "ri", w.key, "", None, w.complete + 1, 0)
    fake.status, fake.complete, fake.position = "ok", w.complete + 2, w.position - 1
    fake.result = _value_at(s, w.key, fake.position)   # a value that did exist then
    s.ops.append(fake)
    with pytest.raises(SimFailure, match="not linearizable"):
        s._check_linearizable()


def _value_at(s, key, pos):
    val = None
    for i in range(1, pos + 1):
        data = s.global_log[i][1]
        if data and data[:1].isdigit():
            _, kind, k, a, b = data.decode().split(":")
            if k == key and kind == "w":
                val = a
            elif k == key and kind == "c" and val == a:
                val = b
    return val


def test_checker_rejects_lost_acknowledged_write():
    """An acknowledged write missing from the committed log is caught."""
    s = _finished()
    w = next(o for o in s.ops if o.status == "ok" and o.kind == "w")
    del s.op_index[w.id]
    with pytest.raises(SimFailure):
        s._final_checks()


def test_checker_rejects_wrong_cas_result():
    """A compare-and-set whose reported result contradicts the committed order is caught."""
    s = _finished()
    c = next((o for o in s.ops if o.status == "ok" and o.kind == "c"), None)
    if c is None:
        pytest.skip("no cas in this seed")
    c.result = not c.result
    with pytest.raises(SimFailure):
        s._check_linearizable()


def test_checker_rejects_committed_failed_proposal():
    """A proposal reported as definitely failed must not be in the committed log."""
    s = _finished()
    w = next(o for o in s.ops if o.status == "ok" and o.kind == "w")
    w.status = "fail"
    with pytest.raises(SimFailure):
        s._final_checks()


def _first_failing_seed(limit):
    for seed in range(limit):
        try:
            run_seed(seed)
        except SimFailure as e:
            return seed, str(e)
    return None, None


def test_simulator_catches_vote_without_log_check(monkeypatch):
    """With the election restriction removed, some seed loses committed entries."""
    monkeypatch.setattr(RaftCore, "_up_to_date", lambda self, index, term: True)
    seed, msg = _first_failing_seed(60)
    assert seed is not None, "the simulator missed a broken election restriction"


def test_simulator_catches_reads_without_quorum(monkeypatch):
    """With ReadIndex answered without a heartbeat round, some read is stale."""
    def leader_read(self, frm, ctx):
        self._answer_read(frm, ctx, self.commit)
    monkeypatch.setattr(RaftCore, "_leader_read", leader_read)
    seed, msg = _first_failing_seed(300)
    assert seed is not None, "the simulator missed non-linearizable reads"


def test_simulator_catches_messages_sent_before_fsync(monkeypatch):
    """If every Ready's messages (acks, votes) went out before its fsync, a crash can
    lose a vote or an acknowledged entry; some seed must show it."""
    orig = RaftCore.ready

    def ready(self):
        rd = orig(self)
        rd.send_early = True
        return rd
    monkeypatch.setattr(RaftCore, "ready", ready)
    seed, msg = _first_failing_seed(200)
    assert seed is not None, "the simulator missed acknowledgements sent before fsync"
