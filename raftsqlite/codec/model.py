"""The object model that the codec encodes: Raft log entries, Raft messages, membership
changes and the SQL commands carried in entry payloads.

These are plain Python classes (``__slots__``, value equality) shared by the compiled
codec (``raftsqlite._ccodec``) and its pure-Python twin (``raftsqlite.codec.fallback``).
The Raft core works on them directly; nothing here does I/O.

Node ids are short strings (``"node1"``) chosen by the operator, as in the seed's CLI.
"""
from enum import IntEnum


class EntryType(IntEnum):
    NORMAL = 0        # data is an encoded Command, or empty (the leader's no-op)
    CONF_CHANGE = 1   # data is an encoded ConfChange


class MsgType(IntEnum):
    APPEND = 1            # AppendEntries: index/log_term = previous entry, entries, commit
    APPEND_RESP = 2       # index = last matched (or hint on reject), reject, reject_hint
    VOTE = 3              # index/log_term = candidate's last entry
    VOTE_RESP = 4
    PREVOTE = 5           # term = the term the candidate would campaign in
    PREVOTE_RESP = 6
    HEARTBEAT = 7         # commit = min(match, leader commit); context = ReadIndex round id
    HEARTBEAT_RESP = 8    # context echoed; reject + reject_hint = last index when the
                          # heartbeat's commit is beyond the follower's log (entries lost)
    SNAPSHOT = 9          # snapshot metadata + one chunk (offset, data, done)
    SNAPSHOT_RESP = 10    # index = bytes received so far / snapshot index when done; reject
    TIMEOUT_NOW = 11      # leadership transfer: campaign now, skipping PreVote
    READ_INDEX = 12       # follower -> leader: context = request id
    READ_INDEX_RESP = 13  # leader -> follower: index = read index, context echoed
    TRANSFER_LEADER = 14  # follower -> leader: please transfer to ``frm`` (or to index-named)


class ConfChangeType(IntEnum):
    ADD_LEARNER = 1   # add as non-voter (new members always start here and catch up)
    PROMOTE = 2       # learner -> voter
    REMOVE = 3        # remove a voter or learner (the leader included)
    DEMOTE = 4        # voter -> learner


class _Value:
    __slots__ = ()

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self):
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"{type(self).__name__}({fields})"

    __hash__ = None


class Entry(_Value):
    """One Raft log entry."""

    __slots__ = ("term", "index", "type", "data")

    def __init__(self, term, index, type=EntryType.NORMAL, data=b""):
        self.term = term
        self.index = index
        self.type = type
        self.data = data


class ConfChange(_Value):
    """A one-at-a-time membership change. The addresses travel in the log so that every
    member learns how to reach every other member (Raft port and HTTP API)."""

    __slots__ = ("type", "node_id", "raft_addr", "http_addr")

    def __init__(self, type, node_id, raft_addr="", http_addr=""):
        self.type = type
        self.node_id = node_id
        self.raft_addr = raft_addr
        self.http_addr = http_addr


class Member(_Value):
    __slots__ = ("node_id", "raft_addr", "http_addr", "voter")

    def __init__(self, node_id, raft_addr="", http_addr="", voter=True):
        self.node_id = node_id
        self.raft_addr = raft_addr
        self.http_addr = http_addr
        self.voter = voter


class SnapshotMeta(_Value):
    """What a snapshot covers: the last included entry and the membership at that point.
    The snapshot data itself is a SQLite file on disk, streamed in chunks."""

    __slots__ = ("index", "term", "members")

    def __init__(self, index, term, members=()):
        self.index = index
        self.term = term
        self.members = list(members)  # list[Member]


class Message(_Value):
    """One Raft message, shaped like etcd's raftpb.Message. Unused fields keep defaults
    and cost (almost) nothing on the wire."""

    __slots__ = ("type", "frm", "to", "term", "log_term", "index", "commit", "entries",
                 "reject", "reject_hint", "context", "snapshot", "offset", "data", "done")

    def __init__(self, type, frm="", to="", term=0, log_term=0, index=0, commit=0,
                 entries=None, reject=False, reject_hint=0, context=b"", snapshot=None,
                 offset=0, data=b"", done=False):
        self.type = type
        self.frm = frm
        self.to = to
        self.term = term
        self.log_term = log_term
        self.index = index
        self.commit = commit
        self.entries = entries if entries is not None else []
        self.reject = reject
        self.reject_hint = reject_hint
        self.context = context
        self.snapshot = snapshot  # SnapshotMeta or None
        self.offset = offset
        self.data = data
        self.done = done


# ---- entry payloads: the SQL that a NORMAL entry carries -----------------------------

FORMAT_VERSION = 1
# Version 2 = version 1 plus the bulk request form (request flag 0x8, BulkStatements).
# An encoder writes 2 only for a command that holds a bulk request, so every other
# payload keeps its version-1 bytes; decoders read both.
FORMAT_VERSION_BULK = 2


