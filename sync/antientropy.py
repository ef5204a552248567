"""Anti-entropy: compact per-collection summaries that locate divergent documents.

A summary is a root digest plus one digest per bucket of keys (keys hashed into a fixed
number of buckets). Equal roots: nothing to do. Otherwise only the differing buckets' key
digests are exchanged, then only the differing documents' versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    collection: str
    root: str
    buckets: tuple[str, ...]

    def encode(self) -> dict[str, object]:
        return {"collection": self.collection, "root": self.root, "buckets": list(self.buckets)}


def bucket_of(key: str, buckets: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % buckets


def summarize(collection: str, digests: Mapping[str, str], buckets: int = 16) -> Summary:
    parts: list[list[str]] = [[] for _ in range(buckets)]
    for key in sorted(digests):
        parts[bucket_of(key, buckets)].append(f"{key}\0{digests[key]}")
    hashed = tuple(hashlib.sha256("\n".join(p).encode()).hexdigest() for p in parts)
    root = hashlib.sha256("".join(hashed).encode()).hexdigest()
    return Summary(collection, root, hashed)


def differing_buckets(a: Summary, b: Summary) -> set[int]:
    if a.root == b.root:
        return set()
    if len(a.buckets) != len(b.buckets):
        return set(range(max(len(a.buckets), len(b.buckets))))
    return {i for i, (x, y) in enumerate(zip(a.buckets, b.buckets, strict=True)) if x != y}


def in_buckets(digests: Mapping[str, str], wanted: set[int], buckets: int) -> dict[str, str]:
    return {k: d for k, d in digests.items() if bucket_of(k, buckets) in wanted}


def keys_to_exchange(mine: Mapping[str, str], theirs: Mapping[str, str]) -> set[str]:
    return {k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
