"""rqlite's command line on ours: flag aliases, the positional data dir, -version,
-join's forms, -join-attempts/-join-interval, -bootstrap-expect's checks."""
import os
import subprocess
import sys

import pytest

from raftsqlite.cli import _is_command, config_from_args, main
from raftsqlite.config import initial_addresses, join_key, parse_duration
from raftsqlite.errors import ConfigError


def test_rqlite_names_mean_the_same_as_ours():
    """Invariant: each rqlite flag sets exactly the field its counterpart sets."""
    ours, _ = config_from_args("-id n1 -http 127.0.0.1:5001 -raft 127.0.0.1:5002 -http-adv "
                               "h:5001 -raft-adv h:5002 -snapshot-threshold 77 -non-voter "
                               "-join a:1".split())
    theirs, _ = config_from_args("-node-id n1 -http-addr 127.0.0.1:5001 -raft-addr "
                                 "127.0.0.1:5002 -http-adv-addr h:5001 -raft-adv-addr h:5002 "
                                 "-raft-snap 77 -raft-non-voter -join a:1".split())
    assert ours == theirs
    assert theirs.node_id == "n1" and theirs.snapshot_threshold == 77 and not theirs.voter


def test_alias_absent_keeps_our_default():
    """An alias never given must not reset the field (argparse keeps the first default)."""
    cfg, _ = config_from_args(["-snapshot-threshold", "5"])
    assert cfg.snapshot_threshold == 5
    cfg, _ = config_from_args([])
    assert cfg.snapshot_threshold == 50_000 and cfg.voter


def test_positional_data_dir(tmp_path):
    d = str(tmp_path / "node.1")
    cfg, _ = config_from_args(["-node-id", "1", d])
    assert cfg.data_dir == d
    cfg, _ = config_from_args(["-data", d, d])          # the same dir twice is fine
    assert cfg.data_dir == d
    with pytest.raises(ConfigError, match="two data directories"):
        config_from_args(["-data", str(tmp_path / "other"), d])


def test_first_word_command_or_directory(tmp_path, monkeypatch):
    """Subcommands keep precedence; a path-like first word is rqlited's data dir; a bare
    unknown word stays an unknown command (a typo never becomes a data dir)."""
    assert _is_command("shell") and _is_command("demo") and _is_command("rebalance")
    assert _is_command("shel")                           # -> "unknown command"
    assert not _is_command("./node1") and not _is_command("/var/lib/rq")
    monkeypatch.chdir(tmp_path)
    os.mkdir("node1")
    assert not _is_command("node1")                      # an existing directory
    os.mkdir("shell")
    assert _is_command("shell")                          # the command still wins
    assert main(["shel"]) == 2


@pytest.mark.parametrize("given,want", [
    ("http://h:4001", "h:4001"), ("https://H:4001/", "h:4001"), ("h:4001", "h:4001")])
def test_join_forms(given, want):
    cfg, _ = config_from_args(["-join", f"{given},x:1"])
    assert cfg.join == (given, "x:1") and join_key(cfg.join[0]) == want


@pytest.mark.parametrize("v,secs", [("3s", 3.0), ("500ms", 0.5), ("1m30s", 90.0), ("2", 2.0),
                                    ("0.25", 0.25), ("1h", 3600.0)])
def test_durations(v, secs):
    assert parse_duration(v) == secs


@pytest.mark.parametrize("v", ["3x", "s", "", "1 s", "-"])
def test_bad_durations(v):
    with pytest.raises(ConfigError):
        parse_duration(v)


def test_join_attempts_and_interval_combine_with_join_timeout():
    """-join-attempts alone lifts the 60 s default to what the attempts take; an explicit
    -join-timeout stays (whichever ends first); -join-interval alone keeps 60 s."""
    cfg, _ = config_from_args("-join a:1 -join-attempts 30 -join-interval 3s".split())
    assert cfg.join_attempts == 30 and cfg.join_interval == 3.0
    assert cfg.join_timeout >= 30 * 3
    cfg, _ = config_from_args("-join a:1 -join-attempts 30 -join-interval 3s "
                              "-join-timeout 10".split())
    assert cfg.join_timeout == 10
    cfg, _ = config_from_args("-join a:1 -join-interval 1s".split())
    assert cfg.join_timeout == 60 and cfg.join_attempts == 0
    cfg, _ = config_from_args("-join a:1 -join-attempts 2".split())
    assert cfg.join_timeout == 60 and cfg.join_interval == 0


def test_bootstrap_expect_checks():
    cfg, _ = config_from_args("-bootstrap-expect 3 -join a:1,http://b:1,c:1".split())
    assert cfg.bootstrap_expect == 3 and cfg.bootstrap_expect_timeout == 120
    cfg, _ = config_from_args("-bootstrap-expect 1 -join a:1 -bootstrap-expect-timeout 2m"
                              .split())
    assert cfg.bootstrap_expect_timeout == 120.0
    # more addresses than N: the first N in sorted order are the initial members
    cfg, _ = config_from_args("-bootstrap-expect 2 -join c:1,http://b:1,a:1".split())
    assert initial_addresses(cfg.join, 2) == ["a:1", "http://b:1"]
    pods = [f"rqlite-{i}.rqlite:4001" for i in (10, 2, 0, 1, 11)]
    assert initial_addresses(pods, 3) == ["rqlite-0.rqlite:4001", "rqlite-1.rqlite:4001",
                                          "rqlite-2.rqlite:4001"]
    assert initial_addresses(["10.0.0.10:1", "10.0.0.9:2", "10.0.0.9:1"], 2) == \
        ["10.0.0.9:1", "10.0.0.9:2"]
    for argv, why in [("-bootstrap-expect 3 -join a:1,b:1", "at least 3"),
                      ("-bootstrap-expect 3", "at least 3"),
                      ("-bootstrap-expect 2 -join a:1,http://A:1/", "twice"),
                      ("-bootstrap-expect 2 -join a:1,b:1 -shard s1", "default group"),
                      ("-bootstrap-expect -1 -join a:1", ">= 0"),
                      ("-join-attempts -1 -join a:1", ">= 0"),
                      ("-join a:1 -join-timeout 0", "join_timeout > 0"),
                      ("-raft-addr 127.0.0.1:4002 -join 127.0.0.1:4001,http://127.0.0.1:4002",
                       "own Raft address")]:
        with pytest.raises(ConfigError, match=why):
            config_from_args(argv.split())


