"""rqlite's ``-auto-backup FILE`` and ``-auto-restore FILE``, for the "file" storage type.

Both flags name a JSON file in rqlite's format (environment variables in it expanded as
rqlite does, ``$NAME`` and ``${NAME}``, unset ones to nothing)::

    {"version": 1, "type": "file", "interval": "30s", "timestamp": false,
     "no_compress": false, "vacuum": false,
     "sub": {"dir": "/abs/backups", "file": "backup.sqlite"}}

    {"version": 1, "type": "file", "timeout": "30s", "continue_on_failure": false,
     "sub": {"dir": "/abs/backups", "file": "backup.sqlite"}}

Auto-backup: every ``interval`` the group's leader (only it: docs/design/auto-backup.md)
checks whether the database changed since the last backup and, if so, writes a new one
into ``dir`` atomically, then ``METADATA.json`` (rqlite's ``id``, ``timestamp``, ``name``).
"Changed" is decided in two steps: the applied index has not moved -> nothing to do, at
no cost; it moved -> a consistent copy is made (off the event loop, with the snapshot
code's online backup) and a digest of its user schema and rows is compared with the
``id`` in METADATA.json, so no-op entries (elections, a new leader's barrier) and a new
leader whose predecessor already wrote the same content upload nothing.

Auto-restore: a node starting with an empty data directory that will bootstrap a new
group loads the backup (gzip detected by its magic bytes) through the ordinary load
path, so it is in the Raft log and snapshots like any ``/db/load``.
"""
import asyncio
import gzip
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from raftsqlite.config import parse_duration
from raftsqlite.errors import ConfigError, LeaderNotFound, NotLeader, RaftSQLiteError
from raftsqlite.raft.segfiles import fsync_dir

log = logging.getLogger("raftsqlite.auto_backup")

VERSION = 1
STORAGE_TYPES = ("file",)
#: rqlite's other storage types: named so the refusal can say what this build lacks
OTHER_TYPES = ("s3", "gcs")
METADATA = "METADATA.json"
TMP_PREFIX = ".auto-backup-"
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
# gzip level 1: on table data it took a sixth of level 6's CPU for ~6% more bytes (29 MB
# of digits: 0.26 s -> 14.4 MB against 1.53 s -> 13.6 MB), and the CPU is the node's
GZIP_LEVEL = 1
BACKUP_NICE = 10            # the backup thread's niceness (a background job)
FLUSH_BYTES = 8 << 20       # fdatasync a copy this often: no GB of writeback at the end


# ---- config files ---------------------------------------------------------------------

_ENV = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z0-9_]+)")


