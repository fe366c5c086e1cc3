"""Workloads: concurrent clients that record every operation in a :class:`History`.

Each workload owns its tables, a setup that must succeed, one client operation, a final
read after the heal, and the checks over the history and the final state.

Outcomes follow one rule: ``failed`` only when the operation certainly did not take
effect (refused before it was sent, an HTTP 4xx, a 503 whose code says nothing was
proposed, a transaction that reported a statement error and so rolled back);
``unknown`` for everything else that did not answer (timeouts, dropped connections,
other 5xx), because such a write may still commit.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import random

import aiohttp

from .checkers import (CheckResult, check_append, check_bank, check_register,
                       table_checksum)
from .history import History, Op

#: 503 codes (raftsqlite.errors) that promise nothing was proposed.
DEFINITE_CODES = frozenset({"leader_not_found", "not_leader", "proposal_dropped", "moved",
                            "stale_catalog",
                            "fenced", "bad_request", "statement_refused"})
#: Node-internal tables and triggers (``_rs_``: the rebalance change log and its
#: triggers, present only on a move's source) are not user data.
INTERNAL_TABLE_PREFIXES = ("sqlite_", "_raftsqlite", "_rs_")


class Definite(Exception):
    """The request certainly had no effect."""


class Indefinite(Exception):
    """The request may or may not have had an effect."""


class NodeClient:
    """rqlite-API calls to one member over a shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, member_id: str, addr: str,
                 timeout: float = 3.0, shard_id: str | None = None):
        self.session = session
        self.member = member_id
        self.base = f"http://{addr}"
        self.timeout = timeout
        # ``shard_id`` bypasses the router: reads go to that group (at level ``none``,
        # to this member's own copy when it belongs to the group).
        self.shard_id = shard_id

    async def _post(self, path: str, body) -> list:
        if self.shard_id:
            path += ("&" if "?" in path else "?") + f"shard_id={self.shard_id}"
        try:
            async with self.session.post(
                    self.base + path, data=json.dumps(body),
                    headers={"Content-Type": "application/json"}, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                raw = await r.read()
                status = r.status
        except aiohttp.ClientConnectorError as e:
            raise Definite(f"connect failed: {e}") from None     # nothing was sent
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as e:
            raise Indefinite(f"{type(e).__name__}: {e}") from None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"error": raw[:200].decode(errors="replace")}
        if status == 200 and isinstance(doc, dict) and "results" in doc:
            if doc.get("error"):
                raise Definite(doc["error"])
            return doc["results"]
        code = doc.get("code") if isinstance(doc, dict) else None
        msg = f"HTTP {status} {code or ''}: {doc.get('error') if isinstance(doc, dict) else doc}"
        if 300 <= status < 500 or code in DEFINITE_CODES:
            raise Definite(msg)
        raise Indefinite(msg)

    async def execute(self, statements, transaction: bool = False) -> list:
        return await self._post("/db/execute" + ("?transaction" if transaction else ""),
                                statements)

    async def query(self, statements, level: str = "linearizable") -> list:
        results = await self._post(f"/db/query?level={level}", statements)
        for res in results:
            if "error" in res:
                raise Definite(res["error"])
        return results


def rows(result: dict) -> list:
    return result.get("values") or []


async def run_op(history: History, proc: int, f: str, key, value, client: NodeClient,
                 level: str | None, action) -> Op:
    """Record one operation around ``action()``: its return value is the ok result;
    ``Definite`` makes it failed, anything else unknown. Returns the completed op."""
    op = history.invoke(proc, f, key, value, node=client.member, level=level)
    try:
        result = await action()
    except Definite as e:
        history.fail(op, e)
        return op
    except Indefinite as e:
        history.unknown(op, e)
        return op
    except asyncio.CancelledError:
        history.unknown(op, "cancelled at the end of the run")
        raise
    except Exception as e:  # noqa: BLE001 - a client bug must not look like a pass
        history.unknown(op, f"client error {type(e).__name__}: {e}")
        return op
    history.ok(op, result)
    return op


