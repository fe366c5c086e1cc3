"""A leader whose own disk holds its group back hands leadership over (raft/diskwatch.py);
members whose disks are all equally slow keep their leader. Real processes, real log
files; the slowness comes from the test-only hook raft/slowdisk.py."""
import asyncio
import time

import aiohttp
import pytest

from raftsqlite.raft import slowdisk
from raftsqlite.testing.cluster import LocalCluster
from raftsqlite.testing.nemesis import SLOW_FSYNC_FILE, slow_fsync_path


async def _raft_stats(c, m):
    doc = await c.status(m, 3.0)
    assert doc is not None, f"{m.id} did not answer /status"
    return doc.get("raft") or {}


async def _write_for(session, urls, seconds, start_id):
    """Single-row inserts, one at a time, for ``seconds`` (bounded: at most 5000), each
    sent to the first member that takes it. Returns the ids acknowledged."""
    acked, i = [], start_id
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and i < start_id + 5000:
        for u in urls:
            try:
                async with session.post(f"{u}/db/execute", json=[["INSERT INTO t(id) VALUES(?)", i]],
                                        timeout=aiohttp.ClientTimeout(total=3)) as r:
                    doc = await r.json(content_type=None)
                if r.status == 200 and "error" not in (doc.get("results") or [{}])[0]:
                    acked.append(i)
                    break
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                continue
        i += 1
    return acked


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_slow_leader_disk_hands_leadership_over(tmp_path, node_available):
    """Invariants: (1) all three members slowed alike (80 ms per log fdatasync): the
    leader keeps leading (no hand-off counted), since the followers are no faster;
    (2) only the leader slowed: within seconds it hands leadership to a follower, counts
    it, stays a member; (3) every acknowledged insert is in the table afterwards."""
    async def main():
        c = LocalCluster(3, tmp_path / "c", proxy=False, env={slowdisk.ENV: SLOW_FSYNC_FILE})
        await c.start()
        try:
            async with aiohttp.ClientSession() as s:
                lead = await c.wait_for_leader()
                async with s.post(f"{lead.url}/db/execute",
                                  json=["CREATE TABLE t (id INTEGER PRIMARY KEY)"]) as r:
                    assert r.status == 200
                urls = [lead.url] + [m.url for m in c.members.values() if m is not lead]

                for m in c.members.values():
                    slow_fsync_path(m).write_text("80\n")
                acked = await _write_for(s, urls, 4.0, 0)
                assert len(acked) >= 10, acked
                assert (await c.current_leader()) is lead
                for m in c.members.values():
                    st = await _raft_stats(c, m)
                    assert st.get("slow_disk_handoffs") == 0, (m.id, st)
                    assert (st.get("slow_disk_threshold_s") or 0) > 0

                for m in c.members.values():
                    if m is not lead:
                        slow_fsync_path(m).unlink()
                moved, deadline = None, time.monotonic() + 30
                while moved is None and time.monotonic() < deadline:
                    acked += await _write_for(s, urls, 1.0, 10_000 + len(acked) * 10)
                    now = await c.current_leader()
                    if now is not None and now is not lead:
                        moved = now
                assert moved is not None, "the slow leader kept leading\n" + c.log_tail(lead)
                st = await _raft_stats(c, lead)
                assert st.get("slow_disk_handoffs") == 1, st
                assert "handing leadership over" in c.log_tail(lead, 200)
                slow_fsync_path(lead).unlink()

                more = await _write_for(s, [moved.url], 1.0, 900_000)
                assert more, "no write acknowledged by the new leader"
                acked += more
                async with s.get(f"{moved.url}/db/query", params={"q": "SELECT id FROM t",
                                                                  "level": "strong"}) as r:
                    doc = await r.json(content_type=None)
                have = {v[0] for v in doc["results"][0].get("values", [])}
                assert set(acked) <= have, sorted(set(acked) - have)[:10]
                members = await c.node_ids(moved)
                assert members == set(c.members), members
        finally:
            await c.stop()
            c.cleanup()
    asyncio.run(main())