def expand_env(text: str) -> str:
    """Go's os.ExpandEnv as rqlite applies it to the file: ``$NAME`` and ``${NAME}``
    become the variable's value, an unset one becomes empty."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1) or m.group(2), ""), text)


def read_config(path: str, flag: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag}: cannot read {path}: {e}") from None
    try:
        doc = json.loads(expand_env(text))
    except ValueError as e:
        raise ConfigError(f"{flag}: {path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{flag}: {path} must hold a JSON object")
    return doc


def _check_common(doc, flag, known):
    version = doc.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise ConfigError(f"{flag}: version {version!r} is not supported (this build reads "
                          f"version {VERSION})")
    typ = doc.get("type")
    if typ in OTHER_TYPES:
        raise ConfigError(f"{flag}: storage type {typ!r} is not supported in this build; "
                          f"only \"file\" is (a directory, e.g. a mounted volume, that "
                          f"another tool may copy to {typ})")
    if typ not in STORAGE_TYPES:
        raise ConfigError(f"{flag}: unknown storage type {typ!r}; this build supports "
                          f"\"file\" (rqlite's s3 and gcs are not supported)")
    unknown = sorted(set(doc) - known)
    if unknown:
        log.warning("%s: ignoring unknown settings %s", flag, ", ".join(unknown))
    sub = doc.get("sub")
    if not isinstance(sub, dict):
        raise ConfigError(f"{flag}: \"sub\" must be an object with \"dir\" and \"file\"")
    d = sub.get("dir")
    if not isinstance(d, str) or not d or not os.path.isabs(d):
        raise ConfigError(f"{flag}: sub.dir must be an absolute directory path, got {d!r}")
    return os.path.normpath(d), sub.get("file", "")


def _check_name(name, flag, required=True):
    if not name and not required:
        return ""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\\" in name or "\0" in name or name.startswith(TMP_PREFIX) or name == METADATA:
        raise ConfigError(f"{flag}: sub.file must be a plain file name (no directory, not "
                          f"{METADATA}), got {name!r}")
    return name


def _duration(v, flag, name):
    if isinstance(v, bool) or not isinstance(v, str):
        # rqlite reads a bare JSON number as nanoseconds: never what anyone meant
        raise ConfigError(f"{flag}: {name} must be a duration string such as \"30s\" or "
                          f"\"5m\", got {v!r}")
    try:
        secs = parse_duration(v, f"{flag} {name}")
    except ConfigError as e:
        raise ConfigError(str(e)) from None
    if secs <= 0:
        raise ConfigError(f"{flag}: {name} must be more than zero, got {v!r}")
    return secs


def _bool(doc, key, flag):
    v = doc.get(key, False)
    if not isinstance(v, bool):
        raise ConfigError(f"{flag}: {key} must be true or false, got {v!r}")
    return v


@dataclass(frozen=True)
class BackupConfig:
    interval: float
    dir: str
    file: str
    timestamp: bool = False
    no_compress: bool = False
    vacuum: bool = False
    source: str = ""

    @classmethod
    def from_dict(cls, doc, source="", flag="-auto-backup"):
        d, name = _check_common(doc, flag, {"version", "type", "interval", "timestamp",
                                            "no_compress", "vacuum", "sub"})
        if "interval" not in doc:
            raise ConfigError(f"{flag}: \"interval\" is required, e.g. \"30s\"")
        return cls(interval=_duration(doc["interval"], flag, "interval"), dir=d,
                   file=_check_name(name, flag), timestamp=_bool(doc, "timestamp", flag),
                   no_compress=_bool(doc, "no_compress", flag),
                   vacuum=_bool(doc, "vacuum", flag), source=source)

    @classmethod
    def load(cls, path):
        return cls.from_dict(read_config(path, "-auto-backup"), source=path)


@dataclass(frozen=True)
class RestoreConfig:
    dir: str
    file: str = ""
    timeout: float = 30.0
    continue_on_failure: bool = False
    source: str = ""

    @classmethod
    def from_dict(cls, doc, source="", flag="-auto-restore"):
        d, name = _check_common(doc, flag, {"version", "type", "timeout",
                                            "continue_on_failure", "sub"})
        timeout = _duration(doc["timeout"], flag, "timeout") if doc.get("timeout") else 30.0
        return cls(dir=d, file=_check_name(name, flag, required=False), timeout=timeout,
                   continue_on_failure=_bool(doc, "continue_on_failure", flag), source=source)

    @classmethod
    def load(cls, path):
        return cls.from_dict(read_config(path, "-auto-restore"), source=path)


# ---- the directory: files, temp files, METADATA.json -----------------------------------

class FileTarget:
    """One backup directory. ``prefix`` names one group's files in a directory shared by
    several groups (shard groups: ``<shard>_backup.sqlite``, ``<shard>_METADATA.json``)."""

    def __init__(self, directory, file, *, timestamp=False, prefix=""):
        self.dir, self.file, self.timestamp, self.prefix = directory, file, timestamp, prefix
        self.meta_path = os.path.join(directory, prefix + METADATA)

    def check_writable(self):
        """At start, as rqlite does: create the directory and prove a file can be made."""
        try:
            os.makedirs(self.dir, exist_ok=True)
            probe = os.path.join(self.dir, f"{TMP_PREFIX}probe-{os.getpid()}")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"-auto-backup: cannot write in {self.dir}: {e}") from None
        # temp files a crash left behind (ours only: the prefix is ours)
        for n in os.listdir(self.dir):
            if n.startswith(TMP_PREFIX + self.prefix + "up-"):
                try:
                    os.unlink(os.path.join(self.dir, n))
                except OSError:
                    pass

    def __str__(self):
        return f"dir:{self.dir}"

    def metadata(self):
        """METADATA.json as a dict, or None when there is none (or it is unreadable: a
        backup is then written, which repairs it)."""
        try:
            with open(self.meta_path, "rb") as f:
                doc = json.loads(f.read())
            return doc if isinstance(doc, dict) else None
        except (OSError, ValueError):
            return None

    def resolve(self, name):
        """The path of a backup that METADATA.json names (rqlite stores the full path;
        a directory moved or mounted elsewhere still finds the file by its name)."""
        if not name:
            return None
        here = os.path.join(self.dir, os.path.basename(name))
        if os.path.isabs(name) and os.path.exists(name):
            return name
        return here

    def current(self, digest):
        """True when METADATA.json says the latest backup has this content and it exists."""
        md = self.metadata()
        if not md or md.get("id") != digest:
            return False
        path = self.resolve(md.get("name"))
        return bool(path) and os.path.exists(path)

    def final_name(self, now=None):
        name = self.prefix + self.file
        if self.timestamp:
            t = time.gmtime(now if now is not None else time.time())
            name = time.strftime("%Y%m%d%H%M%S", t) + "_" + name
        return os.path.join(self.dir, name)

    def upload(self, src, digest, *, compress, extra=None, stopping=lambda: False):
        """Write ``src`` (gzipped when ``compress``) as the next backup: a temp file in
        the directory, fsynced, renamed, the directory fsynced; then METADATA.json the
        same way. A crash leaves either the old backup and metadata, or the new backup
        with the old metadata (the next run writes it again), never a torn file.
        Returns (final path, bytes written)."""
        final = self.final_name()
        tmp = os.path.join(self.dir, f"{TMP_PREFIX}{self.prefix}up-{os.urandom(6).hex()}")
        try:
            size = _copy_out(src, tmp, compress, stopping)
            os.replace(tmp, final)
            fsync_dir(self.dir)
            md = {"id": digest, "timestamp": int(time.time() * 1000), "name": final}
            md.update(extra or {})
            mtmp = tmp + ".meta"
            with open(mtmp, "wb") as f:
                f.write(json.dumps(md).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(mtmp, self.meta_path)
            fsync_dir(self.dir)
            return final, size
        finally:
            for p in (tmp, tmp + ".meta"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    def latest(self):
        """The backup to restore: ``dir/file`` when it exists; else the one METADATA.json
        names when ``file`` is empty or that name is ``file`` with a timestamp prefix
        (backups written with ``"timestamp": true``); else None."""
        if self.file:
            p = os.path.join(self.dir, self.file)
            if os.path.exists(p):
                return p
        md = self.metadata()
        p = self.resolve(md.get("name")) if md else None
        if not p or not os.path.exists(p):
            return None
        base = os.path.basename(p)
        if self.file and not (base.endswith("_" + self.file) and base[:14].isdigit()):
            return None
        return p


class _Stopped(Exception):
    pass


def _copy_out(src, dest, compress, stopping):
    """Copy (or gzip) ``src`` into the new file ``dest``, flushing to disk as it goes so
    the last fsync never queues the whole file in front of the Raft log's own."""
    written = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with open(fd, "wb", closefd=True) as raw, open(src, "rb") as inp:
        out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) \
            if compress else raw
        pending = 0
        while True:
            if stopping():
                raise _Stopped()
            data = inp.read(CHUNK)
            if not data:
                break
            out.write(data)
            pending += len(data)
            if pending >= FLUSH_BYTES:
                out.flush()
                os.fdatasync(raw.fileno())
                pending = 0
        if compress:
            out.close()     # writes the gzip trailer; leaves ``raw`` open
        raw.flush()
        os.fsync(raw.fileno())
        written = raw.tell()
    return written