class Workload:
    name = "workload"
    tables: tuple[str, ...] = ()

    def __init__(self, history: History, rng: random.Random,
                 unsafe_read_level: str | None = None):
        self.history = history
        self.rng = rng
        # Reads issued at this level but recorded (and so checked) as linearizable: a
        # way to show the checkers catch stale reads end to end (expect a FAIL).
        self.unsafe_read_level = unsafe_read_level

    def read_level(self) -> tuple[str, str]:
        """(level sent to the node, level recorded in the history)."""
        if self.unsafe_read_level:
            return self.unsafe_read_level, "linearizable"
        level = self.rng.choice(("linearizable", "strong"))
        return level, level

    #: ``(table, shard_key, colocate_with)`` per table, in registration order, for the
    #: sharded topology (hash sharding; register and append shard by their key).
    shard_specs: tuple = ()

    async def setup(self, client: NodeClient) -> None:
        """Create the tables, then the initial rows."""
        await self.create(client)
        await self.populate(client)

    async def create(self, client: NodeClient) -> None:
        raise NotImplementedError

    async def populate(self, client: NodeClient) -> None:
        """Initial rows (in a sharded run: after the tables are registered and placed)."""

    async def op(self, proc: int, client: NodeClient) -> Op:
        """Run and record one operation; returns it completed."""
        raise NotImplementedError

    async def final(self, client: NodeClient) -> dict:
        """Read the final state (after the heal, at ``strong``)."""
        raise NotImplementedError

    def check(self, final: dict) -> list[CheckResult]:
        raise NotImplementedError

    def writes(self) -> tuple[str, ...]:
        """Operation names that write (for unavailability measurements)."""
        return ()


