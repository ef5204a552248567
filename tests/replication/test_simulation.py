"""After healing, every replica holds identical digests for every document."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from replication.simulation import NODES, RULES, simulate
from sync.documents import frontier_digest
from sync.replica import MemoryDocStore, Replica, SqliteDocStore


@pytest.mark.parametrize("batch", range(4))
def test_replicas_converge_after_partitions(tmp_path: Path, batch: int) -> None:
    for seed in range(batch * 40, batch * 40 + 40):  # 160 random schedules in all
        digests = simulate(seed, tmp_path)
        first = digests[NODES[0]]
        assert first, seed
        for node in NODES[1:]:
            assert digests[node] == first, f"seed {seed}: {node} diverged"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_doc_store_contract(tmp_path: Path, kind: str) -> None:
    if kind == "memory":
        store = MemoryDocStore()
    else:
        conn = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
        for sql in SqliteDocStore.SCHEMA:
            conn.execute(sql)
        store = SqliteDocStore(conn)
    r = Replica("dev", store, rules=RULES)
    other = Replica("cloud", MemoryDocStore(), rules=RULES)
    v1 = r.write("kv", "a", {"note": "x"})
    v2 = other.write("kv", "a", {"note": "y"})
    assert store.get("kv", "a") == (v1,)
    r.apply(v2)
    assert sorted(v.digest for v in store.get("kv", "a")) == sorted([v1.digest, v2.digest])
    assert store.digests("kv") == {"a": frontier_digest((v1, v2))}
    assert store.conflicted() == [("kv", "a")]
    r.resolve_conflict("kv", "a", value={"note": "z"})
    assert store.conflicted() == [] and r.read("kv", "a").value == {"note": "z"}
    assert store.get("kv", "missing") == ()
