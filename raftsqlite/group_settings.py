"""SQLite settings every member of a group must share: ``-fk`` and the ``-extensions-path`` set.

Both change what the same log does to the database: with foreign keys enforced, a
statement that violates one fails (or cascades) where it succeeds elsewhere; an extension
defines functions, collations or virtual tables that a statement may use. rqlite leaves
them per node, so a member started with a different setting applies the same log
differently and the replicas diverge silently. Here they are a property of the group:

* **Recorded** in the replicated state: the node that creates a group proposes a SYSTEM
  op ``settings.record`` with its settings as the group's first entry after bootstrap. It
  is kept in ``_raftsqlite_meta`` (key ``group_settings``), so snapshots and replay carry it.
* **Checked when a member joins**: the joiner sends its settings in its ``/join`` body; a
  member whose own settings (equal to the group's, by the checks below) differ refuses
  with 409 ``settings_mismatch`` naming both, and the joiner stops with that message.
* **Checked when a member starts** (the FSM reads the record from its database) and
  after it installs a snapshot: a mismatch refuses to start.
* **Checked when a member applies the record** (replaying the log from the start): a
  mismatch fail-stops that member before it applies anything after the record.

Extensions are identified by file name and SHA-256 of the file's bytes; the set, sorted
by name, must be equal. Nothing here imports apsw.
"""
import hashlib
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass

import orjson

from raftsqlite.errors import ConfigError, SettingsMismatch

META_KEY = "group_settings"
#: the header a joining node sends its settings in (POST /join)
HEADER = "X-Raftsqlite-Group-Settings"
RECORD_OP = "settings.record"


