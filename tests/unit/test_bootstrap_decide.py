"""bootstrap.decide: what a -bootstrap-expect node does with its peers' /notify answers,
and the durable declaration. The safety rule under test: a node bootstraps a set only when
every member of it declared that same set (or one of them already holds a log made from
it); it never declares a second set; a node outside the set, or seeing an existing group,
joins."""
import itertools
import random

import pytest

from raftsqlite.bootstrap import decide, initial_set, load_plan, save_plan
from raftsqlite.config import initial_addresses
from raftsqlite.errors import ConfigError


def info(nid, fresh=True, plan=None, voter=True, expect=3):
    return {"node_id": nid, "raft_addr": f"{nid}:2", "http_addr": f"{nid}:1", "voter": voter,
            "fresh": fresh, "bootstrap_expect": expect, "plan": plan, "leader": None}


def answers(*infos):
    return [(f"addr{k}", i) for k, i in enumerate(infos)]


ABC = initial_set([info("a"), info("b"), info("c")])


def test_all_up_and_fresh_declares_the_sorted_set():
    act, s = decide("b", None, answers(info("c"), info("a"), info("b")), 3)
    assert act == "declare" and [m["node_id"] for m in s] == ["a", "b", "c"]
    assert s == ABC


def test_declared_set_is_independent_of_address_order():
    """Every node computes the identical set whatever order its -join list has."""
    base = [info("a"), info("b"), info("c")]
    sets = {str(decide("a", None, answers(*p), 3)[1]) for p in itertools.permutations(base)}
    assert len(sets) == 1


def test_two_of_three_waits():
    act, why = decide("a", None, [("x", info("a")), ("y", info("b")), ("z", "refused")], 3)
    assert act == "wait" and "2 of 3" in why and "z" in why


def test_bootstrap_only_when_every_member_declared_the_same_set():
    act, _ = decide("a", ABC, answers(info("a", plan=ABC), info("b", plan=ABC),
                                      info("c")), 3)
    assert act == "wait"
    act, s = decide("a", ABC, answers(info("a", plan=ABC), info("b", plan=ABC),
                                      info("c", plan=ABC)), 3)
    assert act == "bootstrap" and s == ABC


def test_a_member_unreachable_after_the_others_formed_the_group():
    """A declared node bootstraps when a member already holds a log made from its set,
    even if another member is down now."""
    act, s = decide("c", ABC, answers(info("a", fresh=False, plan=ABC), "down",
                                      info("c", plan=ABC)), 3)
    assert act == "bootstrap" and s == ABC


def test_conflicting_declarations_never_bootstrap():
    other = initial_set([info("a"), info("b"), info("d")])
    act, why = decide("a", ABC, answers(info("a", plan=ABC), info("b", plan=other),
                                        info("c", plan=ABC)), 3)
    assert act == "wait" and "declared other" in why
    act, why = decide("c", None, answers(info("a", plan=other), info("b"), info("c")), 3)
    assert act == "wait" and "declared other" in why


def test_existing_group_means_join():
    for me in ("a", "d"):
        act, _ = decide(me, None, answers(info("a", fresh=False), info("b"), "down"), 3)
        assert act == "join"


def test_addresses_beyond_the_initial_ones_only_reveal_a_group():
    """With more -join addresses than N, the extra ones never enter the set; a node there
    with a log still means "a group exists: join it"."""
    act, s = decide("a", None, answers(info("a"), info("b"), info("c")), 3,
                    others=[("x", info("d")), ("y", "down")])
    assert act == "declare" and s == ABC
    act, _ = decide("a", None, answers(info("a"), info("b"), "down"), 3,
                    others=[("x", info("d", fresh=False))])
    assert act == "join"


def test_not_an_initial_member_waits_then_joins():
    act, why = decide("d", None, answers(info("a"), info("b"), info("c")), 3)
    assert act == "wait" and "not one of the initial members" in why
    act, why = decide("a", None, answers(info("a"), info("b"), info("c")), 3, voter=False)
    assert act == "wait"


