"""Decoder fuzzing: random and mutated bytes into every decoder of both implementations.
Only DecodeError may come out (never another exception, never a crash, never a hang),
and both implementations must agree on what they accept and what it decodes to."""
import os
import random
import time

import pytest

from raftsqlite.codec import fallback as PY
from raftsqlite.errors import DecodeError

from impls import compiled_or_none, load_cases

C = compiled_or_none("raftsqlite._ccodec")

IMPLS = [PY] + ([C] if C is not None else [])
SEED = int(os.environ.get("RAFTSQLITE_FUZZ_SEED", "20260101"))
# per test: bounded in count and in time; raise both for a long run, e.g.
# RAFTSQLITE_FUZZ_SCALE=1000 RAFTSQLITE_FUZZ_SEED=7 pytest tests/unit/test_codec_fuzz.py --timeout 0
SCALE = int(os.environ.get("RAFTSQLITE_FUZZ_SCALE", "1"))
BUDGET_S = 4.0 * SCALE
N = 20000 * SCALE


CASES = load_cases()
SEED_FRAMES = ([PY.encode_message(m, 3) for m in CASES.MESSAGES.values()]
               + [PY.encode_entry(e, 1) for e in CASES.ENTRIES.values()]
               + [PY.encode_frame(*f) for f in CASES.FRAMES.values()])
SEED_BODIES = [PY.decode_frame(f) for f in SEED_FRAMES]
SEED_COMMANDS = [PY.encode_command(c) for c in CASES.COMMANDS.values()] + \
    [PY.encode_command(c) for c in load_cases("cases_v2").COMMANDS.values()]
SEED_CCS = [PY.encode_conf_change(c) for c in CASES.CONF_CHANGES.values()]


def _mutate(rnd, data):
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(5)
        if op == 0 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b[rnd.randrange(len(b))] = rnd.choice((0, 1, 0x7F, 0x80, 0xFF, rnd.randrange(256)))
        elif op == 2:
            del b[rnd.randrange(len(b) + 1):]
        elif op == 3:
            i = rnd.randrange(len(b) + 1)
            b[i:i] = rnd.randbytes(rnd.randint(1, 12))
        else:
            i = rnd.randrange(len(b) + 1)
            b[i:i] = b"\xff" * rnd.randint(1, 11)   # varints that never end / overflow
    return bytes(b)


def _run(fn, arg):
    try:
        return ("ok", repr(fn(arg)))
    except DecodeError:
        return ("error", DecodeError)
    # any other exception propagates and fails the test


def _agree(name, arg):
    outs = [_run(getattr(m, name), arg) for m in IMPLS]
    assert all(o == outs[0] for o in outs), (name, arg.hex() if isinstance(arg, bytes) else arg)
    return outs[0]


def _inputs(rnd, seeds):
    deadline = time.monotonic() + BUDGET_S
    for i in range(N):
        if time.monotonic() > deadline:
            return
        if i % 4 == 0:
            yield rnd.randbytes(rnd.randint(0, 64))
        else:
            yield _mutate(rnd, rnd.choice(seeds))


def test_fuzz_frame_decoders():
    """decode_frame/decode_message/decode_entry on random and mutated frames: only
    DecodeError, same verdict and same result from both implementations."""
    rnd = random.Random(SEED)
    accepted = 0
    for data in _inputs(rnd, SEED_FRAMES):
        for name in ("decode_frame", "decode_message", "decode_entry"):
            accepted += _agree(name, data)[0] == "ok"
    assert accepted > 0  # the seeds themselves survive some mutations (e.g. appended junk is refused)


