"""rqlite's automatic bootstrapping (``-bootstrap-expect N -join a,b,c``), made safe.

Every node is started with the same flags; the first N ``-join`` addresses in natural
sorted order are the initial members (etcd's ``initial-cluster``, written the rqlite way; any
further addresses are nodes that join later). A fresh node asks every address
``POST /notify`` ("who are you, what is your state") until the N initial ones answer, then
*declares* the initial voter set S = the N (node id, Raft address, HTTP address) it saw,
stored durably in ``<data>/bootstrap.json`` before any other node can see it. A node
bootstraps the Raft group with S only when every member of S has declared exactly S, or
when some member already holds a log bootstrapped from S. All members bootstrap with the
identical S, so they hold identical first entries and form one group.

Why this cannot make two groups (docs/design/bootstrap.md has the argument): a node
declares at most one set and never changes it (the file outlives restarts), and it
bootstraps only a set every member of which declared it; two different bootstrapped
sets would need a node that declared both. A node that is not among the N (a 4th node
with the same flags), a node whose data dir already holds a log, and a fresh node that
sees a member with a log, never bootstrap: they join (or, with a log, just restart).

The deciding step (``decide``) is a pure function of what the addresses answered, so
its cases are unit-tested without sockets.
"""
import asyncio
import json
import logging
import os

from raftsqlite.codec.model import Member
from raftsqlite.config import initial_addresses
from raftsqlite.errors import ConfigError, SettingsMismatch, Unavailable

log = logging.getLogger("raftsqlite.bootstrap")

PLAN_FILE = "bootstrap.json"


# ---- the durable declaration -----------------------------------------------------------
def load_plan(data_dir):
    """The initial voter set this node declared, or None."""
    path = os.path.join(data_dir, PLAN_FILE)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        # never guess: a node that may have declared a set must not declare another
        raise ConfigError(f"{path} is unreadable ({e}); it records the initial members this "
                          f"node agreed to: restore it, or wipe the data dir") from None
    plan = doc.get("members") if isinstance(doc, dict) else None
    if not isinstance(plan, list) or not plan:
        raise ConfigError(f"{path} holds no member list; restore it or wipe the data dir")
    return plan