@pytest.mark.parametrize("argv", [["-version"], ["--version"],
                                  ["-node-id", "x", "-version"]])
def test_version_exits_zero(argv, capsys):
    from raftsqlite import __version__
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"raft-sqlite {__version__}"


def test_unknown_rqlite_flags_are_named():
    """A rqlite flag we do not support stops the process with a message naming it."""
    for flag in ("-disco-mode", "-on-disk", "-raft-snap-int", "-http-x-unknown"):
        r = subprocess.run([sys.executable, "-m", "raftsqlite", flag, "x", "./d"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and flag in r.stderr, r.stderr


def test_flags_by_full_name_only():
    """Invariant: as with rqlited (Go's flag package), a flag is its full name: an
    abbreviation, or an unknown '-h...' flag, is refused by name instead of being read as
    one of ours (argparse's default would take '-max-infl' for -max-inflight and
    '-http-x' for -h)."""
    for argv in (["-max-infl", "3"], ["-http-x", "1"], ["--snapshot", "5"]):
        with pytest.raises(ConfigError, match=f"unknown flag {argv[0]}"):
            config_from_args(argv)
    cfg, _ = config_from_args(["-max-inflight=3", "--batch-max", "9", "-bootstrap-expect",
                               "1", "-join", "a:1", "-no-fsync"])
    assert cfg.store.max_inflight == 3 and cfg.store.batch_max_requests == 9


def test_join_attempts_bound_the_join(tmp_path):
    """Invariant: -join-attempts N stops the join after N rounds (exit 1, saying how many),
    long before -join-timeout; the pause between them is -join-interval."""
    import time
    from raftsqlite.testing.procs import free_port
    dead = f"127.0.0.1:{free_port()}"          # nothing listens there
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "raftsqlite", "-node-id", "j",
                        "-http-addr", f"127.0.0.1:{free_port()}",
                        "-raft-addr", f"127.0.0.1:{free_port()}", "-join", f"http://{dead}",
                        "-join-attempts", "3", "-join-interval", "300ms",
                        str(tmp_path / "j")], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 1 and "3 attempts" in r.stderr, r.stderr
    assert 0.6 <= took < 30


def test_rqlite_raft_timing_and_queue_flags_take_effect():
    """Invariant: rqlite's timing and queued-write flags set the settings they name here
    (election timeout in ticks of 50 ms, the write timeout, the hand-over on stop, the
    queue's capacity, batch, wait and transaction), an explicit -raft-opt wins, and a flag
    we do not take is refused with what to do instead."""
    from raftsqlite.http.backend import HTTPConfig
    cfg, _ = config_from_args(["-raft-timeout", "2s", "-raft-election-timeout", "500ms",
                               "-raft-apply-timeout", "3s", "-raft-shutdown-stepdown=false",
                               "-write-queue-capacity", "10", "-write-queue-batch-size", "5",
                               "-write-queue-timeout", "20ms", "-write-queue-tx=true",
                               "-raft-log-level", "WARN"])
    assert dict(cfg.raft_overrides) == {"election_ticks": 40, "transfer_on_stop": False}
    assert cfg.store.write_timeout == 3.0
    h = HTTPConfig.from_node_config(cfg)
    assert (h.queue_capacity, h.queue_batch, h.queue_interval, h.queue_tx) == (10, 5, 0.02, True)
    cfg, _ = config_from_args(["-raft-heartbeat-timeout", "1500ms", "-raft-opt",
                               "transfer_on_stop=true", "-raft-shutdown-stepdown=false"])
    assert dict(cfg.raft_overrides) == {"election_ticks": 30, "transfer_on_stop": True}
    cfg, _ = config_from_args(["-raft-opt", "election_ticks=7", "-raft-timeout", "3s"])
    assert dict(cfg.raft_overrides) == {"election_ticks": 7}
    default = HTTPConfig.from_node_config(config_from_args([])[0])
    assert (default.queue_capacity, default.queue_tx) == (1024, False)
    for argv, msg in ((["-raft-timeout", "60ms"], "not longer than the heartbeat"),
                      (["-raft-log-level", "loud"], "-raft-log-level takes one of"),
                      (["-raft-shutdown-stepdown=maybe"], "takes true or false"),
                      (["-raft-apply-timeout", "0s"], "must be > 0"),
                      (["-disco-mode", "dns"], "list the members' HTTP addresses in -join"),
                      (["-raft-leader-lease-timeout", "1s"], "CheckQuorum")):
        with pytest.raises(ConfigError, match=msg):
            config_from_args(argv)
