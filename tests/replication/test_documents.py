"""Merges: commutative, associative, idempotent; same result in any delivery order."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.clocks import HybridClock
from sync.documents import (
    BUILTIN,
    CollectionRules,
    DocumentError,
    RuleError,
    Version,
    counter_value,
    join,
    resolve,
)
from sync.replica import MemoryDocStore, Replica

RULES = CollectionRules({"n": "max", "low": "min", "tags": "union", "hits": "counter",
                         "note": "manual", "who": "edge_wins", "mode": "cloud_wins"}, "lww")
NODES = ["dev-a", "dev-b", "cloud"]
writes = st.lists(st.tuples(
    st.sampled_from(NODES),
    st.sampled_from(["n", "low", "tags", "hits", "note", "who", "mode", "x"]),
    st.integers(-3, 3), st.booleans()), min_size=1, max_size=25)


def history(ops) -> list[Version]:
    """Versions produced by three replicas that sometimes sync before writing."""
    wall = [1_000]
    reps = {n: Replica(n, MemoryDocStore(), rules={"c": RULES},
                       clock=HybridClock(n, wall=lambda: wall[0])) for n in NODES}
    made: list[Version] = []
    for node, fld, val, sync_first in ops:
        wall[0] += 1
        r = reps[node]
        if sync_first and made:
            r.apply(made[-1])
        if fld == "hits":
            made.append(r.increment("c", "k", "hits", val or 1))
        elif fld == "tags":
            made.append(r.write("c", "k", {"tags": [val]}))
        else:
            made.append(r.write("c", "k", {fld: val}))
    return made


@settings(max_examples=150, deadline=None)
@given(writes, st.randoms(use_true_random=False))
def test_resolution_is_the_same_under_any_order_duplication_and_delay(ops, rnd) -> None:
    versions = history(ops)
    reference = resolve(join((), versions), RULES)
    for _ in range(3):
        shuffled = versions + rnd.sample(versions, k=len(versions) // 2)  # duplicates
        rnd.shuffle(shuffled)
        store = Replica("observer", MemoryDocStore(), rules={"c": RULES})
        for v in shuffled:
            store.apply(v)
        assert store.read("c", "k") == reference
        assert store.frontier("c", "k") == join((), versions)


@settings(max_examples=150, deadline=None)
@given(writes)
def test_join_is_commutative_associative_idempotent(ops) -> None:
    vs = history(ops)
    third = len(vs) // 3
    a, b, c = join((), vs[:third]), join((), vs[third:2 * third]), join((), vs[2 * third:])
    assert join(a, b) == join(b, a)
    assert join(join(a, b), c) == join(a, join(b, c))
    assert join(a, a) == a
    assert resolve(join(a, b), RULES) == resolve(join(b, a), RULES)


@settings(max_examples=200, deadline=None)
@given(writes, writes)
def test_digests_equal_exactly_when_values_and_clocks_are(ops1, ops2) -> None:
    for x, y in itertools.product(history(ops1)[:4], history(ops2)[:4]):
        same = x.encode() == y.encode()
        assert (x.digest == y.digest) == same


def test_concurrent_approve_and_reject_resolve_to_reject_everywhere() -> None:
    edge = Replica("press-7", MemoryDocStore())
    cloud = Replica("cloud", MemoryDocStore())
    r = edge.write("approvals", "run-1", {"decision": "rejected", "decided_by": "operator"})
    a = cloud.write("approvals", "run-1", {"decision": "approved", "decided_by": "supervisor"})
    edge.apply(a)
    cloud.apply(r)
    for rep in (edge, cloud):
        assert rep.read("approvals", "run-1").value["decision"] == "rejected"
    assert edge.digest("approvals", "run-1") == cloud.digest("approvals", "run-1")
    approve_wins = CollectionRules({"decision": "approve_wins"})
    assert resolve(edge.frontier("approvals", "run-1"),
                   approve_wins).value["decision"] == "approved"


def test_manual_siblings_until_resolved_and_the_resolution_replicates() -> None:
    rules = {"notes": CollectionRules({}, "manual")}
    a, b = (Replica(n, MemoryDocStore(), rules=rules) for n in ("dev-a", "dev-b"))
    va = a.write("notes", "n1", {"text": "from a"})
    vb = b.write("notes", "n1", {"text": "from b"})
    a.apply(vb)
    b.apply(va)
    got = a.read("notes", "n1")
    assert got.siblings == {"text": ["from a", "from b"]}
    fix = a.resolve_conflict("notes", "n1", take=vb.digest[:10])
    b.apply(fix)
    for rep in (a, b):
        res = rep.read("notes", "n1")
        assert res.value == {"text": "from b"} and not res.conflicted
    with pytest.raises(DocumentError):
        a.resolve_conflict("notes", "n1", take="ffff")


def test_counters_add_concurrent_increments() -> None:
    reps = [Replica(n, MemoryDocStore(), rules={"c": RULES}) for n in NODES]
    made = [r.increment("c", "k", "hits", 2) for r in reps] + [reps[0].increment("c", "k",
                                                                                  "hits", -1)]
    for r in reps:
        for v in random.sample(made, len(made)):
            r.apply(v)
        assert counter_value(r.read("c", "k").value["hits"]) == 5


def test_rules_from_toml_name_bad_keys() -> None:
    assert CollectionRules.from_mapping({"fields": {"a": "union"}}).rule("a") == "union"
    with pytest.raises(RuleError, match=r"fields.a: unknown merge rule 'newest'"):
        CollectionRules.from_mapping({"fields": {"a": "newest"}})
    with pytest.raises(DocumentError, match="unknown key"):
        CollectionRules.from_mapping({"feilds": {}})
    assert BUILTIN["approvals"].rule("decision") == "reject_wins"


def test_garbage_versions_are_typed_errors() -> None:
    for bad in ({}, {"c": "x", "k": "y", "d": False, "f": {"a": [1, "nope"]}, "v": {}},
                {"c": "x", "k": "y", "d": False, "f": {}, "v": {"n": -1}}, None, [1, 2]):
        with pytest.raises(DocumentError):
            Version.decode(bad)