def save_plan(data_dir, plan):
    """Write the declaration durably (temp file, fsync, rename, fsync of the directory)
    before anyone can read it through /notify."""
    path = os.path.join(data_dir, PLAN_FILE)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(json.dumps({"members": plan}, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- what a node says about itself (POST /notify) --------------------------------------
def node_info(node) -> dict:
    cfg, raft = node.config, node.raft
    fresh = raft.last_log_index == 0 and raft.last_snapshot_index == 0 and raft.term == 0
    plan = getattr(node, "bootstrap_plan", None)
    if plan is None and cfg.bootstrap_expect:
        plan = node.bootstrap_plan = load_plan(cfg.data_dir)
    return {"node_id": cfg.node_id, "raft_addr": cfg.raft_advertise,
            "http_addr": cfg.http_advertise, "voter": cfg.voter, "fresh": fresh,
            "bootstrap_expect": cfg.bootstrap_expect, "plan": plan,
            "leader": raft.leader_id, "settings": _settings_doc(node)}


def _settings_doc(node):
    gs = getattr(node, "group_settings", None)
    return gs.doc() if gs is not None else None


def settings_conflict(mine, answers):
    """The first /notify answer whose group settings (-fk, -extensions-path;
    group_settings.py) differ from ``mine``, as a SettingsMismatch naming both, else
    None. Caught here, before anyone bootstraps: a member applying the log otherwise
    would only be stopped when it applied the group's settings record, with entries
    before it possibly applied differently already."""
    if mine is None:
        return None
    from raftsqlite.group_settings import GroupSettings
    for addr, info in answers:
        if not isinstance(info, dict) or info.get("settings") is None:
            continue
        try:
            theirs = GroupSettings.from_doc(info["settings"])
        except ConfigError as e:
            return SettingsMismatch(f"-bootstrap-expect: {addr} sent bad settings: {e}")
        if theirs != mine:
            return SettingsMismatch(
                f"-bootstrap-expect: node {info.get('node_id')} ({addr}) has "
                f"{theirs.describe()}; this node has {mine.describe()}. Every member must "
                f"apply the log the same way: start them all with the same -fk and "
                f"-extensions-path")
    return None


def blueprint():
    from sanic import Blueprint

    from raftsqlite.http import wire
    bp = Blueprint("bootstrap")

    @bp.post("/notify")
    async def notify(request):
        # rqlite's nodes POST their id and address here; we only answer with our own
        # state (the caller decides), so the body is not needed
        return wire.json_response(node_info(request.app.ctx.node))
    return bp


# ---- the decision ----------------------------------------------------------------------
def initial_set(infos):
    return sorted(({"node_id": i["node_id"], "raft_addr": i["raft_addr"],
                    "http_addr": i["http_addr"]} for i in infos), key=lambda m: m["node_id"])


def decide(me, plan, answers, expect, voter=True, others=(), my_raft=None):
    """-> (action, detail). ``answers``: [(address, info dict or an error string)], one per
    initial address (``config.initial_addresses``); ``others``: the same for the rest of
    the -join list, looked at only to find an existing group; ``plan``: the set this node
    declared, or None. Actions: "bootstrap" (detail: the set), "declare" (the set to store
    first), "join", "wait" (why)."""
    infos = [i for _, i in answers if isinstance(i, dict)]
    anyone = infos + [i for _, i in others if isinstance(i, dict)]
    if plan is not None:
        ids = [m["node_id"] for m in plan]
        if any(not i["fresh"] and i.get("plan") == plan for i in infos):
            return "bootstrap", plan       # a member already formed the group from it
        by_id = {i["node_id"]: i for i in infos}
        if all(by_id.get(n, {}).get("plan") == plan for n in ids):
            return "bootstrap", plan
        other = [i for i in infos if i["node_id"] in ids and i.get("plan") not in (None, plan)]
        if other:
            return "wait", (f"node {other[0]['node_id']} declared other initial members "
                            f"({_names(other[0]['plan'])}) than this node "
                            f"({_names(plan)}): check that every node has the same -join "
                            f"and -bootstrap-expect")
        missing = [n for n in ids if by_id.get(n, {}).get("plan") != plan]
        return "wait", f"waiting for {', '.join(missing)} to confirm the initial members"
    if any(not i["fresh"] for i in anyone):
        return "join", None
    down = [f"{a} ({i})" for a, i in answers if not isinstance(i, dict)]
    if down:
        return "wait", (f"{len(infos)} of {expect} nodes up; waiting for "
                        f"{'; '.join(down)}")
    ids = [i["node_id"] for i in infos]
    if len(set(ids)) != len(ids):
        dup = next(n for n in ids if ids.count(n) > 1)
        return "wait", (f"node {dup} answers at two -join addresses: list each initial "
                        f"member once, and give every node its own -node-id")
    if me not in ids or not voter:
        return "wait", "not one of the initial members: waiting for them to form the group"
    mine = next(i for i in infos if i["node_id"] == me)
    if my_raft is not None and mine["raft_addr"] != my_raft:
        return "wait", (f"another node ({mine['raft_addr']}) answers with this node's id "
                        f"{me}: give every node its own -node-id")
    odd = [i for i in infos if not i["voter"] or i.get("bootstrap_expect") != expect]
    if odd:
        i = odd[0]
        return "wait", (f"node {i['node_id']} is started with -bootstrap-expect "
                        f"{i.get('bootstrap_expect')}" + (" as a non-voter" if not i["voter"]
                                                          else "") +
                        f", this one with {expect}: every initial member needs the same flags")
    s = initial_set(infos)
    other = [i for i in infos if i.get("plan") not in (None, s)]
    if other:
        return "wait", (f"node {other[0]['node_id']} declared other initial members "
                        f"({_names(other[0]['plan'])}) than this node sees ({_names(s)})")
    return "declare", s


def _names(plan):
    return ", ".join(str(m.get("node_id")) for m in plan or ())


# ---- the loop --------------------------------------------------------------------------
class AutoBootstrap:
    """Runs on a fresh node at start (``Node.start``) until the node bootstrapped or joined
    the group, or ``bootstrap_expect_timeout`` ended (Unavailable: the node exits; started
    again, it resumes from its declaration, if it made one)."""

    def __init__(self, node):
        self.node = node
        self.cfg = node.config
        self.rounds = 0
        self.last_reason = ""

    async def run(self):
        import aiohttp
        node, cfg = self.node, self.cfg
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.bootstrap_expect_timeout
        plan = node.bootstrap_plan = load_plan(cfg.data_dir)
        initial = initial_addresses(cfg.join, cfg.bootstrap_expect)
        rest = [a for a in cfg.join if a not in initial]
        interval = cfg.join_interval or 0.5
        warned = loop.time()
        session, kw = node.peer_session(5)
        async with session:
            while True:
                self.rounds += 1
                got = await asyncio.gather(*(self._notify(session, kw, a, aiohttp)
                                             for a in initial + rest))
                answers = list(zip(initial + rest, got))
                err = settings_conflict(getattr(node, "group_settings", None), answers)
                if err is not None:
                    raise err
                action, detail = decide(cfg.node_id, plan, answers[:len(initial)],
                                        cfg.bootstrap_expect, cfg.voter,
                                        others=answers[len(initial):],
                                        my_raft=cfg.raft_advertise)
                if action == "declare":
                    save_plan(cfg.data_dir, detail)
                    plan = node.bootstrap_plan = detail
                    log.info("%s: declared the initial members %s", cfg.node_id,
                             _names(detail))
                    continue        # ask again at once: the others may have declared too
                if action == "bootstrap":
                    raft = node.raft
                    if raft.term > 0 or raft.last_log_index or raft.last_snapshot_index:
                        # the others bootstrapped the same set first and their leader
                        # already reached us: its entries are the ones ours would be
                        log.warning("%s: the group of %s formed; its leader reached this "
                                    "node first", cfg.node_id, _names(detail))
                        return
                    await raft.bootstrap([Member(m["node_id"], m["raft_addr"],
                                                      m["http_addr"], True) for m in detail])
                    log.warning("%s: bootstrapped the group of %s (-bootstrap-expect %d)",
                                cfg.node_id, _names(detail), cfg.bootstrap_expect)
                    return
                if action == "join":
                    log.info("%s: a group exists among the -join addresses: joining it",
                             cfg.node_id)
                    await node._join(cfg.join)
                    return
                self.last_reason = detail
                now = loop.time()
                if now >= deadline:
                    raise Unavailable(f"-bootstrap-expect {cfg.bootstrap_expect}: no group "
                                      f"formed within {cfg.bootstrap_expect_timeout:g}s: "
                                      f"{detail}")
                if now - warned >= 10:
                    warned = now
                    log.warning("%s: -bootstrap-expect: %s", cfg.node_id, detail)
                else:
                    log.info("%s: -bootstrap-expect: %s", cfg.node_id, detail)
                await asyncio.sleep(min(interval, max(0.0, deadline - now)))

    async def _notify(self, session, kw, addr, aiohttp):
        from raftsqlite.node import _url
        cfg = self.cfg
        url = _url(addr, "/notify", cfg.tls.scheme)
        body = {"id": cfg.node_id, "addr": cfg.raft_advertise,
                "http_addr": cfg.http_advertise}
        try:
            async with session.post(url, json=body, **kw) as r:
                text = await r.text()
                if r.status != 200:
                    return f"HTTP {r.status} {text[:120]}"
                info = json.loads(text)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if isinstance(e, aiohttp.ServerDisconnectedError):
                # rqlite 8 scripts list Raft addresses in -join; ours are HTTP ones
                why += " (a Raft address? -join takes HTTP API addresses)"
            return why
        if not isinstance(info, dict) or not info.get("node_id") or "fresh" not in info:
            return "not a raft-sqlite node (bad /notify answer)"
        return info

    def stats(self) -> dict:
        return {"rounds": self.rounds, "waiting_for": self.last_reason}
