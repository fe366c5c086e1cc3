"""A small, strict parser of the Prometheus text exposition format 0.0.4, for tests.

Stricter than Prometheus itself where a laxness would hide a bug of ours: every sample
must belong to a family declared by ``# TYPE`` before it, a family's lines must be
contiguous, no (name, labels) pair may repeat, counters must be named ``*_total`` and
not be negative, and a histogram's buckets must be sorted, cumulative and end in
``le="+Inf"`` equal to its ``_count``, with a ``_sum``. Raises ``ValueError`` naming the
line on the first violation; returns ``{family: Family}``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    typed: bool = False
    samples: list = field(default_factory=list)    # (sample name, labels dict, value)

    def value(self, **labels):
        """The value of the one sample (of the family's own name) with these labels."""
        hits = [v for n, lab, v in self.samples if n == self.name and lab == labels]
        if len(hits) != 1:
            raise KeyError(f"{self.name}{labels}: {len(hits)} samples")
        return hits[0]

    def values(self):
        """{frozenset(labels.items()): value} of the samples named as the family."""
        return {frozenset(lab.items()): v for n, lab, v in self.samples if n == self.name}


def _value(s, where):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
        raise ValueError(f"{where}: bad value {s!r}")
    return float(s)


def _labels(text, i, where):
    """Parse ``{a="b",...}`` starting at text[i] == '{' -> (labels, index after '}')."""
    labels = {}
    i += 1
    while True:
        if i < len(text) and text[i] == "}":
            return labels, i + 1
        m = _LABEL.match(text, i)
        if not m:
            raise ValueError(f"{where}: bad label name at column {i}")
        name = m.group()
        if name in labels:
            raise ValueError(f"{where}: label {name!r} repeated")
        i = m.end()
        if text[i:i + 2] != '="':
            raise ValueError(f"{where}: expected =\" after label {name!r}")
        i += 2
        buf = []
        while True:
            if i >= len(text):
                raise ValueError(f"{where}: unterminated label value")
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1:i + 2]
                if nxt not in _ESCAPES:
                    raise ValueError(f"{where}: bad escape \\{nxt} in label value")
                buf.append(_ESCAPES[nxt])
                i += 2
            elif ch == '"':
                i += 1
                break
            else:
                buf.append(ch)
                i += 1
        labels[name] = "".join(buf)
        if i < len(text) and text[i] == ",":
            i += 1
            if i < len(text) and text[i] == "}":
                return labels, i + 1        # a trailing comma is allowed
        elif i < len(text) and text[i] == "}":
            return labels, i + 1
        else:
            raise ValueError(f"{where}: expected , or }} after a label value")


def _family_of(name, families):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[:-len(suffix)]
            f = families.get(base)
            if f is not None and f.type in ("histogram", "summary"):
                return f
    return families.get(name)


def parse(text):
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    families = {}
    closed = set()          # families whose lines are over
    current = None
    seen = set()
    for n, line in enumerate(text.split("\n")[:-1], start=1):
        where = f"line {n}"
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not _NAME.fullmatch(name):
                    raise ValueError(f"{where}: bad metric name {name!r}")
                if name in closed:
                    raise ValueError(f"{where}: family {name!r} resumed after another")
                f = families.setdefault(name, Family(name))
                if current is not None and current is not f:
                    closed.add(current.name)
                current = f
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    if f.help is not None:
                        raise ValueError(f"{where}: second HELP for {name!r}")
                    f.help = re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\"}.get(
                        m.group(1), "\\" + m.group(1)), rest)
                else:
                    if f.samples or f.typed:
                        raise ValueError(f"{where}: TYPE for {name!r} after its samples "
                                         "or twice")
                    if rest not in _TYPES:
                        raise ValueError(f"{where}: bad type {rest!r}")
                    f.type = rest
                    f.typed = True
                    if rest == "counter" and not name.endswith("_total"):
                        raise ValueError(f"{where}: counter {name!r} does not end in _total")
            continue
        m = _NAME.match(line)
        if not m:
            raise ValueError(f"{where}: bad sample line {line!r}")
        name = m.group()
        i = m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = _labels(line, i, where)
        if i >= len(line) or line[i] != " ":
            raise ValueError(f"{where}: expected a space before the value")
        fields = line[i + 1:].split(" ")
        if len(fields) not in (1, 2):
            raise ValueError(f"{where}: expected a value and an optional timestamp")
        value = _value(fields[0], where)
        if len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1]):
            raise ValueError(f"{where}: bad timestamp {fields[1]!r}")
        f = _family_of(name, families)
        if f is None or not f.typed:
            raise ValueError(f"{where}: sample {name!r} has no TYPE line before it")
        if f is not current:
            raise ValueError(f"{where}: sample {name!r} outside its family's block")
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise ValueError(f"{where}: duplicate sample {name}{labels}")
        seen.add(key)
        if f.type == "counter" and (value < 0 or math.isnan(value)):
            raise ValueError(f"{where}: counter {name!r} is {value}")
        if f.type == "histogram":
            if name == f.name:
                raise ValueError(f"{where}: histogram sample without a suffix")
            if name.endswith("_bucket") and "le" not in labels:
                raise ValueError(f"{where}: bucket without le")
            if not name.endswith("_bucket") and "le" in labels:
                raise ValueError(f"{where}: le on a non-bucket sample")
        f.samples.append((name, labels, value))
    for f in families.values():
        if f.type == "histogram":
            _check_histogram(f)
    return families


def _check_histogram(f):
    series = {}
    for name, labels, value in f.samples:
        base = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if name.endswith("_bucket"):
            s["buckets"].append((_value(labels["le"], f.name + " le"), value))
        elif name.endswith("_sum"):
            s["sum"] = value
        elif name.endswith("_count"):
            s["count"] = value
    for base, s in series.items():
        b = s["buckets"]
        what = f"{f.name}{dict(base)}"
        if not b or b[-1][0] != math.inf:
            raise ValueError(f"{what}: buckets must end in le=\"+Inf\"")
        les = [le for le, _ in b]
        if les != sorted(les) or len(set(les)) != len(les):
            raise ValueError(f"{what}: bucket bounds not strictly increasing")
        counts = [c for _, c in b]
        if any(x > y for x, y in zip(counts, counts[1:])):
            raise ValueError(f"{what}: bucket counts not cumulative")
        if s["count"] is None or s["sum"] is None:
            raise ValueError(f"{what}: missing _count or _sum")
        if s["count"] != counts[-1]:
            raise ValueError(f"{what}: _count {s['count']} != +Inf bucket {counts[-1]}")
