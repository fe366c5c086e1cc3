"""The codec: frames, Raft messages, log records, entry payloads, and the shard hash.

The compiled modules (``raftsqlite._ccodec``, ``raftsqlite._chash``, ``raftsqlite._cbulk``)
are chosen once, here. When any is missing, or ``RAFTSQLITE_PUREPYTHON=1`` is set, the
pure-Python twins (``fallback``, ``hashing``, ``bulk``) run instead; they produce identical
bytes and answers.
``IMPLEMENTATION`` says which one runs: ``"c"`` or ``"python"``.
The byte layout is in FORMAT.md next to this file.
"""
import os

from raftsqlite.codec.model import (  # noqa: F401  (re-exported)
    FORMAT_VERSION, FORMAT_VERSION_BULK, BulkStatements, Command, CommandType, ConfChange,
    ConfChangeType, Entry, EntryType, Member, Message, MsgType, Request, SnapshotMeta, Statement,
)


def _want_python():
    return os.environ.get("RAFTSQLITE_PUREPYTHON", "").strip().lower() not in ("", "0", "false", "no")


IMPORT_ERROR = None  # why the compiled modules are not in use, if they are not
if _want_python():
    _codec = _hash = _bulk = None
    IMPORT_ERROR = "RAFTSQLITE_PUREPYTHON is set"
else:
    try:
        from raftsqlite import _cbulk as _bulk, _ccodec as _codec, _chash as _hash
    except ImportError as e:  # not built (source checkout) or a platform without a wheel
        _codec = _hash = _bulk = None
        IMPORT_ERROR = str(e)

if _codec is None:
    from raftsqlite.codec import bulk as _bulk, fallback as _codec, hashing as _hash
    IMPLEMENTATION = "python"
else:
    IMPLEMENTATION = "c"

crc32c = _codec.crc32c
encode_frame = _codec.encode_frame
decode_frame = _codec.decode_frame
FrameDecoder = _codec.FrameDecoder
encode_message = _codec.encode_message
decode_message = _codec.decode_message
message_from_frame = _codec.message_from_frame
encode_entry = _codec.encode_entry
decode_entry = _codec.decode_entry
entry_from_frame = _codec.entry_from_frame
encode_command = _codec.encode_command
decode_command = _codec.decode_command
encode_conf_change = _codec.encode_conf_change
decode_conf_change = _codec.decode_conf_change
HEADER_SIZE = _codec.HEADER_SIZE
DEFAULT_MAX_FRAME_SIZE = _codec.DEFAULT_MAX_FRAME_SIZE
ENTRY_FRAME_BASE = _codec.ENTRY_FRAME_BASE

xxh64 = _hash.xxh64
key_bytes = _hash.key_bytes
keyspace_id = _hash.keyspace_id
range_key = _hash.range_key
owners_batch = _hash.owners_batch
keyspace_ids = _hash.keyspace_ids

# the hot loops of a bulk request (codec/bulk.py says what each answers)
scan_rows = _bulk.scan_rows
take_rows = _bulk.take_rows
check_rows = _bulk.check_rows
rowid_results = _bulk.rowid_results
flat_rows = _bulk.flat_rows
render_rowid_run = _bulk.render_rowid_run

codec_module = _codec
hash_module = _hash
bulk_module = _bulk


def stats():
    """Which implementation runs, and why not the compiled one if so (for /status)."""
    return {
        "implementation": IMPLEMENTATION,
        "crc32c_hardware": bool(getattr(_codec, "CRC_HARDWARE", False)),
        "compiled_unavailable_reason": IMPORT_ERROR,
    }
