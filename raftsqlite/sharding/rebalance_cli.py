"""``raft-sqlite rebalance TABLE [--wait] [--host ADDR] [-u USER:PASS] [-c CA] [-d CERT -k KEY]
[-i]``: ask a node of the default group to rebalance
a table and, with ``--wait``, show a progress bar until every move has ended.

Exit status: 0 when every move is done (or the dry run printed its plan), 1 when a move
failed or was cancelled, 2 on a bad argument or an unreachable node.
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from raftsqlite.commands import clientargs


def _call(host, method, path, body=None, timeout=30, ctx=None, auth=None):
    url = ("" if "://" in host else ("https://" if ctx else "http://")) + host + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {"error": str(e)}


def bar(frac, width=30):
    n = int(round(max(0.0, min(1.0, frac)) * width))
    return "[" + "#" * n + "-" * (width - n) + "]"


def render(m):
    eta = "" if m.get("eta_s") in (None, 0, 0.0) else f" ETA {m['eta_s']:.0f}s"
    return (f"{bar(m['progress'] if m['phase'] != 'done' else 1.0)} {m['move_id']} {m['range']} "
            f"{m['source']}->{m['target']} {m['phase']:<11} {m['rows_copied']}/{m['rows_total']} rows "
            f"{m['rows_per_s']:.0f} rows/s{eta}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="raft-sqlite rebalance",
                                description="Spread a sharded table evenly over its shards.")
    p.add_argument("table")
    p.add_argument("--host", "-host", default="127.0.0.1:4001",
                   help="HTTP address of the default group's leader (default 127.0.0.1:4001)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, move nothing")
    p.add_argument("--remove-shard", metavar="SHARD",
                   help="drain SHARD's ranges to the other shards and remove it from the table")
    p.add_argument("--wait", action="store_true", help="show progress until every move ends")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up waiting after this many seconds")
    clientargs.add_flags(p)   # -u USER:PASS and TLS, as raft-sqlite shell
    a = p.parse_args(argv)
    try:
        https = a.host.startswith("https://") or ("://" not in a.host and clientargs.wants_tls(a))
        ctx = clientargs.ssl_context(a) if https else None
        auth = clientargs.auth_header(a.user)
    except clientargs.ClientArgsError as e:
        print(f"raft-sqlite rebalance: {e}", file=sys.stderr)
        return 2

    def call(method, path, body=None):
        return _call(a.host, method, path, body, ctx=ctx, auth=auth)
    try:
        if a.remove_shard:
            st, plan = call("POST", "/table/remove-from-shard",
                            {"table_name": a.table, "shard_id": a.remove_shard})
        else:
            st, plan = call("POST", "/table/rebalance",
                            {"table_name": a.table, "dry_run": a.dry_run})
    except OSError as e:
        print(f"raft-sqlite rebalance: cannot reach {a.host}: {e}", file=sys.stderr)
        return 2
    if st != 200:
        print(f"raft-sqlite rebalance: {plan.get('error', plan)}", file=sys.stderr)
        return 2
    moves = plan.get("moves", [])
    print(f"{'plan' if a.dry_run else 'rebalancing'} {plan.get('table', a.table)}: {len(moves)} move(s), "
          f"~{plan.get('rows_estimate', 0)} rows, ~{plan.get('bytes_estimate', 0)} bytes")
    for m in moves:
        print(f"  {m['range']:<12} {m['source']} -> {m['target']}  ~{m.get('rows_estimate', 0)} rows"
              + (f"  ({m['move_id']})" if m.get("move_id") else ""))
    if a.dry_run or not a.wait or not moves:
        return 0
    ids = {m["move_id"] for m in moves}
    deadline = time.monotonic() + a.timeout
    tty = sys.stdout.isatty()
    last = None
    while time.monotonic() < deadline:
        try:
            st, s = call("GET", "/table/rebalance/status")
        except OSError:
            time.sleep(0.5)   # the coordinator may be restarting; moves resume
            continue
        mine = [m for m in s.get("moves", []) if m["move_id"] in ids] if st == 200 else []
        for m in mine:
            line = render(m)
            if tty:
                sys.stdout.write("\r" + line[:160].ljust(160))
            elif line != last:
                print(line)
            last = line
        if mine and all(m["phase"] in ("done", "cancelled", "failed") for m in mine):
            if tty:
                sys.stdout.write("\n")
            bad = [m for m in mine if m["phase"] != "done"]
            for m in bad:
                print(f"move {m['move_id']} {m['phase']}: {m.get('error')}", file=sys.stderr)
            return 1 if bad else 0
        time.sleep(0.3)
    print("raft-sqlite rebalance: timed out waiting; the moves continue", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
