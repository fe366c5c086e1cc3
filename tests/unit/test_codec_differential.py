"""Differential tests: the compiled codec and its pure-Python twin, fed the same random
inputs, must give byte-identical encodings, identical decodes, identical errors, and
decode(encode(x)) == x. Skipped only when the compiled module is not built (and then
required by RAFTSQLITE_REQUIRE_C=1, as in CI)."""
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from raftsqlite.codec import fallback as PY
from raftsqlite.codec.model import (
    Command, CommandType, ConfChange, ConfChangeType, Entry, EntryType, Member, Message,
    MsgType, Request, SnapshotMeta, Statement, BulkStatements,
)
from raftsqlite.errors import DecodeError, EncodeError

from impls import compiled_or_none

C = compiled_or_none("raftsqlite._ccodec")

pytestmark = pytest.mark.skipif(C is None, reason="raftsqlite._ccodec not built")
SETTINGS = settings(max_examples=150 * int(os.environ.get("RAFTSQLITE_FUZZ_SCALE", "1")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

u64 = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))
u32 = st.integers(0, 2**32 - 1)
text = st.text(max_size=12)
blob = st.binary(max_size=40)

entries = st.builds(Entry, u64, u64, st.sampled_from(list(EntryType)), blob)
members = st.builds(Member, text, text, text, st.booleans())
snapshots = st.builds(SnapshotMeta, u64, u64, st.lists(members, max_size=4))
messages = st.builds(
    Message, st.sampled_from(list(MsgType)), frm=text, to=text, term=u64, log_term=u64,
    index=u64, commit=u64, entries=st.lists(entries, max_size=6), reject=st.booleans(),
    reject_hint=u64, context=blob, snapshot=st.none() | snapshots, offset=u64, data=blob,
    done=st.booleans())

values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                   st.floats(allow_nan=False), st.text(max_size=10), st.binary(max_size=10))
params = st.one_of(st.none(), st.lists(values, max_size=5),
                   st.dictionaries(st.text(max_size=6), values, max_size=4))
statements = st.builds(Statement, st.text(max_size=30), params)
bulks = st.integers(1, 4).flatmap(lambda n: st.builds(
    BulkStatements, st.text(max_size=30),
    st.lists(st.lists(values, min_size=n, max_size=n), min_size=1, max_size=4)))
requests = st.builds(Request, st.lists(statements, max_size=4) | bulks, st.booleans(),
                     st.none() | st.binary(max_size=16), st.none() | st.binary(max_size=8))
commands = st.builds(Command, st.sampled_from(list(CommandType)), st.lists(requests, max_size=3),
                     st.lists(st.tuples(text, blob), max_size=2))
conf_changes = st.builds(ConfChange, st.sampled_from(list(ConfChangeType)), text, text, text)


@SETTINGS
@given(u32, st.integers(0, 255), u64, u64, st.binary(max_size=300))
def test_frames_identical(group, ftype, term, index, payload):
    """Frames: same bytes from both; both decode them to the input."""
    a = C.encode_frame(group, ftype, term, index, payload)
    assert a == PY.encode_frame(group, ftype, term, index, payload)
    assert C.decode_frame(a) == PY.decode_frame(a) == (group, ftype, term, index, payload)
    assert C.crc32c(payload) == PY.crc32c(payload) == C._crc32c_sw(payload)


@SETTINGS
@given(messages, u32)
def test_messages_identical(msg, group):
    """Raft messages: same bytes from both; both decode to the input; frame tuples too."""
    a = C.encode_message(msg, group)
    assert a == PY.encode_message(msg, group)
    assert C.decode_message(a) == PY.decode_message(a) == (group, msg)
    frame = C.decode_frame(a)
    assert C.message_from_frame(frame) == PY.message_from_frame(frame) == (group, msg)


@SETTINGS
@given(entries, u32)
def test_entries_identical(e, group):
    """Log records: same bytes from both; both decode to the input."""
    a = C.encode_entry(e, group)
    assert a == PY.encode_entry(e, group)
    assert C.decode_entry(a) == PY.decode_entry(a) == (group, e)
    frame = PY.decode_frame(a)
    assert C.entry_from_frame(frame) == PY.entry_from_frame(frame) == (group, e)


@SETTINGS
@given(commands)
def test_commands_identical(cmd):
    """Entry payloads: same bytes from both; both decode to the input."""
    a = C.encode_command(cmd)
    assert a == PY.encode_command(cmd)
    assert C.decode_command(a) == PY.decode_command(a) == cmd


@SETTINGS
@given(st.lists(st.floats(allow_nan=True), max_size=4))
def test_float_bits_identical(fs):
    """Floats (NaN, -0.0, inf included) keep their exact bits in both."""
    cmd = Command(CommandType.EXECUTE, [Request([Statement("s", fs)])])
    a = C.encode_command(cmd)
    assert a == PY.encode_command(cmd)
    back = C.decode_command(a).requests[0].statements[0].params
    for x, y in zip(fs, back):
        assert (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))


@SETTINGS
@given(conf_changes)
def test_conf_changes_identical(cc):
    """Membership changes: same bytes from both; both decode to the input."""
    a = C.encode_conf_change(cc)
    assert a == PY.encode_conf_change(cc)
    assert C.decode_conf_change(a) == PY.decode_conf_change(a) == cc


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except (EncodeError, DecodeError) as e:
        return ("error", type(e))


junk = st.one_of(st.none(), st.integers(-2**65, 2**65), st.floats(), st.text(max_size=3),
                 st.binary(max_size=3), st.booleans(), st.lists(st.integers(), max_size=2))


@SETTINGS
@given(junk, junk, junk, junk, junk, junk)
def test_bad_fields_same_outcome(a, b, c, d, e, f):
    """Wrongly typed fields: both twins either encode identical bytes or both raise
    EncodeError (never another exception)."""
    cases = [
        (lambda m: m.encode_message(Message(MsgType.APPEND, frm=a, term=b, commit=c,
                                            entries=[Entry(d, 1, 0, e)], context=f)),),
        (lambda m: m.encode_message(Message(MsgType.SNAPSHOT, snapshot=SnapshotMeta(
            a, b, [Member(c, "", "", d)]), reject=e, data=f)),),
        (lambda m: m.encode_entry(Entry(a, b, c, d), e),),
        (lambda m: m.encode_frame(a, b, c, d, e),),
        (lambda m: m.encode_command(Command(CommandType.EXECUTE, [
            Request([Statement(a, [b, c]), Statement("x", {"k": d})], e, f)])),),
        (lambda m: m.encode_command(Command(CommandType.EXECUTE, [
            Request([Statement("x")], False, None, a), Request([], False, b, f)])),),
        (lambda m: m.encode_command(Command(a, ops=[(b, c)])),),
        (lambda m: m.encode_conf_change(ConfChange(a, b, c, d)),),
        (lambda m: m.encode_message(Message(a, b, c)),),
    ]
    for (fn,) in cases:
        assert _outcome(fn, C) == _outcome(fn, PY)
