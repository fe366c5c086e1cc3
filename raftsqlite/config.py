"""Settings of one node (CLI-level) and of its store (group commit, reads, limits).

Settings are data: every field has a default and help text (``help()``); each class
validates itself on construction so a bad value fails at start with a ``ConfigError``.
The Raft engine's own settings live in ``raftsqlite.raft.config.RaftConfig``; the node
builds one from a ``NodeConfig``.
"""
import os
import socket
from dataclasses import dataclass, field, fields

from raftsqlite.errors import ConfigError


def _f(default, help):
    return field(default=default, metadata={"help": help})


class _Help:
    @classmethod
    def help(cls) -> dict:
        """name -> (default, help) for every setting; a test checks none is undocumented."""
        return {f.name: (f.default, f.metadata.get("help", "")) for f in fields(cls)}


@dataclass(frozen=True)
class StoreConfig(_Help):
    batch_max_requests: int = _f(512, "Most client write requests packed into one log entry "
                                      "(group commit).")
    batch_max_bytes: int = _f(4 << 20, "Most statement bytes packed into one log entry.")
    batch_wait: float = _f(0.0, "Seconds to wait for more writes before proposing when "
                                "nothing is in flight (0 keeps one-client latency lowest; "
                                "writes arriving while a proposal is in flight are batched "
                                "anyway).")
    max_inflight: int = _f(2, "Group-commit proposals in flight at once; more requests "
                              "queue and are packed into the next entry.")
    read_threads: int = _f(4, "Threads running local reads off the event loop.")
    inline_read_budget: float = _f(0.002, "Seconds a local read may run on the event loop "
                                          "before it is interrupted and re-run on a reader "
                                          "thread (0 = always use the threads).")
    write_timeout: float = _f(10.0, "Default seconds a write waits to be committed and applied.")
    read_timeout: float = _f(10.0, "Default seconds a linearizable/strong read waits.")
    dedup_keep: int = _f(10_000, "Request ids remembered (at least this many, with their "
                                 "results) so a retried write returns its first result.")
    busy_timeout_ms: int = _f(5000, "SQLite busy timeout of every connection, milliseconds.")
    sqlite_synchronous: str = _f("NORMAL", "PRAGMA synchronous of the database (the Raft "
                                           "log is the durable record; NORMAL in WAL mode "
                                           "survives process crashes).")
    max_statements: int = _f(100_000, "Most statements in one request.")
    max_result_bytes: int = _f(256 << 20, "Most row data (estimated) one query may return; "
                                          "a bigger result is an error rather than a node "
                                          "out of memory (0 = no bound).")
    max_apply_steps: int = _f(1_000_000_000, "Most SQLite VM steps the statements of one "
                                             "write request (or read at level strong) may "
                                             "run when applied; past it the request is "
                                             "refused identically on every member, so a "
                                             "runaway statement cannot wedge the group. The "
                                             "leader's value travels in each log entry "
                                             "(0 = no bound).")

    def __post_init__(self):
        for name in ("batch_max_requests", "batch_max_bytes", "max_inflight", "read_threads",
                     "dedup_keep", "max_statements"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_wait", "busy_timeout_ms", "inline_read_budget",
                     "max_result_bytes", "max_apply_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("write_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA, "
                              f"got {self.sqlite_synchronous!r}")


