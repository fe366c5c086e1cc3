"""The objects behind the golden vectors of format version 1 (codec_v1.json).

The JSON file holds the bytes; this module holds what they mean. Never edit a released
case: add new ones. Regenerate the JSON only for new cases:
``python tests/vectors/generate.py`` (it refuses to change an existing vector).
"""
from raftsqlite.codec.model import (
    Command, CommandType, ConfChange, ConfChangeType, Entry, EntryType, Member, Message,
    MsgType, Request, SnapshotMeta, Statement,
)

CRC = {
    "empty": b"",
    "check": b"123456789",
    "zeros32": bytes(32),
    "ramp300": bytes(range(256)) + bytes(range(44)),
}

FRAMES = {
    "minimal": (0, 0, 0, 0, b""),
    "max_fields": (0xFFFFFFFF, 0xFF, 2**64 - 1, 2**64 - 1, b"\x00\xff"),
    "typical": (3, 0x80, 7, 1234567, b"handshake"),
}

ENTRIES = {
    "noop": Entry(1, 1, EntryType.NORMAL, b""),
    "normal": Entry(5, 42, EntryType.NORMAL, b"\x01\x01\x01\x00\x01\x08SELECT 1\x00\x00"),
    "conf": Entry(2**40, 2**33, EntryType.CONF_CHANGE, b"\x01\x01\x02n4\x00\x00"),
}

MESSAGES = {
    "append": Message(MsgType.APPEND, "node1", "node2", term=3, log_term=2, index=9, commit=8,
                      entries=[Entry(3, 10, EntryType.NORMAL, b"a" * 5),
                               Entry(3, 11, EntryType.CONF_CHANGE, b"")]),
    "append_empty": Message(MsgType.APPEND, "n1", "n2", term=1, index=0, commit=0),
    "append_resp_reject": Message(MsgType.APPEND_RESP, "n2", "n1", term=3, index=5,
                                  reject=True, reject_hint=4),
    "vote": Message(MsgType.VOTE, "a", "b", term=9, log_term=8, index=100),
    "vote_resp": Message(MsgType.VOTE_RESP, "b", "a", term=9),
    "prevote": Message(MsgType.PREVOTE, "a", "b", term=10, log_term=8, index=100),
    "prevote_resp": Message(MsgType.PREVOTE_RESP, "b", "a", term=10, reject=True),
    "heartbeat": Message(MsgType.HEARTBEAT, "node1", "node2", term=3, commit=100,
                         context=b"12345678"),
    "heartbeat_resp": Message(MsgType.HEARTBEAT_RESP, "node2", "node1", term=3,
                              context=b"12345678"),
    "snapshot": Message(MsgType.SNAPSHOT, "n1", "n3", term=2, offset=2**20, data=b"\xff" * 16,
                        done=True, snapshot=SnapshotMeta(50, 2, [
                            Member("n1", "h1:4002", "h1:4001", True),
                            Member("n\u00e9", "", "", False)])),
    "snapshot_resp": Message(MsgType.SNAPSHOT_RESP, "n3", "n1", term=2, index=2**20),
    "timeout_now": Message(MsgType.TIMEOUT_NOW, "n1", "n2", term=4),
    "read_index": Message(MsgType.READ_INDEX, "n2", "n1", term=4, context=b"rid"),
    "read_index_resp": Message(MsgType.READ_INDEX_RESP, "n1", "n2", term=4, index=77,
                               context=b"rid"),
    "transfer_leader": Message(MsgType.TRANSFER_LEADER, "n3", "n1", term=4),
    "max_varints": Message(MsgType.APPEND_RESP, term=2**64 - 1, log_term=2**64 - 1,
                           index=2**64 - 1, commit=2**64 - 1, reject_hint=2**63),
}

COMMANDS = {
    "insert_3_params": Command(CommandType.EXECUTE, [Request([Statement(
        "INSERT INTO foo(name, age, score) VALUES(?, ?, ?)", ["fiona", 20, 1.5])])]),
    "named_params_tx_rid": Command(CommandType.EXECUTE, [Request([
        Statement("UPDATE t SET a=:a, b=:b, c=:c WHERE d=:d",
                  {":a": None, ":b": b"\x00\x01", ":c": True, ":d": False}),
        Statement("DELETE FROM t WHERE k = ?", [-2**63]),
        Statement("SELECT 1"),
    ], transaction=True, request_id=b"\x00req-17")]),
    "group_commit": Command(CommandType.EXECUTE, [
        Request([Statement("INSERT INTO a VALUES(?)", [2**63 - 1])], request_id=b""),
        Request([Statement("INSERT INTO b VALUES(?)", ["\u00e9\U0001f600"])]),
    ]),
    "query": Command(CommandType.QUERY, [Request([Statement("SELECT * FROM t", [])])]),
    "noop": Command(CommandType.NOOP),
    "system": Command(CommandType.SYSTEM, ops=[("catalog.put", b"\x01\x02"), ("x", b"")]),
    "floats": Command(CommandType.EXECUTE, [Request([Statement(
        "x", [0.0, -0.0, float("inf"), float("-inf"), 1e-300, 3.141592653589793])])]),
    # request flag 0x4: a routed request's ownership guard (appended; older vectors unchanged)
    "guarded_group_commit": Command(CommandType.EXECUTE, [
        Request([Statement("INSERT INTO users(id, name) VALUES(?, ?)", [7, "ann"])],
                request_id=b"rid-1", guard=b"G\x01\x01\x05users" + bytes(range(16))),
        Request([Statement("INSERT INTO b VALUES(1)")], guard=b""),
        Request([Statement("INSERT INTO c VALUES(2)")]),
    ]),
}

CONF_CHANGES = {
    "add_learner": ConfChange(ConfChangeType.ADD_LEARNER, "node4", "10.0.0.4:4002",
                              "10.0.0.4:4001"),
    "promote": ConfChange(ConfChangeType.PROMOTE, "node4"),
    "remove": ConfChange(ConfChangeType.REMOVE, "node1"),
    "demote": ConfChange(ConfChangeType.DEMOTE, "n\u00e9"),
}

SHARD_KEYS = {
    "int_0": 0,
    "int_1": 1,
    "float_1": 1.0,
    "int_neg": -42,
    "int_min": -2**63,
    "int_max": 2**63 - 1,
    "float_half": 0.5,
    "float_neg": -2.75,
    "float_big": 1e300,
    "float_inf": float("inf"),
    "text": "user:1001",
    "text_empty": "",
    "text_unicode": "\u00e9\U0001f600",
    "blob": b"\x00\x01\x02",
    "blob_empty": b"",
}

XXH64 = {
    # (data, seed)
    "empty_0": (b"", 0),
    "abc_0": (b"abc", 0),
    "abc_seed": (b"abc", 2**64 - 1),
    "len31": (bytes(range(31)), 7),
    "len32": (bytes(range(32)), 7),
    "len100": (bytes(range(100)), 0),
}
