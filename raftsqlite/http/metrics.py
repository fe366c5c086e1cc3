"""``GET /metrics`` (Prometheus text format 0.0.4) and ``GET /debug/vars`` (rqlite's
expvar JSON), built at scrape time from the components' ``stats()``.

Nearly every number already lives in a ``stats()`` dict and is only read here, so a node
nobody scrapes does no extra work for them. What did not exist is kept as cheaply as the
hot paths allow: per-route request counts and latency by both HTTP lanes (plain ints and
a bisect per request, on the loop thread, from the first scrape on; ``HTTPMetrics``),
the log write + fdatasync
histogram (``RaftLog.write_hist``), the apply histogram (``FSM.apply_hist``) and the
leader changes seen (the driver). Metric names and suggested alerts:
docs/design/metrics.md.
"""
from __future__ import annotations

import logging
import os
import sys
from bisect import bisect_left

import orjson
from sanic import Blueprint
from sanic.response import HTTPResponse

import raftsqlite
from raftsqlite.http.params import QueryParams
from raftsqlite.metrics import CONTENT_TYPE, LATENCY_BUCKETS, Exposition, process_stats, \
    write_process

log = logging.getLogger("raftsqlite.http.metrics")

#: Route label -> latency histogram kind. Every other route is "other".
KINDS = {"/db/execute": "write", "/execute": "write", "/db/load": "write",
         "/db/query": "read", "/query": "read", "/db/request": "request"}
_KIND_ORDER = ("write", "read", "request", "other")
#: Label of requests no route matched (404, 405): raw paths would be unbounded.
UNMATCHED = "unmatched"
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_ROLES = ("follower", "pre-candidate", "candidate", "leader", "learner", "shutdown")


#: Slots of a route's one list: [0..5] answers by status // 100 (0: outside 100-599),
#: then one latency bucket per bound of LATENCY_BUCKETS and +Inf, then the latency sum.
_B0 = 6
_SUM = _B0 + len(LATENCY_BUCKETS) + 1