def test_fuzz_bodies_bypassing_crc():
    """Message bodies and log payloads behind a valid frame header (CRC bypassed through
    message_from_frame): random and mutated bodies give only DecodeError, identically."""
    rnd = random.Random(SEED + 1)
    deadline = time.monotonic() + BUDGET_S
    ok = 0
    for i in range(N):
        if time.monotonic() > deadline:
            break
        group, ftype, term, index, payload = rnd.choice(SEED_BODIES)
        if i % 5 == 0:
            ftype = rnd.randrange(256)
        body = rnd.randbytes(rnd.randint(0, 40)) if i % 7 == 0 else _mutate(rnd, payload)
        frame = (group, ftype, term, index, body)
        ok += _agree("message_from_frame", frame)[0] == "ok"
        _agree("entry_from_frame", frame)
    for bad in [None, (), (1, 2, 3, 4), (1, 2, 3, 4, None), (-1, 1, 0, 0, b""),
                (0, 256, 0, 0, b""), (0, 1, 2**64, 0, b""), ("0", 1, 0, 0, b"")]:
        _agree("message_from_frame", bad)
        assert _agree("entry_from_frame", bad)[0] == "error"
    assert ok > 0


def test_fuzz_payload_decoders():
    """decode_command/decode_conf_change on random and mutated payloads: only
    DecodeError, same verdict and same result from both implementations."""
    rnd = random.Random(SEED + 2)
    ok = 0
    for data in _inputs(rnd, SEED_COMMANDS + SEED_CCS):
        ok += _agree("decode_command", data)[0] == "ok"
        _agree("decode_conf_change", data)
    for bad in [None, "text", 123, [1, 2]]:
        for name in ("decode_command", "decode_conf_change", "decode_frame", "decode_message"):
            assert _agree(name, bad)[0] == "error"
    assert ok > 0


def test_fuzz_stream_decoder():
    """FrameDecoder fed a stream in random chunks returns exactly the frames in order; fed
    a corrupted stream it returns a prefix of them and then only DecodeError; both
    implementations return the same frames and the same verdict for the same chunking."""
    rnd = random.Random(SEED + 3)
    deadline = time.monotonic() + BUDGET_S
    for _ in range(300 * SCALE):
        if time.monotonic() > deadline:
            break
        frames = [rnd.choice(SEED_FRAMES) for _ in range(rnd.randint(1, 8))]
        expect = [PY.decode_frame(f) for f in frames]
        stream = b"".join(frames)
        corrupt = rnd.random() < 0.5
        if corrupt:
            stream = _mutate(rnd, stream)
        max_size = rnd.choice([64, 1 << 16])
        cuts = sorted(rnd.sample(range(1, len(stream)), max(0, min(len(stream) - 1, rnd.randint(0, 20)))))
        chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        results = []
        for m in IMPLS:
            d = m.FrameDecoder(max_size)
            out, err = [], None
            for chunk in chunks:
                try:
                    out.extend(d.feed(chunk))
                except DecodeError:
                    err = "error"
                    break
            results.append((out, err, d.pending if err is None else None))
        assert all(r == results[0] for r in results)
        out, err, pending = results[0]
        assert out == expect[:len(out)]
        if not corrupt and all(len(f) <= max_size for f in frames):
            assert out == expect and err is None and pending == 0


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
def test_lying_counts_do_not_allocate(impl):
    """A count or length field claiming 2**63 items is refused at once (no allocation,
    no long loop): checked against the bytes that remain."""
    huge = b"\xff" * 8 + b"\x7f"  # uvarint 2**63-1
    t0 = time.monotonic()
    for payload in [b"\x01\x01" + huge, b"\x01\x01\x01\x00" + huge,
                    b"\x01\x01\x01\x00\x00" + huge,
                    # bulk form: columns, then rows, each claiming 2**63-1
                    b"\x02\x01\x01\x08\x01x" + huge + b"\x01",
                    b"\x02\x01\x01\x08\x01x\x01" + huge,
                    b"\x02\x01\x01\x08\x01x\x02\x03\x00\x00"]:
        with pytest.raises(DecodeError):
            impl.decode_command(payload)
    with pytest.raises(DecodeError):
        impl.message_from_frame((0, 1, 0, 0, b"\x01\x10" + huge))
    with pytest.raises(DecodeError):
        impl.decode_frame(b"\xff\xff\xff\xff" + bytes(40))
    assert time.monotonic() - t0 < 1.0
