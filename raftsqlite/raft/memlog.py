"""An in-memory LogReader with the write side a driver needs: the "disk" of the unit
tests and the simulator. Only what ``apply_ready`` stored is here, so dropping the core
and keeping this object is exactly a crash that loses everything not yet fsynced."""
from raftsqlite.codec.model import SnapshotMeta
from raftsqlite.raft.types import HardState


class MemLog:
    def __init__(self):
        self._snap = SnapshotMeta(0, 0, [])
        self._ents = []          # entries after the snapshot, contiguous
        self._hs = HardState()
        self.snapshot_data = None   # opaque state-machine image matching _snap (sim use)

    # ---- LogReader ----
    def first_index(self):
        return self._snap.index + 1

    def last_index(self):
        return self._snap.index + len(self._ents)

    def term(self, index):
        si = self._snap.index
        if index == si:
            return self._snap.term
        k = index - si - 1
        if k < 0 or k >= len(self._ents):
            raise IndexError(f"term({index}) outside [{si}, {self.last_index()}]")
        return self._ents[k].term

    def entries(self, lo, hi, max_bytes):
        si = self._snap.index
        if lo <= si or hi > self.last_index() + 1 or lo >= hi:
            raise IndexError(f"entries({lo}, {hi}) outside ({si}, {self.last_index() + 1}]")
        out = []
        size = 0
        for e in self._ents[lo - si - 1:hi - si - 1]:
            size += len(e.data) + 24
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def snapshot_meta(self):
        return self._snap

    def hard_state(self):
        return HardState(self._hs.term, self._hs.vote, self._hs.commit)

    # ---- write side ----
    def append(self, entries):
        """Overwrite semantics: drop everything from entries[0].index, then append."""
        if not entries:
            return
        si = self._snap.index
        first = entries[0].index
        if first <= si:
            raise ValueError(f"append at {first} at or below snapshot {si}")
        if first > self.last_index() + 1:
            raise ValueError(f"append at {first} leaves a gap after {self.last_index()}")
        del self._ents[first - si - 1:]
        self._ents.extend(entries)

    def set_hard_state(self, hs):
        self._hs = HardState(hs.term, hs.vote, hs.commit)

    def install_snapshot(self, meta, data=None):
        """Reset the log to a received snapshot."""
        self._snap = SnapshotMeta(meta.index, meta.term, meta.members)
        self._ents = []
        self.snapshot_data = data
        if self._hs.commit < meta.index:
            self._hs = HardState(self._hs.term, self._hs.vote, meta.index)

    def compact(self, index, members, data=None):
        """Take a snapshot at ``index`` (applied) and drop the entries up to it."""
        si = self._snap.index
        if index <= si:
            return
        if index > self.last_index():
            raise ValueError(f"compact to {index} beyond last index {self.last_index()}")
        t = self.term(index)
        del self._ents[:index - si]
        self._snap = SnapshotMeta(index, t, members)
        self.snapshot_data = data

    def apply_ready(self, rd, snapshot_data=None):
        """Step 1 of the Ready cycle, all at once."""
        if rd.snapshot is not None:
            self.install_snapshot(rd.snapshot, snapshot_data)
        if rd.entries:
            self.append(rd.entries)
        if rd.hard_state is not None:
            self.set_hard_state(rd.hard_state)
