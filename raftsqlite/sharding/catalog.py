"""The catalog: a deterministic state machine replicated in the default group.

It holds groups and members, sharded tables, colocation groups with their key ranges and
owners, fences, and rebalance move records. Every change is a SYSTEM op
``("catalog.<name>", orjson args)`` applied by ``Catalog.apply`` inside the FSM's apply
transaction, so every replica computes the same catalog from the same log. ``apply``
either applies an op completely or raises a ``RaftSQLiteError`` and changes nothing.

Why colocation groups own the ranges (not tables): tables that share a shard key and a
colocation group must keep equal keys on one shard forever (that is what lets joins on the
key run inside one shard), so they share one range map and move together. A table
registered alone is its own colocation group, named after it.

Epochs: ``epoch`` is bumped on every ownership change anywhere; each colocation group
remembers the epoch of its own last ownership change. Shards and routers compare the
colocation epoch, so a move in one table does not make writes to another look stale.
Nothing here reads a clock or a random source: time, when a record needs one, comes in the
op's arguments, chosen once by the proposer.
"""
import orjson

from raftsqlite.errors import BadRequest, Conflict, CoordinatorFenced, NotFound, RaftSQLiteError
from raftsqlite.sharding import keyspace as ks

DEFAULT_GROUP = "default"
OP_PREFIX = "catalog."
CATALOG_FORMAT = 1

# A move's phases in order (#7). Any phase before "fenced" may go to "cancelled";
# "switched" happens only through move_switch, which changes ownership atomically.
MOVE_PHASES = ("planned", "copying", "catching_up", "verifying", "fenced", "switched",
               "cleaning", "done")
MOVE_END = ("done", "cancelled", "failed")


def _name(v, what):
    if not isinstance(v, str) or not v or len(v) > 128:
        raise BadRequest(f"{what} must be a non-empty string (at most 128 characters)")
    return v