# ---- the service on the leader ---------------------------------------------------------

class AutoBackup:
    """Runs on every member; acts only while its member leads its group."""

    def __init__(self, node, cfg: BackupConfig):
        self.node, self.cfg = node, cfg
        shard = node.config.shard
        self.group = shard if shard and shard != "default" else ""
        self.target = FileTarget(cfg.dir, cfg.file, timestamp=cfg.timestamp,
                                 prefix=self.group + "_" if self.group else "")
        self.target.check_writable()
        self.tmp_dir = os.path.join(node.config.data_dir, "tmp")
        self._pool = None
        self._task = None
        self._stopping = False
        self._barrier_term = None
        self._last_index = None     # applied index of the content last found current
        self.counters = {"backups_ok": 0, "backups_failed": 0, "skipped_same_index": 0,
                         "skipped_same_content": 0, "skipped_not_leader": 0,
                         "bytes_total": 0}
        self.last = {}
        self.last_error = None
        self.last_error_time = None
        self.last_outcome = None

    def start(self):
        os.makedirs(self.tmp_dir, exist_ok=True)
        for n in os.listdir(self.tmp_dir):
            if n.startswith(TMP_PREFIX):
                try:
                    os.unlink(os.path.join(self.tmp_dir, n))
                except OSError:
                    pass
        # its own thread: a long copy never waits behind, nor delays, /db/backup and loads
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="raftsqlite-auto-backup",
                                        initializer=_lower_priority)
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("auto-backup to %s every %gs (%s)", self.target, self.cfg.interval,
                 "leader only")

    async def stop(self):
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self):
        while not self._stopping:
            await asyncio.sleep(self.cfg.interval)
            try:
                self.last_outcome = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - report, keep the schedule
                self.last_outcome = "failed"
                self.counters["backups_failed"] += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self.last_error_time = time.time()
                log.warning("auto-backup to %s failed: %s", self.target, self.last_error)

    async def tick(self):
        """One scheduled run: back up if this member leads and the content changed.
        Returns what it did: "not_leader", "same_index", "same_content" or "uploaded"."""
        store, raft = self.node.store, self.node.raft
        if not store.is_leader():
            self.counters["skipped_not_leader"] += 1
            self._barrier_term = None
            return "not_leader"
        term = raft.term
        if self._barrier_term != term:
            # A new leader may not have applied all its predecessor committed; a copy
            # taken now could be older than the last backup. Once its barrier applies,
            # everything committed before it is in its database.
            try:
                await store.barrier(timeout=max(10.0, self.cfg.interval))
            except (NotLeader, LeaderNotFound):
                self.counters["skipped_not_leader"] += 1
                return "not_leader"
            self._barrier_term = term
        index = self.node.fsm.applied_index()
        if index == self._last_index:
            self.counters["skipped_same_index"] += 1
            return "same_index"
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self._pool, self._backup, index)
        return outcome

    def _backup(self, index):
        """The copy, the digest, and the upload when the content changed (thread)."""
        cfg, db = self.cfg, self.node.db
        from raftsqlite import db_files
        t0 = time.monotonic()
        base = os.path.join(self.tmp_dir, f"{TMP_PREFIX}{os.urandom(6).hex()}")
        copy, packed = base + ".sqlite", base + ".vacuum.sqlite"
        try:
            # the snapshot code's consistent copy: a read transaction on its own
            # connection, never the writer's (the apply path is not held up)
            db.backup_to(copy, flush_bytes=FLUSH_BYTES)
            rows = db.read_file_internal(copy, "SELECT v FROM _raftsqlite_meta "
                                               "WHERE k = 'applied_index'")
            copy_index = int(rows[0][0]) if rows else index
            digest = db_files.content_digest(copy)
            if self.target.current(digest):
                self._last_index = copy_index
                self.counters["skipped_same_content"] += 1
                return "same_content"
            if self._stopping:
                return "stopped"
            src = copy
            if cfg.vacuum:
                db_files.vacuum_into(copy, packed)
                src = packed
            name, size = self.target.upload(
                src, digest, compress=not cfg.no_compress,
                extra={"raft_index": copy_index, "group": self.group or "default",
                       "node_id": self.node.config.node_id},
                stopping=lambda: self._stopping)
            self._last_index = copy_index
            c = self.counters
            c["backups_ok"] += 1
            c["bytes_total"] += size
            self.last = {"time": time.time(), "id": digest, "name": name, "bytes": size,
                         "raft_index": copy_index,
                         "seconds": round(time.monotonic() - t0, 3)}
            log.info("auto-backup: wrote %s (%d bytes, index %d) in %.2fs", name, size,
                     copy_index, self.last["seconds"])
            return "uploaded"
        except _Stopped:
            return "stopped"
        finally:
            for p in (copy, packed, copy + ".tmp"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    def stats(self) -> dict:
        c = self.counters
        last = self.last
        return {"enabled": True, "destination": str(self.target), "type": "file",
                "file": self.target.prefix + self.cfg.file,
                "metadata": self.target.meta_path, "interval": self.cfg.interval,
                "compress": not self.cfg.no_compress, "vacuum": self.cfg.vacuum,
                "timestamp": self.cfg.timestamp, "leader_only": True,
                # the last scheduled run: uploaded, same_index, same_content, not_leader,
                # failed (last_error says why)
                "last_outcome": self.last_outcome,
                "last_backup_time": last.get("time"),
                "last_backup_time_iso": _iso(last.get("time")),
                "last_backup_id": last.get("id"), "last_backup_name": last.get("name"),
                "last_backup_bytes": last.get("bytes"),
                "last_backup_raft_index": last.get("raft_index"),
                "last_backup_seconds": last.get("seconds"),
                "skipped_unchanged": c["skipped_same_index"] + c["skipped_same_content"],
                **c, "last_error": self.last_error,
                "last_error_time": _iso(self.last_error_time)}


def _lower_priority():
    """The backup thread yields the CPU to the event loop and the apply thread (Linux
    lets one thread of a process be niced); best effort elsewhere."""
    try:
        import threading
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKUP_NICE)
    except (AttributeError, OSError):
        pass


