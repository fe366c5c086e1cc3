"""Roundtrip tests of the codec, run against both implementations in one pytest run."""
import pytest

from raftsqlite.codec.model import (
    Command, CommandType, ConfChange, ConfChangeType, Entry, EntryType, Member, Message,
    MsgType, Request, SnapshotMeta, Statement,
)
from raftsqlite.errors import DecodeError, EncodeError


def test_crc32c_known_value(codec):
    """CRC-32C is Castagnoli's: the standard check value of '123456789' is 0xE3069283,
    and continuing a CRC equals the CRC of the concatenation."""
    assert codec.crc32c(b"123456789") == 0xE3069283
    assert codec.crc32c(b"6789", codec.crc32c(b"12345")) == 0xE3069283
    assert codec.crc32c(b"") == 0


def test_frame_roundtrip(codec):
    """decode_frame(encode_frame(x)) == x, and the frame is header + payload long."""
    buf = codec.encode_frame(7, 3, 2**64 - 1, 12345, b"hello")
    assert len(buf) == codec.HEADER_SIZE + 5
    assert codec.decode_frame(buf) == (7, 3, 2**64 - 1, 12345, b"hello")
    assert codec.decode_frame(bytearray(buf)) == (7, 3, 2**64 - 1, 12345, b"hello")


def test_frame_corruption_detected(codec):
    """Any flipped byte, truncation or trailing byte is a DecodeError."""
    buf = codec.encode_frame(1, 1, 1, 1, b"payload")
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0x40
        with pytest.raises(DecodeError):
            codec.decode_frame(bytes(bad))
    for n in range(len(buf)):
        with pytest.raises(DecodeError):
            codec.decode_frame(buf[:n])
    with pytest.raises(DecodeError):
        codec.decode_frame(buf + b"\0")


def test_frame_decoder_incremental(codec):
    """Frames fed one byte at a time come out whole, in order, exactly once."""
    frames = [(g, 1 + g % 3, g * 10, g * 100, bytes([g]) * g) for g in range(20)]
    stream = b"".join(codec.encode_frame(*f) for f in frames)
    d = codec.FrameDecoder(1 << 20)
    assert not d.failed
    out = []
    for i in range(len(stream)):
        out.extend(d.feed(stream[i:i + 1]))
    assert out == frames
    assert d.pending == 0 and d.offset == len(stream)


def test_frame_decoder_refuses_oversized(codec):
    """A header announcing a frame above max_frame_size fails before the body arrives."""
    d = codec.FrameDecoder(64)
    buf = codec.encode_frame(0, 1, 0, 0, b"x" * 100)
    with pytest.raises(DecodeError):
        d.feed(buf[:8])
    with pytest.raises(DecodeError):
        d.feed(b"")  # stays failed


def _append_msg():
    entries = [Entry(3, 10 + i, EntryType.NORMAL, bytes([i]) * 100) for i in range(64)]
    entries.append(Entry(3, 74, EntryType.CONF_CHANGE, b"cc"))
    return Message(MsgType.APPEND, frm="node1", to="node2", term=3, log_term=2, index=9,
                   commit=8, entries=entries)