class CommandType(IntEnum):
    EXECUTE = 1   # writes: a batch of requests applied in one SQLite transaction
    QUERY = 2     # a read through the log (consistency level "strong")
    NOOP = 3      # no statements; used to probe / barrier
    SYSTEM = 4    # control ops (catalog, shard ownership, load): body is ``ops``


class Statement(_Value):
    """One SQL statement. ``params`` is None, a list (positional) or a dict (named).
    Parameter values: None, int (int64), float, str, bytes, bool."""

    __slots__ = ("sql", "params")

    def __init__(self, sql, params=None):
        self.sql = sql
        self.params = params


class BulkStatements(_Value):
    """The statements of one request when they all run one SQL text, each with its own
    positional parameters: the bulk shape ``[["INSERT ... VALUES(?, ?)", a, b], ...]``.
    It stands for ``len(rows)`` statements with one result each, in order. It is a
    read-only sequence of ``Statement`` (built on access), so code that does not know the
    form still sees plain statements; the store, the codec and the FSM use ``sql`` and
    ``rows`` directly, which is what makes a 1000-row request cheap. ``rows``: a list of
    lists, every one the same length. Only ever a request's whole ``statements``."""

    __slots__ = ("sql", "rows")

    def __init__(self, sql, rows):
        self.sql = sql
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        sql = self.sql
        for r in self.rows:
            yield Statement(sql, r)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Statement(self.sql, r) for r in self.rows[i]]
        return Statement(self.sql, self.rows[i])


class InsertRun(list):
    """The results of a bulk request (one per row, in order) when every row inserted
    exactly one row and the rowids are consecutive from ``first_rowid``: a plain list of
    the usual result dicts ``{"last_insert_id", "rows_affected": 1, "time"}``, marked so
    a renderer can write them all at once without reading each. Only the FSM makes one,
    after proving the run (``Database.run_user_sequential``); ``first_rowid`` is None
    until then. Anyone who builds a new list from it loses the mark, never correctness.

    ``pending``: ``(rowid, count, time)`` of proven results not built yet (the FSM's
    ``lazy_results``): the list then holds only the results before them, and its length
    is not the request's. Only the store hands such a run out, and only to a caller that
    asked for it (``Store.execute(lazy_results=True)``: the rqlite handler, which renders
    it with ``render_rowid_run``); everyone else gets it ``materialize()``d."""

    __slots__ = ("first_rowid", "pending")

    def __init__(self, *args):
        super().__init__(*args)
        self.first_rowid = None
        self.pending = None

    def total(self):
        """How many results the request has, built or pending."""
        p = self.pending
        return len(self) + (p[1] if p is not None else 0)

    def materialize(self):
        """Build the pending results in place (the same dicts the eager path makes)."""
        p = self.pending
        if p is not None:
            from raftsqlite.codec import rowid_results
            self.extend(rowid_results(*p))
            self.pending = None
        return self

    def proven_run(self):
        """``first_rowid`` when the mark still matches the contents (cheap ends check),
        else None."""
        first = self.first_rowid
        n = len(self)
        if first is None or not n:
            return None
        a = self[0]
        p = self.pending
        if p is not None:
            # the pending ones were proven when they were set: rowids follow the built
            b, n = self[-1], n + p[1]
            if type(b) is not dict or p[0] != b.get("last_insert_id", 0) + 1:
                return None
            b = {"last_insert_id": p[0] + p[1] - 1, "rows_affected": 1}
        else:
            b = self[-1]
        if type(a) is not dict or type(b) is not dict or a.get("last_insert_id") != first \
                or b.get("last_insert_id") != first + n - 1 or a.get("rows_affected") != 1 \
                or b.get("rows_affected") != 1:
            return None
        return first


class Request(_Value):
    """One client request inside a command. With group commit, one log entry carries
    many requests; each keeps its own atomicity (savepoint) and results."""

    __slots__ = ("statements", "transaction", "request_id", "guard")

    def __init__(self, statements, transaction=False, request_id=None, guard=None):
        # a BulkStatements stays one object (see there); anything else becomes a list
        self.statements = (statements if type(statements) is BulkStatements
                           else list(statements))
        self.transaction = transaction
        self.request_id = request_id  # bytes or None: makes a retried write idempotent
        # bytes or None: a routed request's ownership guard (sharding.ownership.encode_guard),
        # checked by the shard's FSM before the request runs. Encoded behind request flag
        # bit 2 (0x4), so payloads without a guard keep the v1 bytes exactly.
        self.guard = guard


class Command(_Value):
    """The payload of a NORMAL entry: format version, command type, requests.
    ``ops`` carries SYSTEM commands as a list of (name: str, args: bytes) pairs."""

    __slots__ = ("type", "requests", "ops")

    def __init__(self, type, requests=(), ops=()):
        self.type = type
        self.requests = list(requests)
        self.ops = list(ops)
