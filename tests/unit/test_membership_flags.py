"""The membership-housekeeping flags (rqlite's names) and the bounded self-removal on
shutdown (node_leave.py), without processes: argv -> NodeConfig -> RaftConfig, Go
durations, and leave_group against a fake node whose group cannot commit."""
import asyncio
import time

import pytest

from raftsqlite import errors
from raftsqlite.cli import config_from_args
from raftsqlite.codec.model import Member
from raftsqlite.config import NodeConfig, parse_duration
from raftsqlite.errors import ConfigError
from raftsqlite.node_leave import leave_group
from raftsqlite.raft.config import RaftConfig


@pytest.mark.parametrize("text,seconds", [
    ("72h", 259200.0), ("30s", 30.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0", 0.0),
    ("2.5", 2.5), ("1.5s", 1.5), ("2m3s", 123.0), ("10us", 1e-5)])
def test_go_durations(text, seconds):
    """Invariant: a Go duration string means what it means to rqlite's flag package."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "5x", "1.2.3s", "s5", "-5s", "5 s"])
def test_bad_durations_are_config_errors(text):
    """Invariant: a malformed duration is a ConfigError, never a crash or a silent 0."""
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_flags_reach_the_config():
    """Invariant: the three flags (rqlite's spelling, one or two dashes, ``=`` forms)
    land in NodeConfig; the defaults are off."""
    cfg, _ = config_from_args([])
    assert (cfg.reap_node_timeout, cfg.reap_read_only_node_timeout,
            cfg.cluster_remove_shutdown) == (0.0, 0.0, False)
    cfg, _ = config_from_args(["-raft-reap-node-timeout", "72h",
                               "--raft-reap-read-only-node-timeout=30s",
                               "-raft-cluster-remove-shutdown"])
    assert (cfg.reap_node_timeout, cfg.reap_read_only_node_timeout,
            cfg.cluster_remove_shutdown) == (259200.0, 30.0, True)
    cfg, _ = config_from_args(["-raft-cluster-remove-shutdown=true"])
    assert cfg.cluster_remove_shutdown
    cfg, _ = config_from_args(["-raft-cluster-remove-shutdown=false"])
    assert not cfg.cluster_remove_shutdown
    with pytest.raises(ConfigError):
        config_from_args(["-raft-cluster-remove-shutdown=maybe"])


def test_bad_reap_flags_exit_with_usage():
    """Invariant: a bad duration stops argument parsing with a usage error."""
    with pytest.raises(SystemExit):
        config_from_args(["-raft-reap-node-timeout", "soon"])
    with pytest.raises(ConfigError):
        NodeConfig(reap_node_timeout=-1)


def test_reap_timeout_shorter_than_an_election_timeout_is_refused():
    """Invariant: a reap timeout below the election timeout is refused at start: a
    member would be removed for a silence the group does not treat as a failure."""
    RaftConfig(reap_voter_after=0.5)                     # 10 ticks of 50 ms: allowed
    with pytest.raises(ConfigError):
        RaftConfig(reap_voter_after=0.2)
    with pytest.raises(ConfigError):
        RaftConfig(reap_learner_after=-1)


class _Store:
    def __init__(self, me, members, leader, hang=True):
        self.node_id = me
        self._members = members
        self._leader = leader
        self.hang = hang
        self.calls = []

    def members(self):
        return list(self._members)

    def member(self, nid):
        return next((m for m in self._members if m.node_id == nid), None)

    def leader(self):
        return self.member(self._leader) if self._leader else None

    def is_leader(self):
        return self._leader == self.node_id

    async def transfer_leadership(self, to=None, timeout=None):
        self.calls.append("transfer")
        await asyncio.sleep(min(timeout, 0.05))
        raise errors.Timeout("leadership transfer timed out")

    async def remove(self, nid, timeout=None):
        self.calls.append(("remove", nid))
        if self.hang:
            await asyncio.sleep(3600)     # no quorum: the change never commits
        self._members = [m for m in self._members if m.node_id != nid]


class _Node:
    def __init__(self, store):
        from raftsqlite.tlsconf import NO_TLS

        class C:
            node_id = store.node_id
            tls = NO_TLS
        self.config = C()
        self.store = store
        self.identity_header = None

        class R:
            failed = None
        self.raft = R()


def _three(leader):
    return [Member(n, f"127.0.0.1:{p}", f"127.0.0.1:{p + 1}", True)
            for n, p in (("a", 1), ("b", 3), ("c", 5))], leader


def test_leave_is_bounded_when_the_group_cannot_commit():
    """Invariant: a leader whose removal cannot commit (transfer fails, its own removal
    hangs) gives up within the bound and says so; the shutdown goes on."""
    members, lead = _three("a")
    st = _Store("a", members, lead)
    t0 = time.monotonic()
    out = asyncio.run(leave_group(_Node(st), timeout=0.6))
    took = time.monotonic() - t0
    assert out == "timeout" and took < 2.0, (out, took)
    assert st.calls == ["transfer", ("remove", "a")]


def test_leave_of_a_follower_whose_leader_is_unreachable_is_bounded():
    """Invariant: a follower that cannot reach its leader's HTTP API gives up within the
    bound (it retries until then)."""
    members, lead = _three("b")       # b's HTTP address (127.0.0.1:4) refuses connections
    t0 = time.monotonic()
    out = asyncio.run(leave_group(_Node(_Store("a", members, lead)), timeout=0.8))
    assert out in ("timeout", "failed") and time.monotonic() - t0 < 3.0, out


def test_leave_skips_the_last_voter_and_non_members():
    """Invariant: the last voter is never removed; a node that is not a member does
    nothing."""
    only = [Member("a", "x:1", "x:2", True), Member("r", "x:3", "x:4", False)]
    assert asyncio.run(leave_group(_Node(_Store("a", only, "a")), timeout=1)) == "last-voter"
    members, lead = _three("a")
    assert asyncio.run(leave_group(_Node(_Store("z", members, lead)), timeout=1)) \
        == "not-member"


def test_leader_removes_itself_when_the_transfer_fails():
    """Invariant: a leader whose hand-over fails removes itself as leader (the core
    supports it) when that can commit."""
    members, lead = _three("a")
    st = _Store("a", members, lead, hang=False)
    assert asyncio.run(leave_group(_Node(st), timeout=5)) == "removed"
    assert st.member("a") is None
