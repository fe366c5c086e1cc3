"""Settings of one Raft member: timing, batching limits, storage and transport.

Settings are data: each field has a default and help text (``RaftConfig.help()``), and
``RaftConfig`` validates itself on construction so a bad value fails at start with a
clear ``ConfigError`` instead of misbehaving later.
"""
from dataclasses import dataclass, field, fields

from raftsqlite.errors import ConfigError


def _f(default, help):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RaftConfig:
    node_id: str = _f("node1", "This member's id; unique in its group, stable across restarts.")
    data_dir: str = _f("./data", "Directory holding the Raft log, state file and snapshots.")
    raft_addr: str = _f("127.0.0.1:4002", "host:port the Raft transport listens on.")
    advertise_addr: str = _f("", "host:port other members use to reach this one "
                                 "(default: raft_addr).")
    http_addr: str = _f("", "This member's HTTP address, recorded in the membership.")
    cluster_id: str = _f("raftsqlite", "Connections from members of another cluster are refused.")
    group_id: int = _f(0, "Raft group id carried in every frame (0 = the default group).")

    tick_interval: float = _f(0.05, "Seconds per logical tick of the core.")
    election_ticks: int = _f(10, "Election timeout in ticks; randomized in [n, 2n).")
    heartbeat_ticks: int = _f(2, "Leader heartbeat interval in ticks.")
    pre_vote: bool = _f(True, "Run a PreVote round before a real election.")
    check_quorum: bool = _f(True, "A leader steps down without quorum contact for an "
                                  "election timeout.")

    max_msg_bytes: int = _f(1 << 20, "Upper bound on entry bytes in one AppendEntries message.")
    max_inflight: int = _f(256, "AppendEntries messages in flight per follower.")
    max_frame_bytes: int = _f(64 << 20, "Largest frame accepted from the network; a bigger "
                                        "one closes the connection.")
    send_buffer_bytes: int = _f(32 << 20, "Per-peer bytes queued for sending; beyond this, "
                                          "messages are dropped (Raft retries).")
    max_proposal_bytes: int = _f(16 << 20, "Largest single proposal accepted.")
    max_pending_proposals: int = _f(100_000, "Proposals awaiting commit before new ones "
                                             "are refused.")

    fsync: bool = _f(True, "fdatasync the log before acknowledging entries. Turning it off "
                           "loses acknowledged writes on power loss.")
    segment_bytes: int = _f(64 << 20, "Size at which a log segment file is closed and a new "
                                      "one started.")
    recycle_bytes: int = _f(1 << 30, "Compacted log segments kept (up to this many bytes) to be "
                                     "overwritten as the next segments instead of zero-filling "
                                     "new files (0 = delete them).")
    cache_entries: int = _f(20_000, "Recent log entries kept in memory; older ones are read "
                                    "from disk.")
    cache_bytes: int = _f(64 << 20, "Upper bound on bytes of cached entries.")

    snapshot_threshold: int = _f(50_000, "Take a snapshot after this many applied entries "
                                         "since the last one (0 = never).")
    snapshot_trailing: int = _f(5_000, "Entries kept in the log after a snapshot so slightly "
                                       "slow followers need no snapshot.")
    snapshot_chunk_bytes: int = _f(1 << 20, "Bytes per SNAPSHOT message when streaming a "
                                            "snapshot file.")
    snapshots_kept: int = _f(2, "Snapshot files kept in the data dir.")

    reconnect_min: float = _f(0.02, "First reconnect delay to a peer, seconds.")
    reconnect_max: float = _f(1.0, "Largest reconnect delay to a peer, seconds.")
    ssl_server: object = _f(None, "ssl.SSLContext the Raft listener wraps connections in "
                                  "(None = plaintext). Built by the node from its TLS "
                                  "flags; the engine never reads certificate files.")
    ssl_client: object = _f(None, "ssl.SSLContext used to dial peers (None = plaintext).")
    ssl_server_name: str = _f("", "Name checked in a peer's certificate instead of the "
                                  "host dialled ('' = the host).")
    transfer_on_stop: bool = _f(True, "A leader that stops hands leadership over first.")
    reap_voter_after: float = _f(0.0, "Seconds a leader waits, with no answer from a voter, "
                                      "before removing it from the group (0 = never; "
                                      "counted in ticks from the leader's election; "
                                      "raft/reaper.py).")
    reap_learner_after: float = _f(0.0, "Seconds a leader waits, with no answer from a "
                                        "non-voter, before removing it (0 = never).")
    apply_batch: int = _f(4096, "Most committed entries passed to one state-machine apply call.")
    apply_inline_bytes: int = _f(8192, "Committed entries up to this many bytes in all are "
                                       "applied on the event loop, without the apply thread's "
                                       "two thread hand-offs, when no apply is queued there "
                                       "(0 = always on the thread).")
    apply_inline_budget: float = _f(0.02, "Seconds an apply on the event loop may run before "
                                          "it is undone and run again on the apply thread, "
                                          "for state machines that offer apply_bounded "
                                          "(one slow statement must not stall the loop: "
                                          "heartbeats, other requests).")
    commit_notify_delay: float = _f(0.002, "Seconds a leader holds an APPEND that only tells a "
                                           "caught-up follower the new commit index, so that "
                                           "the next APPEND carries it instead (0 = send at "
                                           "once). Durability and acknowledgements do not "
                                           "depend on it, only how soon followers apply.")
    persist_wait: float = _f(0.002, "Seconds the event loop waits, blocked, for a small log "
                                    "write's fdatasync before it hands the wait to the loop "
                                    "(saves the thread-to-loop hand-off; 0 = never block).")
    slow_disk_handoff: float = _f(0.05, "A leader hands leadership over when its own log "
                                        "writes hold the group back: the median of its last 8 "
                                        "writes took at least this many seconds and the "
                                        "followers had committed them at least half that "
                                        "sooner (0 = never; docs/design/raft-io.md).")

    min_free_disk: int = _f(64 << 20, "Bytes that must stay free on the data dir's disk: "
                                      "below it a leader refuses new proposals (HTTP 507) "
                                      "and hands leadership to a member with room, so the "
                                      "log and SQLite do not run into a full disk mid-write "
                                      "(checked once a second; 0 = off; docs/operations.md).")

    def __post_init__(self):
        if not self.node_id or any(c.isspace() for c in self.node_id):
            raise ConfigError(f"node_id must be a non-empty word, got {self.node_id!r}")
        _hostport(self.raft_addr, "raft_addr")
        if self.advertise_addr:
            _hostport(self.advertise_addr, "advertise_addr")
        if not (0 <= self.group_id < 1 << 32):
            raise ConfigError(f"group_id must fit in 32 bits, got {self.group_id}")
        if self.tick_interval <= 0:
            raise ConfigError("tick_interval must be > 0")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("need 1 <= heartbeat_ticks < election_ticks, got "
                              f"{self.heartbeat_ticks} and {self.election_ticks}")
        for name in ("max_msg_bytes", "max_inflight", "max_frame_bytes", "send_buffer_bytes",
                     "segment_bytes", "cache_entries", "cache_bytes", "snapshot_chunk_bytes",
                     "snapshots_kept", "apply_batch", "max_proposal_bytes",
                     "max_pending_proposals"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.apply_inline_bytes < 0 or not (0 <= self.persist_wait <= 0.1) \
                or not (0 <= self.commit_notify_delay <= 1.0):
            raise ConfigError("need apply_inline_bytes >= 0, 0 <= persist_wait <= 0.1 and "
                              "0 <= commit_notify_delay <= 1")
        if not (0 < self.apply_inline_budget <= 10):
            raise ConfigError("apply_inline_budget must be > 0 and <= 10 seconds")
        if self.min_free_disk < 0:
            raise ConfigError(f"min_free_disk must be >= 0 bytes, got {self.min_free_disk}")
        if not (0 <= self.slow_disk_handoff <= 60):
            raise ConfigError("slow_disk_handoff must be between 0 and 60 seconds")
        et = self.election_ticks * self.tick_interval
        for name in ("reap_voter_after", "reap_learner_after"):
            v = getattr(self, name)
            if v < 0 or (0 < v < et):
                # shorter than an election timeout: a member would be removed for a
                # silence the group itself does not yet treat as a failure
                raise ConfigError(f"{name} must be 0 (never) or at least the election "
                                  f"timeout ({et:g}s), got {v:g}")
        if self.recycle_bytes < 0:
            raise ConfigError(f"recycle_bytes must be >= 0, got {self.recycle_bytes}")
        if self.snapshot_threshold < 0 or self.snapshot_trailing < 0:
            raise ConfigError("snapshot_threshold and snapshot_trailing must be >= 0")
        if self.max_frame_bytes < self.max_msg_bytes + 4096:
            raise ConfigError("max_frame_bytes must exceed max_msg_bytes")
        if self.snapshot_chunk_bytes + 4096 > self.max_frame_bytes:
            raise ConfigError("snapshot_chunk_bytes must be below max_frame_bytes")
        if not (0 < self.reconnect_min <= self.reconnect_max):
            raise ConfigError("need 0 < reconnect_min <= reconnect_max")
        if (self.ssl_server is None) != (self.ssl_client is None):
            raise ConfigError("ssl_server and ssl_client go together: members of one group "
                              "either all use TLS or none does")

    @property
    def advertise(self) -> str:
        return self.advertise_addr or self.raft_addr

    @classmethod
    def help(cls) -> dict:
        """name -> (default, help) for every setting; a test checks none is undocumented."""
        return {f.name: (f.default, f.metadata.get("help", "")) for f in fields(cls)}


def _hostport(addr: str, name: str):
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
        raise ConfigError(f"{name} must be host:port, got {addr!r}")
    return host, int(port)


def split_addr(addr: str):
    """'host:port' -> (host, port); ':port' -> ('0.0.0.0', port)."""
    host, port = _hostport(addr, "address")
    return host or "0.0.0.0", port