@dataclass(frozen=True)
class NodeConfig(_Help):
    node_id: str = _f("", "This node's id, unique in its group and stable across restarts "
                          "(default: derived from the Raft address).")
    data_dir: str = _f("./raftsqlite-data", "Directory for the SQLite file, Raft log and "
                                            "snapshots.")
    http_addr: str = _f("127.0.0.1:4001", "host:port the HTTP API listens on (':port' = all "
                                          "interfaces).")
    raft_addr: str = _f("127.0.0.1:4002", "host:port the Raft transport listens on.")
    http_adv: str = _f("", "HTTP address other nodes and clients are told to use "
                           "(default: derived from http_addr).")
    raft_adv: str = _f("", "Raft address other members use (default: derived from raft_addr).")
    join: tuple = _f((), "HTTP addresses of existing members to join through.")
    voter: bool = _f(True, "False starts a non-voting read replica.")
    shard: str = _f("", "Name of the shard group this node belongs to ('' = default group).")
    fsync: bool = _f(True, "fdatasync the Raft log before acknowledging.")
    snapshot_threshold: int = _f(50_000, "Applied entries between automatic snapshots.")
    join_timeout: float = _f(60.0, "Seconds to keep retrying -join before giving up.")
    store: StoreConfig = _f(None, "Store settings (group commit, reads).")
    raft_overrides: tuple = _f((), "Extra RaftConfig settings as (name, value) pairs "
                                    "(tests and benchmarks).")
    auth_file: str = _f("", "rqlite-style JSON credentials file: HTTP Basic auth and "
                            "per-endpoint permissions ('' = open API).")
    join_as: str = _f("", "User in the auth file whose credentials this node uses on its "
                          "own calls to other nodes (join, sharding, forwarding).")
    tls: object = _f(None, "TLS settings (raftsqlite.tlsconf.TLSConfig; default: none).")
    # rqlite's join retry and automatic bootstrapping (docs/design/bootstrap.md)
    join_attempts: int = _f(0, "Rounds of join attempts over the -join addresses before "
                               "giving up (0 = until join_timeout; rqlite's -join-attempts).")
    join_interval: float = _f(0.0, "Seconds between join rounds (0 = backoff from 0.1 s to "
                                   "2 s; rqlite's -join-interval).")
    bootstrap_expect: int = _f(0, "Form a new group once this many nodes at the -join "
                                  "addresses are up (0 = off; rqlite's -bootstrap-expect).")
    bootstrap_expect_timeout: float = _f(120.0, "Seconds to wait for -bootstrap-expect "
                                                "nodes before the node gives up.")
    # -- membership housekeeping (rqlite's -raft-reap-* and -raft-cluster-remove-shutdown)
    reap_node_timeout: float = _f(0.0, "Seconds after which the leader removes a voter it "
                                       "has not heard from (0 = never; raft/reaper.py).")
    reap_read_only_node_timeout: float = _f(0.0, "Seconds after which the leader removes a "
                                                 "non-voter it has not heard from (0 = never).")
    cluster_remove_shutdown: bool = _f(False, "On a graceful shutdown (SIGTERM/SIGINT) the "
                                              "node removes itself from its group first (a "
                                              "leader hands leadership over, then the new "
                                              "leader removes it); bounded by "
                                              "LEAVE_TIMEOUT seconds.")
    # -- fk8: rqlite's -fk, -extensions-path, -http-allow-origin (group_settings.py) --
    foreign_keys: bool = _f(False, "Enforce SQLite foreign key constraints (rqlite's -fk). "
                                   "A group setting: every member must have the same.")
    extensions_path: tuple = _f((), "Directories, .zip or .tar.gz files (or files) of "
                                    "SQLite extensions loaded on every connection "
                                    "(rqlite's -extensions-path). Every member must load "
                                    "the same set (names and SHA-256).")
    http_allow_origin: str = _f("", "Access-Control-Allow-Origin value sent on every HTTP "
                                    "response, and CORS preflight (OPTIONS) answered "
                                    "('' = off; rqlite's -http-allow-origin).")
    # -- autobk9: rqlite's -auto-backup / -auto-restore, "file" storage (auto_backup.py) --
    auto_backup: str = _f("", "rqlite-style JSON file: the group's leader writes a backup "
                              "into a directory every interval when the data changed "
                              "('' = off).")
    auto_restore: str = _f("", "rqlite-style JSON file: a node starting with an empty data "
                               "directory that bootstraps a new group loads the backup it "
                               "names first ('' = off).")
    auto_vacuum_interval: float = _f(0.0, "Seconds between VACUUMs the group's leader runs "
                                          "through the log (0 = never; rqlite's "
                                          "-auto-vacuum-int; auto_vacuum.py).")
    # -- rqlite's queued-write flags (-write-queue-*); None keeps HTTPConfig's default
    http_queue_capacity: int = _f(None, "Queued-write requests held before `queue` answers "
                                        "503 (rqlite's -write-queue-capacity).")
    http_queue_batch: int = _f(None, "Most statements per queued batch (rqlite's "
                                     "-write-queue-batch-size).")
    http_queue_interval: float = _f(None, "Seconds a queued write waits for more to batch "
                                          "with (rqlite's -write-queue-timeout).")
    http_queue_tx: bool = _f(None, "Write each queued batch in one transaction (rqlite's "
                                   "-write-queue-tx).")

    def __post_init__(self):
        if self.store is None:
            object.__setattr__(self, "store", StoreConfig())
        if self.tls is None:
            from raftsqlite.tlsconf import NO_TLS
            object.__setattr__(self, "tls", NO_TLS)
        for name in ("http_addr", "raft_addr"):
            parse_addr(getattr(self, name), name)
        for name in ("http_adv", "raft_adv"):
            if getattr(self, name):
                host, _ = parse_addr(getattr(self, name), name)
                if not host:
                    raise ConfigError(f"{name} needs a host name, got {getattr(self, name)!r}")
        for a in self.join:
            parse_addr(a, "join")
        if not self.node_id:
            object.__setattr__(self, "node_id", default_node_id(self.raft_advertise))
        if any(c.isspace() or c in "/\\" for c in self.node_id):
            raise ConfigError(f"node id must be one word without slashes, got {self.node_id!r}")
        if self.shard and not all(c.isalnum() or c in "-_." for c in self.shard):
            raise ConfigError(f"shard name must be letters, digits, '-', '_' or '.', "
                              f"got {self.shard!r}")
        if self.auto_vacuum_interval < 0:
            raise ConfigError("auto_vacuum_interval must be >= 0 (0 = off)")
        if self.reap_node_timeout < 0 or self.reap_read_only_node_timeout < 0:
            raise ConfigError("reap timeouts must be >= 0 (0 = never reap)")
        if any(c in self.http_allow_origin for c in "\r\n\0"):
            raise ConfigError("http_allow_origin must be one header value (no line breaks)")
        if self.auto_restore and self.shard and self.shard != "default":
            raise ConfigError("-auto-restore is for the default group: a shard group's rows "
                              "are placed by the catalog (restore a sharded backup with "
                              "POST /db/load on any node)")
        if self.snapshot_threshold < 0 or self.join_timeout <= 0:
            raise ConfigError("snapshot_threshold must be >= 0 and join_timeout > 0")
        self._check_bootstrap()

    def _check_bootstrap(self):
        own_raft = {join_key(self.raft_advertise), join_key(self.raft_addr)}
        if any(join_key(a) in own_raft for a in self.join):
            raise ConfigError(f"-join lists this node's own Raft address ({self.raft_addr}): "
                              f"-join takes HTTP API addresses (rqlite 8 scripts list Raft "
                              f"addresses there; use the -http-addr ports instead)")
        if self.join_attempts < 0 or self.join_interval < 0:
            raise ConfigError("join_attempts and join_interval must be >= 0")
        n = self.bootstrap_expect
        if n < 0 or self.bootstrap_expect_timeout <= 0:
            raise ConfigError("bootstrap_expect must be >= 0 and bootstrap_expect_timeout > 0")
        if not n:
            return
        if self.shard and self.shard != "default":
            raise ConfigError("-bootstrap-expect forms the default group only; a shard group "
                              "is created through the catalog (start its first node with "
                              "-shard NAME -join <any member>, then the others the same way)")
        distinct = {join_key(a) for a in self.join}
        if len(distinct) != len(self.join):
            raise ConfigError(f"-join names an address twice: {', '.join(self.join)}")
        if len(self.join) < n:
            raise ConfigError(f"-bootstrap-expect {n} needs at least {n} -join addresses (the "
                              f"initial members, this node's own included), got "
                              f"{len(self.join)}")

    @property
    def http_advertise(self) -> str:
        addr = self.http_adv or advertise(self.http_addr)
        # A node serving HTTPS says so in its address: every URL others build from it
        # (api_addr, redirects, forwarding, the router's calls) is then an https one.
        if self.tls.https and "://" not in addr:
            addr = "https://" + addr
        return addr

    @property
    def raft_advertise(self) -> str:
        return self.raft_adv or advertise(self.raft_addr)

    @property
    def db_path(self) -> str:
        return os.path.join(self.data_dir, "db.sqlite")

    @property
    def raft_dir(self) -> str:
        return os.path.join(self.data_dir, "raft")


