"""Shared fixtures of the fault suite: is there a node to test at all?

The cluster tests need a runnable ``python -m raftsqlite`` node. When this build has
none, or it cannot start, they are skipped with the reason (the node's own log tail),
unless ``RAFTSQLITE_FAULTS_REQUIRE_NODE=1``, which turns the skip into a failure (for CI
once the node is part of the build).
"""
import asyncio
import importlib.util
import os
import tempfile

import pytest

from raftsqlite.testing.cluster import LocalCluster

_probe_result = {}


def _node_unavailable_reason():
    if "reason" in _probe_result:
        return _probe_result["reason"]
    reason = None
    if os.environ.get("RAFTSQLITE_NODE_PATH") is None and (
            importlib.util.find_spec("raftsqlite.__main__") is None
            or importlib.util.find_spec("raftsqlite.node") is None):
        reason = "this build has no runnable node (raftsqlite.__main__ / raftsqlite.node missing)"
    else:
        async def probe():
            with tempfile.TemporaryDirectory(prefix="raftsqlite-probe-") as d:
                c = LocalCluster(1, d, proxy=False, start_timeout=30)
                try:
                    await c.start()
                finally:
                    await c.stop()
        try:
            asyncio.run(asyncio.wait_for(probe(), 60))
        except Exception as e:  # noqa: BLE001 - any failure to start is the reason
            reason = f"the node cannot start: {type(e).__name__}: {str(e)[-1500:]}"
    _probe_result["reason"] = reason
    return reason


@pytest.fixture(scope="session")
def node_available():
    reason = _node_unavailable_reason()
    if reason:
        if os.environ.get("RAFTSQLITE_FAULTS_REQUIRE_NODE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return True
