"""cli.py and config.py: the seed's flags, defaults, validation, documented settings."""
import subprocess
import sys

import pytest

from raftsqlite.cli import config_from_args
from raftsqlite.config import NodeConfig, StoreConfig, advertise, listen_addr
from raftsqlite.errors import ConfigError


def test_seed_flags_exactly_as_written():
    """The README's command line parses to the intended config."""
    cfg, _ = config_from_args("-id node2 -data ./node2 -http :11001 -raft :12001 "
                              "-join localhost:11000".split())
    assert (cfg.node_id, cfg.data_dir, cfg.http_addr, cfg.raft_addr, cfg.join) == \
        ("node2", "./node2", ":11001", ":12001", ("localhost:11000",))
    assert cfg.voter and cfg.fsync


def test_double_dash_and_equals_forms():
    cfg, _ = config_from_args(["--id=n1", "--http", "127.0.0.1:5000", "-join=a:1,b:2",
                               "-non-voter", "-shard", "shard1", "-raft-adv", "h:9"])
    assert cfg.node_id == "n1" and cfg.http_addr == "127.0.0.1:5000"
    assert cfg.join == ("a:1", "b:2") and not cfg.voter and cfg.shard == "shard1"
    assert cfg.raft_advertise == "h:9"


def test_defaults_without_flags():
    """No flags: one node on 127.0.0.1:4001/4002, data in ./raftsqlite-data, an id
    derived from the Raft address."""
    cfg, _ = config_from_args([])
    assert cfg.http_addr == "127.0.0.1:4001" and cfg.raft_addr == "127.0.0.1:4002"
    assert cfg.data_dir == "./raftsqlite-data" and cfg.node_id == "127.0.0.1-4002"


def test_hostless_address_listens_everywhere_and_advertises_a_name():
    assert listen_addr(":11000") == ("0.0.0.0", 11000)
    host, port = advertise(":11000").rsplit(":", 1)
    assert host not in ("", "0.0.0.0") and port == "11000"


@pytest.mark.parametrize("argv", [
    ["-http", "nonsense"], ["-raft", ":99999"], ["-join", "x"], ["-non-voter"],
    ["-id", "has space"], ["-shard", "bad/name"], ["-raft-opt", "novalue"]])
def test_bad_flags_are_config_errors(argv):
    with pytest.raises(ConfigError):
        config_from_args(argv)


def test_bad_store_settings():
    with pytest.raises(ConfigError):
        StoreConfig(max_inflight=0)
    with pytest.raises(ConfigError):
        StoreConfig(sqlite_synchronous="sometimes")


def test_every_setting_documented():
    """Settings are data: each has help text."""
    for cls in (NodeConfig, StoreConfig):
        for name, (_, text) in cls.help().items():
            assert text, f"{cls.__name__}.{name} has no help"


def test_help_and_bad_flag_exit_codes():
    """--help works through python -m raftsqlite; a bad flag exits 2 with a message."""
    r = subprocess.run([sys.executable, "-m", "raftsqlite", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "-join" in r.stdout and "-http-adv" in r.stdout
    r = subprocess.run([sys.executable, "-m", "raftsqlite", "-http", "bogus"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "http_addr" in r.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    """A busy HTTP port ends the process with a message, not a traceback."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with socket.socket() as r:
            r.bind(("127.0.0.1", 0))
            raft_port = r.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "raftsqlite", "-data", str(tmp_path / "d"),
                            "-http", f"127.0.0.1:{port}", "-raft", f"127.0.0.1:{raft_port}"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "raft-sqlite:" in r.stderr


def test_unknown_subcommand_is_a_clear_error():
    """A word that is no flag names a subcommand; an unknown one exits 2 with a message."""
    r = subprocess.run([sys.executable, "-m", "raftsqlite", "frobnicate"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
