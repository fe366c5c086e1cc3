"""The harness's ports: chosen outside the kernel's ephemeral range (where outgoing
connections take their local ports) and never twice, and a member whose port was
taken between the pick and its bind starts again on new ports instead of failing the
run ("address already in use" once stopped a nemesis run)."""
import asyncio
import socket

import pytest

from raftsqlite.testing import procs
from raftsqlite.testing.cluster import LocalCluster

pytestmark = pytest.mark.timeout(90)


def test_free_ports_are_distinct_and_not_ephemeral():
    """Invariant: free_port never hands out a port twice in a process, nor one from the
    ephemeral range an outgoing connection could take before the listener binds."""
    low = procs._ephemeral_low()
    ports = [procs.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if low > 2048:
        assert all(p < low for p in ports), [p for p in ports if p >= low][:5]
    assert procs.is_bind_clash("OSError: [Errno 98] error while attempting to bind on "
                               "address ('127.0.0.1', 5): address already in use")
    assert not procs.is_bind_clash("raft-sqlite: data directory is not writable")


def test_member_restarts_on_new_ports_after_a_bind_clash(tmp_path, node_available):
    """Invariant: a first start whose HTTP port another process took (after the pick,
    before the bind) is retried on new ports, through the proxies, and the cluster
    comes up; the clash is counted, not hidden."""
    async def scenario():
        c = LocalCluster(1, tmp_path / "c", start_timeout=30)
        m = c.members["n1"]
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", m.http_port))
        squatter.listen(1)
        taken = m.http_port
        try:
            await c.start()
            assert m.http_port != taken and m.alive
            assert c.counters["port_clash_retries"] >= 1
            st = await c.status(m)
            assert st is not None
        finally:
            squatter.close()
            await c.stop()
    asyncio.run(scenario())
