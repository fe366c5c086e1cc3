"""The small interfaces the HTTP layer depends on, declared here (as rqlite's http package
declares its Store interface), so handler tests run against fakes, and the HTTP settings.
"""
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Protocol

from raftsqlite import errors


class Store(Protocol):
    """What the handlers call. Results are neutral dicts:
    ``{"last_insert_id", "rows_affected"}`` | ``{"columns", "types", "values"}`` (Python
    values; bytes for BLOB) | ``{"error"}``, each optionally with ``"time"`` (seconds).
    Any call that needs the leader raises ``errors.NotLeader(leader_id=...,
    leader_addr=<leader's HTTP address>)`` on a follower; the HTTP layer forwards."""

    async def execute(self, statements, *, transaction=False, request_id=None,
                      timeout=None, lazy_results=False) -> dict: ...
    # -> {"results": [...], "raft_index": int}; lazy_results: see Store.execute (a store
    # may ignore it: results that are plain lists render the same)

    async def query(self, statements, *, level="weak", freshness=None, freshness_strict=False,
                    transaction=False, db_timeout=None, timeout=None) -> dict: ...

    async def request(self, statements, *, transaction=False, request_id=None, level="weak",
                      freshness=None, freshness_strict=False, db_timeout=None,
                      timeout=None) -> dict: ...

    async def join(self, node_id, raft_addr, http_addr, voter=True, fresh=False) -> Any: ...

    async def remove(self, node_id) -> Any: ...

    async def transfer_leadership(self, to=None) -> Any: ...

    async def snapshot(self) -> Any: ...

    async def backup(self, path, *, fmt="binary", tables=None) -> Any: ...
    """Write a consistent copy of the database (``fmt="binary"``: a SQLite file;
    ``"sql"``: a text dump) to ``path``, off the event loop."""

    async def load(self, path, *, fmt="sqlite") -> dict: ...
    """Replace the database by the SQLite file at ``path`` (``fmt="sqlite"``) or run the
    SQL dump in it (``fmt="sql"``), through the log so every member gets it."""

    def leader(self) -> Optional[Any]: ...    # model.Member or None

    def is_leader(self) -> bool: ...

    def members(self) -> list: ...            # list[model.Member]

    def ready(self) -> bool: ...

    def status(self) -> dict: ...

    def stats(self) -> dict: ...


def _f(default, help):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class HTTPConfig:
    max_body_bytes: int = _f(64 << 20, "Largest request body accepted (413 beyond), except "
                                       "/db/load.")
    max_load_bytes: int = _f(64 << 30, "Largest /db/load body (streamed to disk).")
    max_statements: int = _f(100_000, "Most statements in one request (413 beyond).")
    default_timeout: float = _f(30.0, "Seconds a request may take when it gives no "
                                      "`timeout` (forwarding included).")
    queue_capacity: int = _f(1024, "Queued-write requests held before `queue` answers 503.")
    queue_batch: int = _f(128, "Most statements written per queued batch.")
    queue_interval: float = _f(0.1, "Seconds a queued write waits for more to batch with.")
    queue_tx: bool = _f(False, "Write each queued batch in one transaction (all of its "
                               "statements or none).")
    keep_alive_timeout: float = _f(75.0, "Seconds an idle client connection is kept open.")
    nodes_probe_timeout: float = _f(5.0, "Default seconds /nodes waits for each member.")
    spool_dir: str = _f("", "Where /db/load and /db/backup spool files (default: the "
                            "node's data dir, else the system temp dir).")
    allow_origin: str = _f("", "Access-Control-Allow-Origin sent on every response, and "
                               "OPTIONS answered 200 (CORS, as rqlite's "
                               "-http-allow-origin); '' = off.")

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
                raise errors.ConfigError(f"http {f.name} must be > 0, got {v}")

    @classmethod
    def help(cls):
        return {f.name: (f.default, f.metadata["help"]) for f in fields(cls)}

    @classmethod
    def from_node_config(cls, cfg):
        """Take what the node's config says; anything it does not say keeps our default.
        ``cfg.http`` may be an HTTPConfig (or anything with these field names)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        kw = {}
        src = getattr(cfg, "http", None)
        for f in fields(cls):
            for obj, name in ((src, f.name), (cfg, "http_" + f.name)):
                if obj is not None and getattr(obj, name, None) is not None \
                        and not callable(getattr(obj, name)):
                    kw[f.name] = getattr(obj, name)
                    break
        store = getattr(cfg, "store", None)
        if "max_statements" not in kw and getattr(store, "max_statements", None):
            kw["max_statements"] = store.max_statements
        if "spool_dir" not in kw and getattr(cfg, "data_dir", None):
            kw["spool_dir"] = cfg.data_dir
        return cls(**kw)


class StoreSQL:
    """The default SQL backend: straight to this node's store. The sharding router
    replaces it (``node.sql_backend``) with one of the same shape that routes statements
    to shard groups; it reads ``p.shard_id`` and ``p.auto_route`` from the same params."""

    def __init__(self, store):
        self.store = store

    # Each returns the store's coroutine (no frame of its own on the hot path).
    def execute(self, statements, p):
        return self.store.execute(
            statements, transaction=bool(p is not None and p.transaction),
            request_id=getattr(p, "request_id", None),
            timeout=p.timeout if p is not None else None,
            lazy_results=getattr(p, "lazy_results", False))

    def query(self, statements, p, level):
        timeout = p.timeout
        if level == "linearizable" and p.linearizable_timeout:
            timeout = p.linearizable_timeout  # rqlite's bound on the leadership check
        return self.store.query(
            statements, level=level, freshness=p.freshness,
            freshness_strict=p.freshness_strict, transaction=p.transaction,
            db_timeout=p.db_timeout, timeout=timeout)

    def request(self, statements, p, level):
        return self.store.request(
            statements, transaction=p.transaction, request_id=getattr(p, "request_id", None),
            level=level, freshness=p.freshness,
            freshness_strict=p.freshness_strict, db_timeout=p.db_timeout, timeout=p.timeout)
