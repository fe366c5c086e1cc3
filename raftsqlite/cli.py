"""``raft-sqlite``: command-line flags -> NodeConfig -> a running node. Nothing else.

Flags are accepted the way the seed's README writes them (Go style, one dash:
``-id node1 -data ./node1 -http :11000 -raft :12000 -join localhost:11000``) and with two
dashes (``--id node1``), and as ``-flag=value``.
"""
import argparse
import dataclasses
import gc
import logging
import sys

from raftsqlite.config import NodeConfig, StoreConfig
from raftsqlite.errors import ConfigError, RaftSQLiteError

_DEFAULTS = NodeConfig.help()
_SDEFAULTS = StoreConfig.help()


def build_parser():
    p = argparse.ArgumentParser(
        prog="raft-sqlite",
        description="A replicated SQLite node (Raft), with an rqlite-compatible HTTP API. "
                    "With no flags: one node, data in ./raftsqlite-data, HTTP on "
                    "127.0.0.1:4001, Raft on 127.0.0.1:4002.",
        epilog="Example: raft-sqlite -id node1 -data ./node1 -http :11000 -raft :12000; "
               "then raft-sqlite -id node2 -data ./node2 -http :11001 -raft :12001 "
               "-join localhost:11000. Shard groups: raft-sqlite -id s1 -data ./s1 -http :11010 "
               "-raft :12010 -shard shard1 -join localhost:11000. Commands: raft-sqlite demo "
               "(a local sharded cluster), shell (SQL shell), rebalance TABLE, recover (make a "
               "stopped member the only voter after its group lost its majority for good); "
               "each takes --help.")

    def flag(name, **kw):
        p.add_argument("-" + name, "--" + name, **kw)

    flag("id", dest="node_id", default="", metavar="ID",
         help="node id, unique in its group and stable across restarts (default: derived "
              "from the Raft address)")
    flag("data", dest="data_dir", default=_DEFAULTS["data_dir"][0], metavar="DIR",
         help="data directory (default: %(default)s)")
    flag("http", dest="http_addr", default=_DEFAULTS["http_addr"][0], metavar="ADDR",
         help="HTTP API listen address, host:port or :port for all interfaces "
              "(default: %(default)s)")
    flag("raft", dest="raft_addr", default=_DEFAULTS["raft_addr"][0], metavar="ADDR",
         help="Raft listen address (default: %(default)s)")
    flag("http-adv", dest="http_adv", default="", metavar="ADDR",
         help="HTTP address advertised to other nodes and clients")
    flag("raft-adv", dest="raft_adv", default="", metavar="ADDR",
         help="Raft address advertised to other members")
    flag("join", dest="join", default="", metavar="ADDRS",
         help="comma-separated HTTP addresses of existing members to join through "
              "(ignored when the data dir already holds this member's log)")
    flag("non-voter", dest="non_voter", action="store_true",
         help="start as a non-voting read replica (needs -join)")
    flag("shard", dest="shard", default="", metavar="NAME",
         help="shard group this node belongs to (default: the default group)")
    flag("no-fsync", dest="no_fsync", action="store_true",
         help="do not fdatasync the Raft log (unsafe: loses acknowledged writes on power "
              "loss; for experiments only)")
    flag("snapshot-threshold", dest="snapshot_threshold", type=int,
         default=_DEFAULTS["snapshot_threshold"][0], metavar="N",
         help="applied entries between automatic snapshots (default: %(default)s)")
    flag("join-timeout", dest="join_timeout", type=float, default=None,
         metavar="SECONDS", help=f"how long to retry -join (default: "
                                 f"{_DEFAULTS['join_timeout'][0]:g})")
    flag("batch-wait", dest="batch_wait", type=float, default=_SDEFAULTS["batch_wait"][0],
         metavar="SECONDS", help=_SDEFAULTS["batch_wait"][1])
    flag("max-inflight", dest="max_inflight", type=int, default=_SDEFAULTS["max_inflight"][0],
         metavar="N", help=_SDEFAULTS["max_inflight"][1])
    flag("batch-max", dest="batch_max_requests", type=int,
         default=_SDEFAULTS["batch_max_requests"][0], metavar="N",
         help=_SDEFAULTS["batch_max_requests"][1])
    flag("read-inline-budget", dest="inline_read_budget", type=float,
         default=_SDEFAULTS["inline_read_budget"][0], metavar="SECONDS",
         help=_SDEFAULTS["inline_read_budget"][1])
    flag("max-result-bytes", dest="max_result_bytes", type=int,
         default=_SDEFAULTS["max_result_bytes"][0], metavar="BYTES",
         help=_SDEFAULTS["max_result_bytes"][1] + " (default: %(default)s)")
    flag("max-apply-steps", dest="max_apply_steps", type=int,
         default=_SDEFAULTS["max_apply_steps"][0], metavar="STEPS",
         help=_SDEFAULTS["max_apply_steps"][1] + " (default: %(default)s)")
    flag("raft-opt", dest="raft_opts", action="append", default=[], metavar="NAME=VALUE",
         help="set a Raft engine setting (repeatable), e.g. snapshot_trailing=100; "
              "for tests, benchmarks and tuning")
    flag("auth", dest="auth_file", default="", metavar="FILE",
         help="rqlite-style JSON credentials file: HTTP Basic auth and per-endpoint "
              "permissions (default: none, the API is open)")
    flag("join-as", dest="join_as", default="", metavar="USER",
         help="user in the -auth file whose credentials this node uses on its calls to "
              "other nodes (join, sharding)")
    # -- membership housekeeping (rqlite's flags; docs/operations.md "Reaping")
    flag("raft-reap-node-timeout", dest="reap_node_timeout", type=_duration, default=0.0,
         metavar="DURATION", help="the leader removes a voter it has not heard from for "
                                  "this long, e.g. 72h (default: 0, never)")
    flag("raft-reap-read-only-node-timeout", dest="reap_read_only_node_timeout",
         type=_duration, default=0.0, metavar="DURATION",
         help="the leader removes a non-voter it has not heard from for this long, e.g. 30m "
              "(default: 0, never)")
    flag("raft-cluster-remove-shutdown", dest="cluster_remove_shutdown", action="store_true",
         help="on SIGTERM/SIGINT, remove this node from its group before exiting "
              "(bounded: a shutdown never waits more than a few seconds for it)")
    from raftsqlite import tlsconf
    tlsconf.add_flags(flag)
    # -- fk8: rqlite's -fk, -extensions-path, -http-allow-origin --
    flag("fk", dest="foreign_keys", action="store_true",
         help="enforce SQLite foreign key constraints; a group setting: a member started "
              "otherwise is refused at join and at start")
    flag("extensions-path", dest="extensions_path", default="", metavar="PATHS",
         help="comma-separated directories, .zip or .tar.gz files of SQLite extensions, "
              "loaded on every connection; every member must load the same set")
    flag("http-allow-origin", dest="http_allow_origin", default="", metavar="ORIGIN",
         help="value of the Access-Control-Allow-Origin header on every HTTP response; "
              "OPTIONS (CORS preflight) is answered 200 (default: off)")
    # -- autobk9: rqlite's automatic backups, "file" storage (docs/operations.md) --
    flag("auto-backup", dest="auto_backup", default="", metavar="FILE",
         help="JSON file (rqlite's format, type \"file\"): the group's leader writes a "
              "backup into a directory every interval when the data changed")
    flag("auto-restore", dest="auto_restore", default="", metavar="FILE",
         help="JSON file (rqlite's format, type \"file\"): a node started with an empty "
              "data directory that forms a new group first loads that backup")
    flag("min-free-disk", dest="min_free_disk", type=_bytes, default=None, metavar="BYTES",
         help="free space the data dir's disk must keep: below it the leader refuses new "
              "writes (HTTP 507) before the disk is full, e.g. 64MB, 1GB, 0 = off "
              "(default: 64MB; docs/operations.md \"Disk full and I/O errors\")")
    flag("log-level", dest="log_level", default="WARNING", metavar="LEVEL",
         help="logging level: DEBUG, INFO, WARNING (default), ERROR")
    _add_rqlite_flags(p, flag)
    return p


