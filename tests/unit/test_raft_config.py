"""RaftConfig: every setting documented; bad values refused with ConfigError."""
import dataclasses

import pytest

from raftsqlite.errors import ConfigError
from raftsqlite.raft.config import RaftConfig, split_addr


def test_every_setting_has_help():
    """No setting without a help text (settings are data, documented in one place)."""
    for name, (_, text) in RaftConfig.help().items():
        assert len(text) > 10, f"{name} lacks help"


def test_defaults_valid_and_frozen():
    """Defaults construct; the object is immutable."""
    c = RaftConfig()
    assert c.fsync is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.fsync = False


@pytest.mark.parametrize("kw", [
    {"node_id": ""}, {"node_id": "a b"}, {"raft_addr": "nohost"}, {"raft_addr": "h:99999"},
    {"tick_interval": 0}, {"heartbeat_ticks": 10, "election_ticks": 10},
    {"max_inflight": 0}, {"segment_bytes": 0}, {"snapshot_threshold": -1},
    {"max_frame_bytes": 1000}, {"reconnect_min": 2.0, "reconnect_max": 1.0},
    {"group_id": -1}, {"recycle_bytes": -1},
])
def test_bad_values_refused(kw):
    """Each invalid value fails at construction with a ConfigError naming it."""
    with pytest.raises(ConfigError):
        RaftConfig(**kw)


def test_split_addr():
    """A host-less address listens on every interface."""
    assert split_addr(":4002") == ("0.0.0.0", 4002)
    assert split_addr("127.0.0.1:1") == ("127.0.0.1", 1)
    with pytest.raises(ConfigError):
        split_addr("x")
