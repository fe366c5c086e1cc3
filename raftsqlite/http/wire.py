"""What goes on the wire: rqlite's JSON shapes, the seed's shapes, and the one error body.

Rendering rules (matching rqlite's ``command/encoding``):
- a write result has ``last_insert_id`` and ``rows_affected``, each omitted when zero, so a
  ``CREATE TABLE`` renders as ``{}``;
- a read result has ``columns``, ``types``, ``values``, each omitted when empty;
- a failed statement renders as ``{"error": "..."}`` inside ``results`` (HTTP 200);
- ``time`` (seconds) only with ``timings``; BLOBs base64 unless ``blob_array``;
- associative: ``{"types": {col: type}, "rows": [{col: value}]}``; a write result there
  also carries ``"rows": null`` (as rqlite renders it); on the query endpoints a failed
  read renders ``{"rows": [], "error": ...}`` (rqlite's QueryRows shape);
- compact separators; ``pretty`` indents by four spaces, as Go's MarshalIndent does.

Errors: every whole-request failure is an exception from ``raftsqlite.errors``; ``STATUS``
below is the only place that maps them to HTTP status codes, and ``error_body`` the only
error shape: ``{"error": "<message>", "code": "<stable code>"}``.
"""
import base64
import json

import orjson
from sanic.response import HTTPResponse

from raftsqlite import errors
from raftsqlite.codec import render_rowid_run
from raftsqlite.codec.model import InsertRun

JSON_CT = "application/json; charset=utf-8"

# Most specific first. (exception class, HTTP status)
STATUS = (
    (errors.PayloadTooLarge, 413),
    (errors.Conflict, 409),              # valid, but the state forbids it (rows would be hidden)
    (errors.BadRequest, 400),            # includes StatementRefused, RoutingRefused
    (errors.DecodeError, 400),
    (errors.EncodeError, 400),
    (errors.SettingsMismatch, 409),     # a joiner's -fk/-extensions-path differ
    (errors.ConfigError, 400),
    (errors.NotFound, 404),
    (errors.Unauthorized, 401),          # -auth: bad credentials or a missing permission
    (errors.QueueWaitTimeout, 408),      # rqlite's status for ?queue&wait timing out
    (errors.Timeout, 504),
    (errors.DiskFull, 507),              # disk full or below -min-free-disk: nothing written
    (errors.LeaderNotFound, 503),
    (errors.NotLeader, 503),             # only when forwarding was impossible
    (errors.Unavailable, 503),
    (errors.ProposalDropped, 503),       # definitely not applied: safe to retry
    (errors.OutcomeUnknown, 503),        # may have been applied; the code says which
    (errors.Moved, 503),
    (errors.Fenced, 503),
    (errors.StorageCorrupt, 503),
    # Any other deliberate error: the node could not do it now. Only a bug is a 500.
    (errors.RaftSQLiteError, 503),
)

# rqlite answers these with 200 and a top-level "error" beside empty "results".
INLINE_IN_RESULTS = (errors.StaleRead,)


def status_for(exc):
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(message, code="error"):
    return orjson.dumps({"error": message, "code": code})


def error_response(status, message, code="error", headers=None):
    return HTTPResponse(error_body(message, code), status=status, headers=headers,
                        content_type=JSON_CT)


def exception_response(exc):
    """The single exception -> response mapping used by the app's error handler."""
    if isinstance(exc, INLINE_IN_RESULTS):
        return json_response({"results": [], "error": str(exc)})
    code = getattr(exc, "code", "error")
    msg = str(exc) or code.replace("_", " ")
    return error_response(status_for(exc), msg, code, getattr(exc, "headers", None))


# ---- JSON encoding --------------------------------------------------------------------