MESSAGES = [
    _append_msg(),
    Message(MsgType.APPEND_RESP, "n2", "n1", term=3, index=5, reject=True, reject_hint=4),
    Message(MsgType.VOTE, "a", "b", term=9, log_term=8, index=100),
    Message(MsgType.PREVOTE_RESP, "a", "b", term=9, reject=False),
    Message(MsgType.HEARTBEAT, "n1", "n3", term=2, commit=77, context=b"\x00ctx"),
    Message(MsgType.SNAPSHOT, "n1", "n3", term=2, offset=1 << 40, data=b"\xff" * 300, done=True,
            snapshot=SnapshotMeta(50, 2, [Member("n1", "h:1", "h:2", True),
                                          Member("n\u00e9", "", "", False)])),
    Message(MsgType.TIMEOUT_NOW, "n1", "n2", term=4),
    Message(MsgType.READ_INDEX_RESP, term=1, index=2, context=b"r"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.type.name)
def test_message_roundtrip(codec, msg):
    """decode_message(encode_message(m, g)) == (g, m) for every message shape."""
    buf = codec.encode_message(msg, group=5)
    group, back = codec.decode_message(buf)
    assert group == 5 and back == msg
    assert back.type is msg.type


def test_entry_roundtrip(codec):
    """A log record keeps term, index, type and data."""
    e = Entry(5, 6, EntryType.CONF_CHANGE, b"abc")
    assert codec.decode_entry(codec.encode_entry(e, 2)) == (2, e)
    with pytest.raises(DecodeError):
        codec.decode_entry(codec.encode_message(MESSAGES[2]))


COMMANDS = [
    Command(CommandType.EXECUTE, [Request([Statement("INSERT INTO t VALUES(?, ?, ?)",
                                                     [1, "two", 3.5])])]),
    Command(CommandType.EXECUTE, [
        Request([Statement("UPDATE t SET a=:a WHERE b=:b", {"a": None, "b": b"\x00\x01"}),
                 Statement("SELECT 1"), Statement("x", [True, False, -2**63, 2**63 - 1, ""])],
                transaction=True, request_id=b"req-1"),
        Request([], request_id=b""),
    ]),
    Command(CommandType.EXECUTE, [
        Request([Statement("INSERT INTO u VALUES(?)", [5])], request_id=b"r", guard=b"G\x01"),
        Request([Statement("SELECT 1")], guard=b""),
        Request([Statement("SELECT 2")]),
    ]),
    Command(CommandType.NOOP),
    Command(CommandType.SYSTEM, ops=[("catalog.put", b"\x01\x02"), ("x", b"")]),
]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_roundtrip(codec, cmd):
    """decode_command(encode_command(c)) == c; the payload starts with the version byte."""
    buf = codec.encode_command(cmd)
    assert buf[0] == 1
    assert codec.decode_command(buf) == cmd
    assert [r.guard for r in codec.decode_command(buf).requests] == [r.guard for r in cmd.requests]


def test_conf_change_roundtrip(codec):
    """A ConfChange survives encoding with its addresses."""
    cc = ConfChange(ConfChangeType.ADD_LEARNER, "node4", "10.0.0.4:4002", "10.0.0.4:4001")
    assert codec.decode_conf_change(codec.encode_conf_change(cc)) == cc


@pytest.mark.parametrize("bad", [2**63, -2**63 - 1, object(), {1, 2}, "\ud800"])
def test_unencodable_param(codec, bad):
    """Values outside the typed parameter set are EncodeError, never silently changed."""
    with pytest.raises(EncodeError):
        codec.encode_command(Command(CommandType.EXECUTE, [Request([Statement("s", [bad])])]))


def test_crc_paths_agree_on_unaligned_slices(codec):
    """CRC-32C is the same for any alignment and length, whichever path computes it
    (SSE4.2 or slicing-by-8 in C; table in Python)."""
    import random
    from raftsqlite.codec import fallback
    rnd = random.Random(5)
    data = rnd.randbytes(700)
    mv = memoryview(data)
    for start in range(0, 9):
        for n in (0, 1, 7, 8, 9, 63, 64, 65, 300, 691 - start):
            expect = fallback.crc32c(data[start:start + n])
            assert codec.crc32c(mv[start:start + n]) == expect
            if hasattr(codec, "_crc32c_sw"):
                assert codec._crc32c_sw(data[start:start + n]) == expect


def test_decoders_accept_views_into_a_bigger_buffer(codec):
    """A log reader can decode records straight out of a segment buffer (memoryview slice
    at any offset) without copying it first."""
    e = Entry(2, 3, EntryType.NORMAL, b"data")
    rec = codec.encode_entry(e, 4)
    seg = bytearray(b"\x00" * 5 + rec + b"\xff" * 3)
    assert codec.decode_entry(memoryview(seg)[5:5 + len(rec)]) == (4, e)


def test_frame_decoder_offset_locates_corruption(codec):
    """The good records before a corrupt one are delivered, offset counts exactly their
    bytes, and the error (raised next) names that offset: what the log needs to report."""
    good = [codec.encode_entry(Entry(1, i, EntryType.NORMAL, b"x" * i), 0) for i in range(1, 6)]
    bad = bytearray(codec.encode_entry(Entry(1, 6, EntryType.NORMAL, b"y" * 10), 0))
    bad[-1] ^= 1
    d = codec.FrameDecoder()
    stream = b"".join(good) + bytes(bad) + good[0]
    out = d.feed(stream)
    assert [codec.entry_from_frame(f)[1].index for f in out] == [1, 2, 3, 4, 5]
    assert d.offset == sum(map(len, good)) and d.frames == 5
    assert d.failed  # a transport can close now instead of waiting for more bytes
    with pytest.raises(DecodeError, match=f"offset {sum(map(len, good))}"):
        d.feed(b"")
    st = d.stats()
    assert st["failed"] is True and st["max_frame_size"] == d.max_frame_size


def test_package_stats():
    """raftsqlite.codec.stats() says which implementation runs and why."""
    import raftsqlite.codec as c
    st = c.stats()
    assert st["implementation"] == c.IMPLEMENTATION
    assert (st["compiled_unavailable_reason"] is None) == (c.IMPLEMENTATION == "c")
