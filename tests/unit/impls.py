"""The two implementations of the codec and of the shard hash (compiled module and pure
Python twin), and the committed test vectors, shared by the codec and hash tests."""
import importlib
import importlib.util
import os

import pytest

VEC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vectors")


def compiled_or_none(name):
    """The compiled module ``name``, or None when not built (an error if
    RAFTSQLITE_REQUIRE_C=1, as in CI, so a broken build cannot pass as "skipped")."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("RAFTSQLITE_REQUIRE_C") == "1":
            raise
        return None


def impl_params(compiled, twin):
    """The twin always; the compiled module when built (required if RAFTSQLITE_REQUIRE_C=1)."""
    params = [pytest.param(importlib.import_module(twin), id="python")]
    mod = compiled_or_none(compiled)
    if mod is not None:
        params.append(pytest.param(mod, id="c"))
    else:
        params.append(pytest.param(None, id="c", marks=pytest.mark.skip(reason=f"{compiled} not built")))
    return params


def load_cases(name="cases_v1"):
    """tests/vectors/<name>.py, the objects behind the golden vectors (cases_v1: every
    section; cases_v2: commands of format version 2)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(VEC_DIR, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
