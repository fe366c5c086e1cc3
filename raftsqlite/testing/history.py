"""A recorded history of client operations, in the style of Jepsen.

Every operation a workload client issues is recorded twice: when it is invoked and when
it completes. The outcome is one of

- ``ok``: the system answered and the answer is definite (a read's rows, a write's
  ``rows_affected``);
- ``failed``: the operation definitely did not take effect (refused before it reached
  the log, a 4xx, a rolled-back transaction);
- ``unknown``: it may or may not have taken effect (timeout, connection dropped after
  sending, a 5xx that does not say the proposal was dropped).

Checkers treat ``unknown`` writes as "may have happened at any time after their
invocation, or never"; that is why the distinction from ``failed`` matters and why a
client must never call something ``failed`` that might still commit.

Times come from ``time.monotonic()`` of the recording process, so invoke/complete order
between clients of one process is real-time order.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

OK = "ok"
FAILED = "failed"
UNKNOWN = "unknown"
OUTCOMES = (OK, FAILED, UNKNOWN)


@dataclass
class Op:
    """One client operation.

    ``f`` names the operation (``read``, ``write``, ``cas``, ``transfer``, ``append``,
    ``read_all``...). ``value`` is what the client asked for (the value written, the
    ``[old, new]`` of a CAS); ``result`` is what the system answered (the value read,
    whether a CAS applied).
    """

    id: int
    process: int
    f: str
    key: Any = None
    value: Any = None
    invoke: float = 0.0
    complete: float | None = None
    outcome: str | None = None       # None while in flight
    result: Any = None
    node: str | None = None
    level: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Op":
        return cls(**d)


@dataclass
class Event:
    """Something that is not a client operation: a fault injected or healed."""

    time: float
    kind: str
    detail: dict = field(default_factory=dict)


class History:
    """An append-only record of operations and nemesis events.

    Single event loop use: no locking. ``clock`` is injectable so tests can build
    histories with exact times.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self.ops: list[Op] = []
        self.events: list[Event] = []
        self.start = clock()

    def now(self) -> float:
        return self._clock()

    # -- recording -------------------------------------------------------------------
    def invoke(self, process: int, f: str, key=None, value=None, node=None, level=None,
               at: float | None = None) -> Op:
        op = Op(id=len(self.ops), process=process, f=f, key=key, value=value,
                invoke=self.now() if at is None else at, node=node, level=level)
        self.ops.append(op)
        return op

    def _complete(self, op: Op, outcome: str, result, error, at) -> Op:
        if op.outcome is not None:
            raise ValueError(f"op {op.id} already completed as {op.outcome}")
        op.outcome = outcome
        op.result = result
        op.error = None if error is None else str(error)[:500]
        op.complete = self.now() if at is None else at
        return op

    def ok(self, op: Op, result=None, at: float | None = None) -> Op:
        return self._complete(op, OK, result, None, at)

    def fail(self, op: Op, error=None, at: float | None = None) -> Op:
        return self._complete(op, FAILED, None, error, at)

    def unknown(self, op: Op, error=None, at: float | None = None) -> Op:
        return self._complete(op, UNKNOWN, None, error, at)

    def event(self, kind: str, at: float | None = None, **detail) -> Event:
        ev = Event(self.now() if at is None else at, kind, detail)
        self.events.append(ev)
        return ev

    def close_pending(self, error="still in flight when the run ended") -> int:
        """Mark operations that never completed as unknown (they may still commit)."""
        n = 0
        for op in self.ops:
            if op.outcome is None:
                self.unknown(op, error)
                n += 1
        return n

    # -- reading ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def select(self, f: str | Iterable[str] | None = None, outcome: str | None = None,
               key=None) -> list[Op]:
        fs = None if f is None else ({f} if isinstance(f, str) else set(f))
        return [op for op in self.ops
                if (fs is None or op.f in fs)
                and (outcome is None or op.outcome == outcome)
                and (key is None or op.key == key)]

    def counts(self) -> dict:
        c = {OK: 0, FAILED: 0, UNKNOWN: 0, "pending": 0}
        for op in self.ops:
            c[op.outcome or "pending"] += 1
        return c

    def stats(self) -> dict:
        by_f: dict[str, dict] = {}
        for op in self.ops:
            d = by_f.setdefault(op.f, {OK: 0, FAILED: 0, UNKNOWN: 0, "pending": 0})
            d[op.outcome or "pending"] += 1
        return {"ops": len(self.ops), **self.counts(), "by_f": by_f,
                "events": len(self.events)}

    # -- persistence -----------------------------------------------------------------
    def dump(self, path) -> None:
        """One JSON object per line: ops then events, times relative to the start."""
        with open(path, "w") as fh:
            for op in self.ops:
                d = op.to_dict()
                d["invoke"] = round(d["invoke"] - self.start, 6)
                if d["complete"] is not None:
                    d["complete"] = round(d["complete"] - self.start, 6)
                fh.write(json.dumps({"op": d}, default=repr) + "\n")
            for ev in self.events:
                fh.write(json.dumps({"event": {"time": round(ev.time - self.start, 6),
                                               "kind": ev.kind, "detail": ev.detail}},
                                    default=repr) + "\n")

    @classmethod
    def load(cls, path) -> "History":
        h = cls(clock=lambda: 0.0)
        h.start = 0.0
        with open(path) as fh:
            for line in fh:
                rec = json.loads(line)
                if "op" in rec:
                    h.ops.append(Op.from_dict(rec["op"]))
                else:
                    e = rec["event"]
                    h.events.append(Event(e["time"], e["kind"], e["detail"]))
        return h
