"""One exception hierarchy for the whole project. No HTTP knowledge here:
the HTTP layer maps these to status codes in exactly one place (http/wire.py)."""


class RaftSQLiteError(Exception):
    """Base of every error we raise on purpose."""

    #: machine-readable short code, stable across releases
    code = "error"


class DecodeError(RaftSQLiteError, ValueError):
    """Bytes that are not a valid frame, message, entry or command."""

    code = "decode_error"


class EncodeError(RaftSQLiteError, ValueError):
    """A value that cannot be encoded (e.g. an int outside int64, an unknown type)."""

    code = "encode_error"


class ConfigError(RaftSQLiteError, ValueError):
    """Invalid configuration or command-line flags."""

    code = "config_error"


class BadRequest(RaftSQLiteError):
    """The client sent something malformed; nothing was changed."""

    code = "bad_request"


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"


class Conflict(BadRequest):
    """A valid request that the current state forbids (e.g. it would hide rows); nothing
    was changed. The message says what to do first."""

    code = "conflict"


class StatementRefused(BadRequest):
    """A statement that cannot be replicated safely (ATTACH, load_extension, ...)."""

    code = "statement_refused"


class NotFound(RaftSQLiteError):
    code = "not_found"


class NotLeader(RaftSQLiteError):
    """This member is not the leader. ``leader_id``/``leader_addr`` say who is, if known."""

    code = "not_leader"

    def __init__(self, message="not leader", leader_id=None, leader_addr=None):
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_addr = leader_addr


class LeaderNotFound(RaftSQLiteError):
    code = "leader_not_found"


class ProposalDropped(RaftSQLiteError):
    """The proposal was definitely not committed (safe to retry)."""

    code = "proposal_dropped"
    definite = True


class OutcomeUnknown(RaftSQLiteError):
    """The proposal may or may not commit (leadership lost, timeout after sending)."""

    code = "outcome_unknown"
    definite = False


class Timeout(RaftSQLiteError):
    code = "timeout"


class Unavailable(RaftSQLiteError):
    code = "unavailable"


class StaleRead(RaftSQLiteError):
    """A read at level none with freshness_strict found the node too far behind."""

    code = "stale_read"


class StorageCorrupt(RaftSQLiteError):
    """On-disk state is damaged before its tail; the node refuses to start."""

    code = "storage_corrupt"


class Moved(RaftSQLiteError):
    """A shard does not own this key (stale catalog epoch): refresh and retry."""

    code = "moved"
    retryable = True


class StaleCatalog(Moved):
    """The default group refused a call planned with a catalog older than a table
    registration it has applied (the statement may name a table that is sharded now):
    refresh the catalog, plan again and retry. Nothing of the call ran."""

    code = "stale_catalog"
    retryable = True


class CoordinatorFenced(RaftSQLiteError):
    """A rebalance coordinator's request carried an older fencing token than one the
    shard (or the catalog) has already seen for that move: a newer coordinator took the
    move over. The old one must stop; nothing of the request was applied."""

    code = "coordinator_fenced"
    retryable = False


class Fenced(RaftSQLiteError):
    """A key range is briefly fenced for a move: wait and retry."""

    code = "fenced"
    retryable = True


class RoutingRefused(BadRequest):
    """The router cannot answer this statement correctly across shards."""

    code = "routing_refused"


class OverBudget(BadRequest):
    """A statement of a ``/db/load`` ran past the write budget (the leader's
    -max-apply-steps, per statement): the whole load was undone on every member."""
    code = "over_budget"


class SQLError(BadRequest):
    """A statement failed in SQLite where the API has no per-statement error slot
    (the seed's /execute and /query)."""

    code = "sql_error"


class QueueWaitTimeout(Timeout):
    """A queued write (``?queue&wait``) was not written within the request's timeout; it
    stays queued and may still be written."""

    code = "queue_wait_timeout"


class Unreachable(Unavailable):
    """Could not connect to the node a request had to go to (e.g. the leader): nothing
    was sent, so nothing was applied; safe to retry."""

    code = "unreachable"
    definite = True


class Unauthorized(RaftSQLiteError):
    """Missing or wrong HTTP Basic credentials, or a user without the permission the
    endpoint needs (``-auth``). HTTP 401, as rqlite answers both."""

    code = "unauthorized"

    def __init__(self, message, realm="rqlite"):
        super().__init__(message)
        self.headers = {"WWW-Authenticate": f'Basic realm="{realm}"'}


class SettingsMismatch(ConfigError):
    """A member's SQLite settings that every member of a group must share (``-fk``, the
    ``-extensions-path`` set) differ from the group's: applying the same log with them
    would give a different database, so the member is refused (at join, at start, and
    when it applies the group's settings record). HTTP 409 when answering a join."""

    code = "settings_mismatch"


class DiskError(Unavailable):
    """A write to this node's disk failed (an I/O error, or the disk is full). Never a
    result of the statement: another member may have written the same data fine, so the
    node retries the write itself (docs/operations.md, "Disk full and I/O errors");
    nothing that failed this way was acknowledged. HTTP 503."""

    code = "disk_error"
    definite = True


class DiskFull(DiskError):
    """The disk holding the node's data dir is full (ENOSPC, EDQUOT, EFBIG, SQLITE_FULL)
    or below ``-min-free-disk``: the write was refused before it was proposed, or the node
    is waiting for space to finish a write. HTTP 507, as WebDAV's Insufficient Storage."""

    code = "disk_full"