def test_mismatched_flags_and_duplicates_wait_with_a_reason():
    act, why = decide("a", None, answers(info("a"), info("b", expect=2), info("c")), 3)
    assert act == "wait" and "same flags" in why
    act, why = decide("a", None, answers(info("a"), info("b", voter=False), info("c")), 3)
    assert act == "wait" and "non-voter" in why
    act, why = decide("a", None, answers(info("a"), info("b"), info("c")), 3,
                      my_raft="elsewhere:2")
    assert act == "wait" and "its own -node-id" in why
    act, why = decide("a", None, answers(info("a"), info("a"), info("c")), 3)
    assert act == "wait" and "two -join addresses" in why


def test_random_views_never_bootstrap_two_sets():
    """Simulate nodes a..e (any subset up, any declarations so far, -join lists of 3 or 4
    that differ, or the same list in different orders) deciding in random order: no two different sets are ever bootstrapped, and
    no node declares twice."""
    rng = random.Random(5)
    names = "abcde"
    for trial in range(300):
        lists = {n: rng.sample(names, rng.choice((3, 4))) for n in names}
        if rng.random() < 0.5:
            same = rng.sample(names, rng.choice((3, 4)))
            lists = {n: rng.sample(same, len(same)) for n in names}   # any order
        state = {n: {"fresh": True, "plan": None, "up": rng.random() < 0.9} for n in names}
        booted = set()
        for _ in range(40):
            me = rng.choice(names)
            st = state[me]
            if not st["up"] or not st["fresh"]:
                continue
            ans = []
            initial = [a.split(":")[0]
                       for a in initial_addresses([f"{p}:1" for p in lists[me]], 3)]
            for peer in initial + [p for p in lists[me] if p not in initial]:
                ps = state[peer]
                if not ps["up"] or rng.random() < 0.2:
                    ans.append((peer, "down"))
                else:
                    ans.append((peer, info(peer, fresh=ps["fresh"], plan=ps["plan"])))
            act, d = decide(me, st["plan"], ans[:3], 3, others=ans[3:])
            if act == "declare":
                assert st["plan"] is None
                st["plan"] = d
            elif act == "bootstrap":
                assert d == st["plan"]
                st["fresh"] = False
                booted.add(str(d))
        assert len(booted) <= 1, (trial, lists, booted)


def test_plan_file_roundtrip_and_damage(tmp_path):
    d = str(tmp_path)
    assert load_plan(d) is None
    save_plan(d, ABC)
    assert load_plan(d) == ABC
    (tmp_path / "bootstrap.json").write_bytes(b"{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        load_plan(d)
    (tmp_path / "bootstrap.json").write_bytes(b"{}")
    with pytest.raises(ConfigError):
        load_plan(d)


def test_different_group_settings_stop_the_bootstrap_before_it_starts():
    """Invariant: a /notify answer whose -fk / -extensions-path settings differ from this
    node's is a SettingsMismatch naming both (before anyone bootstraps); equal settings,
    answers without settings (older nodes) and unreachable nodes are not."""
    from raftsqlite.bootstrap import settings_conflict
    from raftsqlite.errors import SettingsMismatch
    from raftsqlite.group_settings import GroupSettings
    mine = GroupSettings(True)
    same = {"node_id": "b", "settings": GroupSettings(True).doc()}
    other = {"node_id": "c", "settings": GroupSettings(False).doc()}
    assert settings_conflict(mine, [("h1:1", same), ("h2:1", "ConnectionRefused"),
                                    ("h3:1", {"node_id": "d"})]) is None
    err = settings_conflict(mine, [("h1:1", same), ("h3:1", other)])
    assert isinstance(err, SettingsMismatch)
    assert "node c (h3:1)" in str(err) and "not enforced" in str(err) \
        and "foreign keys enforced" in str(err)
    assert isinstance(settings_conflict(mine, [("h4:1", {"node_id": "e", "settings": 5})]),
                      SettingsMismatch)
    assert settings_conflict(None, [("h3:1", other)]) is None
