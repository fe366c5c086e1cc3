"""``raft-sqlite recover -id ID -data DIR [-force]``: after a group lost its majority for good,
make this stopped member the group's only voter (``raftsqlite/raft/recover.py`` says how and
why; ``docs/operations.md`` "Losing the majority for good" says when).

Without ``-force`` it prints what it would do and changes nothing.
"""
import argparse
import json
import os
import sys

from raftsqlite.errors import RaftSQLiteError


def _parser():
    ap = argparse.ArgumentParser(
        prog="raft-sqlite recover",
        description="Make this member the only voter of its group, after the group lost its "
                    "majority for good. The node must be stopped. Without -force, only show "
                    "what would change.")
    ap.add_argument("-id", "-node-id", dest="node_id", required=True,
                    help="this member's id (the -id it runs with)")
    ap.add_argument("-data", "-data-dir", dest="data", default=None,
                    help="its data directory (the -data it runs with)")
    ap.add_argument("data_pos", nargs="?", default=None, metavar="DATA_DIR",
                    help="the data directory, as rqlited takes it")
    ap.add_argument("-force", action="store_true",
                    help="do it (without: print the plan, change nothing)")
    ap.add_argument("-json", action="store_true", help="print the plan as JSON")
    return ap


def main(argv):
    args = _parser().parse_args(argv)
    data = args.data or args.data_pos
    if not data:
        print("raft-sqlite recover: give the member's data directory (-data DIR)", file=sys.stderr)
        return 2
    if args.data and args.data_pos and os.path.abspath(args.data) != os.path.abspath(args.data_pos):
        print("raft-sqlite recover: two different data directories given", file=sys.stderr)
        return 2
    if not os.path.isdir(os.path.join(data, "raft")):
        print(f"raft-sqlite recover: {os.path.abspath(data)} is not a raft-sqlite data directory "
              f"(no raft/ in it)", file=sys.stderr)
        return 2
    from raftsqlite.datalock import DataDirLock
    from raftsqlite.raft import recover
    raft_dir = os.path.join(data, "raft")
    lock = DataDirLock(data)
    try:
        lock.acquire("recover")   # refuses while the node runs
        p = recover.force_single_voter(raft_dir, args.node_id) if args.force \
            else recover.plan(raft_dir, args.node_id)
    except RaftSQLiteError as e:
        print(f"raft-sqlite recover: {e}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    p.pop("_changes", None)
    p["done"] = bool(args.force)
    if args.json:
        print(json.dumps(p))
        return 0
    others = ", ".join(p["removed"]) or "none"
    print(f"members in the log's last configuration: "
          f"{', '.join(m['id'] + ('' if m['voter'] else ' (non-voter)') for m in p['members'])}")
    print(f"log: last index {p['last_log_index']}, commit index known here {p['commit_index']}, "
          f"snapshot {p['snapshot_index']}; {p['uncommitted_kept']} entries past the commit "
          f"index are kept and will be applied")
    verb = "removed" if args.force else "would be removed"
    print(f"{verb}: {others}" + ("; this member promoted to voter" if p["promoted"] else ""))
    if args.force:
        print(f"done: {p['node_id']} is the only voter, term {p['new_term']}. Start it as before "
              f"(without -join); start the other machines with EMPTY data directories and "
              f"-join pointing at it. Never restart a removed member with its old data.")
    else:
        print("nothing changed; run again with -force to do it (only if the other members are "
              "gone for good: see docs/operations.md, 'Losing the majority for good')")
    return 0