class HTTPMetrics:
    """Request counts and latency, kept by both HTTP lanes (fastpath.py): on the loop
    thread only, so plain numbers, no lock. Each route has ONE list holding its answers
    by status class and its latency buckets and sum, so a request touches only the
    routes dict and that list (about 0.2 µs warm); the per-kind histograms (write, read,
    request, other) are summed from the routes at scrape time. A route's label is its
    URI template (``/db/execute``, ``/table/<name>``), so the number of series is
    bounded by the routes the app registers."""

    def __init__(self):
        # Off until the first GET /metrics or /debug/vars: a node nobody scrapes pays one
        # attribute test per request. The request counters then count from that first
        # scrape (Prometheus only ever uses their increase between scrapes).
        self.on = False
        self.inflight = 0         # the Sanic lane's; the fast lane's: in_flight()
        self.connections = ()     # the server's open connections (FastHttpProtocol)
        self.aborted = 0          # ended with no response (client gone, server stopping)
        self.scrapes = 0
        self.scrape_errors = 0
        self.routes = {}
        for label in KINDS:     # present from the start, so rate() sees their first errors
            self.route(label)

    def route(self, label):
        r = self.routes.get(label)
        if r is None:
            r = self.routes[label] = [0] * _SUM + [0.0]
        return r

    def done(self, label, status, seconds):
        """One request answered (``status`` 0: none was sent). The fast lane's hot path."""
        if not status:
            self.aborted += 1
            return
        r = self.routes.get(label) or self.route(label)
        r[status // 100 if 100 <= status < 600 else 0] += 1
        r[_B0 + bisect_left(LATENCY_BUCKETS, seconds)] += 1
        r[_SUM] += seconds

    def counts(self, label):
        """-> the route's answers by status // 100 (slot 0: outside 100-599)."""
        return self.routes[label][:_B0]

    def kind_snapshot(self, kind):
        """The latency histogram of a kind, as ``Histogram.snapshot()``: its routes' sum."""
        counts = [0] * (_SUM - _B0)
        total = 0.0
        for label, r in list(self.routes.items()):
            if KINDS.get(label, "other") == kind:
                for i, c in enumerate(r[_B0:_SUM]):
                    counts[i] += c
                total += r[_SUM]
        return LATENCY_BUCKETS, counts, total

    def in_flight(self):
        """Requests being handled now: the Sanic lane's count, plus the connections with
        a fast-lane request running (counted here, so that lane pays nothing for it)."""
        return self.inflight + sum(1 for c in list(self.connections)
                                   if getattr(c, "_fast_busy", False))

    def sanic_done(self, request, seconds):
        """A request the Sanic lane handled: its route template and the response sent."""
        route = getattr(request, "route", None)
        label = getattr(route, "uri", None)
        if not label:
            label = UNMATCHED
        elif label[0] != "/":
            label = "/" + label
        stream = getattr(request, "stream", None)
        resp = getattr(stream, "response", None) if stream is not None else None
        self.inflight -= 1
        self.done(label, getattr(resp, "status", 0) or 0, seconds)


def http_metrics(app):
    """The app's ``HTTPMetrics`` (created on first use, kept on ``app.ctx``)."""
    hm = getattr(app.ctx, "http_metrics", None)
    if hm is None:
        hm = app.ctx.http_metrics = HTTPMetrics()
    return hm


# ---- collecting -----------------------------------------------------------------------

def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _group(node, stats):
    g = (stats.get("sharding") or {}).get("group")
    if g:
        return g
    cfg = getattr(node, "config", None)
    return getattr(cfg, "shard", None) or "default"


def _info(exp, ctx, node, stats, group):
    cfg = getattr(node, "config", None)
    exp.gauge("raftsqlite_build_info", "Always 1; the running version.",
              samples=[({"version": raftsqlite.__version__}, 1)])
    exp.gauge("raftsqlite_node_info", "Always 1; this node's identity.", samples=[(
        {"node_id": ctx.node_id() or "", "group": group,
         "voter": "true" if ctx.is_voter() else "false",
         "raft_addr": getattr(cfg, "raft_advertise", "") or ""}, 1)])


def _raft(exp, node, stats, group):
    r = stats.get("raft") or {}
    core = r.get("core") or {}
    lg = r.get("log") or {}
    tr = r.get("transport") or {}
    g = {"group": group}

    def c(name, help_, v):
        exp.counter(name, help_, samples=[(g, _num(v))])

    def gauge(name, help_, v):
        exp.gauge(name, help_, samples=[(g, _num(v))])

    # A fail-stopped member leads nothing (its core may still say "leader"): as /status,
    # it is "shutdown", so a "no leader" alert fires for its group.
    role = "shutdown" if r.get("failed") else r.get("role")
    gauge("raftsqlite_raft_term", "Current Raft term.", r.get("term"))
    exp.gauge("raftsqlite_raft_state", "1 for this member's Raft role, 0 for the others.",
              samples=[({**g, "state": s}, int(role == s)) for s in _ROLES])
    gauge("raftsqlite_raft_is_leader", "1 if this member is its group's leader.",
          int(role == "leader"))
    gauge("raftsqlite_raft_has_leader", "1 if this member knows a leader.",
          int(bool(r.get("leader"))))
    gauge("raftsqlite_raft_failed", "1 if the Raft member stopped after a failed log "
          "write or apply (fail-stop); it acknowledges nothing until restarted.",
          int(bool(r.get("failed"))))
    gauge("raftsqlite_disk_error", "1 while a write to this node's disk (Raft log or "
          "SQLite) fails and is being retried: disk full or an I/O error.",
          int(bool(r.get("disk_error"))))
    c("raftsqlite_disk_errors_total", "Failed attempts to write the disk (log, apply, "
      "snapshot), each retry counted.", r.get("disk_errors_total"))
    gauge("raftsqlite_disk_writes_refused", "1 while this node refuses new writes for its "
          "disk (an error, or free space below -min-free-disk).",
          int(bool(r.get("writes_refused"))))
    gauge("raftsqlite_raft_commit_index", "Highest log index known committed.", r.get("commit"))
    gauge("raftsqlite_raft_applied_index", "Highest log index applied to SQLite.",
          r.get("applied"))
    gauge("raftsqlite_raft_last_log_index", "Last index in this member's log.",
          core.get("last_index", lg.get("last_index")))
    gauge("raftsqlite_raft_first_log_index", "First index still in the log (after "
          "compaction).", lg.get("first_index"))
    gauge("raftsqlite_raft_snapshot_index", "Index of the latest snapshot.",
          lg.get("snapshot_index"))
    c("raftsqlite_raft_leader_changes_seen_total",
      "Times this member saw a leader other than the last one it knew.",
      r.get("leader_changes"))
    c("raftsqlite_raft_elections_total", "Elections this member started (campaigns).",
      core.get("elections"))
    c("raftsqlite_raft_leader_terms_total", "Times this member became leader.",
      core.get("leader_terms"))
    c("raftsqlite_raft_proposals_total", "Proposals (one per write batch) given to Raft.",
      r.get("proposals"))
    c("raftsqlite_raft_proposal_batches_total",
      "Batches of proposals appended as one set of log entries.", r.get("batches"))
    gauge("raftsqlite_raft_proposals_pending", "Proposals waiting for commit and apply.",
          r.get("pending_proposals"))
    c("raftsqlite_raft_proposal_timeouts_total",
      "Proposals and reads that timed out waiting for commit.", r.get("timeouts"))
    c("raftsqlite_raft_ready_total", "Ready cycles (persist, send, apply) run.", r.get("ready"))
    c("raftsqlite_raft_read_index_total", "Linearizable reads that asked for a read index.",
      r.get("reads"))
    c("raftsqlite_raft_read_index_rounds_total", "ReadIndex quorum rounds (reads share them).",
      r.get("read_rounds"))
    c("raftsqlite_raft_applied_entries_total", "Log entries applied to SQLite.",
      r.get("applied_entries"))
    c("raftsqlite_raft_persists_total", "Log persists (write + fdatasync) by the driver.",
      r.get("persists"))
    c("raftsqlite_raft_persist_seconds_total",
      "Time the driver waited for log persists, hand-off included.", r.get("persist_s"))
    c("raftsqlite_raft_log_fsyncs_total", "fdatasync calls on the Raft log.", lg.get("fsyncs"))
    c("raftsqlite_raft_log_bytes_written_total", "Bytes written to the Raft log.",
      lg.get("bytes_written"))
    gauge("raftsqlite_raft_log_segments", "Raft log segment files.", lg.get("segments"))
    raft = getattr(node, "raft", None)
    wh = getattr(getattr(raft, "log", None), "write_hist", None)
    if wh is not None:
        exp.histogram("raftsqlite_raft_fsync_duration_seconds",
                      "Duration of each Raft log write: its syscalls and the fdatasync.",
                      samples=[(g, wh.snapshot())])
    fsm = getattr(node, "fsm", None)
    ah = getattr(fsm, "apply_hist", None)
    if ah is not None:
        exp.histogram("raftsqlite_raft_apply_duration_seconds",
                      "Duration of each apply of committed entries to SQLite (one "
                      "transaction).", samples=[(g, ah.snapshot())])
    c("raftsqlite_raft_snapshots_taken_total", "Snapshots this member took.",
      r.get("snapshots_taken"))
    c("raftsqlite_raft_snapshots_sent_total", "Snapshots streamed to followers.",
      r.get("snapshots_sent"))
    c("raftsqlite_raft_snapshots_received_total", "Snapshots received and installed.",
      r.get("snapshots_received"))
    c("raftsqlite_raft_slow_disk_handoffs_total",
      "Leadership hand-overs because this leader's disk held its group back.",
      r.get("slow_disk_handoffs"))
    exp.counter("raftsqlite_raft_members_reaped_total",
                "Members this node removed as leader after they stayed silent past "
                "-raft-reap-node-timeout (voter) or -raft-reap-read-only-node-timeout.",
                samples=[({**g, "kind": k}, _num(r.get(key))) for k, key in (
                    ("voter", "reaped_voters"), ("non_voter", "reaped_non_voters"))])
    c("raftsqlite_raft_reap_failures_total", "Reaping removals that could not start or "
      "did not commit.", r.get("reap_failures"))
    gauge("raftsqlite_raft_removed", "1 if this node knows it is no longer a member of its "
          "group (reaped or removed while away).", int(bool(r.get("removed"))))
    c("raftsqlite_raft_messages_sent_total", "Raft messages sent.", tr.get("msgs_out"))
    c("raftsqlite_raft_messages_received_total", "Raft messages received.", tr.get("msgs_in"))
    c("raftsqlite_raft_transport_bytes_sent_total", "Raft bytes sent.", tr.get("bytes_out"))
    exp.counter("raftsqlite_raft_transport_errors_total",
                "Raft transport failures: messages dropped (peer unreachable or queue "
                "full), bad frames, refused and misrouted connections.",
                samples=[({**g, "kind": k}, _num(tr.get(key))) for k, key in (
                    ("dropped", "dropped"), ("bad_frame", "bad_frames"),
                    ("refused", "refused"), ("misrouted", "misrouted"))])
    peers = tr.get("peers") or {}
    exp.gauge("raftsqlite_raft_peer_connected", "1 if the connection to the peer is up.",
              samples=[({**g, "peer": p}, int(bool(d.get("connected"))))
                       for p, d in sorted(peers.items())])
    voters = core.get("voters") or []
    learners = core.get("learners") or []
    gauge("raftsqlite_raft_members", "Members of this group (voters and learners).",
          len(voters) + len(learners) if core else None)
    gauge("raftsqlite_raft_voters", "Voting members of this group.",
          len(voters) if core else None)
    progress = (r.get("progress") or {}) if role == "leader" else {}
    me = r.get("node_id")
    last = core.get("last_index")
    lag = [({**g, "peer": p}, max(0, last - d["match"]))
           for p, d in sorted(progress.items())
           if p != me and last is not None and isinstance(d.get("match"), int)]
    exp.gauge("raftsqlite_raft_replication_lag_entries",
              "Leader only: entries the peer is behind the leader's last log index.",
              samples=lag)


def _store(exp, stats):
    s = stats.get("store") or {}
    exp.counter("raftsqlite_store_writes_total", "Write requests the store accepted.",
                _num(s.get("writes")))
    exp.counter("raftsqlite_store_write_batches_total",
                "Group-commit batches (many write requests, one log entry).",
                _num(s.get("write_batches")))
    exp.counter("raftsqlite_store_batched_requests_total",
                "Write requests carried by group-commit batches.",
                _num(s.get("batched_requests")))
    exp.counter("raftsqlite_store_write_errors_total",
                "Write batches that failed as a whole (not a statement error).",
                _num(s.get("write_errors")))
    exp.counter("raftsqlite_store_not_leader_total",
                "Requests that needed the leader on a member that is not.",
                _num(s.get("not_leader")))
    exp.counter("raftsqlite_store_reads_total", "Reads by consistency path.", samples=[
        ({"level": "local"}, _num(s.get("reads_local"))),
        ({"level": "linearizable"}, _num(s.get("reads_linearizable"))),
        ({"level": "strong"}, _num(s.get("reads_strong")))])
    exp.gauge("raftsqlite_store_inflight_writes", "Write batches proposed, not yet applied.",
              _num(s.get("inflight")))
    exp.gauge("raftsqlite_store_write_queue_depth", "Write requests waiting to be batched.",
              _num(s.get("queue_depth")))


def _sqlite(exp, node, stats):
    f = stats.get("fsm") or {}
    d = stats.get("db") or {}
    db = getattr(node, "db", None)
    path = getattr(db, "path", None) or d.get("path")
    main = wal = None
    if path:
        try:
            main = os.path.getsize(path)
        except OSError:
            pass
        try:
            wal = os.path.getsize(path + "-wal")
        except OSError:
            wal = 0
    exp.gauge("raftsqlite_sqlite_database_bytes", "Size of the SQLite database file.", main)
    exp.gauge("raftsqlite_sqlite_wal_bytes", "Size of the SQLite WAL file.", wal)
    exp.counter("raftsqlite_fsm_entries_total", "Log entries applied by the state machine.",
                _num(f.get("entries")))
    exp.counter("raftsqlite_fsm_requests_total", "Write requests applied.",
                _num(f.get("requests")))
    exp.counter("raftsqlite_fsm_statements_total", "SQL statements applied.",
                _num(f.get("statements")))
    exp.counter("raftsqlite_fsm_dedup_hits_total",
                "Retried requests answered from the dedup table (applied once).",
                _num(f.get("dedup_hits")))
    exp.counter("raftsqlite_fsm_apply_seconds_total", "Time spent applying entries.",
                _num(f.get("apply_seconds")))
    exp.counter("raftsqlite_fsm_snapshots_total", "Database snapshots taken.",
                _num(f.get("snapshots")))
    exp.gauge("raftsqlite_fsm_last_snapshot_seconds", "Duration of the last snapshot copy.",
              _num(f.get("last_snapshot_seconds")))
    rows = None
    if db is not None and hasattr(db, "read_internal"):
        try:
            rows = db.read_internal("SELECT count(*) FROM _raftsqlite_requests")[0][0]
        except Exception:  # noqa: BLE001 - a closed or restoring database: leave it out
            rows = None
    exp.gauge("raftsqlite_fsm_dedup_rows", "Request ids kept for deduplication.", rows)
    exp.counter("raftsqlite_sqlite_reads_total", "Read statements run.", _num(d.get("reads")))
    exp.counter("raftsqlite_sqlite_read_errors_total", "Read statements that failed.",
                _num(d.get("read_errors")))


def _http(exp, ctx, hm):
    samples = []
    for label in sorted(hm.routes):
        counts = hm.counts(label)
        for i, cls in enumerate(_CLASSES, start=1):
            # 2xx/4xx/5xx always (a series must exist before its first error for
            # rate() to count that error); 1xx/3xx once seen
            if counts[i] or cls in ("2xx", "4xx", "5xx"):
                samples.append(({"route": label, "status": cls}, counts[i]))
        if counts[0]:
            samples.append(({"route": label, "status": "other"}, counts[0]))
    exp.counter("raftsqlite_http_requests_total",
                "HTTP requests answered, by route template and status class.", samples=samples)
    exp.counter("raftsqlite_http_requests_aborted_total",
                "HTTP requests that ended without a response.", hm.aborted)
    exp.histogram("raftsqlite_http_request_duration_seconds",
                  "HTTP request latency in this node (forwarding included), by kind: "
                  "write, read, request (mixed), other.",
                  samples=[({"kind": k}, hm.kind_snapshot(k)) for k in _KIND_ORDER])
    exp.gauge("raftsqlite_http_requests_in_flight", "HTTP requests being handled.",
              hm.in_flight())
    cn = ctx.counters
    exp.counter("raftsqlite_http_forwarded_total", "Requests forwarded to the leader.",
                cn.get("forwarded", 0))
    exp.counter("raftsqlite_http_redirects_total", "Requests answered 301 to the leader.",
                cn.get("redirects", 0))
    exp.counter("raftsqlite_http_leader_not_found_total",
                "Requests that needed a leader when none was known.",
                cn.get("leader_not_found", 0))
    exp.counter("raftsqlite_http_fast_lane_total",
                "Requests served by the lean HTTP lane (fastpath.py).", cn.get("fast_lane", 0))
    q = ctx.queue.stats() if getattr(ctx, "queue", None) is not None else {}
    exp.counter("raftsqlite_http_queued_writes_total",
                "Queued write requests accepted (/db/execute?queue).", _num(q.get("queued")))
    exp.counter("raftsqlite_http_queue_batches_total", "Queued-write batches written.",
                _num(q.get("batches")))
    exp.counter("raftsqlite_http_queue_failed_batches_total", "Queued-write batches that failed.",
                _num(q.get("failed_batches")))
    exp.gauge("raftsqlite_http_queue_pending", "Queued write requests not yet written.",
              _num(q.get("pending")))
    exp.gauge("raftsqlite_http_queue_capacity", "Queued-write capacity.",
              _num(q.get("capacity")))
    cl = ctx.client.stats() if getattr(ctx, "client", None) is not None else {}
    exp.counter("raftsqlite_http_client_requests_total",
                "Requests this node sent to other nodes (forwarding, probes).",
                _num(cl.get("requests")))
    exp.counter("raftsqlite_http_client_failures_total",
                "Requests to other nodes that failed (no answer).", _num(cl.get("failures")))


def _sharding(exp, node, stats, group):
    sh = stats.get("sharding")
    if not sh:
        return
    g = {"group": group}
    cat = sh.get("catalog") or {}
    exp.gauge("raftsqlite_catalog_version", "Version of the catalog this node routes with.",
              samples=[(g, _num(cat.get("version")))])
    exp.gauge("raftsqlite_catalog_epoch", "Catalog epoch (bumped by ownership changes).",
              samples=[(g, _num(cat.get("epoch")))])
    exp.counter("raftsqlite_catalog_refreshes_total", "Catalog refreshes fetched.",
                samples=[(g, _num(cat.get("refreshes")))])
    exp.counter("raftsqlite_catalog_errors_total", "Catalog fetches that failed.",
                samples=[(g, _num(cat.get("errors")))])
    rt = sh.get("router") or {}
    exp.counter("raftsqlite_router_statements_total", "Statements the router planned, by plan.",
                samples=[({"plan": k}, _num(rt.get(k)))
                         for k in ("single", "scatter", "default", "fanout")])
    exp.counter("raftsqlite_router_retries_total",
                "Router retries: moved (a shard rejected a stale epoch), stale_catalog, "
                "fenced (a range being moved).", samples=[
                    ({"reason": "moved"}, _num(rt.get("moved_retries"))),
                    ({"reason": "stale_catalog"}, _num(rt.get("stale_catalog_retries"))),
                    ({"reason": "fenced"}, _num(rt.get("fenced_waits")))])
    exp.counter("raftsqlite_router_refused_total",
                "Statements refused because they cannot be answered correctly.",
                _num(rt.get("refused")))
    exp.counter("raftsqlite_router_partial_writes_total",
                "Multi-shard writes that some shards did not apply.",
                _num(rt.get("partial_writes")))
    pc = rt.get("plan_cache") or {}
    exp.counter("raftsqlite_router_plan_cache_hits_total", "Plan cache hits.",
                _num(pc.get("hits")))
    exp.counter("raftsqlite_router_plan_cache_misses_total", "Plan cache misses (parses).",
                _num(pc.get("misses")))
    exp.gauge("raftsqlite_router_plan_cache_entries", "Plans cached.", _num(pc.get("cached")))
    ex = sh.get("executor") or {}
    exp.counter("raftsqlite_shard_calls_total", "Group calls by where they ran.", samples=[
        ({"target": "local"}, _num(ex.get("local"))),
        ({"target": "remote"}, _num(ex.get("remote")))])
    exp.counter("raftsqlite_shard_call_retries_total",
                "Remote group calls retried (leader moved, connection lost).",
                _num(ex.get("remote_retries")))
    cc = sh.get("call_client") or {}
    exp.counter("raftsqlite_shard_call_errors_total",
                "Remote group calls that failed at the connection level.",
                _num(cc.get("failures", 0)))
    reb = getattr(node, "rebalancer", None)
    if reb is not None:
        runners = dict(getattr(reb, "runners", {}) or {})
        exp.gauge("raftsqlite_rebalance_moves_running", "Range moves this coordinator runs.",
                  len(runners))
        exp.gauge("raftsqlite_rebalance_rows_copied",
                  "Rows copied so far by the moves running now.",
                  sum(getattr(r, "rows_copied", 0) or 0 for r in runners.values()))
        exp.gauge("raftsqlite_rebalance_moves_finished",
                  "Range moves this coordinator finished since it started.",
                  len(getattr(reb, "finished", {}) or {}))


def _auto_backup(exp, stats, group):
    ab = stats.get("auto_backup")
    if not ab:
        return
    g = {"group": group}
    exp.counter("raftsqlite_auto_backups_total", "Automatic backups (-auto-backup) by "
                "outcome: written, failed, skipped because nothing changed.", samples=[
                    (dict(g, outcome="ok"), _num(ab.get("backups_ok"))),
                    (dict(g, outcome="failed"), _num(ab.get("backups_failed"))),
                    (dict(g, outcome="skipped_same_index"), _num(ab.get("skipped_same_index"))),
                    (dict(g, outcome="skipped_same_content"),
                     _num(ab.get("skipped_same_content")))])
    exp.counter("raftsqlite_auto_backup_bytes_total", "Bytes of automatic backups written.",
                samples=[(g, _num(ab.get("bytes_total")))])
    exp.gauge("raftsqlite_auto_backup_last_time_seconds", "Unix time of the last automatic "
              "backup this node wrote (0 = none yet).",
              samples=[(g, _num(ab.get("last_backup_time") or 0))])


def render_metrics(ctx):
    """The whole exposition for the node behind ``ctx`` (an ``AppContext``)."""
    hm = ctx.http_metrics if getattr(ctx, "http_metrics", None) is not None \
        else HTTPMetrics()
    hm.on = True
    hm.scrapes += 1
    exp = Exposition()
    node = ctx.node
    stats = ctx.node_stats()
    group = _group(node, stats)
    for name, fn in (("info", lambda: _info(exp, ctx, node, stats, group)),
                     ("raft", lambda: _raft(exp, node, stats, group)),
                     ("store", lambda: _store(exp, stats)),
                     ("sqlite", lambda: _sqlite(exp, node, stats)),
                     ("http", lambda: _http(exp, ctx, hm)),
                     ("sharding", lambda: _sharding(exp, node, stats, group)),
                     ("auto_backup", lambda: _auto_backup(exp, stats, group)),
                     ("process", lambda: write_process(exp, ctx.started_wall))):
        try:
            fn()
        except Exception:  # noqa: BLE001 - one broken section must not hide the others
            hm.scrape_errors += 1
            log.exception("metrics: the %s section failed", name)
    exp.counter("raftsqlite_scrape_errors_total",
                "Sections of /metrics left out because collecting them failed.",
                hm.scrape_errors)
    return exp.text()


# ---- /debug/vars ----------------------------------------------------------------------

def _numeric(d, depth=0):
    """The numeric leaves of a stats dict (nested dicts kept), as Go's expvar maps."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (int, float)):
            out[k] = v
        elif isinstance(v, dict) and depth < 3:
            sub = _numeric(v, depth + 1)
            if sub:
                out[k] = sub
    return out


def debug_vars(ctx):
    """rqlite's ``/debug/vars``: one JSON object of expvar-style maps of counters."""
    stats = ctx.node_stats()
    hm = getattr(ctx, "http_metrics", None)
    http = dict(ctx.counters)
    if hm is not None:
        hm.on = True
        http["in_flight"] = hm.in_flight()
        http["aborted"] = hm.aborted
        for label in list(hm.routes):
            http["route " + label] = sum(hm.counts(label))
    out = {"cmdline": list(sys.argv),
           "memstats": {k: v for k, v in process_stats(ctx.started_wall).items()},
           "http": http,
           "queue": _numeric(ctx.queue.stats()) if getattr(ctx, "queue", None) else {}}
    for k in ("store", "raft", "fsm", "db", "sharding"):
        if isinstance(stats.get(k), dict):
            out[k] = _numeric(stats[k])
    # expvar readers cannot do bucket arithmetic: the histograms' p50/p99 bucket bounds
    node = ctx.node
    for section, name, h in (
            ("raft", "fsync", getattr(getattr(getattr(node, "raft", None), "log", None),
                                      "write_hist", None)),
            ("raft", "apply", getattr(getattr(node, "fsm", None), "apply_hist", None))):
        if h is not None:
            d = out.setdefault(section, {})
            for q in (0.5, 0.99):
                v = h.quantile(q)
                d[f"{name}_p{round(q * 100)}_le_s"] = v if v is None or v != float("inf") \
                    else "+Inf"
    return out


def blueprint():
    bp = Blueprint("metrics")

    @bp.get("/metrics")
    async def metrics(request):
        body = render_metrics(request.app.ctx).encode("utf-8")
        return HTTPResponse(body, content_type=CONTENT_TYPE)

    @bp.get("/debug/vars")
    async def expvars(request):
        doc = debug_vars(request.app.ctx)
        key = (QueryParams(request.query_string).key or "").strip()
        if key:
            # rqlite: only that top-level variable (an unknown one gives {})
            doc = {key: doc[key]} if key in doc else {}
        return HTTPResponse(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n",
                            content_type="application/json; charset=utf-8")

    return bp


__all__ = ["HTTPMetrics", "KINDS", "blueprint", "debug_vars", "http_metrics",
           "render_metrics"]
