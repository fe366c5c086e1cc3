"""raftsqlite.codec picks its implementation once, and RAFTSQLITE_PUREPYTHON forces the twin."""
import os
import subprocess
import sys

import raftsqlite.codec as codec

PROBE = "import raftsqlite.codec as c; print(c.IMPLEMENTATION, c.codec_module.__name__, c.hash_module.__name__)"


def _probe(env_value):
    env = dict(os.environ)
    env.pop("RAFTSQLITE_PUREPYTHON", None)
    if env_value is not None:
        env["RAFTSQLITE_PUREPYTHON"] = env_value
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(codec.__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.split()


def test_env_forces_twin():
    """RAFTSQLITE_PUREPYTHON=1 selects the pure-Python modules for codec and hash."""
    assert _probe("1") == ["python", "raftsqlite.codec.fallback", "raftsqlite.codec.hashing"]


def test_default_prefers_compiled_when_built():
    """Without the variable, the compiled modules run whenever both are importable."""
    try:
        import raftsqlite._ccodec  # noqa: F401
        import raftsqlite._chash  # noqa: F401
        built = True
    except ImportError:
        built = False
    expect = ["c", "raftsqlite._ccodec", "raftsqlite._chash"] if built else \
        ["python", "raftsqlite.codec.fallback", "raftsqlite.codec.hashing"]
    assert _probe(None) == expect
    assert _probe("0") == expect


def test_exports_identical_names():
    """Both twins export every public name the package re-exports."""
    from raftsqlite.codec import fallback, hashing
    for name in ("crc32c", "encode_frame", "decode_frame", "FrameDecoder", "encode_message",
                 "decode_message", "message_from_frame", "encode_entry", "decode_entry",
                 "entry_from_frame", "encode_command", "decode_command", "encode_conf_change",
                 "decode_conf_change"):
        assert getattr(codec, name) is getattr(codec.codec_module, name)
        assert hasattr(fallback, name)
    for name in ("xxh64", "key_bytes", "keyspace_id", "range_key", "owners_batch", "keyspace_ids"):
        assert getattr(codec, name) is getattr(codec.hash_module, name)
        assert hasattr(hashing, name)
