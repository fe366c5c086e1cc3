"""The objects behind the golden vectors of command format version 2 (codec_v2.json).

Version 2 is version 1 plus the bulk request form (request flag 0x8: one SQL text and a
matrix of positional parameters, ``BulkStatements``). An encoder writes version 2 only for
a command holding a bulk request; every version-1 vector keeps its bytes. Never edit a
released case: add new ones (``python tests/vectors/generate.py``).
"""
from raftsqlite.codec.model import BulkStatements, Command, CommandType, Request, Statement

COMMANDS = {
    "bulk_insert_tx": Command(CommandType.EXECUTE, [Request(BulkStatements(
        "INSERT INTO bench(v, n) VALUES(?, ?)",
        [["row-0", 0], ["row-1", 1], ["r\u00e9", -2**63]]), transaction=True)],
        ops=[("clock", b"\x00\x00\xbf\xb6\x0c\x9a\x6e\x10")]),
    "bulk_every_type_rid_guard": Command(CommandType.EXECUTE, [Request(BulkStatements(
        "INSERT INTO t VALUES(?, ?, ?, ?, ?, ?, ?)",
        [[None, 2**63 - 1, -0.5, "", b"\x00\xff", True, False]]),
        request_id=b"rid-2", guard=b"G\x01")]),
    # group commit: a bulk request beside plain ones; only the bulk one uses the form
    "bulk_group_commit": Command(CommandType.EXECUTE, [
        Request([Statement("INSERT INTO a VALUES(?)", [1])]),
        Request(BulkStatements("INSERT INTO b VALUES(?)", [[1], [2]])),
        Request([Statement("SELECT 1")], request_id=b""),
    ]),
}
