"""Contracts between the parts of the Raft package. The core never does I/O: it reads
its log through ``LogReader`` and returns ``Ready`` batches; the driver persists,
sends and applies them, then calls ``core.advance(ready)``.

Snapshot data never passes through the core. The leader core emits a SNAPSHOT message
carrying only ``SnapshotMeta``; the driver streams the SQLite file to the follower in
chunks; the receiving driver assembles the file and only then steps its core with one
SNAPSHOT message (``done=True``, metadata only). If the core accepts it, ``Ready.snapshot``
is set and the driver restores the state machine from the file and resets the log.
"""
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Protocol

from raftsqlite.codec.model import Entry, Message, SnapshotMeta


class Role(str, Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"


@dataclass
class HardState:
    """Persisted before any message that depends on it is sent (votes, acks)."""

    term: int = 0
    vote: str = ""
    commit: int = 0


@dataclass
class ReadState:
    """A ReadIndex answer: the reads tagged ``context`` may run once applied >= index."""

    index: int
    context: bytes


@dataclass
class Ready:
    """One batch of work for the driver, in this order:
    1. persist ``hard_state`` (if not None) and append ``entries`` (one fdatasync);
       install ``snapshot`` (if not None) before that;
    2. send ``messages`` (they may depend on step 1 being durable);
    3. apply ``committed`` entries in order;
    4. call ``core.advance(ready)``.
    """

    hard_state: Optional[HardState] = None
    entries: "list[Entry]" = field(default_factory=list)  # to append
    snapshot: Optional[SnapshotMeta] = None              # install before appending
    messages: "list[Message]" = field(default_factory=list)
    committed: "list[Entry]" = field(default_factory=list)  # to apply
    read_states: list = field(default_factory=list)      # list[ReadState]
    role: Optional[Role] = None                          # set when role/leader changed
    leader: Optional[str] = None
    dropped: list = field(default_factory=list)          # proposal tokens definitely not committed
    # True when ``messages`` may be sent before or while step 1 runs: a stable leader
    # replicating its own new entries (Raft thesis 10.2.1). False: send after step 1.
    # A driver that ignores it (always sends after step 1) is still correct, only slower.
    send_early: bool = False


class LogReader(Protocol):
    """What the core may ask of durable storage. All indexes are Raft log indexes.
    Entries at or below ``snapshot_meta().index`` are compacted away."""

    def first_index(self) -> int: ...               # first available entry (snapshot.index + 1)
    def last_index(self) -> int: ...                # last durable entry
    def term(self, index: int) -> int: ...          # term of entry at index (snapshot index allowed)
    def entries(self, lo: int, hi: int, max_bytes: int) -> list: ...  # [lo, hi), at least one
    def snapshot_meta(self) -> SnapshotMeta: ...
    def hard_state(self) -> HardState: ...