@dataclass(frozen=True)
class GroupSettings:
    foreign_keys: bool = False
    #: ((file name, sha256 hex), ...) sorted by name
    extensions: tuple = ()

    def doc(self) -> dict:
        return {"foreign_keys": self.foreign_keys,
                "extensions": [{"name": n, "sha256": h} for n, h in self.extensions]}

    def encode(self) -> bytes:
        return orjson.dumps(self.doc(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_doc(cls, doc):
        """A settings document (a dict, or its JSON bytes/str) -> GroupSettings; a
        malformed one is a ConfigError."""
        if isinstance(doc, (bytes, bytearray, memoryview, str)):
            try:
                doc = orjson.loads(doc)
            except orjson.JSONDecodeError as e:
                raise ConfigError(f"group settings: not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise ConfigError("group settings must be a JSON object")
        fk = doc.get("foreign_keys", False)
        exts = doc.get("extensions", [])
        if type(fk) is not bool or not isinstance(exts, list):
            raise ConfigError("group settings: foreign_keys must be true/false and "
                              "extensions a list")
        out = []
        for e in exts:
            if not isinstance(e, dict) or type(e.get("name")) is not str \
                    or type(e.get("sha256")) is not str:
                raise ConfigError("group settings: each extension is {name, sha256}")
            out.append((e["name"], e["sha256"]))
        return cls(fk, tuple(sorted(out)))

    def describe(self) -> str:
        fk = "foreign keys enforced (-fk)" if self.foreign_keys else \
            "foreign keys not enforced (no -fk)"
        if not self.extensions:
            return fk + ", no extensions"
        return fk + ", extensions " + ", ".join(f"{n} (sha256 {h[:12]})"
                                               for n, h in self.extensions)

    def mismatch(self, group: "GroupSettings", who="this node"):
        """None when equal; else a SettingsMismatch naming both settings."""
        if group == self:
            return None
        return SettingsMismatch(
            f"{who} cannot serve this group: the group has {group.describe()}; "
            f"{who} has {self.describe()}. Every member must apply the log the same way: "
            f"start it with the group's -fk and -extensions-path")


# ---- -extensions-path ---------------------------------------------------------------

def collect_extensions(paths, dest_dir):
    """rqlite's ``-extensions-path``: each path is a directory (its files), a .zip or a
    .tar.gz (their files; subdirectories refused), or one file. Every extension file is
    copied into ``dest_dir`` (emptied first, as rqlite does), so the node loads exactly
    what it hashed. -> [(name, sha256, path in dest_dir)] sorted by name."""
    dest = os.path.realpath(dest_dir)
    for p in paths:
        if os.path.realpath(p) == dest or os.path.realpath(p).startswith(dest + os.sep):
            raise ConfigError(f"-extensions-path: {p} is inside {dest_dir}, which the node "
                              f"empties at start; keep the extensions elsewhere")
    if os.path.isdir(dest_dir):
        shutil.rmtree(dest_dir)
    os.makedirs(dest_dir)
    for p in paths:
        if not os.path.exists(p):
            raise ConfigError(f"-extensions-path: {p} does not exist")
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                src = os.path.join(p, name)
                if os.path.isfile(src) and not name.startswith("."):
                    _put(dest_dir, name, open(src, "rb").read())
        elif zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                for info in z.infolist():
                    if info.is_dir() or "/" in info.filename.strip("/"):
                        raise ConfigError(f"-extensions-path: {p} contains subdirectories")
                    _put(dest_dir, info.filename, z.read(info))
        elif p.endswith((".tar.gz", ".tgz")):
            try:
                with tarfile.open(p, "r:gz") as t:
                    for m in t.getmembers():
                        if m.isdir() or "/" in m.name.strip("./").strip("/"):
                            raise ConfigError(f"-extensions-path: {p} contains "
                                              f"subdirectories")
                        if m.isfile():
                            _put(dest_dir, os.path.basename(m.name), t.extractfile(m).read())
            except tarfile.TarError as e:
                raise ConfigError(f"-extensions-path: {p} is not a readable tar.gz: {e}") \
                    from None
        else:
            _put(dest_dir, os.path.basename(p), open(p, "rb").read())
    out = []
    for name in sorted(os.listdir(dest_dir)):
        path = os.path.join(dest_dir, name)
        with open(path, "rb") as f:
            out.append((name, hashlib.sha256(f.read()).hexdigest(), path))
    if paths and not out:
        raise ConfigError("-extensions-path: no extension files found in "
                          + ", ".join(paths))
    return out


def _put(dest_dir, name, data):
    name = os.path.basename(name)
    if not name or name.startswith("."):
        return
    target = os.path.join(dest_dir, name)
    if os.path.exists(target):
        raise ConfigError(f"-extensions-path: two extension files are named {name}")
    with open(target, "wb") as f:
        f.write(data)


# ---- the SYSTEM op ------------------------------------------------------------------

def make_record_handler(local: GroupSettings, log=None):
    """The ``settings.record`` handler for a member whose own settings are ``local``.
    Applying the record: the first one is kept as the group's; a member whose settings
    differ raises SettingsMismatch, which the FSM lets through so the member fail-stops
    instead of applying anything after it the wrong way."""
    def record(ctx, args):
        group = GroupSettings.from_doc(bytes(args))
        rows = ctx.execute("SELECT v FROM _raftsqlite_meta WHERE k = ?", (META_KEY,))
        if rows:
            group = GroupSettings.from_doc(rows[0][0])   # the first record stands
        err = local.mismatch(group)
        if err is not None:
            if log is not None:
                log.error("%s", err)
            raise err
        if not rows:
            ctx.execute("INSERT INTO _raftsqlite_meta(k, v) VALUES (?, ?)",
                        (META_KEY, group.encode().decode()))
        return {"group_settings": group.doc()}
    return record


def check_joiner(local: GroupSettings, header_value):
    """At a member answering ``POST /join``: the joiner's settings (the header's JSON;
    None when it sent none, e.g. another implementation: the record's apply check still
    stops it) against this member's, which are the group's."""
    if local is None or header_value is None:
        return
    try:
        theirs = GroupSettings.from_doc(header_value)
    except ConfigError as e:
        raise ConfigError(f"join: bad {HEADER} header: {e}") from None
    err = theirs.mismatch(local, who="the joining node")
    if err is not None:
        raise err
