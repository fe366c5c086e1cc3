"""``-raft-cluster-remove-shutdown``: on a graceful shutdown the node removes itself from
its group before it exits (rqlite's flag of the same name).

For groups whose members come and go on purpose (autoscaling, a Kubernetes StatefulSet
scaled down): a member that leaves this way does not stay in the configuration as a dead
voter, which would shrink the failures the group tolerates until someone removed it.

- A follower (voter or not) asks the leader, over the HTTP API, to remove it
  (``DELETE /remove``, the operator's own path: with ``-auth`` the ``-join-as`` user
  needs the ``remove`` permission). The leader answers once the change is committed.
- A leader first hands leadership to the most caught-up voter, then asks that new leader
  the same way. If the hand-over fails it removes itself as leader: the core keeps
  leading without counting itself until the change commits, then steps down and tells the
  most caught-up voter to campaign at once (raft.md, "Leader removal").
- The last voter of a group is never removed (the group would have no voter left); a
  node that is no longer a member has nothing to do.
- Bounded: the whole attempt gives up after ``LEAVE_TIMEOUT`` seconds (a group without a
  quorum cannot commit the change), logs that, and the shutdown goes on unchanged. Every
  outcome is logged at WARNING: membership changes are what an operator wants to see.
"""
import asyncio
import logging

import orjson

from raftsqlite import errors

log = logging.getLogger("raftsqlite.node")

#: Seconds a shutdown may spend removing the node from its group.
LEAVE_TIMEOUT = 5.0
#: Of which at most this long on handing leadership over first.
TRANSFER_TIMEOUT = 2.0


async def leave_group(node, timeout=LEAVE_TIMEOUT):
    """Remove ``node`` from its group; never raises, never takes longer than ``timeout``.
    Returns what happened: "removed", "not-member", "last-voter", "failed", "timeout"."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    me = node.config.node_id
    try:
        outcome = await asyncio.wait_for(_leave(node, loop.time() + timeout), timeout)
    except asyncio.TimeoutError:
        log.warning("%s: could not remove itself from its group within %gs (no leader or no "
                    "quorum?); shutting down as a member: remove it with DELETE /remove",
                    me, timeout)
        return "timeout"
    except Exception as e:  # noqa: BLE001 - a shutdown goes on whatever happened here
        log.warning("%s: could not remove itself from its group: %s; shutting down as a "
                    "member: remove it with DELETE /remove", me, e)
        return "failed"
    if outcome == "removed":
        log.warning("%s: removed itself from its group in %.2fs before shutting down",
                    me, loop.time() - t0)
    return outcome


async def _leave(node, deadline):
    loop = asyncio.get_running_loop()
    st = node.store
    me = node.config.node_id
    if getattr(node.raft, "failed", None):
        raise errors.Unavailable(f"its Raft member failed: {node.raft.failed}")
    if st.member(me) is None:
        log.warning("%s: not a member of its group: nothing to leave", me)
        return "not-member"
    others = [m for m in st.members() if m.node_id != me]
    mine = st.member(me)
    if mine.voter and not any(m.voter for m in others):
        log.warning("%s: the last voter of its group is not removed on shutdown", me)
        return "last-voter"
    if st.is_leader():
        try:
            await st.transfer_leadership(None, timeout=min(TRANSFER_TIMEOUT,
                                                           deadline - loop.time()))
        except errors.RaftSQLiteError as e:
            log.warning("%s: leadership hand-over before leaving failed (%s); removing "
                        "itself as leader", me, e)
        if st.is_leader():
            await st.remove(me, timeout=max(0.1, deadline - loop.time()))
            return "removed"
    return await _ask_leader(node, me, deadline)


async def _ask_leader(node, me, deadline):
    from raftsqlite.client import Client
    loop = asyncio.get_running_loop()
    st = node.store
    client = Client(timeout=LEAVE_TIMEOUT, auth=node.identity_header,
                    **node.config.tls.client_kw())
    body = orjson.dumps({"id": me})
    try:
        while True:
            lead = st.leader()
            if lead is not None and lead.node_id != me and lead.http_addr:
                try:
                    r = await client.request(
                        "DELETE", lead.http_addr, "/remove", body=body,
                        headers={"Content-Type": "application/json"},
                        timeout=max(0.1, deadline - loop.time()))
                except (errors.Unreachable, errors.Unavailable) as e:
                    log.info("%s: remove request to %s failed: %s; retrying", me,
                             lead.node_id, e)
                else:
                    if r.status == 200 or r.status == 404:   # 404: no longer a member
                        return "removed"
                    if r.status in (401, 403):
                        raise errors.Unauthorized(
                            f"the leader refused DELETE /remove ({r.status}): the -join-as "
                            f"user needs the remove permission")
                    log.info("%s: remove request to %s: %s; retrying", me, lead.node_id, r)
            if loop.time() >= deadline:
                raise errors.Timeout("no leader accepted the removal in time")
            await asyncio.sleep(0.1)
    finally:
        await client.close()
