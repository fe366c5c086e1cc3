"""The catalog's member lists follow each group's Raft configuration (sharding/members.py,
``catalog.sync_members``): who reports, what, and which reports the catalog ignores."""
import pytest

from raftsqlite import errors
from raftsqlite.codec.model import Member
from raftsqlite.sharding.catalog import Catalog
from raftsqlite.sharding.members import report


class _Core:
    def __init__(self, conf_index, term, allowed=True):
        self.conf_index, self.term, self.allowed = conf_index, term, allowed

    def conf_change_allowed(self):
        return self.allowed


class _Raft:
    def __init__(self, core):
        self.core = core


class _Store:
    def __init__(self, ids, conf_index=10, term=2, leader=True, allowed=True):
        self.raft = _Raft(_Core(conf_index, term, allowed))
        self._leader = leader
        self._ms = [Member(i, f"r-{i}", f"h-{i}", True) for i in ids]

    def is_leader(self):
        return self._leader

    def members(self):
        return list(self._ms)


def _cat():
    cat = Catalog()
    cat.apply("catalog.add_group", {"group": "s1", "members": [
        {"node_id": n, "raft_addr": f"r-{n}", "http_addr": f"h-{n}"} for n in ("a", "b", "c")]})
    return cat


def test_only_a_settled_leader_reports_and_only_a_difference():
    """Invariant: a follower, a leader with a change pending (or not yet committed in its
    term), a group the catalog does not know, and a configuration equal to the list all
    report nothing; a removed member makes the settled leader report the new list."""
    cat = _cat()
    assert report(_Store(["a", "b", "c"]), cat, "s1") is None
    assert report(_Store(["a", "b"], leader=False), cat, "s1") is None
    assert report(_Store(["a", "b"], allowed=False), cat, "s1") is None
    assert report(_Store(["a", "b"]), cat, "nope") is None
    args = report(_Store(["a", "b"], conf_index=12, term=3), cat, "s1")
    assert args["conf_index"] == 12 and args["term"] == 3
    assert [m["node_id"] for m in args["members"]] == ["a", "b"]
    cat.apply("catalog.sync_members", args)
    assert sorted(cat.groups["s1"]["members"]) == ["a", "b"]
    assert report(_Store(["a", "b"], conf_index=12, term=3), cat, "s1") is None


def test_late_reports_of_a_deposed_leader_are_ignored_but_a_higher_term_wins():
    """Invariant: a report with a lower (term, conf_index) than the last applied changes
    nothing (a deposed leader cannot list a removed member again); a higher term wins even
    at a lower index (a group rebuilt by raft-sqlite recover); a report is idempotent."""
    cat = _cat()
    m = lambda *ids: [{"node_id": i, "raft_addr": f"r-{i}", "http_addr": f"h-{i}"} for i in ids]  # noqa: E731
    cat.apply("catalog.sync_members", {"group": "s1", "conf_index": 20, "term": 4, "members": m("a", "b")})
    before = cat.groups["s1"]
    res = cat.apply("catalog.sync_members", {"group": "s1", "conf_index": 15, "term": 4,
                                             "members": m("a", "b", "c")})
    assert res.get("stale") and sorted(cat.groups["s1"]["members"]) == ["a", "b"]
    res = cat.apply("catalog.sync_members", {"group": "s1", "conf_index": 30, "term": 3,
                                             "members": m("a", "b", "c")})
    assert res.get("stale") and cat.groups["s1"] == before
    cat.apply("catalog.sync_members", {"group": "s1", "conf_index": 18, "term": 6, "members": m("a")})
    assert sorted(cat.groups["s1"]["members"]) == ["a"]
    b = cat.to_bytes()
    cat.apply("catalog.sync_members", {"group": "s1", "conf_index": 18, "term": 6, "members": m("a")})
    assert Catalog.from_bytes(cat.to_bytes()).groups == Catalog.from_bytes(b).groups
    with pytest.raises(errors.BadRequest):
        cat.apply("catalog.sync_members", {"group": "s1", "conf_index": 19, "term": 6, "members": []})