def _bytes(text):
    """A byte count: 1048576, 64MB, 64MiB, 1G (powers of 1024, as etcd's quota)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return n


def _duration(text):
    from raftsqlite.config import parse_duration
    try:
        return parse_duration(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# rqlite's boolean flags, which Go lets a script write as -flag=true|false
_GO_BOOLS = {"raft-cluster-remove-shutdown", "raft-shutdown-stepdown", "write-queue-tx",
             "fk", "raft-non-voter", "node-no-verify", "http-verify-client",
             "node-verify-client"}
_GO_BOOLS_DEFAULT_TRUE = {"raft-shutdown-stepdown"}


def _go_bool_flags(argv):
    """Go's flag package takes ``-flag=true|false`` for a boolean; argparse's store_true
    takes none. Only our rqlite-named boolean is translated here."""
    out = []
    for a in argv:
        name, sep, val = a.partition("=")
        if sep and name.lstrip("-") in _GO_BOOLS:
            if val.lower() in ("true", "1", "t"):
                out.append(name)
            elif val.lower() in ("false", "0", "f"):
                if name.lstrip("-") in _GO_BOOLS_DEFAULT_TRUE:
                    out.append(f"--no-{name.lstrip('-')}")
            else:
                raise ConfigError(f"{name} takes true or false, got {val!r}")
            continue
        out.append(a)
    return out


# ---- rqlite's flag names (rqlited's command line; docs/operations.md) ---------------------
#: rqlite's name -> our dest: the same flag under the name rqlited scripts use.
RQLITE_ALIASES = {"node-id": "node_id", "http-addr": "http_addr", "raft-addr": "raft_addr",
                  "http-adv-addr": "http_adv", "raft-adv-addr": "raft_adv",
                  "raft-non-voter": "non_voter", "raft-snap": "snapshot_threshold"}


def _add_rqlite_flags(p, flag):
    for name, dest in RQLITE_ALIASES.items():
        orig = next(a for a in p._actions if a.dest == dest)
        # SUPPRESS: the alias sets the value only when given, never its default
        kw = dict(dest=dest, default=argparse.SUPPRESS,
                  help=f"rqlite's name for {orig.option_strings[0]}")
        if orig.nargs == 0:
            kw["action"] = "store_true"
        else:
            kw.update(type=orig.type, metavar=orig.metavar)
        flag(name, **kw)
    flag("join-attempts", dest="join_attempts", type=int, default=None, metavar="N",
         help="rounds of join attempts over the -join addresses (rqlite); without "
              "-join-timeout the join then lasts as long as N rounds take")
    flag("join-interval", dest="join_interval", default=None, metavar="DURATION",
         help="pause between join rounds, e.g. 3s (rqlite; default: backoff 0.1-2 s)")
    flag("bootstrap-expect", dest="bootstrap_expect", type=int, default=0, metavar="N",
         help="form a new group once the N nodes at the -join addresses (this one "
              "included) are up; every node gets the same flags (rqlite)")
    flag("bootstrap-expect-timeout", dest="bootstrap_expect_timeout", default="120s",
         metavar="DURATION", help="give up waiting for -bootstrap-expect nodes after this "
                                  "(default: %(default)s)")
    flag("version", dest="version", action="store_true", help="print the version and exit")
    # rqlited's Raft timing and queued-write flags, with their meaning here
    flag("raft-timeout", dest="raft_timeout", type=_duration, default=None,
         metavar="DURATION", help="how long a follower waits without hearing its leader "
                                  "before it campaigns (rqlite; here: the election timeout, "
                                  "default 1s)")
    flag("raft-heartbeat-timeout", dest="raft_timeout", type=_duration,
         default=argparse.SUPPRESS, metavar="DURATION",
         help="newer rqlite name for -raft-timeout")
    flag("raft-election-timeout", dest="raft_election_timeout", type=_duration, default=None,
         metavar="DURATION", help="rqlite's candidate timeout; here the same election "
                                  "timeout as -raft-timeout (given both: the larger)")
    flag("raft-apply-timeout", dest="raft_apply_timeout", type=_duration, default=None,
         metavar="DURATION", help="how long a write waits to be committed and applied when "
                                  "it gives no timeout (rqlite; default 10s)")
    flag("raft-shutdown-stepdown", dest="raft_shutdown_stepdown", default=None,
         action="store_true", help="a leader hands leadership over when it stops (the "
                                   "default; -raft-shutdown-stepdown=false turns it off)")
    p.add_argument("--no-raft-shutdown-stepdown", dest="raft_shutdown_stepdown",
                   action="store_false", help=argparse.SUPPRESS)
    flag("raft-log-level", dest="raft_log_level", default=None, metavar="LEVEL",
         help="log level of the Raft engine alone: DEBUG, INFO, WARN, ERROR (rqlite)")
    flag("auto-vacuum-int", dest="auto_vacuum_int", type=_duration, default=0.0,
         metavar="DURATION", help="the group's leader runs VACUUM through the log this often, "
                                  "e.g. 24h (rqlite; default: 0, never)")
    flag("write-queue-capacity", dest="write_queue_capacity", type=int, default=None,
         metavar="N", help="queued-write requests held before ?queue answers 503 "
                           "(rqlite; default 1024)")
    flag("write-queue-batch-size", dest="write_queue_batch_size", type=int, default=None,
         metavar="N", help="most statements per queued batch (rqlite; default 128)")
    flag("write-queue-timeout", dest="write_queue_timeout", type=_duration, default=None,
         metavar="DURATION", help="how long a queued write waits for more to batch with "
                                  "(rqlite; default 100ms)")
    flag("write-queue-tx", dest="write_queue_tx", default=None, action="store_true",
         help="write each queued batch in one transaction (rqlite)")
    p.add_argument("data_dir_pos", nargs="?", default=None, metavar="DIR",
                   help="data directory, as rqlited's positional argument (same as -data)")


#: rqlited flags raft-sqlite does not take, and what to do instead (the node refuses to
#: start rather than run with a setting silently ignored)
RQLITE_NOT_TAKEN = {
    "raft-leader-lease-timeout": "a leader steps down once it has not heard a majority for "
                                 "one election timeout (CheckQuorum); set -raft-timeout",
    "raft-commit-timeout": "commits are sent as soon as they are known; nothing to set",
    "raft-snap-int": "the snapshot threshold (-raft-snap) is checked after every apply",
    "raft-snap-wal-size": "snapshots are taken by entry count (-raft-snap)",
    "raft-remove-shutdown": "a removed member keeps running and says so in /readyz "
                            "(503 'removed from the cluster'); stop it yourself",
    "on-disk": "the database is always a file in the data directory",
    "on-disk-path": "the database is always <data>/db.sqlite",
    "on-disk-startup": "the database is always a file in the data directory",
    "disco-mode": "list the members' HTTP addresses in -join (with -bootstrap-expect N for "
                  "a new group): docs/operations.md, 'Deploying like rqlite'",
    "disco-key": "see -disco-mode: list the members in -join",
    "disco-config": "see -disco-mode: list the members in -join",
    "auto-optimize-int": "PRAGMA optimize depends on each connection's history, so members "
                         "would differ; run ANALYZE, which goes through the log",
    "db-max-ro-conns": "reads use one connection per reader thread",
    "compress-snap-transport": "snapshots are sent uncompressed",
    "cdc-config": "change data capture is not available",
    "http-verify-common-name": "use -http-verify-client with a CA that signs only your "
                               "clients' certificates",
    "node-verify-common-name": "use -node-verify-client with a CA that signs only your "
                               "nodes' certificates",
    "cpu-profile": "profile a running node with py-spy instead",
    "mem-profile": "profile a running node with py-spy instead",
    "trace-profile": "profile a running node with py-spy instead",
}


def _check_flag_names(parser, argv):
    """Flags are taken by their full names only, as Go's flag package (rqlited) does:
    argparse would read an rqlite flag we lack as an abbreviation of one of ours, or
    '-http-foo' as '-h' with an argument, instead of naming it."""
    known = parser._option_string_actions
    for a in argv:
        if a == "--":
            break
        name = a.split("=", 1)[0]
        if a.startswith("-") and len(a) > 1 and name not in known \
                and not a[1:].replace(".", "", 1).isdigit():
            why = RQLITE_NOT_TAKEN.get(name.lstrip("-"))
            if why:
                raise ConfigError(f"rqlite's {name} is not taken by raft-sqlite: {why}")
            raise ConfigError(f"unknown flag {name} (not a raft-sqlite flag, nor one of "
                              f"rqlite's that raft-sqlite takes; see raft-sqlite --help)")


def _rqlite_settings(args, argv):
    """The NodeConfig fields set by rqlite's flags, and the positional data dir checked
    against -data."""
    import os
    from raftsqlite.config import parse_duration
    out = {}
    if args.data_dir_pos is not None:
        given = any(a.lstrip("-").split("=", 1)[0] == "data" for a in argv if a.startswith("-"))
        if given and os.path.abspath(args.data_dir) != os.path.abspath(args.data_dir_pos):
            raise ConfigError(f"two data directories: -data {args.data_dir} and the "
                              f"positional {args.data_dir_pos}; give one")
        out["data_dir"] = args.data_dir_pos
    attempts = args.join_attempts
    interval = parse_duration(args.join_interval, "-join-interval") \
        if args.join_interval is not None else 0.0
    out.update(join_attempts=attempts or 0, join_interval=interval,
               bootstrap_expect=args.bootstrap_expect,
               bootstrap_expect_timeout=parse_duration(args.bootstrap_expect_timeout,
                                                       "-bootstrap-expect-timeout"))
    out["auto_vacuum_interval"] = args.auto_vacuum_int
    if args.write_queue_capacity is not None:
        out["http_queue_capacity"] = args.write_queue_capacity
    if args.write_queue_batch_size is not None:
        out["http_queue_batch"] = args.write_queue_batch_size
    if args.write_queue_timeout is not None:
        out["http_queue_interval"] = args.write_queue_timeout
    if args.write_queue_tx is not None:
        out["http_queue_tx"] = args.write_queue_tx
    if attempts and args.join_timeout is None:
        # rqlite scripts bound the join by attempts x interval; our 60 s default must not
        # cut that short (2.5 s: a round's share of our backoff when no interval is given)
        out["join_timeout"] = max(_DEFAULTS["join_timeout"][0],
                                  attempts * ((interval or 2.0) + 2.5))
    return out


def config_from_args(argv=None) -> NodeConfig:
    argv = _go_bool_flags(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    _check_flag_names(parser, argv)
    args = parser.parse_args(argv)
    extra = _rqlite_settings(args, argv)
    join = tuple(a.strip() for a in args.join.split(",") if a.strip())
    store = StoreConfig(batch_wait=args.batch_wait, max_inflight=args.max_inflight,
                        batch_max_requests=args.batch_max_requests,
                        inline_read_budget=args.inline_read_budget,
                        max_result_bytes=args.max_result_bytes,
                        max_apply_steps=args.max_apply_steps)
    overrides = []
    for opt in args.raft_opts:
        name, sep, value = opt.partition("=")
        if not sep or not name:
            raise ConfigError(f"-raft-opt wants NAME=VALUE, got {opt!r}")
        overrides.append((name.strip(), _parse_value(value.strip())))
    if args.min_free_disk is not None and all(n != "min_free_disk" for n, _ in overrides):
        overrides.append(("min_free_disk", args.min_free_disk))
    overrides = _rqlite_raft_overrides(args, overrides)
    if args.raft_log_level and args.raft_log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"-raft-log-level takes one of {', '.join(sorted(_LOG_LEVELS))}, "
                          f"got {args.raft_log_level!r}")
    if args.raft_apply_timeout is not None:
        if args.raft_apply_timeout <= 0:
            raise ConfigError("-raft-apply-timeout must be > 0")
        store = dataclasses.replace(store, write_timeout=args.raft_apply_timeout)
    cfg = NodeConfig(node_id=args.node_id, data_dir=extra.pop("data_dir", args.data_dir),
                     http_addr=args.http_addr,
                     raft_addr=args.raft_addr, http_adv=args.http_adv, raft_adv=args.raft_adv,
                     join=join, voter=not args.non_voter, shard=args.shard,
                     fsync=not args.no_fsync, snapshot_threshold=args.snapshot_threshold,
                     join_timeout=extra.pop("join_timeout", _DEFAULTS["join_timeout"][0]
                                            if args.join_timeout is None
                                            else args.join_timeout),
                     store=store, raft_overrides=tuple(overrides), auth_file=args.auth_file,
                     join_as=args.join_as, tls=_tls(args),
                     reap_node_timeout=args.reap_node_timeout,
                     reap_read_only_node_timeout=args.reap_read_only_node_timeout,
                     cluster_remove_shutdown=args.cluster_remove_shutdown, **extra,
                     foreign_keys=args.foreign_keys, http_allow_origin=args.http_allow_origin,
                     auto_backup=args.auto_backup, auto_restore=args.auto_restore,
                     extensions_path=tuple(p.strip() for p in args.extensions_path.split(",")
                                           if p.strip()))
    if not cfg.voter and not cfg.join:
        raise ConfigError("-non-voter needs -join: a read replica joins an existing group")
    return cfg, args


_LOG_LEVELS = {"DEBUG", "INFO", "WARN", "WARNING", "ERROR"}


def _rqlite_raft_overrides(args, overrides):
    """-raft-timeout / -raft-election-timeout / -raft-shutdown-stepdown as Raft settings.
    Our core (etcd's shape) has one election timeout where hashicorp's Raft, rqlite's, has a
    follower timeout and a candidate timeout: either flag sets it, the larger wins. An
    explicit -raft-opt of the same setting wins over both."""
    given = {n for n, _ in overrides}
    out = list(overrides)
    timeouts = [t for t in (args.raft_timeout, args.raft_election_timeout) if t is not None]
    if timeouts and "election_ticks" not in given:
        from raftsqlite.raft.config import RaftConfig
        tick = dict(overrides).get("tick_interval", RaftConfig.tick_interval)
        t = max(timeouts)
        heartbeat = dict(overrides).get("heartbeat_ticks", RaftConfig.heartbeat_ticks)
        ticks = round(t / tick)
        if ticks <= heartbeat:
            raise ConfigError(f"an election timeout of {t:g}s is not longer than the "
                              f"heartbeat interval ({heartbeat * tick:g}s): give at least "
                              f"{(heartbeat + 1) * tick:g}s")
        out.append(("election_ticks", ticks))
    if args.raft_shutdown_stepdown is not None and "transfer_on_stop" not in given:
        out.append(("transfer_on_stop", bool(args.raft_shutdown_stepdown)))
    return out


def _tls(args):
    from raftsqlite import tlsconf
    return tlsconf.from_args(args)


def _parse_value(v):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def _is_command(word):
    """A first word names a subcommand unless it looks like a path (rqlited's positional
    data directory: ``raft-sqlite ./node1``, ``raft-sqlite /var/lib/x``, or an existing
    directory); a bare unknown word stays an unknown command, so a typo never starts a
    node in a directory named after it."""
    import os
    if "/" in word or word.startswith(".") or os.path.isdir(word):
        import importlib.util
        try:
            return importlib.util.find_spec(
                f"raftsqlite.commands.{word.replace('-', '_')}") is not None
        except (ImportError, ValueError):
            return False
    return True


def _subcommand(argv):
    """``raft-sqlite NAME ...`` runs ``raftsqlite.commands.NAME.main(argv)`` (e.g. the
    sharding layer's ``demo`` or ``rebalance``); other layers add modules there."""
    import importlib
    name = argv[0]
    if not name.replace("-", "_").isidentifier():
        print(f"raft-sqlite: unknown command {name!r}", file=sys.stderr)
        return 2
    try:
        mod = importlib.import_module(f"raftsqlite.commands.{name.replace('-', '_')}")
    except ModuleNotFoundError:
        print(f"raft-sqlite: unknown command {name!r} (run raft-sqlite --help for the node's "
              f"flags; a data directory as the first word is written ./{name})",
              file=sys.stderr)
        return 2
    return mod.main(argv[1:])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-") and _is_command(argv[0]):
        return _subcommand(argv)
    if "-version" in argv or "--version" in argv:
        from raftsqlite import __version__
        print(f"raft-sqlite {__version__}")
        return 0
    try:
        cfg, args = config_from_args(argv)
    except ConfigError as e:
        print(f"raft-sqlite: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.raft_log_level:
        level = {"WARN": "WARNING"}.get(args.raft_log_level.upper(), args.raft_log_level.upper())
        logging.getLogger("raftsqlite.raft").setLevel(getattr(logging, level))
    from raftsqlite.node import run_node
    # A node allocates thousands of short-lived containers per bulk request (JSON rows,
    # parameter lists, result dicts). At the default gen-0 threshold (700) the collector
    # ran about ten times per 1000-row request, and every hundredth run walked the whole
    # heap; this cut the CPU per 1000-row batch on a 3-node group by about a fifth.
    gc.set_threshold(20_000, 20, 20)
    try:
        import uvloop
        uvloop.run(run_node(cfg))
    except KeyboardInterrupt:
        pass
    except RaftSQLiteError as e:
        print(f"raft-sqlite: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # e.g. a port already in use, an unwritable data dir
        print(f"raft-sqlite: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