async def setup_with_retry(action, timeout: float = 30.0):
    """Setup statements must succeed; retry on any failure until ``timeout``.
    (Setup statements are idempotent: ``IF NOT EXISTS`` / ``INSERT OR IGNORE``.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        try:
            return await action()
        except (Definite, Indefinite) as e:
            last = e
            await asyncio.sleep(0.2)
    raise TimeoutError(f"workload setup did not succeed within {timeout}s: {last}")


def _check_results(results: list) -> list:
    for res in results:
        if "error" in res:
            raise Definite(res["error"])
    return results


# -------------------------------------------------------------------------------------
class Bank(Workload):
    """Transfers between accounts as transactions; reads of all balances."""

    name = "bank"
    tables = ("bank_accounts", "bank_transfers")

    def __init__(self, history, rng, accounts: int = 8, balance: int = 100,
                 max_amount: int = 30, **kw):
        super().__init__(history, rng, **kw)
        self.initial = {i: balance for i in range(accounts)}
        self.max_amount = max_amount
        self._ids = itertools.count(1)

    def writes(self):
        return ("transfer",)

    async def create(self, client):
        stmts = [["CREATE TABLE IF NOT EXISTS bank_accounts (id INTEGER PRIMARY KEY, "
                  "balance INTEGER NOT NULL)"],
                 ["CREATE TABLE IF NOT EXISTS bank_transfers (id TEXT PRIMARY KEY, "
                  "src INTEGER NOT NULL, dst INTEGER NOT NULL, amount INTEGER NOT NULL)"]]
        await setup_with_retry(lambda: self._exec_checked(client, stmts))

    async def populate(self, client):
        stmts = [["INSERT OR IGNORE INTO bank_accounts(id, balance) VALUES (?, ?)", k, v]
                 for k, v in self.initial.items()]
        await setup_with_retry(lambda: self._exec_checked(client, stmts))

    @staticmethod
    async def _exec_checked(client, stmts):
        return _check_results(await client.execute(stmts, transaction=True))

    async def op(self, proc, client):
        if self.rng.random() < 0.5:
            level, recorded = self.read_level()

            async def read():
                res = await client.query(["SELECT id, balance FROM bank_accounts ORDER BY id"],
                                         level)
                return {r[0]: r[1] for r in rows(res[0])}
            return await run_op(self.history, proc, "read_all", None, None, client, recorded,
                                read)
        src, dst = self.rng.sample(sorted(self.initial), 2)
        amount = self.rng.randint(1, self.max_amount)
        tid = f"t{proc}-{next(self._ids)}"
        # The transfer row is written only if the funds are there, and both balance
        # updates apply only if that row exists: one conditional, atomic transaction.
        stmts = [["INSERT INTO bank_transfers(id, src, dst, amount) SELECT ?, ?, ?, ? "
                  "WHERE (SELECT balance FROM bank_accounts WHERE id = ?) >= ?",
                  tid, src, dst, amount, src, amount],
                 ["UPDATE bank_accounts SET balance = balance - ? WHERE id = ? AND EXISTS "
                  "(SELECT 1 FROM bank_transfers WHERE id = ?)", amount, src, tid],
                 ["UPDATE bank_accounts SET balance = balance + ? WHERE id = ? AND EXISTS "
                  "(SELECT 1 FROM bank_transfers WHERE id = ?)", amount, dst, tid]]

        async def transfer():
            res = _check_results(await client.execute(stmts, transaction=True))
            return {"applied": res[0].get("rows_affected", 0) == 1}
        return await run_op(self.history, proc, "transfer", None,
                     {"id": tid, "from": src, "to": dst, "amount": amount}, client, None,
                     transfer)

    async def final(self, client):
        res = await client.query(["SELECT id, balance FROM bank_accounts ORDER BY id",
                                  "SELECT id, src, dst, amount FROM bank_transfers ORDER BY id"],
                                 "strong")
        return {"balances": {r[0]: r[1] for r in rows(res[0])},
                "transfers": [tuple(r) for r in rows(res[1])]}

    def check(self, final):
        return [check_bank(self.history, self.initial, final.get("balances"),
                           final.get("transfers"))]


# -------------------------------------------------------------------------------------
class Register(Workload):
    """Per-key read, write and compare-and-set (``UPDATE ... WHERE v = ?``).

    Keys start absent (value None). ``keys`` are in use at a time; each is retired after
    ``ops_per_key`` operations and replaced by a fresh one, so every key's history stays
    small enough for the linearizability search however long the run.
    """

    name = "register"
    tables = ("reg_registers",)

    def __init__(self, history, rng, keys: int = 8, ops_per_key: int = 250, **kw):
        super().__init__(history, rng, **kw)
        self.keys = KeyRotation(rng, keys, ops_per_key)
        self._values = itertools.count(1)      # unique values: the checker relies on it
        self.last_seen: dict = {}

    def writes(self):
        return ("write", "cas")

    shard_specs = (("reg_registers", "k", None),)

    async def create(self, client):
        stmts = [["CREATE TABLE IF NOT EXISTS reg_registers (k INTEGER PRIMARY KEY, "
                  "v INTEGER NOT NULL)"]]
        await setup_with_retry(lambda: Bank._exec_checked(client, stmts))

    @staticmethod
    async def _read(client, key, level):
        res = await client.query([["SELECT v FROM reg_registers WHERE k = ?", key]], level)
        vals = rows(res[0])
        return vals[0][0] if vals else None

    async def op(self, proc, client):
        key = self.keys.pick()
        r = self.rng.random()
        old = self.last_seen.get((proc, key))
        if r < 0.4:
            level, recorded = self.read_level()

            async def read():
                v = await self._read(client, key, level)
                self.last_seen[(proc, key)] = v
                return v
            return await run_op(self.history, proc, "read", key, None, client, recorded, read)
        if r < 0.7 or old is None:              # no CAS from an absent value
            v = next(self._values)

            async def write():
                _check_results(await client.execute(
                    [["INSERT INTO reg_registers(k, v) VALUES (?, ?) "
                      "ON CONFLICT(k) DO UPDATE SET v = excluded.v", key, v]]))
                self.last_seen[(proc, key)] = v
                return None
            return await run_op(self.history, proc, "write", key, v, client, None, write)
        new = next(self._values)

        async def cas():
            res = _check_results(await client.execute(
                [["UPDATE reg_registers SET v = ? WHERE k = ? AND v = ?", new, key, old]]))
            applied = res[0].get("rows_affected", 0) == 1
            if applied:
                self.last_seen[(proc, key)] = new
            return {"applied": applied}
        return await run_op(self.history, proc, "cas", key, [old, new], client, None, cas)

    async def final(self, client):
        res = await client.query(["SELECT k, v FROM reg_registers ORDER BY k"], "strong")
        return {"values": {r[0]: r[1] for r in rows(res[0])}}

    async def final_reads(self, client, proc: int = 10_000) -> None:
        """One linearizable read per key after the heal, into the history, so a write
        lost at the very end is caught by the linearizability check."""
        for key in self.keys.used:
            async def read(key=key):
                return await self._read(client, key, "linearizable")
            await run_op(self.history, proc, "read", key, None, client, "linearizable", read)

    def check(self, final):
        return [check_register(self.history, initial=None)]


class KeyRotation:
    """``active`` keys in use at once; a key is retired after ``ops_per_key`` picks and a
    fresh key takes its place (Jepsen's "independent keys")."""

    def __init__(self, rng: random.Random, active: int, ops_per_key: int):
        self.rng = rng
        self.active = list(range(active))
        self.next = active
        self.ops_per_key = ops_per_key
        self.count: dict = {}
        self.used: list = list(self.active)

    def pick(self):
        i = self.rng.randrange(len(self.active))
        key = self.active[i]
        self.count[key] = self.count.get(key, 0) + 1
        if self.count[key] >= self.ops_per_key:
            self.active[i] = self.next
            self.used.append(self.next)
            self.next += 1
        return key


# -------------------------------------------------------------------------------------
class Append(Workload):
    """Clients append unique values to per-key lists; readers read whole lists."""

    name = "append"
    tables = ("app_items",)

    def __init__(self, history, rng, keys: int = 4, ops_per_key: int = 300, **kw):
        super().__init__(history, rng, **kw)
        self.keys = KeyRotation(rng, keys, ops_per_key)   # bounds list length and checks
        self._n = itertools.count(1)

    def writes(self):
        return ("append",)

    shard_specs = (("app_items", "k", None),)

    async def create(self, client):
        stmts = [["CREATE TABLE IF NOT EXISTS app_items (id INTEGER PRIMARY KEY, "
                  "k INTEGER NOT NULL, v TEXT NOT NULL)"]]
        await setup_with_retry(lambda: Bank._exec_checked(client, stmts))

    async def op(self, proc, client):
        key = self.keys.pick()
        if self.rng.random() < 0.5:
            value = f"{proc}:{next(self._n)}"

            async def append():
                _check_results(await client.execute(
                    [["INSERT INTO app_items(k, v) VALUES (?, ?)", key, value]]))
                return None
            return await run_op(self.history, proc, "append", key, value, client, None, append)
        else:
            level, recorded = self.read_level()

            async def read():
                res = await client.query(
                    [["SELECT v FROM app_items WHERE k = ? ORDER BY id", key]], level)
                return [r[0] for r in rows(res[0])]
            return await run_op(self.history, proc, "read", key, None, client, recorded, read)

    async def final(self, client):
        res = await client.query(["SELECT k, v FROM app_items ORDER BY id"], "strong")
        lists: dict = {k: [] for k in self.keys.used}
        for k, v in rows(res[0]):
            lists.setdefault(k, []).append(v)
        return {"lists": lists}

    def check(self, final):
        return [check_append(self.history, final.get("lists", {}))]


# -------------------------------------------------------------------------------------
class BranchBank(Bank):
    """The bank for a sharded cluster: accounts belong to branches, both tables are
    sharded by ``branch`` (transfers colocated with accounts), and a transfer moves money
    between two accounts of one branch. The router refuses a transaction spanning
    shards, and INSERT ... SELECT and subqueries on sharded tables, so the transfer is
    three key-bound statements in one transaction, and ``CHECK (balance >= 0)`` refuses
    an overdraft (the statement error rolls the whole transaction back: ``failed``).
    Invariants: each branch's total never changes (reads of one branch, key-bound) and
    so the grand total (scatter reads of every account) never changes either."""

    name = "bank"
    shard_specs = (("bank_accounts", "branch", None),
                   ("bank_transfers", "branch", "bank_accounts"))

    def __init__(self, history, rng, branches: int = 8, per_branch: int = 3,
                 balance: int = 100, max_amount: int = 30, **kw):
        super().__init__(history, rng, accounts=branches * per_branch, balance=balance,
                         max_amount=max_amount, **kw)
        self.branch = {a: a // per_branch for a in self.initial}
        self.branches = {b: [a for a in self.initial if self.branch[a] == b]
                         for b in range(branches)}

    async def create(self, client):
        stmts = [["CREATE TABLE IF NOT EXISTS bank_accounts (id INTEGER PRIMARY KEY, "
                  "branch INTEGER NOT NULL, balance INTEGER NOT NULL CHECK (balance >= 0))"],
                 ["CREATE TABLE IF NOT EXISTS bank_transfers (id TEXT PRIMARY KEY, "
                  "branch INTEGER NOT NULL, src INTEGER NOT NULL, dst INTEGER NOT NULL, "
                  "amount INTEGER NOT NULL)"]]
        await setup_with_retry(lambda: self._exec_checked(client, stmts))

    async def populate(self, client):
        # One key-bound INSERT OR IGNORE per account: idempotent, and each routes to
        # the account's shard (a multi-row INSERT would be split per shard anyway).
        for b, accts in self.branches.items():
            stmts = [["INSERT OR IGNORE INTO bank_accounts(id, branch, balance) "
                      "VALUES (?, ?, ?)", a, b, self.initial[a]] for a in accts]
            await setup_with_retry(lambda stmts=stmts: self._exec_checked(client, stmts))

    async def op(self, proc, client):
        r = self.rng.random()
        if r < 0.5:
            level, recorded = self.read_level()
            if r < 0.4:
                b = self.rng.choice(sorted(self.branches))

                async def read():
                    res = await client.query([["SELECT id, balance FROM bank_accounts "
                                               "WHERE branch = ? ORDER BY id", b]], level)
                    return {row[0]: row[1] for row in rows(res[0])}
                return await run_op(self.history, proc, "read_all", b, None, client,
                                    recorded, read)

            async def read_every():         # scatter over both shards, merged by id
                res = await client.query(["SELECT id, balance FROM bank_accounts ORDER BY id"],
                                         level)
                return {row[0]: row[1] for row in rows(res[0])}
            return await run_op(self.history, proc, "read_all", None, None, client, recorded,
                                read_every)
        b = self.rng.choice(sorted(self.branches))
        src, dst = self.rng.sample(self.branches[b], 2)
        amount = self.rng.randint(1, self.max_amount)
        tid = f"t{proc}-{next(self._ids)}"
        stmts = [["INSERT INTO bank_transfers(id, branch, src, dst, amount) "
                  "VALUES (?, ?, ?, ?, ?)", tid, b, src, dst, amount],
                 ["UPDATE bank_accounts SET balance = balance - ? WHERE branch = ? AND id = ?",
                  amount, b, src],
                 ["UPDATE bank_accounts SET balance = balance + ? WHERE branch = ? AND id = ?",
                  amount, b, dst]]

        async def transfer():
            # A statement error (the CHECK) rolled everything back: failed. Success
            # means all three applied; the final-state check proves it.
            _check_results(await client.execute(stmts, transaction=True))
            return {"applied": True}
        return await run_op(self.history, proc, "transfer", b,
                            {"id": tid, "from": src, "to": dst, "amount": amount}, client,
                            None, transfer)

    def check(self, final):
        return [check_bank(self.history, self.initial, final.get("balances"),
                           final.get("transfers"), groups=self.branches)]


WORKLOADS = {"bank": Bank, "register": Register, "append": Append}
#: The same workloads in a sharded cluster (bank shards by branch; see BranchBank).
SHARDED_WORKLOADS = {"bank": BranchBank, "register": Register, "append": Append}


# -------------------------------------------------------------------------------------
async def member_checksums(client: NodeClient, tables=None) -> dict | None:
    """Digest of every user table (and the schema) on one member, read locally
    (level ``none``): what convergence compares. None if the member cannot be read."""
    try:
        res = await client.query(["SELECT type, name, tbl_name, sql FROM sqlite_master "
                                  "ORDER BY type, name"], "none")
        schema = [r for r in rows(res[0])
                  if not str(r[1]).startswith(INTERNAL_TABLE_PREFIXES)]
        names = [r[1] for r in schema if r[0] == "table"]
        if tables is not None:
            names = [n for n in names if n in tables]
        out = {"<schema>": table_checksum(["type", "name", "tbl_name", "sql"], schema)}
        if names:
            q = [f'SELECT * FROM "{n}" ORDER BY rowid' for n in names]
            res = await client.query(q, "none")
            for n, r in zip(names, res):
                out[n] = table_checksum(r.get("columns") or [], rows(r))
        return out
    except (Definite, Indefinite):
        return None
