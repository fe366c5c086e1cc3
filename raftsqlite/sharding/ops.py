"""The seed's ``/table/*`` request bodies -> validated catalog ops (no HTTP here).

Each function takes the decoded JSON body and returns ``(op_name, args_bytes)`` ready to
be proposed as a SYSTEM command in the default group, or raises ``BadRequest`` with a
message naming the field. The handler proposes the op and renders what ``Catalog.apply``
returned.
"""
import orjson

from raftsqlite.errors import BadRequest
from raftsqlite.sharding import keyspace as ks
from raftsqlite.sharding.catalog import OP_PREFIX


def _field(body, name, required=True):
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    v = body.get(name)
    if v is None:
        if required:
            raise BadRequest(f"missing field {name!r}")
        return None
    if not isinstance(v, str) or not v.strip():
        raise BadRequest(f"field {name!r} must be a non-empty string")
    return v.strip()


def _op(name, **args):
    return OP_PREFIX + name, orjson.dumps({k: v for k, v in args.items() if v is not None})


def register(body, key_decl_type=None, create_sql=None, columns=None):
    """``POST /table/register {"table_name","shard_key","shard_func"[,"colocate_with"]}``.
    The handler passes what it read from the default group's schema (the key column's
    declared type, the CREATE statement, the column names) when the table exists."""
    func = _field(body, "shard_func", required=False) or "hash"
    if func not in ks.SHARD_FUNCS:
        raise BadRequest(f"shard_func must be one of {', '.join(ks.SHARD_FUNCS)}, got {func!r}")
    return _op("register_table", table=_field(body, "table_name").lower(),
               shard_key=_field(body, "shard_key"), shard_func=func,
               colocate_with=_field(body, "colocate_with", required=False),
               key_affinity=ks.affinity_from_decl(key_decl_type) if key_decl_type is not None else None,
               create_sql=create_sql, columns=list(columns) if columns else None)


def add_to_shard(body):
    """``POST /table/add-to-shard {"table_name","shard_id"}``."""
    return _op("add_to_shard", table=_field(body, "table_name").lower(), shard=_field(body, "shard_id"))


def remove(body):
    """``POST /table/remove {"table_name"[,"drop_rows"]}``: the unregister op (``remove.py``
    runs it only when no shard holds rows, or with ``drop_rows``)."""
    return _op("unregister_table", table=_field(body, "table_name").lower())


def remove_from_shard(body):
    """``POST /table/remove-from-shard {"table_name","shard_id"}`` (#7): leave the
    placement; the next rebalance drains the shard's ranges."""
    return _op("drain_shard", table=_field(body, "table_name").lower(), shard=_field(body, "shard_id"))


def rebalance_plan(body, catalog, row_estimates=None):
    """``POST /table/rebalance {"table_name"[,"dry_run"]}``: the plan (pure). The ops
    that apply it are ``assign_ops(plan)`` (instant, for ranges whose source holds no
    rows) or #7's move workflow."""
    plan = catalog.plan_rebalance(_field(body, "table_name").lower(), row_estimates)
    plan["dry_run"] = bool(body.get("dry_run"))
    return plan


def assign_ops(plan):
    """The ``catalog.assign`` ops that switch every move of ``plan`` at once: only for
    moves whose source holds no rows of the table. The first op is a compare-and-set on
    the plan's epoch, so a plan computed from an outdated catalog is not applied; each
    op bumps the epoch, so the later ones cannot carry it."""
    out = []
    for i, m in enumerate(plan["moves"]):
        out.append(_op("assign", table=plan["table"], start=m["start"], end=m["end"],
                       owner=m["target"], expect_epoch=plan["epoch"] if i == 0 else None))
    return out
