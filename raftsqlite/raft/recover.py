"""Recovering a group that lost its majority for good: make one member the only voter.

Raft cannot take a write, or even a membership change, without a majority. When most of a
group's members are gone for good (machines lost with their disks), the survivors hold all the
data but can do nothing with it. This is the way out that etcd (``--force-new-cluster``) and
rqlite (``peers.json``) also offer, done offline on one stopped member's data directory:

1. Every entry in this member's log is kept and will be applied, including the ones past the
   commit index this member knew. An entry past that index was appended by a legitimate leader,
   so it may have been committed and acknowledged by the lost majority; dropping it (etcd's
   choice) could lose an acknowledged write. Keeping it can at most apply a write whose client
   was told the outcome is unknown, which is allowed.
2. Configuration changes are appended that leave this member as the group's only voter: a
   PROMOTE of itself if it was a non-voter, then a REMOVE of every other member.
3. The term is raised by one (the state file first), then the entries and the new commit
   index (the new last index) are written and fdatasynced.

On start the member applies everything up to the new commit index, is the only voter, elects
itself and takes writes. Other machines join it again with empty data directories.

It is unsafe by nature, and only for a majority that is gone for good: if the "lost" members
were only cut off, they can still elect a leader among themselves and the group splits in two.
``docs/operations.md`` says how to use it; ``plan`` shows what would change without changing it.
"""
from raftsqlite import errors
from raftsqlite.codec import encode_conf_change
from raftsqlite.codec.model import ConfChange, ConfChangeType, Entry, EntryType
from raftsqlite.raft.core import CoreConfig, RaftCore
from raftsqlite.raft.log import RaftLog
from raftsqlite.raft.types import HardState


def _open(raft_dir, fsync=True):
    log = RaftLog(raft_dir, fsync=fsync, preallocate=False)
    log.open()
    return log


def plan(raft_dir, node_id):
    """What ``force_single_voter`` would do, as a dict; changes nothing."""
    log = _open(raft_dir, fsync=False)
    try:
        return _plan(log, node_id)
    finally:
        log.close()


def _plan(log, node_id):
    hs = log.hard_state()
    snap = log.snapshot_meta()
    last = log.last_index()
    if last == 0 and snap.index == 0:
        raise errors.ConfigError(f"{log.dir} holds no Raft log: nothing to recover")
    members = RaftCore(node_id, log, CoreConfig()).members   # the last configuration in the log
    me = next((m for m in members if m.node_id == node_id), None)
    if me is None:
        known = ", ".join(sorted(m.node_id for m in members)) or "none"
        raise errors.ConfigError(
            f"{node_id!r} is not a member of the last configuration in this log (members: "
            f"{known}); give the -id this data directory was started with, or recover from "
            f"another member's data directory")
    changes = []
    if not me.voter:
        changes.append(ConfChange(ConfChangeType.PROMOTE, node_id, me.raft_addr, me.http_addr))
    for m in sorted(members, key=lambda m: (not m.voter, m.node_id)):
        if m.node_id != node_id:
            changes.append(ConfChange(ConfChangeType.REMOVE, m.node_id, m.raft_addr, m.http_addr))
    return {
        "node_id": node_id,
        "term": hs.term, "new_term": hs.term + 1,
        "commit_index": hs.commit, "last_log_index": last, "snapshot_index": snap.index,
        "uncommitted_kept": max(0, last - max(hs.commit, snap.index)),
        "members": [{"id": m.node_id, "voter": m.voter, "raft_addr": m.raft_addr,
                     "http_addr": m.http_addr} for m in members],
        "removed": [c.node_id for c in changes if c.type == ConfChangeType.REMOVE],
        "promoted": not me.voter,
        "new_last_index": last + len(changes),
        "_changes": changes,
    }


def force_single_voter(raft_dir, node_id, fsync=True):
    """Rewrite this stopped member's log so it is its group's only voter (see the module
    docstring). Returns the plan it carried out. Running it again on the result changes
    only the term (there is nobody left to remove)."""
    log = _open(raft_dir, fsync=fsync)
    try:
        p = _plan(log, node_id)
        term = p["new_term"]
        last = p["last_log_index"]
        entries = [Entry(term, last + 1 + i, EntryType.CONF_CHANGE, encode_conf_change(cc))
                   for i, cc in enumerate(p["_changes"])]
        # The new term first: entries of a term the state file has not reached yet must
        # never be on disk alone (a crash between the two steps leaves a member that only
        # voted for itself in a new term; running recover again finishes the job).
        log.persist(HardState(term=term, vote=node_id, commit=log.hard_state().commit),
                    force_state=True)
        log.persist(HardState(term=term, vote=node_id, commit=last + len(entries)), entries,
                    force_state=True)
    finally:
        log.close()
    return p
