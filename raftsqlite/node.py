"""The composition root: builds one node from a ``NodeConfig`` and owns start/stop order.

Start: open SQLite (db, fsm) -> start Raft (log replay, snapshot restore, transport) ->
bootstrap a fresh single-node group, unless told to join -> serve HTTP -> join through an
existing member (fresh data dir only; retried with backoff across the given addresses).
A node restarted with data needs no ``-join``: its membership is in its Raft log, and it
never bootstraps again (only a node whose Raft log is empty and that never saw a term
does; the driver refuses a bootstrap over an existing log). A member whose data dir was wiped, the first node
included, cannot tell it ever belonged to a group: restart it with ``-join <a member>``
(its join says its log is empty, so the leader removes and re-adds it and catches it up;
``Store.join``); started without ``-join`` it would begin a new group. A data dir whose Raft log is gone but whose database has applied entries is
refused by the Raft driver at start ("the log was lost"), never bootstrapped.
With ``-bootstrap-expect N`` a fresh node serves HTTP first and then forms the group
together with the other N-1 (``bootstrap.py``; the safety argument is in
docs/design/bootstrap.md); with a log it ignores that flag like any restarted node.

Stop (SIGTERM): [with -raft-cluster-remove-shutdown: leave the group, bounded, node_leave.py]
-> stop accepting HTTP -> Raft stop (a leader hands leadership over first) -> store and
SQLite closed. SIGKILL loses nothing acknowledged: the Raft log is fsynced
before anything is acknowledged, and SQLite replays from it.
"""
import asyncio
import logging
import os
import random

from raftsqlite.codec.model import Member
from raftsqlite.config import NodeConfig, listen_addr
from raftsqlite.db import Database
from raftsqlite.errors import ConfigError, RaftSQLiteError, SettingsMismatch, Unavailable
from raftsqlite.fsm import FSM
from raftsqlite.store import Store

log = logging.getLogger("raftsqlite.node")


