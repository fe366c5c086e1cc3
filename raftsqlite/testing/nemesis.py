"""Nemesis schedules, the run that ties cluster, workloads and checkers together, and
the long-run CLI::

    python -m raftsqlite.testing.nemesis --workload bank|register|append|all \\
        --duration 300 --seed 7 [--members 3] [--clients 6] [--out DIR] \\
        [--faults all|kill,partition,...]

A run: start a cluster (every Raft and peer-HTTP connection through the fault proxy),
set the workloads up, run concurrent clients against random members while the nemesis
injects a fault every few seconds and heals it, then heal everything, read the final
state, wait for every member to converge, and check. The summary's last line is one JSON
object with ``acked_ops``, ``faults``, ``lost_acked_writes``, ``violations`` and
``max_unavailable_s``. Everything (histories, schedule, summary, member logs) is written to
the output folder, whose path is printed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from raftsqlite import errors

from .checkers import CheckResult, check_convergence, summarize
from .cluster import LocalCluster, NodeCannotStart
from .history import History
from .sharded import ShardedCluster, ShardedNemesis
from .workloads import (SHARDED_WORKLOADS, WORKLOADS, NodeClient, member_checksums,
                        setup_with_retry)

#: Every fault the nemesis knows. "Leader" faults find the current leader first.
FAULTS = ("kill", "kill_leader", "pause", "pause_leader", "isolate_leader", "partition",
          "bridge", "one_way_leader", "delay", "drop", "restart_all")
#: Membership changes (group topology only): a follower removed (``DELETE /remove``) and
#: a fresh member joined (``-join``); the leader removed and re-added under its id with a
#: wiped data directory; leadership handed to another member (``POST /leader``).
#: ``crash_during_remove``: the leader is killed -9 0-15 ms after a follower's
#: ``DELETE /remove`` was sent to it (the config entry anywhere from unsent to committed),
#: restarted; the removal is then retried to completion and a fresh member joins.
MEMBERSHIP_FAULTS = ("replace_member", "readd_leader", "transfer_leader",
                     "crash_during_remove")
#: A slow disk: one member's (or the leader's) log fdatasync delayed by tens to hundreds
#: of ms, through the test-only hook :mod:`raftsqlite.raft.slowdisk`.
DISK_FAULTS = ("slow_fsync", "slow_fsync_leader")
ALL_FAULTS = FAULTS + MEMBERSHIP_FAULTS + DISK_FAULTS
#: Control file name (in each member's data directory) for the slow-disk hook.
SLOW_FSYNC_FILE = "test_slow_fsync"


def slow_fsync_path(m) -> Path:
    """A member's slow-disk control file: relative paths are taken in the Raft log's data
    directory, which is ``raft/`` inside the node's ``-data``."""
    return m.data_dir / "raft" / SLOW_FSYNC_FILE


#: Faults after which the time to the next acknowledged write is measured.
LEADER_FAULTS = ("kill_leader", "pause_leader", "isolate_leader", "one_way_leader",
                 "restart_all")


