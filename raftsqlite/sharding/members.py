"""Keep each group's member list in the catalog equal to the group's Raft configuration.

The catalog's member lists are what routers (``ShardingService.group_addrs``), ``GET
/shards`` and restarted shard nodes use to reach a group. A member joins by recording
itself (``catalog.set_member``), but nothing recorded a member leaving: one removed with
``DELETE /remove``, reaped (``-raft-reap-node-timeout``) or gone on shutdown
(``-raft-cluster-remove-shutdown``) stayed listed, so routers kept trying a dead address
and ``/shards`` called a healthy group degraded.

Each group's leader (the default group's too) compares its configuration with the
catalog's list on every poll round (at least every 0.5 s) and, when they differ, proposes
``catalog.sync_members`` with the configuration and its log index. That is idempotent
(the same report twice changes nothing but the version) and retried by the next round
until the catalog matches. Only a leader that may change the configuration now
(``conf_change_allowed``: it leads, has committed an entry of its term, and no change is
pending) reports, so a change still in flight is never published; and the catalog
ignores a report older, by (leader term, configuration index), than the last one it
applied, so a deposed leader's late report cannot bring a removed member back.
"""
import logging

from raftsqlite.errors import NotFound

from raftsqlite.sharding.catalog import DEFAULT_GROUP
from raftsqlite.sharding.glue import op_args

log = logging.getLogger("raftsqlite.sharding.members")


def _entry(m):
    return {"raft_addr": m.raft_addr or "", "http_addr": m.http_addr or "", "voter": bool(m.voter)}


def report(store, cat, group):
    """The ``sync_members`` args to propose, or None when the catalog already lists the
    configuration (or this node may not report: not a settled leader)."""
    raft = getattr(store, "raft", None)
    core = getattr(raft, "core", None)
    if core is None or not store.is_leader() or not core.conf_change_allowed():
        return None
    grp = cat.groups.get(group)
    if grp is None:     # not registered yet: the first member's own record creates it
        return None
    conf = {m.node_id: _entry(m) for m in store.members()}
    if not conf or conf == grp.get("members", {}):
        return None
    idx, term = core.conf_index, core.term
    if (term, idx) < (grp.get("conf_term", 0), grp.get("conf_index", 0)):
        return None     # the catalog has a newer configuration than this node knows
    return {"group": group, "conf_index": idx, "term": term,
            "members": [dict(node_id=n, **e) for n, e in sorted(conf.items())]}


async def sync(svc):
    """One round on this node (a no-op unless it is its group's settled leader)."""
    args = report(svc.node.store, svc.cache.current(), svc.group)
    if args is None:
        return False
    res = (await svc.system(DEFAULT_GROUP, [("catalog.sync_members", op_args(args))]))[0]
    if isinstance(res, dict) and res.get("error"):
        log.info("reporting %s's members to the catalog: %s", svc.group, res["error"])
        return False
    svc.counts["member_syncs"] = svc.counts.get("member_syncs", 0) + 1
    log.info("catalog: group %s members are now %s", svc.group,
             ", ".join(m["node_id"] for m in args["members"]))
    await svc.cache.refresh()
    return True


def elsewhere(svc, node_id):
    """``DELETE /remove`` of a node that is not in this node's group: the NotFound that
    names the group it is in (per the catalog) and where to send the removal, or None."""
    if svc is None:
        return None
    for g, grp in sorted(svc.cache.current().groups.items()):
        if g != svc.group and node_id in grp.get("members", {}):
            addrs = [m["http_addr"] for n, m in sorted(grp["members"].items())
                     if m.get("http_addr") and n != node_id]
            return NotFound(f"node {node_id!r} is a member of group {g!r}, not of this node's "
                            f"group {svc.group!r}; send DELETE /remove to a member of {g!r}"
                            + (f" ({', '.join(addrs)})" if addrs else ""))
    return None