def _iso(t):
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# ---- restore at start ------------------------------------------------------------------

def _fetch(cfg: RestoreConfig, dest):
    """Copy the backup to ``dest`` as a plain SQLite file (gunzipped if it is gzip) and
    check it; -> the source path (thread)."""
    from raftsqlite import db_files
    target = FileTarget(cfg.dir, cfg.file)
    src = target.latest()
    if src is None:
        named = os.path.join(cfg.dir, cfg.file) if cfg.file else None
        raise RaftSQLiteError(
            f"no backup found: {named + ' does not exist and ' if named else ''}"
            f"{target.meta_path} names no existing "
            f"{'timestamped copy of it' if named else 'file'}")
    with open(src, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
    try:
        with (gzip.open(src, "rb") if gz else open(src, "rb")) as inp, open(dest, "wb") as out:
            shutil.copyfileobj(inp, out, CHUNK)
    except (OSError, EOFError) as e:      # gzip.BadGzipFile is an OSError
        raise RaftSQLiteError(f"cannot read {src}: {e}") from None
    db_files.check_sqlite_file(dest)
    return src


class Restore:
    """What ``-auto-restore`` does at start (node.py calls ``prepare`` then ``load``)."""

    def __init__(self, node, cfg: RestoreConfig):
        self.node, self.cfg = node, cfg
        self.path = None
        self.source = None
        self.outcome = "not_run"

    async def prepare(self, fresh, joining):
        """Before any bootstrap: decide, fetch and check the file, so a missing or bad
        backup stops the node before it forms a group (a restart would then find data
        and skip the restore). -> True when ``load`` is to run after the bootstrap."""
        cfg, ncfg = self.cfg, self.node.config
        why = ("the data directory already holds data" if not fresh else
               "this node joins an existing group (it gets the group's data)" if joining
               else "-bootstrap-expect forms the group with other nodes (restore with "
                    "/db/load once it is up)" if ncfg.bootstrap_expect else
               "a non-voter never bootstraps a group" if not ncfg.voter else None)
        if why:
            self.outcome = "skipped"
            log.warning("auto-restore from %s skipped: %s", cfg.dir, why)
            return False
        tmp = os.path.join(ncfg.data_dir, "tmp")
        os.makedirs(tmp, exist_ok=True)
        self.path = os.path.join(tmp, f"{TMP_PREFIX}restore-{os.getpid()}.sqlite")
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            self.source = await asyncio.wait_for(
                loop.run_in_executor(None, _fetch, cfg, self.path), cfg.timeout)
        except asyncio.TimeoutError:
            return self._failed(f"reading the backup took more than {cfg.timeout:g}s "
                                f"(the \"timeout\" setting)")
        except RaftSQLiteError as e:
            return self._failed(str(e))
        log.warning("auto-restore: %s read and checked in %.2fs; loading it into the new "
                    "group", self.source, time.monotonic() - t0)
        return True

    def _failed(self, why):
        self._discard()
        self.outcome = "failed"
        if self.cfg.continue_on_failure:
            log.warning("auto-restore from %s failed: %s; starting with an empty database "
                        "(continue_on_failure)", self.cfg.dir, why)
            return False
        raise ConfigError(f"-auto-restore: {why} (set \"continue_on_failure\": true to start "
                          f"empty instead)")

    def _discard(self):
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def load(self):
        """After the bootstrap: the ordinary load through the log (store.load)."""
        store, loop = self.node.store, asyncio.get_running_loop()
        try:
            deadline = loop.time() + 30
            while not store.is_leader():
                if loop.time() > deadline:
                    raise RaftSQLiteError("this node did not become its new group's leader "
                                          "within 30s")
                await asyncio.sleep(0.05)
            res = await store.load(self.path)
            if res.get("error"):
                raise RaftSQLiteError(res["error"])
        except RaftSQLiteError as e:
            if self.cfg.continue_on_failure:
                self.outcome = "failed"
                log.warning("auto-restore: loading %s failed: %s; the database stays empty "
                            "(continue_on_failure)", self.source, e)
                return
            self.outcome = "failed"
            raise ConfigError(f"-auto-restore: loading {self.source} failed: {e}. The data "
                              f"directory now holds a new group with an empty database: "
                              f"remove it before starting again") from None
        finally:
            self._discard()
        self.outcome = "restored"
        log.warning("auto-restore: loaded %s (%d statements, raft index %d)", self.source,
                    res.get("statements", 0), res.get("raft_index", 0))

    def stats(self):
        return {"source": self.source, "outcome": self.outcome, "dir": self.cfg.dir}