class Nemesis:
    """Injects one fault at a time: hold it for ``hold`` seconds, heal, stay quiet for
    ``quiet`` seconds. The schedule (kinds, targets) comes from the seeded ``rng``."""

    def __init__(self, cluster: LocalCluster, history: History, rng: random.Random,
                 kinds=FAULTS, hold=(2.0, 4.0), quiet=(1.0, 3.0), order="random"):
        unknown = set(kinds) - set(ALL_FAULTS)
        if unknown:
            raise errors.ConfigError(f"unknown fault kinds {sorted(unknown)}; "
                                     f"known: {', '.join(ALL_FAULTS)}")
        self.cluster = cluster
        self.history = history
        self.rng = rng
        self.kinds = tuple(kinds)
        # "cycle": every kind in turn (short CI runs must hit each fault they assert on).
        if order not in ("random", "cycle"):
            raise errors.ConfigError(f"unknown fault order {order!r}; known: random, cycle")
        self.order = order
        self.hold = hold
        self.quiet = quiet
        self.counts: dict[str, int] = {}
        self.restart_failures: list[str] = []
        self.failed_members: set[str] = set()
        self.membership_failures: list[str] = []
        self.slowed: list = []          # members whose slow-disk control file is set
        self._slow_before: dict = {}    # their delay counters when it was set
        self._slow_max: dict = {}

    def _ids(self) -> list[str]:
        return sorted(self.cluster.members)

    async def _leader_or_random(self):
        leader = await self.cluster.current_leader()
        if leader is not None:
            return leader, True
        return self.cluster.members[self.rng.choice(self._ids())], False

    async def inject(self, kind: str) -> dict:
        c = self.cluster
        if kind in ("isolate_leader", "partition", "bridge", "one_way_leader"):
            # Held bytes (a silent partition) or refused connections (an unreachable host).
            c.net.mode = self.rng.choice(("stall", "reset"))
            detail = await self._inject(kind)
            detail["mode"] = c.net.mode
            return detail
        return await self._inject(kind)

    async def _inject(self, kind: str) -> dict:
        c, ids = self.cluster, self._ids()
        if kind in MEMBERSHIP_FAULTS:
            try:
                return await self._membership(kind)
            except errors.RaftSQLiteError as e:
                # Faults are healed before the next one, so a membership change that
                # cannot complete on a healthy network is an availability bug.
                self.membership_failures.append(f"{kind}: {e}"[:2000])
                self.history.event("membership_failed", error=str(e)[:2000])
                return {"failed": str(e)[:300]}
        if kind in DISK_FAULTS:
            if kind == "slow_fsync":
                m = c.members[self.rng.choice(ids)]
                lead = await c.current_leader()
                was_leader = None if lead is None else lead.id == m.id
            else:
                m, was_leader = await self._leader_or_random()
            self._slow_before[m.id] = await self._slow_delays(m)
            lo = self.rng.choice((20, 50, 100))
            hi = lo * self.rng.choice((2, 4))
            slow_fsync_path(m).write_text(f"{lo} {hi}\n")
            self.slowed.append(m)
            return {"member": m.id, "ms": [lo, hi], "was_leader": was_leader}
        if kind in ("kill", "pause"):
            m = c.members[self.rng.choice(ids)]
            (c.kill if kind == "kill" else c.pause)(m)
            return {"member": m.id}
        if kind in ("kill_leader", "pause_leader", "isolate_leader", "one_way_leader"):
            m, was_leader = await self._leader_or_random()
            if kind == "kill_leader":
                c.kill(m)
            elif kind == "pause_leader":
                c.pause(m)
            elif kind == "isolate_leader":
                c.net.isolate(m.id, ids)
            else:
                # Asymmetric: what the leader sends is held, what it receives arrives.
                for o in ids:
                    if o != m.id:
                        c.net.block(m.id, o, both=False)
            return {"member": m.id, "was_leader": was_leader}
        if kind == "partition":
            shuffled = self.rng.sample(ids, len(ids))
            cut = self.rng.randint(1, (len(ids) - 1) // 2) if len(ids) > 2 else 1
            minority, majority = shuffled[:cut], shuffled[cut:]
            c.net.partition(minority, majority)
            return {"minority": minority, "majority": majority}
        if kind == "bridge":
            shuffled = self.rng.sample(ids, len(ids))
            mid = len(ids) // 2
            left, bridge, right = shuffled[:mid], shuffled[mid], shuffled[mid + 1:]
            c.net.bridge(left, bridge, right)
            return {"left": left, "bridge": bridge, "right": right}
        if kind == "delay":
            base = self.rng.uniform(0.02, 0.2)
            c.net.delay(base, jitter=base / 2)
            return {"seconds": round(base, 3)}
        if kind == "drop":
            m = self.rng.choice(ids)
            links = [(m, o) for o in ids if o != m] + [(o, m) for o in ids if o != m]
            c.net.drop(0.2, links)
            return {"member": m, "probability": 0.2}
        if kind == "restart_all":
            for m in c.members.values():
                c.kill(m)
            return {"members": ids}
        raise errors.ConfigError(f"unknown fault {kind!r}")

    async def _membership(self, kind: str) -> dict:
        c = self.cluster
        leader = await c.wait_for_leader(30)
        if kind == "transfer_leader":
            others = [m for m in c.members.values() if m.id != leader.id]
            to = self.rng.choice(others + [None])       # None: the leader picks
            via = c.members[self.rng.choice(self._ids())]
            status = await c.transfer_leadership(to, via)
            # Observable effect: another member leads (polled, bounded).
            new = None
            deadline = asyncio.get_running_loop().time() + 10
            while asyncio.get_running_loop().time() < deadline:
                new = await c.current_leader()
                if new is not None and new.id != leader.id:
                    break
                await asyncio.sleep(0.1)
            return {"from": leader.id, "to": to.id if to else None, "via": via.id,
                    "status": status, "new_leader": new.id if new else None,
                    "moved": new is not None and new.id != leader.id}
        if kind == "replace_member":
            victim = self.rng.choice([m for m in c.members.values() if m.id != leader.id])
            # Half the time the removed node keeps running until the heal (not shut down
            # yet): it no longer hears from the group and must not disrupt it.
            keep = self.rng.random() < 0.5
            removed = await c.remove_member(victim, stop=not keep)
            added = await c.add_member()
            return {"removed": victim.id, "added": added.id, "remove": removed,
                    "removed_kept_running": keep, "members": self._ids()}
        if kind == "crash_during_remove":
            victim = self.rng.choice([m for m in c.members.values() if m.id != leader.id])
            wait = self.rng.uniform(0, 0.015)
            req = asyncio.ensure_future(c.session.delete(
                f"{leader.url}/remove", data=f'{{"id": "{victim.id}"}}',
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=5)))
            await asyncio.sleep(wait)
            c.kill(leader)
            try:
                r = await req
                status = r.status
                r.release()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = None
            await c.restart(leader, wait=True)
            await c.wait_for_leader(30)
            # Which way did the crash go? (Evidence only; the removal is then finished.)
            lead = await c.current_leader()
            listed = await c.node_ids(lead) if lead is not None else None
            removed = await c.remove_member(victim)
            added = await c.add_member()
            return {"removed": victim.id, "added": added.id, "crashed": leader.id,
                    "kill_after_s": round(wait, 3), "remove_status": status,
                    "still_listed_after_crash": None if listed is None else victim.id in listed,
                    "remove": removed, "members": self._ids()}
        # readd_leader
        removed = await c.remove_member(leader)
        await c.readd_member(leader)
        return {"member": leader.id, "was_leader": True, "remove": removed,
                "members": self._ids()}

    async def _slow_delays(self, m) -> int | None:
        """The member's count of delayed fsyncs (process lifetime; None: no answer)."""
        doc = await self.cluster.status(m)
        lg = ((doc or {}).get("raft") or {}).get("log") or {}   # RaftNode.stats()
        if "test_slow_fsync_max_ms" in lg:
            self._slow_max[m.id] = lg["test_slow_fsync_max_ms"]
        return lg.get("test_slow_fsync_delays")

    def _clear_slow(self) -> None:
        for m in self.slowed:
            try:
                slow_fsync_path(m).unlink()
            except FileNotFoundError:
                pass
        self.slowed.clear()

    async def heal(self, timeout: float = 60.0) -> None:
        for m in self.slowed:
            # Evidence the hook really slowed the member during this window.
            after = await self._slow_delays(m)
            before = self._slow_before.pop(m.id, None)
            # A slow leader may keep leading (correct, just slow) or lose leadership.
            lead = await self.cluster.current_leader()
            self.history.event("slow_fsync_observed", member=m.id,
                               delays=None if after is None else after - (before or 0),
                               max_ms=self._slow_max.get(m.id),
                               leader_at_heal=None if lead is None else lead.id)
        self._clear_slow()
        self.cluster.stop_retired()
        try:
            await asyncio.wait_for(self.cluster.heal(), timeout)
        except (NodeCannotStart, asyncio.TimeoutError) as e:
            self.restart_failures.append(str(e)[:2000])
            self.failed_members |= {m.id for m in self.cluster.members.values()
                                    if not m.alive}
            self.history.event("restart_failed", error=str(e)[:2000])

    async def run(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        # "cycle" runs every kind at least once, past the deadline if need be (the
        # clients keep going until the nemesis is done): a short run must not lose
        # its last fault to slow joins.
        while ((self.order == "cycle" and n < len(self.kinds))
               or loop.time() + self.hold[1] + self.quiet[0] < deadline):
            kind = (self.kinds[n % len(self.kinds)] if self.order == "cycle"
                    else self.rng.choice(self.kinds))
            n += 1
            detail = await self.inject(kind)
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.history.event(kind, **detail)
            await asyncio.sleep(self.rng.uniform(*self.hold))
            await self.heal()
            self.history.event("heal")
            await asyncio.sleep(self.rng.uniform(*self.quiet))


def unavailability(history: History, write_fs, kinds=LEADER_FAULTS, ops=None) -> list[dict]:
    """For each leader fault in ``history.events``: seconds from the fault to the first
    acknowledged write (of ``ops``, default the history's own) invoked after it (a lower
    bound, flagged, when none came before the next fault)."""
    faults = [e for e in history.events if e.kind not in ("heal", "restart_failed", "membership_failed",
                                                            "slow_fsync_observed")]
    writes = sorted((op for op in (history.ops if ops is None else ops)
                     if op.f in write_fs and op.ok), key=lambda o: o.complete)
    end = history.now()
    out = []
    for i, e in enumerate(faults):
        if e.kind not in kinds:
            continue
        window_end = faults[i + 1].time if i + 1 < len(faults) else end
        first = next((op for op in writes if op.invoke >= e.time
                      and op.complete <= window_end), None)
        out.append({"kind": e.kind, "member": e.detail.get("member"),
                    "seconds": round((first.complete if first else window_end) - e.time, 3),
                    "recovered": first is not None,
                    # a "leader" fault that found no leader hit a random member
                    "was_leader": e.detail.get("was_leader", True)})
    return out


def fault_effects(history: History, write_fs, ops) -> dict:
    """What the membership and slow-disk faults observably did: member sets changed,
    leadership moved, fsyncs delayed, and the acknowledged writes that completed while a
    member's disk was slow (a slow follower must not stop the group)."""
    ev = history.events
    writes = sorted((op.complete for op in ops if op.f in write_fs and op.ok))
    out = {"members_replaced": 0, "leaders_readded": 0, "transfers": 0,
           "transfers_moved": 0, "slow": []}
    for i, e in enumerate(ev):
        d = e.detail
        if e.kind in ("replace_member", "crash_during_remove") and "failed" not in d:
            out["members_replaced"] += 1
        elif e.kind == "readd_leader" and "failed" not in d:
            out["leaders_readded"] += 1
        elif e.kind == "transfer_leader":
            out["transfers"] += 1
            out["transfers_moved"] += bool(d.get("moved"))
        elif e.kind in DISK_FAULTS:
            end = next((x for x in ev[i + 1:] if x.kind == "heal"), None)
            t1 = end.time if end else history.now()
            seen = next((x.detail for x in ev[i + 1:] if x.kind == "slow_fsync_observed"
                         and x.detail.get("member") == d.get("member")), {})
            out["slow"].append({
                "kind": e.kind, "member": d.get("member"), "was_leader": d.get("was_leader"),
                "ms": d.get("ms"), "seconds": round(t1 - e.time, 2),
                "acked_writes": sum(1 for t in writes if e.time <= t <= t1),
                "delays": seen.get("delays"), "max_ms": seen.get("max_ms"),
                "leader_at_heal": seen.get("leader_at_heal")})
    return out


async def wait_converged(cluster: LocalCluster, session, tables=None, timeout=30.0):
    """Poll every member's table digests until all are equal (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        sums = {}
        for m in cluster.members.values():
            sums[m.id] = await member_checksums(NodeClient(session, m.id, m.http_addr, 5.0),
                                                tables)
        res = check_convergence(sums)
        if res.valid or time.monotonic() > deadline:
            res.stats["digests"] = sums
            return res
        await asyncio.sleep(0.5)


async def run(workloads=("bank",), duration: float = 60.0, seed: int = 0, members: int = 3,
              clients: int = 6, out: str | Path | None = None, faults=FAULTS,
              client_timeout: float = 3.0, hold=(2.0, 4.0), quiet=(1.0, 3.0),
              extra_args=(), max_ops: int = 1_000_000, topology: str = "group",
              unsafe_read_level: str | None = None, warmup: float = 2.0,
              rebalance_at: float | None = 0.3, rebalance_settings: dict | None = None,
              fault_order: str = "random", log=print) -> dict:
    """One complete run; returns the summary (also written to ``out/summary.json``).

    ``topology="sharded"``: a default group and two shard groups of ``members`` each
    (:mod:`.sharded`); the workloads' tables are sharded, and at ``rebalance_at`` of the
    duration (None: never) each table is rebalanced onto the second shard while the
    clients and the nemesis keep going. ``rebalance_settings`` (RebalanceConfig fields,
    given to the nodes as ``RAFTSQLITE_REBALANCE``) default to a throttled copy of small
    batches, so a move lasts long enough for faults to hit it mid-copy."""
    if topology not in ("group", "sharded"):
        raise errors.ConfigError(f"unknown topology {topology!r}; known: group, sharded")
    sharded = topology == "sharded"
    for w in workloads:
        if w not in WORKLOADS:
            raise errors.ConfigError(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    bad = set(faults) - set(ALL_FAULTS)
    if bad or not faults:
        raise errors.ConfigError(f"unknown fault kinds {sorted(bad)}; "
                                 f"known: {', '.join(ALL_FAULTS)}"
                                 if bad else "no fault kinds given")
    group_only = set(faults) & set(MEMBERSHIP_FAULTS + DISK_FAULTS)
    if sharded and group_only:
        raise errors.ConfigError(f"faults {sorted(group_only)} need --topology group")
    if duration <= 0 or members < 1 or clients < 1:
        raise errors.ConfigError("duration, members and clients must be positive")
    out = Path(out or tempfile.mkdtemp(prefix=f"raftsqlite-nemesis-{'-'.join(workloads)}-"))
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    # One history per workload (their op names and keys overlap), one for the nemesis's
    # events, all on the same clock and start.
    history = History()
    histories = {}
    for name in workloads:
        histories[name] = History()
        histories[name].start = history.start
    classes = SHARDED_WORKLOADS if sharded else WORKLOADS
    wls = [classes[name](histories[name], random.Random(rng.random()),
                         unsafe_read_level=unsafe_read_level) for name in workloads]
    if sharded:
        # 200 rows/s: several times the rate at which the workloads write into the
        # moving half (append ~38 rows/s, 53 at peak, in a 300 s run), so a move can
        # converge while the load runs, yet its copy lasts tens of seconds of faults
        # (see docs/design/testing.md, "a move that could not finish").
        settings = rebalance_settings or {"batch_rows": 10, "max_rows_per_s": 200}
        cluster = ShardedCluster(members, out / "cluster", seed=rng.random(),
                                 extra_args=extra_args,
                                 env={"RAFTSQLITE_REBALANCE": json.dumps(settings)})
        nemesis = ShardedNemesis(cluster, history, random.Random(rng.random()), faults,
                                 hold, quiet)
    else:
        env = {}
        if set(faults) & set(DISK_FAULTS):
            from raftsqlite.raft.slowdisk import ENV
            env[ENV] = SLOW_FSYNC_FILE        # relative: inside each member's data dir
        cluster = LocalCluster(members, out / "cluster", seed=rng.random(),
                               extra_args=extra_args, env=env)
        nemesis = Nemesis(cluster, history, random.Random(rng.random()), faults, hold, quiet,
                          order=fault_order)
    summary: dict = {"seed": seed, "workloads": list(workloads), "topology": topology,
                     "duration_s": duration,
                     "members": members, "clients": clients, "out": str(out),
                     "faults_enabled": list(faults), "unsafe_read_level": unsafe_read_level}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256,
                                                                   force_close=True))
    t_start = time.monotonic()
    try:
        log(f"nemesis: starting {members} members"
            f"{' per group (default, shard1, shard2)' if sharded else ''} in {out / 'cluster'}")
        await cluster.start()
        leader = await cluster.wait_for_leader(30)
        for w in wls:
            lc = NodeClient(session, leader.id, leader.http_addr, 10.0)
            if sharded:
                await w.create(lc)
                await cluster.place_tables(w.shard_specs)
                await w.populate(lc)
            else:
                await w.setup(lc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        rebalancer = None
        if sharded and rebalance_at is not None:
            async def rebalance_all():
                await asyncio.sleep(rebalance_at * duration)
                for w in wls:
                    for table, _key, colocate in w.shard_specs:
                        if colocate is None:
                            await cluster.rebalance(table, history,
                                                    max(30.0, deadline - loop.time()))
            rebalancer = asyncio.ensure_future(rebalance_all())
        client_rng = random.Random(rng.random())

        nemesis_done = False
        hard_end = deadline + 120

        async def client_loop(proc: int, w) -> None:
            n = 0
            while n < max_ops and (loop.time() < deadline or (
                    fault_order == "cycle" and not nemesis_done and loop.time() < hard_end)):
                # The member set changes under membership faults.
                m = cluster.members[client_rng.choice(sorted(cluster.members))]
                op = await w.op(proc, NodeClient(session, m.id, m.http_addr, client_timeout))
                n += 1
                if not op.ok:        # back off a little from a member that is down
                    await asyncio.sleep(client_rng.uniform(0.02, 0.1))

        log(f"nemesis: running {', '.join(workloads)} for {duration:g}s, {clients} clients, "
            f"faults {', '.join(nemesis.kinds)}")
        tasks = [asyncio.ensure_future(client_loop(i, wls[i % len(wls)]))
                 for i in range(clients)]
        try:
            # Faults start after a short warm-up so that the first ones hit a group under
            # load; killing members right after their join is a separate test.
            await asyncio.sleep(min(warmup, max(0.0, deadline - loop.time())))
            await nemesis.run(deadline)
            nemesis_done = True
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for h in histories.values():
            h.close_pending()
        log("nemesis: healing and reading the final state")
        await nemesis.heal()
        leader = await cluster.wait_for_leader(30)
        if rebalancer is not None:
            # A move still running finishes (or rolls back) on a healed cluster; one
            # that makes no progress (phase, rows copied) for 60 s, or has not ended
            # 240 s after the heal, is a violation (counted below).
            await rebalancer
            summary["rebalance"] = {"requests": cluster.moves,
                                    "moves": await cluster.wait_moves(None, 60, max_total=240)}
        lc = NodeClient(session, leader.id, leader.http_addr, 10.0)
        finals = {}
        for w in wls:
            if hasattr(w, "final_reads"):
                await w.final_reads(lc)
            finals[w.name] = await setup_with_retry(lambda w=w: w.final(lc), timeout=30)
        if sharded:
            conv = await cluster.converge(
                member_checksums,
                lambda m, g: NodeClient(session, m.id, m.http_addr, 5.0, shard_id=g), 30)
        else:
            conv = await wait_converged(cluster, session, tables=None, timeout=30)
        summary["convergence"] = conv.to_dict()
        # Evidence of what the run exercised (e.g. snapshots were taken).
        for m in cluster.members.values():
            doc = await cluster.status(m)
            raft = ((doc or {}).get("store") or {}).get("raft") or {}
            summary.setdefault("members_final", {})[m.id] = {
                k: raft.get(k) for k in ("state", "term", "commit_index", "applied_index",
                                         "last_snapshot_index")}
        # A healed, idle group should keep one leader; losing it is an availability bug.
        try:
            summary["leader_after_heal"] = (await cluster.wait_for_leader(10)).id
        except errors.Timeout:
            summary["leader_after_heal"] = None
    except BaseException as e:
        summary["error"] = f"{type(e).__name__}: {e}"
        e.add_note(f"nemesis run (seed {seed}): history, schedule and member logs in {out}")
        raise
    finally:
        for h in histories.values():
            h.close_pending()
        await session.close()
        await cluster.stop()
        summary["elapsed_s"] = round(time.monotonic() - t_start, 1)
        summary["cluster"] = cluster.stats()
        for name, h in histories.items():
            h.dump(out / f"history-{name}.jsonl")
        (out / "schedule.json").write_text(json.dumps(
            [{"time": round(e.time - history.start, 3), "kind": e.kind, **e.detail}
             for e in history.events], indent=1, default=repr))
        if "error" in summary:
            (out / "summary.json").write_text(json.dumps(summary, indent=1, default=repr))
    # The checkers run after the cluster is stopped: they are CPU-bound and would stall
    # this event loop, which also runs the proxies (a stalled proxy is a partition).
    results: list[CheckResult] = []
    per_workload = {}
    for w in wls:
        checks = w.check(finals[w.name])
        results += checks
        per_workload[w.name] = {"checks": [c.to_dict() for c in checks]}
    results.append(conv)
    s = summarize(results)
    writes = tuple(f for w in wls for f in w.writes())
    all_ops = [op for h in histories.values() for op in h.ops]
    # In a sharded run a write acknowledged by one shard says nothing about another
    # group's failover, so the figure is measured on a single group only.
    unav = [] if sharded else unavailability(history, writes, ops=all_ops)
    kill_unav = [u["seconds"] for u in unav if u["kind"] == "kill_leader"
                 and u.get("was_leader")]
    stuck = [m for m in summary.get("rebalance", {}).get("moves", [])
             if m.get("phase") not in ("done", "cancelled", "failed")]
    for w in wls:
        fs = w.writes() + ("read", "read_all")
        ops = [op for op in w.history.ops if op.f in fs and op.process < 10_000]
        per_workload[w.name].update(
            ops=len(ops), ok=sum(o.outcome == "ok" for o in ops),
            failed=sum(o.outcome == "failed" for o in ops),
            unknown=sum(o.outcome == "unknown" for o in ops))
    summary.update(
        valid=(s["valid"] and not nemesis.restart_failures and not stuck
               and not getattr(nemesis, "membership_failures", None)),
        acked_ops=sum(1 for op in all_ops if op.ok),
        ops={k: sum(h.counts()[k] for h in histories.values())
             for k in ("ok", "failed", "unknown", "pending")},
        faults=dict(sorted(nemesis.counts.items())),
        faults_by_group=dict(sorted(getattr(nemesis, "by_group", {}).items())),
        lost_acked_writes=s["lost_acked_writes"],
        violations=s["violations"] + len(nemesis.failed_members) + len(stuck),
        rebalance_stuck=stuck,
        inconclusive=s["inconclusive"],
        restart_failures=nemesis.restart_failures,
        membership_failures=getattr(nemesis, "membership_failures", []),
        fault_effects=fault_effects(history, writes, all_ops),
        max_unavailable_s=max(kill_unav) if kill_unav else None,
        unavailability=unav,
        per_workload=per_workload)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=repr))
    return summary


def snapshot_args(threshold: int) -> list[str]:
    """Node flags that make snapshots (and catch-up by snapshot) happen in a short run."""
    return ["-snapshot-threshold", str(threshold),
            "-raft-opt", f"snapshot_trailing={max(1, threshold // 4)}"]


def format_summary(s: dict) -> str:
    lines = [f"seed {s['seed']}  workloads {','.join(s['workloads'])}  "
             f"{s['duration_s']:g}s on {s['members']} members"
             f"{' per group, 3 groups' if s.get('topology') == 'sharded' else ''}"
             f"  ({s.get('elapsed_s')}s total)"]
    for name, w in s.get("per_workload", {}).items():
        lines.append(f"  {name:9s} ops {w['ops']:6d}  ok {w['ok']:6d}  failed {w['failed']:5d}"
                     f"  unknown {w['unknown']:5d}")
        for c in w["checks"]:
            verdict = {True: "passed", False: "FAILED", None: "inconclusive"}[c["valid"]]
            lines.append(f"    check {c['name']:12s} {verdict}  violations "
                         f"{c['violation_count']}  lost acked writes {c['lost_acked_writes']}")
            for v in c["violations"][:5]:
                lines.append(f"      {json.dumps(v, default=repr)[:300]}")
    for req in s.get("rebalance", {}).get("requests", []):
        lines.append(f"  rebalance {req.get('table')}: {req.get('status') or req.get('error')}"
                     f" in {req.get('seconds')}s; moves "
                     + (", ".join(f"{m.get('move_id')} {m.get('phase')} ({m.get('rows_copied')} rows)"
                                  for m in req.get("moves", [])) or "none"))
    for m in s.get("rebalance_stuck", []):
        lines.append(f"  REBALANCE STUCK: move {m.get('move_id')} of {m.get('table')} still "
                     f"{m.get('phase')} after the heal ({m.get('error')})")
    conv = s.get("convergence", {})
    lines.append(f"  convergence {'passed' if conv.get('valid') else 'FAILED'}"
                 f" ({conv.get('stats', {}).get('tables', 0)} tables)")
    lines.append("  faults: " + ", ".join(f"{k} {v}" for k, v in s.get("faults", {}).items()))
    if s.get("faults_by_group"):
        lines.append("  faults by group: " + ", ".join(
            f"{k} {v}" for k, v in s["faults_by_group"].items()))
    for mid, st in sorted(s.get("members_final", {}).items()):
        lines.append(f"  {mid}: " + ", ".join(f"{k} {v}" for k, v in st.items()))
    fx = s.get("fault_effects") or {}
    if fx.get("members_replaced") or fx.get("leaders_readded") or fx.get("transfers"):
        lines.append(f"  membership: {fx['members_replaced']} members replaced, "
                     f"{fx['leaders_readded']} leaders removed and re-added, "
                     f"{fx['transfers_moved']}/{fx['transfers']} transfers moved leadership")
    for w in fx.get("slow", []):
        lines.append(f"  slow disk on {w['member']}{' (leader)' if w['was_leader'] else ''} "
                     f"{w['ms']} ms for {w['seconds']}s: {w['delays']} delayed fsyncs "
                     f"(max {w['max_ms']} ms), {w['acked_writes']} writes acknowledged, "
                     f"leader at heal {w.get('leader_at_heal')}")
    for f in s.get("membership_failures", []):
        lines.append(f"  MEMBERSHIP CHANGE FAILED: {f.splitlines()[0][:300]}")
    for f in s.get("restart_failures", []):
        tail = [ln for ln in f.splitlines() if ln.strip()]
        lines.append(f"  RESTART FAILED: {tail[0][:200]}")
        lines += [f"      {ln[:200]}" for ln in tail[-2:]]
    if "leader_after_heal" in s and s["leader_after_heal"] is None:
        lines.append("  WARNING: no leader agreed by a majority within 10 s after the heal")
    unav = s.get("unavailability", [])
    if unav:
        worst = max(unav, key=lambda u: u["seconds"])
        kill = s.get("max_unavailable_s")
        lines.append(f"  longest unavailability after a leader fault: {worst['seconds']}s "
                     f"({worst['kind']}); after a leader kill: "
                     f"{'no leader kill' if kill is None else f'{kill}s'}")
    lines.append(f"  result: {'PASS' if s.get('valid') else 'FAIL'}  "
                 f"(history, schedule and logs in {s['out']})")
    return "\n".join(lines)


def headline(s: dict) -> dict:
    return {k: s.get(k) for k in ("acked_ops", "faults", "lost_acked_writes", "violations",
                                  "max_unavailable_s", "valid", "seed", "workloads", "out")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftsqlite.testing.nemesis",
                                description="Run workloads against a real raftsqlite "
                                            "cluster while injecting faults, then check.")
    p.add_argument("--workload", default="bank",
                   help=f"{'|'.join(WORKLOADS)}|all (all: run together on one cluster)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    p.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    p.add_argument("--members", type=int, default=3,
                   help="members of the group (sharded: of each of the 3 groups)")
    p.add_argument("--clients", type=int, default=None, help="default: 6 per workload")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"comma-separated fault kinds, or 'all' (group topology: adds "
                        f"{', '.join(MEMBERSHIP_FAULTS + DISK_FAULTS)})")
    p.add_argument("--client-timeout", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of load before the first fault")
    p.add_argument("--out", default=None, help="output folder (default: a new temp folder)")
    p.add_argument("--topology", default="group", choices=("group", "sharded"),
                   help="sharded: default group + shard1 + shard2, each table rebalanced "
                        "onto shard2 at 30%% of the run")
    p.add_argument("--keep-data", action="store_true",
                   help="keep member data directories of a passing run")
    p.add_argument("--node-arg", action="append", default=[],
                   help="extra argument for every node (repeatable)")
    p.add_argument("--snapshot-threshold", type=int, default=None,
                   help="nodes snapshot every N applied entries and keep N/4 behind, so "
                        "restarted members catch up by snapshot (default: the node's)")
    p.add_argument("--unsafe-read-level", choices=("none", "weak"), default=None,
                   help="issue reads at this level but check them as linearizable: shows "
                        "that the checkers catch stale reads (expect FAIL under partitions)")
    a = p.parse_args(argv)
    names = tuple(WORKLOADS) if a.workload == "all" else tuple(a.workload.split(","))
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    clients = a.clients or 6 * len(names)
    node_args = list(a.node_arg)
    if a.snapshot_threshold:
        node_args += snapshot_args(a.snapshot_threshold)
    try:
        s = asyncio.run(run(names, a.duration, seed, a.members, clients, a.out,
                            ALL_FAULTS if a.faults == "all"
                            else tuple(x for x in a.faults.split(",") if x), a.client_timeout,
                            extra_args=node_args, topology=a.topology,
                            unsafe_read_level=a.unsafe_read_level, warmup=a.warmup,
                            log=lambda m: print(m, file=sys.stderr, flush=True)))
    except errors.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(s))
    if s["valid"] and not a.keep_data:
        for d in (Path(s["out"]) / "cluster").glob("*"):
            if d.is_dir() and d.name != "logs":
                shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(headline(s), default=repr))
    return 0 if s["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
