"""Three replicas (two devices, one cloud) under partitions, reordering, duplicates, restarts."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from sync.antientropy import differing_buckets, in_buckets, keys_to_exchange
from sync.documents import CollectionRules, Version
from sync.replica import Replica, SqliteDocStore

NODES = ("dev-a", "dev-b", "cloud")
RULES = {"kv": CollectionRules({"n": "max", "tags": "union", "note": "manual"}, "lww"),
         "approvals": CollectionRules({"decision": "reject_wins"})}


def open_replica(node: str, path: Path) -> tuple[Replica, sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'docs'").fetchone():
        for sql in SqliteDocStore.SCHEMA:
            conn.execute(sql)
    return Replica(node, SqliteDocStore(conn), rules=RULES), conn


def anti_entropy(a: Replica, b: Replica, collection: str) -> int:
    """One exchange: summaries, then differing buckets' keys, then versions. Returns sent."""
    sa, sb = a.summary(collection), b.summary(collection)
    wanted = differing_buckets(sa, sb)
    if not wanted:
        return 0
    n = len(sa.buckets)
    da = in_buckets(a.store.digests(collection), wanted, n)
    db = in_buckets(b.store.digests(collection), wanted, n)
    sent = 0
    for key in keys_to_exchange(da, db):
        for v in a.frontier(collection, key):
            sent += b.apply(v)
        for v in b.frontier(collection, key):
            sent += a.apply(v)
    return sent


def simulate(seed: int, tmp: Path, steps: int = 120) -> dict[str, dict[str, str]]:
    rnd = random.Random(seed)
    paths = {n: tmp / f"{seed}-{n}.db" for n in NODES}
    reps: dict[str, Replica] = {}
    conns: dict[str, sqlite3.Connection] = {}
    for n in NODES:
        reps[n], conns[n] = open_replica(n, paths[n])
    inflight: list[tuple[str, Version]] = []  # (destination, version)
    partitioned: set[frozenset[str]] = set()
    keys = [f"k{i}" for i in range(6)]
    for _ in range(steps):
        roll = rnd.random()
        node = rnd.choice(NODES)
        if roll < 0.45:
            coll = rnd.choice(["kv", "approvals"])
            key = rnd.choice(keys)
            if coll == "kv":
                change = rnd.choice([{"n": rnd.randint(0, 9)}, {"tags": [rnd.randint(0, 3)]},
                                     {"note": rnd.choice("xyz")}, {"v": rnd.random()}])
            else:
                change = {"decision": rnd.choice(["approved", "rejected"]), "by": node}
            v = reps[node].write(coll, key, change)
            for dest in NODES:
                if dest != node:
                    inflight.append((dest, v))
        elif roll < 0.75 and inflight:
            i = rnd.randrange(len(inflight))  # any order
            dest, v = inflight[i]
            src = next((n for n in NODES if n != dest), dest)
            if frozenset((dest, src)) in partitioned and rnd.random() < 0.9:
                continue  # the link is down: the message waits
            if rnd.random() < 0.8:
                inflight.pop(i)
            if rnd.random() < 0.1:
                continue  # lost (anti-entropy must repair it)
            reps[dest].apply(v)  # duplicates happen when it was not popped
        elif roll < 0.85:
            a, b = rnd.sample(NODES, 2)
            partitioned ^= {frozenset((a, b))}
        elif roll < 0.92:
            conns[node].close()  # restart from the file
            reps[node], conns[node] = open_replica(node, paths[node])
        else:
            a, b = rnd.sample(NODES, 2)
            if frozenset((a, b)) not in partitioned:
                anti_entropy(reps[a], reps[b], rnd.choice(["kv", "approvals"]))
    # heal: the partition ends, anti-entropy until quiet
    for _ in range(4):
        for a in NODES:
            for b in NODES:
                if a < b:
                    for coll in ("kv", "approvals"):
                        anti_entropy(reps[a], reps[b], coll)
    out = {n: {f"{c}/{k}": d for c in ("kv", "approvals")
               for k, d in reps[n].store.digests(c).items()} for n in NODES}
    for n in NODES:
        conns[n].close()
    return out