# A node's election timeout is 1-2 s (20 ticks of 50 ms), not the engine's 0.5-1 s. It was
# raised because a Ready cycle sent nothing (heartbeats included) while its fdatasync ran;
# heartbeats now flow during the write (RaftNode._send_heartbeats), and tests/cluster +
# tests/faults passed with 10 ticks at load 10-12. It stays at 20 because loop stalls from
# CPU work (bulk parsing, GIL contention with the apply thread) still delay heartbeats on a
# loaded machine, and a nemesis run (bank, kill_leader, seed 7) measured the same
# unavailability after a leader kill either way (1.1-2.5 s with 10, 1.1-2.0 s with 20):
# clients' detection and retry dominate it. Override with ``-raft-opt election_ticks=N``.
NODE_ELECTION_TICKS = 20


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        # -auth / -join-as (http/auth.py): a bad file stops the node here, before it
        # opens anything. identity_header: what this node sends on its own calls.
        self.auth = self.identity_header = None
        if config.auth_file:
            from raftsqlite.http.auth import Credentials
            self.auth = Credentials.load(config.auth_file)
            if config.join_as:
                self.identity_header = self.auth.identity_header(config.join_as)
            else:
                self.auth.check_anonymous_node(bool(config.join), log)
        elif config.join_as:
            raise ConfigError("-join-as needs -auth: the user's password comes from that file")
        # -auto-backup / -auto-restore (auto_backup.py): a bad file stops the node here too
        from raftsqlite import auto_backup as ab
        backup_cfg = ab.BackupConfig.load(config.auto_backup) if config.auto_backup else None
        self.auto_restore = ab.Restore(self, ab.RestoreConfig.load(config.auto_restore)) \
            if config.auto_restore else None
        self.auto_backup = None
        os.makedirs(config.data_dir, exist_ok=True)
        # one process per data directory (datalock.py); held until stop() or exit
        from raftsqlite.datalock import DataDirLock
        self._lock = DataDirLock(config.data_dir).acquire("node")
        try:
            self._open(config)
            if backup_cfg is not None:
                self.auto_backup = ab.AutoBackup(self, backup_cfg)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, config):
        from raftsqlite.raft.config import RaftConfig
        from raftsqlite.raft.driver import RaftNode
        peers_json = os.path.join(config.raft_dir, "peers.json")
        if os.path.exists(peers_json):
            # rqlite's way to recover a group that lost its majority; silently ignoring it
            # would leave an operator following rqlite's runbook with a group that never
            # comes back
            raise ConfigError(
                f"{peers_json} exists: raft-sqlite does not read rqlite's peers.json. To recover "
                f"a group that lost its majority for good, stop this node, remove peers.json and "
                f"run 'raft-sqlite recover -id {config.node_id} -data {config.data_dir}' "
                f"(docs/operations.md, 'Losing the majority for good')")
        # -fk / -extensions-path: settings the whole group shares (group_settings.py)
        from raftsqlite import group_settings as gs
        exts = gs.collect_extensions(config.extensions_path,
                                     os.path.join(config.data_dir, "extensions")) \
            if config.extensions_path else []
        self.group_settings = gs.GroupSettings(config.foreign_keys,
                                               tuple((n, h) for n, h, _ in exts))
        self.db = Database(config.db_path, busy_timeout_ms=config.store.busy_timeout_ms,
                           synchronous=config.store.sqlite_synchronous,
                           max_result_bytes=config.store.max_result_bytes,
                           foreign_keys=config.foreign_keys,
                           extensions=[p for _, _, p in exts])
        try:
            self.fsm = FSM(self.db, dedup_keep=config.store.dedup_keep,
                           settings=self.group_settings)
        except SettingsMismatch:
            self.db.close()
            raise
        host, port = listen_addr(config.raft_addr)
        kw = dict(node_id=config.node_id, data_dir=config.raft_dir, raft_addr=f"{host}:{port}",
                  advertise_addr=config.raft_advertise, http_addr=config.http_advertise,
                  fsync=config.fsync, snapshot_threshold=config.snapshot_threshold,
                  election_ticks=NODE_ELECTION_TICKS,
                  reap_voter_after=config.reap_node_timeout,
                  reap_learner_after=config.reap_read_only_node_timeout)
        if config.tls.raft_server is not None:
            kw.update(ssl_server=config.tls.raft_server, ssl_client=config.tls.raft_client,
                      ssl_server_name=config.tls.node_verify_server_name)
        kw.update(dict(config.raft_overrides))
        try:
            self.raft_config = RaftConfig(**kw)
        except TypeError as e:
            raise ConfigError(f"bad Raft setting: {e}") from None
        self.raft = RaftNode(self.raft_config, self.fsm)
        # results nobody waits for (a follower's apply) need not be computed (fsm.py)
        self.fsm.results_wanted = self.raft.awaits_result
        self.store = Store(self.raft, self.fsm, self.db, config.store, node_id=config.node_id,
                           voter=config.voter)
        # Sharding (every node): ownership checks in the FSM, the catalog (default group),
        # the router as the SQL backend, and the /table/*, /shards, /shard/* endpoints.
        from raftsqlite.sharding.http_api import blueprint as sharding_blueprint
        from raftsqlite.sharding.service import ShardingService
        self.sharding = ShardingService(self)
        self.sql_backend = self.sharding.sql
        # POST /notify: what -bootstrap-expect nodes ask each other (bootstrap.py)
        from raftsqlite.bootstrap import blueprint as bootstrap_blueprint
        self.http_blueprints = [sharding_blueprint, bootstrap_blueprint]
        self.bootstrap_plan = None
        self.autoboot = None
        # #7: the rebalance coordinator and its routes (default-group nodes only)
        from raftsqlite.sharding.rebalance_node import attach as attach_rebalancer
        attach_rebalancer(self)
        self.app = None
        self._server = None
        self._join_task = None
        self._record_task = None
        self.auto_vacuum = None
        self._started = False

    # ---- lifecycle --------------------------------------------------------------------
    async def start(self):
        cfg = self.config
        await self.raft.start()
        fresh = self.raft.last_log_index == 0 and self.raft.last_snapshot_index == 0
        join = cfg.join
        if fresh and not join and self.raft.term > 0:
            # An empty log but a durable term (or vote): this member was promoted and took
            # part in an election before any entry reached it (killed right after joining).
            # It belongs to a group, so it must not start a new one: wait for the leader.
            log.warning("%s: the Raft log is empty but term %d is on disk: starting as a "
                        "member waiting for its leader, not bootstrapping a new group "
                        "(wiped on purpose? remove the data dir and start with -join)",
                        cfg.node_id, self.raft.term)
            fresh = False
        restoring = False
        if self.auto_restore is not None:
            restoring = await self.auto_restore.prepare(fresh, bool(join) or (
                bool(cfg.shard) and cfg.shard != "default"))
        if cfg.bootstrap_expect and fresh:
            # rqlite's automatic bootstrapping (bootstrap.py): HTTP first, since the
            # nodes find each other through it, then one group formed by all of them
            await self.sharding.start()
            await self._serve_http()
            self._started = True
            self._start_auto_backup()
            from raftsqlite.bootstrap import AutoBootstrap
            self.autoboot = AutoBootstrap(self)
            await self.autoboot.run()
            return
        shard_new = False
        if cfg.shard and cfg.shard != "default":
            # A shard node's -join names any member (of the default group or of its own
            # group): the catalog says whether the group exists and who is in it.
            join, shard_new = await self.sharding.plan_start(fresh)
        if fresh and (not join or shard_new):
            if not cfg.voter:
                raise ConfigError("a non-voter cannot start a new group; give -join")
            await self.raft.bootstrap([Member(cfg.node_id, cfg.raft_advertise,
                                              cfg.http_advertise, True)])
            log.info("bootstrapped a new group as %s", cfg.node_id)
            # the group's settings are its first entry, before any client write
            await self._record_settings(once=True)
            if restoring:
                await self.auto_restore.load()
        await self.sharding.start()
        await self._serve_http()
        self._started = True
        self._start_auto_backup()
        if not join and not fresh:
            join = self._peers_if_moved()
        if join and not shard_new:
            if fresh:
                await self._join(join)
            else:
                # already a member: a repeated join only refreshes addresses; never fatal
                self._join_task = asyncio.get_running_loop().create_task(
                    self._join_quietly(join))
        if cfg.shard and cfg.shard != "default":
            await self.sharding.register_member(shard_new)
        if cfg.auto_vacuum_interval:
            from raftsqlite.auto_vacuum import AutoVacuum
            self.auto_vacuum = AutoVacuum(self, cfg.auto_vacuum_interval)
            self.auto_vacuum.start()

    def _start_auto_backup(self):
        if self.auto_backup is not None:
            self.auto_backup.start()

    async def _serve_http(self):
        from raftsqlite.http.app import create_app, start_server
        safe = "".join(c if c.isalnum() else "_" for c in self.config.node_id)
        self.app = create_app(self, name=f"raftsqlite_{safe}")
        host, port = listen_addr(self.config.http_addr)
        self._server = await start_server(self.app, host, port, ssl=self.config.tls.http_server)
        # A group formed without our bootstrap (or before the record existed) gets its
        # settings record from whichever member leads; members that find it stop looking.
        if self._record_task is None:
            self._record_task = asyncio.get_running_loop().create_task(
                self._record_settings())
        log.info("HTTP API on %s:%d (advertised %s)", host, port, self.config.http_advertise)

    async def _record_settings(self, once=False):
        """Propose ``settings.record`` (group_settings.py) while this member leads and the
        group has none; ``once``: right after a bootstrap, waiting up to 10 s to lead."""
        from raftsqlite.group_settings import RECORD_OP
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                if self.fsm.recorded_settings() is not None:
                    return
                if self.raft.is_leader:
                    await self.store.system([(RECORD_OP, self.group_settings.encode())])
                    return
            except SettingsMismatch:
                raise
            except (RaftSQLiteError, OSError) as e:
                log.info("recording the group settings: %s (will retry)", e)
            except Exception as e:   # noqa: BLE001 - the database may be closing
                log.info("recording the group settings: %r", e)
                if not once:
                    return
            if once and loop.time() > deadline:
                return
            await asyncio.sleep(0.05 if once else 1.0)

    async def stop(self):
        if self.auto_backup is not None:
            await self.auto_backup.stop()
        if self.auto_vacuum is not None:
            await self.auto_vacuum.stop()
        if self._record_task is not None:
            self._record_task.cancel()
        if self._join_task is not None:
            self._join_task.cancel()
        if self.config.cluster_remove_shutdown and self._started:
            from raftsqlite.node_leave import leave_group
            await leave_group(self)
        try:
            await self.sharding.stop()
        except Exception as e:
            log.warning("sharding stop: %r", e)
        if self._server is not None:
            from raftsqlite.http.app import stop_server
            try:
                await stop_server(self._server)
            except Exception as e:  # keep shutting the rest down
                log.warning("HTTP server stop: %r", e)
            self._server = None
        try:
            await self.raft.stop()
        except Exception as e:
            log.warning("raft stop: %r", e)
        self.store.close()
        self.db.close()
        self._started = False
        self._lock.release()

    # ---- joining ----------------------------------------------------------------------
    async def _join(self, addrs):
        """POST /join to the given members until one accepts (it forwards to the leader),
        with backoff, for at most ``join_timeout`` seconds."""
        import aiohttp
        cfg = self.config
        body = {"node_id": cfg.node_id, "raft_addr": cfg.raft_advertise,
                "http_addr": cfg.http_advertise, "voter": cfg.voter}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.join_timeout
        from raftsqlite.group_settings import HEADER
        settings_hdr = {HEADER: self.group_settings.encode().decode()}
        delay, last, rounds = 0.1, "no attempt", 0
        tls_failed = {}
        tls = cfg.tls
        s, name = self.peer_session(30)
        async with s:
            while loop.time() < deadline:
                rounds += 1
                for a in addrs:
                    # an empty log now: the leader must not count on what an earlier
                    # life of this member acknowledged (store.join)
                    fresh = self.raft.last_log_index == 0 and self.raft.last_snapshot_index == 0
                    url = _url(a, "/join?fresh" if fresh else "/join", tls.scheme)
                    try:
                        async with s.post(url, json=body, headers=settings_hdr,
                                          **name) as r:
                            text = await r.text()
                            if r.status == 200:
                                log.info("joined through %s", a)
                                return
                            if r.status == 409 and "settings_mismatch" in text:
                                # the group applies the log otherwise (group_settings.py):
                                # retrying cannot help
                                raise SettingsMismatch(_error_text(text))
                            last = f"{url}: HTTP {r.status} {text[:200]}"
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                        last = f"{url}: {type(e).__name__} {e}"
                        why = await tls.refused(url, e) or (
                            isinstance(e, aiohttp.ClientSSLError) and str(e))
                        if why:     # a refused certificate or handshake: not transient
                            tls_failed[a] = why
                    log.info("join attempt failed: %s", last)
                if len(tls_failed) == len(addrs):
                    # A certificate problem does not heal by retrying: say so now.
                    raise ConfigError("could not join: the TLS handshake failed with every "
                                      "member given (check -node-ca-cert/-http-ca-cert and "
                                      "the certificates): " + "; ".join(
                                          f"{a}: {w}" for a, w in tls_failed.items()))
                if cfg.join_attempts and rounds >= cfg.join_attempts:
                    break
                # rqlite's -join-interval is a fixed pause; ours otherwise backs off
                await asyncio.sleep(cfg.join_interval or delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
        tried = f"{rounds} attempt{'s' if rounds != 1 else ''}"
        if "ServerDisconnectedError" in last:
            # rqlite 8 joins through the Raft port; ours is HTTP
            last += " (a Raft address? -join takes HTTP API addresses)"
        raise Unavailable(f"could not join through {', '.join(addrs)} ({tried} in at most "
                          f"{cfg.join_timeout:g}s; last error: {last})")

    def peer_session(self, timeout):
        """(aiohttp session, per-request kwargs) for this node's own calls to other
        nodes' HTTP APIs: the -join-as identity, the client side of -http-ca-cert /
        -node-verify-server-name."""
        import aiohttp
        tls = self.config.tls
        conn = aiohttp.TCPConnector(ssl=tls.http_client) if tls.http_client else None
        name = {"server_hostname": tls.node_verify_server_name} \
            if tls.node_verify_server_name else {}
        auth = {"Authorization": self.identity_header} if self.identity_header else None
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                     headers=auth, connector=conn), name

    def _peers_if_moved(self):
        """A member restarted under new addresses (a pod or VM that got a new IP) without
        -join: the others still send to the old ones, so it would never hear its leader
        again. It asks them, as a -join would, to take its new addresses: the HTTP addresses
        of the other members in its own configuration."""
        cfg = self.config
        members = self.raft.members
        me = next((m for m in members if m.node_id == cfg.node_id), None)
        if me is None or (me.raft_addr == cfg.raft_advertise
                          and me.http_addr in ("", cfg.http_advertise)):
            return []
        peers = [m.http_addr for m in members if m.node_id != cfg.node_id and m.http_addr]
        if peers:
            log.warning("%s: this member's addresses changed (Raft %s -> %s, HTTP %s -> %s); "
                        "asking the other members (%s) to take the new ones", cfg.node_id,
                        me.raft_addr, cfg.raft_advertise, me.http_addr, cfg.http_advertise,
                        ", ".join(peers))
        else:
            log.warning("%s: this member's addresses changed (Raft %s -> %s) but it is its "
                        "group's only member: the configuration keeps the old ones",
                        cfg.node_id, me.raft_addr, cfg.raft_advertise)
        return peers

    async def _join_quietly(self, addrs):
        try:
            await self._join(addrs)
        except (RaftSQLiteError, asyncio.CancelledError) as e:
            log.info("re-join skipped: %s", e)

    # ---- status -----------------------------------------------------------------------
    def stats(self) -> dict:
        s = self.store.stats()
        s["sharding"] = self.sharding.stats()
        s["group_settings"] = s["fsm"].pop("group_settings", None)
        if self.auto_vacuum is not None:
            s["auto_vacuum"] = self.auto_vacuum.stats()
        s["node"] = {"node_id": self.config.node_id, "shard": self.config.shard,
                     "http_addr": self.config.http_advertise,
                     "raft_addr": self.config.raft_advertise, "voter": self.config.voter,
                     "data_dir": os.path.abspath(self.config.data_dir)}
        if self.auto_backup is not None:
            s["auto_backup"] = self.auto_backup.stats()
        if self.auto_restore is not None:
            s["auto_restore"] = self.auto_restore.stats()
        if self.config.bootstrap_expect:
            if self.bootstrap_plan is None:
                from raftsqlite.bootstrap import load_plan
                try:
                    self.bootstrap_plan = load_plan(self.config.data_dir)
                except RaftSQLiteError:
                    pass
            s["node"]["bootstrap"] = dict(
                self.autoboot.stats() if self.autoboot else {},
                expect=self.config.bootstrap_expect,
                initial_members=[m["node_id"] for m in self.bootstrap_plan or ()])
        return s


def _error_text(text):
    try:
        import orjson
        return str(orjson.loads(text).get("error") or text)
    except Exception:  # noqa: BLE001 - not our JSON shape: show it as it came
        return text[:500]


def _url(addr, path, scheme="http"):
    if "://" not in addr:
        addr = scheme + "://" + addr
    return addr.rstrip("/") + path


async def run_node(config: NodeConfig, stop_event: asyncio.Event = None):
    """Start a node, run until ``stop_event`` (or SIGTERM/SIGINT), then stop cleanly."""
    import signal
    node = Node(config)
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop_event.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await node.start()
        print(f"raft-sqlite node {config.node_id} ready: HTTP {config.http_advertise}, "
              f"Raft {config.raft_advertise}, data {os.path.abspath(config.data_dir)}",
              flush=True)
        await stop_event.wait()
    finally:
        await node.stop()
