"""Replicated documents: versions with vector clocks, per-field merge rules, digests.

A replica keeps, per document, the *frontier*: the versions no other version it has seen
dominates (usually one; several after concurrent writes). Adding a version drops what it
dominates and is dropped if dominated, so the frontier is the same set whatever the order,
duplication or delay of delivery. The document's value is `resolve(frontier)`: a pure,
deterministic field-by-field merge by each field's rule. A write on top of the frontier
dominates all of it, which is how conflicts end and how resolutions replicate.

Rules: `lww` (latest HLC stamp, ties by node id), `edge_wins` / `cloud_wins` (the side's
write wins; within a side, lww), `max`, `min`, `union` (lists as sorted unique sets),
`counter` (per-node counts added up), `manual` (different concurrent values are kept as
siblings until someone resolves them), and for approval decisions `reject_wins` /
`approve_wins`.

The canonical encoding is JSON with sorted keys and no spaces (UTF-8); a version's digest is
the SHA-256 of the canonical encoding of (collection, key, fields, clock, deleted), so two
digests are equal exactly when values and clocks are equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sync.clocks import ClockError, Order, Stamp, VectorClock, compare, merge, vc

RULES = ("lww", "edge_wins", "cloud_wins", "max", "min", "union", "counter", "manual",
         "reject_wins", "approve_wins")


class DocumentError(Exception):
    retryable = False


class RuleError(DocumentError):
    def __init__(self, key: str, value: Any) -> None:
        self.key, self.value = key, value
        super().__init__(f"{key}: unknown merge rule {value!r} (rules: {', '.join(RULES)})")


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def is_cloud(node: str) -> bool:
    """Cloud writers are named `cloud` or `cloud:<worker>`; everything else is an edge."""
    return node == "cloud" or node.startswith("cloud:")


@dataclass(frozen=True)
class CollectionRules:
    fields: Mapping[str, str] = field(default_factory=dict)
    default: str = "lww"

    def rule(self, name: str) -> str:
        return self.fields.get(name, self.default)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CollectionRules:
        """From a TOML table like { fields = { note = "lww" }, default = "lww" }."""
        unknown = set(data) - {"fields", "default"}
        if unknown:
            raise DocumentError(f"unknown key {sorted(unknown)[0]!r}")
        default = data.get("default", "lww")
        if default not in RULES:
            raise RuleError("default", default)
        fields = data.get("fields", {})
        if not isinstance(fields, Mapping):
            raise DocumentError(f"fields: must be a table (got {fields!r})")
        for name, rule in fields.items():
            if rule not in RULES:
                raise RuleError(f"fields.{name}", rule)
        return cls(dict(fields), default)


BUILTIN: dict[str, CollectionRules] = {
    "runs.control": CollectionRules({"cancel_requested": "max", "priority": "lww",
                                     "context_patch": "lww"}),
    "approvals": CollectionRules({"decision": "reject_wins", "decided_by": "lww",
                                  "note": "lww", "origin": "lww"}),
    "kv": CollectionRules({}, "lww"),
    # a run's lease while a step is handed to the cloud: concurrent writes (the device took
    # the step back while the cloud finished it) are kept as siblings for a person to see
    "runs.lease": CollectionRules({}, "manual"),
}


@dataclass(frozen=True)
class FieldState:
    value: Any
    stamp: Stamp

    def encode(self) -> list[Any]:
        return [self.value, self.stamp.encode()]


@dataclass(frozen=True)
class Version:
    collection: str
    key: str
    fields: Mapping[str, FieldState]
    clock: VectorClock
    deleted: bool = False

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical(self.encode())).hexdigest()

    def encode(self) -> dict[str, Any]:
        return {"c": self.collection, "k": self.key, "d": self.deleted,
                "f": {n: s.encode() for n, s in sorted(self.fields.items())},
                "v": dict(sorted(self.clock.items()))}

    @classmethod
    def decode(cls, data: Any) -> Version:
        try:
            fields = {str(n): FieldState(s[0], Stamp.decode(s[1]))
                      for n, s in dict(data["f"]).items()}
            clock = {str(n): int(c) for n, c in dict(data["v"]).items()}
            if any(c < 0 for c in clock.values()):
                raise ValueError("negative counter")
            return cls(str(data["c"]), str(data["k"]), fields, vc(clock), bool(data["d"]))
        except (KeyError, TypeError, ValueError, IndexError, ClockError) as exc:
            raise DocumentError(f"not a document version: {exc}") from exc

    @property
    def value(self) -> dict[str, Any]:
        return {n: s.value for n, s in self.fields.items()}


# frontier ---------------------------------------------------------------------------------

def add_version(frontier: Iterable[Version], new: Version) -> tuple[Version, ...]:
    """The frontier after seeing `new`: an antichain, canonically ordered by digest."""
    out: list[Version] = []
    for v in frontier:
        order = compare(new.clock, v.clock)
        if order in (Order.BEFORE,):
            return _sorted(frontier)
        if order == Order.EQUAL and v.digest == new.digest:
            return _sorted(frontier)
        # the same clock with different content: only corruption can do this; keep both
        # (deterministically) so that anti-entropy can surface it
        if order == Order.AFTER:
            continue
        out.append(v)
    out.append(new)
    return _sorted(out)


def join(a: Iterable[Version], b: Iterable[Version]) -> tuple[Version, ...]:
    """Merge two frontiers (commutative, associative, idempotent)."""
    out = tuple(a)
    for v in b:
        out = add_version(out, v)
    return out


def _sorted(versions: Iterable[Version]) -> tuple[Version, ...]:
    return tuple(sorted(versions, key=lambda v: v.digest))


def frontier_clock(frontier: Iterable[Version]) -> VectorClock:
    clock: VectorClock = vc()
    for v in frontier:
        clock = merge(clock, v.clock)
    return clock


def frontier_digest(frontier: Iterable[Version]) -> str:
    return hashlib.sha256("".join(v.digest for v in _sorted(frontier)).encode()).hexdigest()


# resolution -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    value: dict[str, Any]
    stamps: dict[str, FieldState]
    siblings: dict[str, list[Any]]  # manual fields with differing concurrent values
    deleted: bool

    @property
    def conflicted(self) -> bool:
        return bool(self.siblings)


def _order_key(s: FieldState) -> tuple[Any, ...]:
    return (s.stamp.wall_ms, s.stamp.logical, s.stamp.node)


def _value_key(v: Any) -> tuple[int, Any]:
    if isinstance(v, bool) or v is None:
        return (0, canonical(v))
    if isinstance(v, (int, float)):
        return (1, v)
    return (2, canonical(v))


def merge_field(rule: str, states: list[FieldState]) -> tuple[FieldState, list[Any] | None]:
    """Merge one field's concurrent states. Returns the state and, for manual, siblings."""
    lww = max(states, key=_order_key)
    if len(states) == 1:
        return states[0], None
    if rule in ("lww", "manual"):
        values = sorted({canonical(s.value) for s in states})
        if rule == "manual" and len(values) > 1:
            return lww, [json.loads(v) for v in values]
        return lww, None
    if rule in ("edge_wins", "cloud_wins"):
        want_cloud = rule == "cloud_wins"
        return max(states, key=lambda s: (is_cloud(s.stamp.node) == want_cloud,
                                          *_order_key(s))), None
    if rule in ("max", "min"):
        pick = max if rule == "max" else min
        best = pick(_value_key(s.value) for s in states)
        return max((s for s in states if _value_key(s.value) == best), key=_order_key), None
    if rule == "union":
        items: dict[bytes, Any] = {}
        for s in states:
            for item in (s.value if isinstance(s.value, list) else [s.value]):
                items[canonical(item)] = item
        return FieldState([items[k] for k in sorted(items)], lww.stamp), None
    if rule == "counter":
        counts: dict[str, dict[str, int]] = {"p": {}, "n": {}}
        for s in states:
            value = s.value if isinstance(s.value, dict) else {}
            for side in ("p", "n"):
                for node, n in dict(value.get(side, {})).items():
                    counts[side][node] = max(counts[side].get(node, 0), int(n))
        return FieldState({side: dict(sorted(c.items())) for side, c in counts.items()},
                          lww.stamp), None
    if rule in ("reject_wins", "approve_wins"):
        loser = "approved" if rule == "reject_wins" else "rejected"
        return max(states, key=lambda s: (s.value != loser, *_order_key(s))), None
    raise RuleError("rule", rule)


def counter_value(value: Any) -> int:
    if not isinstance(value, dict):
        return 0
    total: int = sum(dict(value.get("p", {})).values()) - sum(dict(value.get("n", {})).values())
    return total


def resolve(frontier: Iterable[Version], rules: CollectionRules) -> Resolved:
    """The document's value: a pure function of the frontier (any delivery order)."""
    versions = _sorted(frontier)
    names = sorted({n for v in versions for n in v.fields})
    value: dict[str, Any] = {}
    stamps: dict[str, FieldState] = {}
    siblings: dict[str, list[Any]] = {}
    for name in names:
        states = list({canonical(v.fields[name].encode()): v.fields[name]
                       for v in versions if name in v.fields}.values())
        state, sibs = merge_field(rules.rule(name), states)
        stamps[name] = state
        value[name] = state.value
        if sibs is not None:
            siblings[name] = sibs
    deleted = bool(versions) and all(v.deleted for v in versions)
    return Resolved(value, stamps, siblings, deleted)