class RawJSON:
    """A part of a response already rendered as JSON bytes (by a compiled loop), put
    into the body as it is."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw


def _blob_b64(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return base64.b64encode(o).decode("ascii")
    if type(o) is RawJSON:
        return orjson.Fragment(o.raw)   # copied into the output verbatim
    raise TypeError(f"cannot render {type(o).__name__} as JSON")


def _blob_array(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return list(bytes(o))
    if type(o) is RawJSON:
        return orjson.Fragment(o.raw)   # copied into the output verbatim
    raise TypeError(f"cannot render {type(o).__name__} as JSON")


def dumps(obj, *, pretty=False, blob_array=False):
    default = _blob_array if blob_array else _blob_b64
    try:
        raw = orjson.dumps(obj, default=default)  # NaN/inf become null
    except (orjson.JSONEncodeError, TypeError):
        # e.g. a lone surrogate in a TEXT value: escape it (the text stays valid JSON)
        raw = json.dumps(obj, default=lambda o: orjson.loads(o.raw) if type(o) is RawJSON
                         else default(o), ensure_ascii=True,
                         separators=(",", ":")).encode("ascii")
    if not pretty:
        return raw
    # Go's MarshalIndent layout; rare, so the simple path is fine.
    doc = json.loads(raw)
    try:
        return json.dumps(doc, indent=4, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, indent=4, ensure_ascii=True).encode("ascii")


def json_response(obj, status=200, *, pretty=False, blob_array=False, headers=None):
    return HTTPResponse(dumps(obj, pretty=pretty, blob_array=blob_array), status=status,
                        headers=headers, content_type=JSON_CT)


# ---- rqlite results -------------------------------------------------------------------

def _render_one(r, timings, associative, query_family):
    err = r.get("error")
    if err and associative and query_family:
        out = {"rows": [], "error": err}  # rqlite's AssociativeRows: rows never omitted
    elif err:
        out = {"error": err}
    elif "columns" in r:
        if associative:
            cols = r.get("columns") or ()
            types = r.get("types") or ()
            out = {}
            if cols:
                out["types"] = dict(zip(cols, types))
            out["rows"] = [dict(zip(cols, row)) for row in (r.get("values") or ())]
        else:
            out = {}
            cols = r.get("columns")
            if cols:
                out["columns"] = cols
            types = r.get("types")
            if types:
                out["types"] = types
            vals = r.get("values")
            if vals:
                out["values"] = vals
    else:
        out = {}
        lid = r.get("last_insert_id")
        if lid:
            out["last_insert_id"] = lid
        ra = r.get("rows_affected")
        if ra:
            out["rows_affected"] = ra
        if associative:
            out["rows"] = None
    if timings:
        t = r.get("time")
        if t:
            out["time"] = t
    return out


def render_results(results, *, timings=False, associative=False, query_family=False):
    if type(results) is InsertRun:
        if not (timings or associative):
            first = results.proven_run()
            if first is not None:
                # 1000 inserts with consecutive rowids: written in one compiled loop
                return RawJSON(render_rowid_run(first, results.total()))
        results.materialize()
    if timings or associative:
        return [_render_one(r, timings, associative, query_family) for r in results]
    # The common case, kept tight for 1000-statement batches.
    out = []
    append = out.append
    for r in results:
        if "columns" in r or r.get("error"):
            append(_render_one(r, False, False, query_family))
            continue
        lid = r.get("last_insert_id")
        ra = r.get("rows_affected")
        if lid and ra:
            append({"last_insert_id": lid, "rows_affected": ra})
        elif lid:
            append({"last_insert_id": lid})
        elif ra:
            append({"rows_affected": ra})
        else:
            append({})
    return out


def rqlite_body(result, p, *, started=None, query_family=False, now=None):
    """The top-level rqlite response: results, error, time, sequence_number, raft_index
    (in rqlite's order, each omitted when empty)."""
    out = {"results": render_results(result.get("results") or (), timings=p.timings,
                                     associative=p.associative, query_family=query_family)}
    if result.get("error"):
        out["error"] = result["error"]
    if "vacuumed" in result:    # a sharded VACUUM: the groups it compacted (one per request)
        out["vacuumed"] = result["vacuumed"]
    if p.timings and started is not None and now is not None:
        out["time"] = now - started
    if p.raft_index and result.get("raft_index"):
        out["raft_index"] = result["raft_index"]
    return out


def queued_body(seq, p, *, started=None, now=None):
    out = {"results": [], "sequence_number": seq}
    if p.timings and started is not None and now is not None:
        # rqlite puts time before sequence_number; keep its key order.
        out = {"results": [], "time": now - started, "sequence_number": seq}
    return out


# ---- the seed's shapes ----------------------------------------------------------------

def seed_execute_body(result):
    """``{"last_insert_id": N, "rows_affected": M}``, both always present (the seed's
    implementation always writes both)."""
    return {"last_insert_id": result.get("last_insert_id") or 0,
            "rows_affected": result.get("rows_affected") or 0}


def seed_rows(result):
    """One JSON object per row, column name to value, as the seed's /query returns."""
    cols = result.get("columns") or ()
    return [dict(zip(cols, row)) for row in (result.get("values") or ())]