class Catalog:
    def __init__(self):
        self.epoch = 0       # bumped on every ownership change
        self.version = 0     # bumped on every change (routers compare it to refresh)
        self.schema_version = 0  # bumped when table registrations change (plan cache key)
        self.groups = {DEFAULT_GROUP: {"members": {}}}
        self.tables = {}
        self.colocations = {}
        self.moves = {}
        self.next_move = 1
        self.claims = 0      # the newest fencing token given to any move's coordinator

    # ---- serialisation ----------------------------------------------------------------
    def to_dict(self):
        # orjson stops at 2**64-1, so the keyspace end (2**64) is written as null.
        cols = {n: dict(c, fences=[[s, ks.end_to_json(e)] for s, e in c["fences"]])
                for n, c in self.colocations.items()}
        moves = {i: dict(m, end=ks.end_to_json(m["end"])) for i, m in self.moves.items()}
        return {"format": CATALOG_FORMAT, "epoch": self.epoch, "version": self.version,
                "schema_version": self.schema_version, "groups": self.groups,
                "tables": self.tables, "colocations": cols,
                "moves": moves, "next_move": self.next_move, "claims": self.claims}

    def to_bytes(self):
        # Ranges hold u64 starts; orjson serialises ints up to 2**64-1, which is enough
        # because the exclusive end 2**64 is never stored (ranges are starts only).
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_dict(cls, d):
        if d.get("format") != CATALOG_FORMAT:
            raise BadRequest(f"unknown catalog format {d.get('format')!r}")
        c = cls()
        c.epoch = d["epoch"]
        c.version = d["version"]
        c.schema_version = d["schema_version"]
        c.groups = d["groups"]
        c.tables = d["tables"]
        c.colocations = {n: dict(x, fences=[[s, ks.end_from_json(e)] for s, e in x["fences"]])
                         for n, x in d["colocations"].items()}
        c.moves = {i: dict(m, end=ks.end_from_json(m["end"])) for i, m in d["moves"].items()}
        c.next_move = d["next_move"]
        # (catalogs from before the one counter held a counter per move)
        c.claims = d.get("claims", max((m.get("token", 0) for m in c.moves.values()), default=0))
        return c

    @classmethod
    def from_bytes(cls, b):
        if not b:
            return cls()
        return cls.from_dict(orjson.loads(b))

    def copy(self):
        return Catalog.from_bytes(self.to_bytes())

    # ---- applying ops -----------------------------------------------------------------
    def apply(self, op, args=None):
        """Apply one SYSTEM op. ``op`` may carry the ``catalog.`` prefix; ``args`` is
        bytes (orjson) or a dict. Returns a JSON-able result; raises on a bad op, in which
        case the catalog is unchanged."""
        name = op[len(OP_PREFIX):] if op.startswith(OP_PREFIX) else op
        fn = getattr(self, "_op_" + name, None)
        if fn is None:
            raise BadRequest(f"unknown catalog op {op!r}")
        if isinstance(args, (bytes, bytearray, memoryview)):
            try:
                args = orjson.loads(args) if len(args) else {}
            except orjson.JSONDecodeError as e:
                raise BadRequest(f"catalog op {op}: arguments are not JSON: {e}") from None
        args = args or {}
        if not isinstance(args, dict):
            raise BadRequest(f"catalog op {op}: arguments must be a JSON object")
        before = self.to_bytes()
        try:
            result = fn(args)
        except RaftSQLiteError:
            self.__dict__.update(Catalog.from_bytes(before).__dict__)
            raise
        except (KeyError, TypeError, ValueError) as e:
            self.__dict__.update(Catalog.from_bytes(before).__dict__)
            raise BadRequest(f"catalog op {op}: bad arguments ({type(e).__name__}: {e})") from None
        self.version += 1
        return result if result is not None else {}

    @staticmethod
    def encode_op(name, **args):
        """``(op name, args bytes)`` for a SYSTEM command."""
        return OP_PREFIX + name, orjson.dumps(args)

    # groups ---------------------------------------------------------------------------
    def _op_add_group(self, a):
        g = _name(a["group"], "group")
        grp = self.groups.setdefault(g, {"members": {}})
        for m in a.get("members", ()):
            self._set_member(g, m)
        return {"group": g, "members": sorted(grp["members"])}

    def _op_claim_group(self, a):
        """The first node of a new group claims it before bootstrapping: it wins when the
        group has no member but itself; otherwise the group exists (another node claimed
        it first, perhaps a moment ago) and the caller must join its members. The log
        orders concurrent claims, so exactly one of two nodes started at once wins."""
        g = _name(a["group"], "group")
        if g == DEFAULT_GROUP:
            raise BadRequest("the default group is not claimed; it is bootstrapped by its "
                             "first node")
        m = a["member"]
        nid = _name(m["node_id"], "node_id")
        grp = self.groups.setdefault(g, {"members": {}})
        others = {n: dict(v) for n, v in grp["members"].items() if n != nid}
        if not others:
            self._set_member(g, m)
        return {"group": g, "won": not others, "members": others}

    def _op_remove_group(self, a):
        g = self._group(a["group"])
        if g == DEFAULT_GROUP:
            raise BadRequest("the default group cannot be removed")
        for cname, col in self.colocations.items():
            if g in col["shards"] or g in col["owners"]:
                raise BadRequest(f"group {g} still holds colocation group {cname}; "
                                 "remove it from its tables first")
        del self.groups[g]

    def _set_member(self, g, m):
        nid = _name(m["node_id"], "node_id")
        self.groups[g]["members"][nid] = {"raft_addr": str(m.get("raft_addr", "")),
                                          "http_addr": str(m.get("http_addr", "")),
                                          "voter": bool(m.get("voter", True))}

    def _op_set_member(self, a):
        g = self._group(a["group"])
        self._set_member(g, a)

    def _op_remove_member(self, a):
        g = self._group(a["group"])
        self.groups[g]["members"].pop(a["node_id"], None)

    def _op_sync_members(self, a):
        """A group's leader reports its Raft configuration (``members``, as of log index
        ``conf_index`` of that group, reported in the leader's ``term``): the member list
        becomes exactly it, so removed, reaped and departed members stop being listed
        (routers and GET /shards use it). A report older than the last one applied, by
        (term, conf_index), is ignored: a deposed leader's, arriving late, has a lower term;
        a settled leader (it committed an entry of its term) holds every committed
        configuration, so a higher term never reports an older one. The term also orders
        a group rebuilt by ``raft-sqlite recover``, whose configuration may sit at a lower
        index than the lost leader's but always in a higher term."""
        g = self._group(a["group"])
        idx, term = int(a["conf_index"]), int(a.get("term", 0))
        grp = self.groups[g]
        if (term, idx) < (grp.get("conf_term", 0), grp.get("conf_index", 0)):
            return {"group": g, "stale": True}
        ms = a["members"]
        if not ms:
            raise BadRequest("a group's configuration has at least one member")
        grp["members"] = {}
        for m in ms:
            self._set_member(g, m)
        grp["conf_index"] = idx
        grp["conf_term"] = term
        return {"group": g, "members": sorted(grp["members"])}

    # tables ---------------------------------------------------------------------------
    def _op_register_table(self, a):
        t = _name(a["table"], "table_name").lower()
        key = _name(a["shard_key"], "shard_key")
        func = a.get("shard_func", "hash")
        if func not in ks.SHARD_FUNCS:
            raise BadRequest(f"shard_func must be one of {', '.join(ks.SHARD_FUNCS)}, got {func!r}")
        if t in self.tables:
            old = self.tables[t]
            if old["shard_key"] == key and old["shard_func"] == func:
                return {"table": t, "colocation": old["colocation"], "already": True}
            raise BadRequest(f"table {t} is already registered with shard key "
                             f"{old['shard_key']} ({old['shard_func']}); remove it first")
        aff = a.get("key_affinity")
        if aff not in (None, "integer", "text", "blob", "real", "numeric"):
            raise BadRequest(f"key_affinity {aff!r} is not a SQLite affinity")
        colo = a.get("colocate_with")
        if colo:
            colo = colo.lower()
            if colo not in self.tables:
                raise NotFound(f"colocate_with: table {colo} is not registered")
            cname = self.tables[colo]["colocation"]
            col = self.colocations[cname]
            if col["shard_func"] != func:
                raise BadRequest(f"cannot colocate {t} ({func}) with {colo} ({col['shard_func']}): "
                                 "colocated tables need the same shard function")
            if self.tables[colo].get("key_affinity") != aff:
                raise BadRequest(f"cannot colocate {t} with {colo}: their shard keys have "
                                 "different types, so equal keys could hash differently")
        else:
            cname = t
            if cname in self.colocations:
                raise BadRequest(f"colocation group {cname} exists already")
            self.colocations[cname] = {"shard_func": func, "shards": [], "starts": [],
                                       "owners": [], "epoch": self.epoch, "fences": [],
                                       "shard_epochs": {}}
        cols = a.get("columns")
        self.tables[t] = {"shard_key": key, "shard_func": func, "colocation": cname,
                          "key_affinity": aff,
                          "columns": [str(c) for c in cols] if cols else None,
                          "create_sql": a.get("create_sql")}
        self.schema_version += 1
        return {"table": t, "colocation": cname}

    def _op_set_table_schema(self, a):
        """Record what the router learns about a table after registration (its CREATE
        statement, column list, key affinity), e.g. after a routed CREATE TABLE."""
        t = self._table(a["table"])
        rec = self.tables[t]
        if "key_affinity" in a:
            if a["key_affinity"] not in (None, "integer", "text", "blob", "real", "numeric"):
                raise BadRequest(f"key_affinity {a['key_affinity']!r} is not a SQLite affinity")
            if a["key_affinity"] != rec["key_affinity"] and self.colocations[rec["colocation"]]["starts"]:
                raise BadRequest(f"table {t} is on shards already; changing how its keys hash "
                                 "would strand its rows. Set key_affinity when registering")
            rec["key_affinity"] = a["key_affinity"]
        if "columns" in a:
            rec["columns"] = [str(c) for c in a["columns"]] if a["columns"] else None
        if "create_sql" in a:
            rec["create_sql"] = a["create_sql"]
        self.schema_version += 1

    def _moving(self, cname):
        return sorted(m["id"] for m in self.moves.values()
                      if m["colocation"] == cname and m["phase"] not in MOVE_END)

    def _op_remove_begin(self, a):
        """``POST /table/remove`` marks the colocation before it fences it: no move may
        start until ``remove_end`` (a move's fence would merge into the removal's whole-
        keyspace fence, and lifting ours would lift it). Refused while a move runs."""
        t = self._table(a["table"])
        col = self._col_of(t)
        moving = self._moving(self.tables[t]["colocation"])
        if moving:
            raise Conflict(f"table {t} has a rebalance move in progress ({', '.join(moving)})")
        other = (col.get("removing") or {}).get("table")
        if other not in (None, t):
            raise Conflict(f"table {other}, colocated with {t}, is being removed; remove {t} "
                           f"after that (if that removal's node failed, repeat POST "
                           f"/table/remove for {other}: it clears the mark)")
        col["removing"] = {"table": t, "since": a.get("now")}

    def _op_remove_end(self, a):
        cname = a.get("colocation") or self.tables[self._table(a["table"])]["colocation"]
        col = self.colocations.get(cname)
        if col is not None:
            col.pop("removing", None)

    def _op_unregister_table(self, a):
        t = self._table(a["table"])
        cname = self.tables[t]["colocation"]
        moving = self._moving(cname)
        if moving:
            raise Conflict(f"table {t} has a rebalance move in progress ({', '.join(moving)}); "
                           "wait for it or cancel it first")
        del self.tables[t]
        self.colocations[cname].pop("removing", None)
        if not any(x["colocation"] == cname for x in self.tables.values()):
            del self.colocations[cname]
            self.epoch += 1
        self.schema_version += 1

    def _op_add_to_shard(self, a):
        t = self._table(a["table"])
        g = self._group(a.get("shard") or a["shard_id"])
        if g == DEFAULT_GROUP:
            raise BadRequest("sharded tables live on shard groups, not on the default group")
        col = self.colocations[self.tables[t]["colocation"]]
        if g in col["shards"]:
            return {"table": t, "shard": g, "already": True, "ranges_assigned": False}
        col["shards"].append(g)
        assigned = False
        if not col["starts"]:
            # The first shard of a table takes the whole keyspace: there is nothing to move.
            self._reown(col, [0], [g])
            assigned = True
        return {"table": t, "shard": g, "ranges_assigned": assigned, "epoch": col["epoch"]}

    def _op_remove_from_shard(self, a):
        t = self._table(a["table"])
        g = a.get("shard") or a["shard_id"]
        col = self.colocations[self.tables[t]["colocation"]]
        if g in col["owners"]:
            raise BadRequest(f"shard {g} still owns ranges of {t}; move them away first "
                             "(rebalance after removing it from the placement)")
        if g in col["shards"]:
            col["shards"].remove(g)

    def _op_drain_shard(self, a):
        """Take ``shard`` out of the placement but keep its ranges until moves drain
        them (#7 remove-from-shard): rebalance then moves everything it owns."""
        t = self._table(a["table"])
        g = a.get("shard") or a["shard_id"]
        col = self.colocations[self.tables[t]["colocation"]]
        if g not in col["shards"]:
            raise NotFound(f"shard {g} does not hold {t}")
        if len(col["shards"]) == 1:
            raise BadRequest(f"shard {g} is the only shard of {t}; add another first")
        col["shards"].remove(g)

    # ranges ---------------------------------------------------------------------------
    def _op_split(self, a):
        col = self._col_of(a["table"])
        if not col["starts"]:
            raise BadRequest("the table has no ranges yet; add it to a shard first")
        col["starts"], col["owners"] = ks.split(col["starts"], col["owners"], int(a["at"]))

    def _op_merge(self, a):
        col = self._col_of(a["table"])
        if col["starts"]:
            col["starts"], col["owners"] = ks.merge_adjacent(col["starts"], col["owners"])

    def _op_assign(self, a):
        """Give ``[start, end)`` to ``owner``: the ownership switch itself. ``expect_epoch``
        makes it a compare-and-set, so a stale coordinator cannot switch twice."""
        cname = self.tables[self._table(a["table"])]["colocation"]
        col = self.colocations[cname]
        self._expect(col, a)
        if col.get("removing"):
            raise Conflict(f"table {col['removing']['table']} (colocation {cname}) is being "
                           "removed (POST /table/remove); rebalance after that ends")
        owner = self._group(a["owner"])
        if owner not in col["shards"]:
            raise BadRequest(f"group {owner} is not a shard of this table; add it first")
        if not col["starts"]:
            raise BadRequest("the table has no ranges yet; add it to a shard first")
        start, end = int(a["start"]), int(ks.end_from_json(a.get("end")))
        self._reown(col, *ks.assign(col["starts"], col["owners"], start, end, owner))
        return {"epoch": col["epoch"]}

    def _op_fence(self, a):
        self._coordinator_token(a)
        col = self._col_of(a["table"])
        span = (int(a["start"]), int(ks.end_from_json(a.get("end"))))
        col["fences"] = [list(x) for x in ks.normalise_spans([tuple(f) for f in col["fences"]] + [span])]

    def _op_unfence(self, a):
        self._coordinator_token(a)
        col = self._col_of(a["table"])
        s, e = int(a["start"]), int(ks.end_from_json(a.get("end")))
        col["fences"] = [f for f in col["fences"] if not (f[0] >= s and f[1] <= e)]

    # moves (#7) -----------------------------------------------------------------------
    def _op_move_create(self, a):
        t = self._table(a["table"])
        cname = self.tables[t]["colocation"]
        col = self.colocations[cname]
        start, end = int(a["start"]), int(ks.end_from_json(a.get("end")))
        target = self._group(a["target"])
        if col.get("removing"):
            r = col["removing"]
            raise Conflict(f"table {r['table']} (colocation {cname}) is being removed "
                           "(POST /table/remove); no move starts until that ends. If no "
                           "removal is running (its node failed), repeat POST /table/remove: "
                           "it clears the mark either way")
        if target not in col["shards"]:
            raise BadRequest(f"group {target} is not a shard of {t}; add it first")
        for m in self.moves.values():
            if m["colocation"] == cname and m["phase"] not in MOVE_END and \
                    m["start"] < end and start < m["end"]:
                raise BadRequest(f"range overlaps move {m['id']} in progress")
        sources = {col["owners"][i] for i in range(len(col["starts"]))
                   if ks.range_of(col["starts"], i)[0] < end and start < ks.range_of(col["starts"], i)[1]}
        if len(sources) != 1:
            raise BadRequest("a move takes a range owned by exactly one shard; split it first")
        source = sources.pop()
        if source == target:
            raise BadRequest(f"range is already owned by {target}")
        mid = a.get("move_id") or f"m{self.next_move}"
        if mid in self.moves:
            return dict(self.moves[mid], already=True)
        self.next_move += 1
        self.moves[mid] = {"id": mid, "table": t, "colocation": cname, "start": start,
                           "end": end, "source": source, "target": target,
                           "phase": "planned", "epoch": col["epoch"], "rows_copied": 0,
                           "rows_total": a.get("rows_total"), "error": None,
                           "updated": a.get("now"), "resume": None}
        return self.moves[mid]

    def _op_move_claim(self, a):
        """A coordinator takes a move over (it starts or resumes it): the move's fencing
        token becomes the next of one counter over all moves and is this coordinator's.
        Its catalog ops and its requests to the shards carry it; anything carrying an
        older one (a deposed coordinator's request still in flight) is refused
        (rebalance.md "Fencing tokens"). One counter, so a shard can forget an ended
        move and still refuse its coordinators (``own.release``: tokens up to the
        newest ended one are refused for moves it holds no entry for). ``expect_token``:
        claim again only if nobody claimed the move since that token (a coordinator
        whose claim a shard refused as older than an ended move's)."""
        m = self._move(a["move_id"])
        if a.get("expect_token") is not None and int(a["expect_token"]) != m.get("token", 0):
            raise CoordinatorFenced(
                f"move {m['id']}: claimed again since token {a['expect_token']} (now "
                f"{m.get('token', 0)}): a newer coordinator took the move over")
        self.claims = max(self.claims, m.get("token", 0)) + 1
        m["token"] = self.claims
        return m

    def _coordinator_token(self, a):
        """Refuse an op carrying an older token than the move's (ops without one, e.g. an
        operator's cancel, are not a coordinator's and pass)."""
        if a.get("token") is None:
            return
        m = self._move(a["move_id"])
        if int(a["token"]) < m.get("token", 0):
            raise CoordinatorFenced(
                f"move {m['id']}: coordinator token {a['token']} is older than the move's "
                f"token {m.get('token', 0)}: a newer coordinator took the move over")

    def _op_move_update(self, a):
        self._coordinator_token(a)
        m = self._move(a["move_id"])
        phase = a.get("phase", m["phase"])
        if phase != m["phase"]:
            if m["phase"] in MOVE_END:
                raise BadRequest(f"move {m['id']} already ended ({m['phase']})")
            if phase == "cancelled":
                if MOVE_PHASES.index(m["phase"]) >= MOVE_PHASES.index("switched"):
                    raise BadRequest(f"move {m['id']} is past its switch; it can only finish")
            elif phase == "failed":
                pass
            elif phase == "switched":
                raise BadRequest("use move_switch to switch ownership")
            elif phase not in MOVE_PHASES or MOVE_PHASES.index(phase) < MOVE_PHASES.index(m["phase"]):
                raise BadRequest(f"move {m['id']}: cannot go from {m['phase']} to {phase!r}")
            m["phase"] = phase
        for k in ("rows_copied", "rows_total", "error", "updated", "resume", "checksum", "cleaned"):
            if k in a:
                m[k] = a[k]
        return m

    def _op_move_switch(self, a):
        self._coordinator_token(a)
        m = self._move(a["move_id"])
        if m["phase"] == "switched" or m["phase"] in ("cleaning", "done"):
            return dict(m, already=True)
        if m["phase"] != "fenced":
            raise BadRequest(f"move {m['id']} must be fenced before its switch (is {m['phase']})")
        col = self.colocations[m["colocation"]]
        self._reown(col, *ks.assign(col["starts"], col["owners"], m["start"], m["end"], m["target"]))
        col["fences"] = [f for f in col["fences"] if not (f[0] >= m["start"] and f[1] <= m["end"])]
        m["phase"] = "switched"
        m["epoch"] = col["epoch"]
        return m

    # ---- helpers ----------------------------------------------------------------------
    def _reown(self, col, starts, owners):
        """Set new ranges; bump the epoch, and record it for each shard whose owned spans
        changed. Shards check scatter writes against their own epoch, so a move between
        two shards never makes a third one reject writes."""
        before = {g: ks.owned_spans(col["starts"], col["owners"], g) for g in set(col["owners"])}
        col["starts"], col["owners"] = starts, owners
        after = {g: ks.owned_spans(starts, owners, g) for g in set(owners)}
        changed = [g for g in set(before) | set(after) if before.get(g) != after.get(g)]
        if not changed:
            return
        self.epoch += 1
        col["epoch"] = self.epoch
        for g in changed:
            col["shard_epochs"][g] = self.epoch

    def shard_epoch(self, col, group):
        return col["shard_epochs"].get(group, 0)

    def _expect(self, col, a):
        if a.get("expect_epoch") is not None and a["expect_epoch"] != col["epoch"]:
            raise BadRequest(f"epoch changed (expected {a['expect_epoch']}, is {col['epoch']}); "
                             "re-read the catalog and retry")

    def _group(self, g):
        if g not in self.groups:
            raise NotFound(f"no group named {g!r}; start it with -shard {g}")
        return g

    def _table(self, t):
        t = str(t).lower()
        if t not in self.tables:
            raise NotFound(f"table {t} is not registered for sharding")
        return t

    def _col_of(self, t):
        return self.colocations[self.tables[self._table(t)]["colocation"]]

    def _move(self, mid):
        if mid not in self.moves:
            raise NotFound(f"no move {mid!r}")
        return self.moves[mid]

    # ---- reading ----------------------------------------------------------------------
    def table(self, name):
        return self.tables.get(name.lower())

    def colocation_of(self, name):
        t = self.tables.get(name.lower())
        return None if t is None else self.colocations[t["colocation"]]

    def owner_of(self, table, kid):
        col = self.colocation_of(table)
        if col is None or not col["starts"]:
            return None
        return col["owners"][ks.index_of(col["starts"], kid)]

    def foreign_holders(self, colocation):
        """Groups that hold rows of ``colocation`` in ranges they do not own: a move's
        target from its first copied batch until the switch (or until a cancelled move is
        cleaned up), its source from the switch until cleanup. Scatter statements on
        them are restricted to owned rows."""
        out = set()
        for m in self.moves.values():
            if m["colocation"] != colocation:
                continue
            ph = m["phase"]
            if ph in ("copying", "catching_up", "verifying", "fenced") or \
                    (ph in ("cancelled", "failed") and not m.get("cleaned")):
                out.add(m["target"])
            elif ph in ("switched", "cleaning"):
                out.add(m["source"])
        return out

    def owning_groups(self, table):
        """Groups owning part of ``table``, in a stable order."""
        col = self.colocation_of(table)
        return [] if col is None else sorted(set(col["owners"]))

    def ownership_for(self, group):
        """What ``group`` must hold about itself (the ``own.set`` args per colocation)."""
        out = {}
        for cname, col in self.colocations.items():
            spans = ks.owned_spans(col["starts"], col["owners"], group)
            if group in col["shards"] or spans:
                out[cname] = {"epoch": col["shard_epochs"].get(group, 0), "shard_func": col["shard_func"],
                              "tables": sorted(t for t, r in self.tables.items()
                                               if r["colocation"] == cname),
                              "ranges": [[s, ks.end_to_json(e)] for s, e in spans]}
        return out

    def plan_rebalance(self, table, row_estimates=None):
        """The moves that spread ``table``'s colocation group evenly over its shards.
        Pure: changes nothing. ``row_estimates`` (optional ``{owner: rows}``) only feeds
        the per-move estimate of rows to copy."""
        t = self._table(table)
        cname = self.tables[t]["colocation"]
        col = self.colocations[cname]
        if not col["starts"]:
            raise BadRequest(f"table {t} is on no shard yet; add it to a shard first")
        moves, starts, owners = ks.rebalance_moves(col["starts"], col["owners"], col["shards"])
        for mv in moves:
            mv["range"] = ks.fmt_range(mv["start"], mv["end"])
            if row_estimates and mv["source"] in row_estimates:
                share = sum(e - s for s, e in ks.owned_spans(col["starts"], col["owners"], mv["source"]))
                mv["rows_estimate"] = int(row_estimates[mv["source"]] * (mv["end"] - mv["start"]) / share)
            mv["end"] = ks.end_to_json(mv["end"])
        return {"table": t, "colocation": cname, "epoch": col["epoch"],
                "tables": sorted(x for x, r in self.tables.items() if r["colocation"] == cname),
                "shards": list(col["shards"]), "moves": moves,
                "ranges_after": [{"range": ks.fmt_range(*ks.range_of(starts, i)), "owner": o}
                                 for i, o in enumerate(owners)]}

    def describe_tables(self):
        """The ``GET /tables`` body."""
        out = []
        for t in sorted(self.tables):
            r = self.tables[t]
            col = self.colocations[r["colocation"]]
            out.append({"table_name": t, "shard_key": r["shard_key"], "shard_func": r["shard_func"],
                        "colocation": r["colocation"], "shards": list(col["shards"]),
                        "epoch": col["epoch"],
                        "ranges": [{"range": ks.fmt_range(*ks.range_of(col["starts"], i)),
                                    "start": ks.range_of(col["starts"], i)[0],
                                    "owner": o} for i, o in enumerate(col["owners"])],
                        "fenced": [ks.fmt_range(*f) for f in col["fences"]]})
            if col.get("removing"):     # a /table/remove in progress (or one that failed)
                out[-1]["removing"] = col["removing"]
        return out

    def describe_groups(self):
        """The catalog's part of ``GET /shards`` (leaders and health are live state the
        node adds): groups, members, and what each group owns."""
        out = []
        for g in sorted(self.groups):
            owns = {}
            for cname, col in self.colocations.items():
                n = sum(1 for o in col["owners"] if o == g)
                if n or g in col["shards"]:
                    owns[cname] = {"ranges": n, "epoch": col["shard_epochs"].get(g, 0)}
            out.append({"group": g, "default": g == DEFAULT_GROUP,
                        "members": [dict(node_id=n, **m) for n, m in sorted(self.groups[g]["members"].items())],
                        "colocations": owns})
        return out

    def stats(self):
        return {"epoch": self.epoch, "version": self.version, "groups": len(self.groups),
                "tables": len(self.tables), "colocations": len(self.colocations),
                "ranges": sum(len(c["starts"]) for c in self.colocations.values()),
                "moves_active": sum(1 for m in self.moves.values() if m["phase"] not in MOVE_END)}