def parse_addr(addr: str, name: str = "address"):
    """'host:port' or ':port' -> (host or '', port); anything else is a ConfigError."""
    if not isinstance(addr, str):
        raise ConfigError(f"{name} must be host:port, got {addr!r}")
    if "://" in addr:
        addr = addr.split("://", 1)[1].rstrip("/")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not (0 < int(port) < 65536):
        raise ConfigError(f"{name} must be host:port or :port, got {addr!r}")
    return host.strip("[]"), int(port)


def initial_addresses(join, n):
    """The -bootstrap-expect initial members: the first ``n`` -join addresses in natural
    order (numbers compared as numbers: rqlite-2 before rqlite-10, 10.0.0.9 before
    10.0.0.10), the same on every node given the same list in any order."""
    import re

    def natural(addr):
        return [(0, int(t), "") if t.isdigit() else (1, 0, t)
                for t in re.findall(r"\d+|\D+", join_key(addr))]
    return sorted(join, key=natural)[:n]


def join_key(addr: str) -> str:
    """A -join address without its scheme or trailing slash, lower-cased: 'http://H:1/'
    and 'h:1' name the same member."""
    host, port = parse_addr(addr, "join")
    return f"{host.lower()}:{port}"


def parse_duration(v, name="duration") -> float:
    """Seconds from '3', '2.5', or a Go duration as rqlite takes it: '500ms', '3s', '1m',
    '1h', '1m30s'."""
    import re
    s = str(v).strip()
    try:
        return float(s)
    except ValueError:
        pass
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise ConfigError(f"{name} must be seconds or a duration like 500ms, 3s, 1m; got {v!r}")
    return sum(float(a) * units[b] for a, b in parts)


def listen_addr(addr: str):
    """Where to bind: a host-less address listens on every interface."""
    host, port = parse_addr(addr)
    return host or "0.0.0.0", port


def advertise(addr: str) -> str:
    """What others are told: a host-less or wildcard address advertises this machine's
    name, so members on other machines can reach it."""
    host, port = parse_addr(addr)
    if host in ("", "0.0.0.0", "::"):
        host = _reachable_hostname()
    return f"{host}:{port}"


def _reachable_hostname() -> str:
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None)
        return name
    except OSError:
        return "127.0.0.1"


def default_node_id(raft_advertise: str) -> str:
    return raft_advertise.replace(":", "-").replace("[", "").replace("]", "")
