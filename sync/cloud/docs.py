"""The cloud's replica of each device's replicated documents, and anti-entropy.

The same Replica code as on the device (sync/replica.py), over a DocStore scoped to one
device in the fleet store (SQLite or PostgreSQL). The ingest applies the device's
`doc.version` records; the cloud's own writes go down as `doc_update` commands. Anti-entropy:
the device sends a `doc.summary` record now and then (a digest per bucket of keys, per
collection); the cloud compares it with its own and, for the buckets that differ, sends a
`doc_sync` command carrying its versions there; the device applies them and sends back its
own versions for those buckets. After that exchange both hold the union, so the same digests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from sync.antientropy import Summary, bucket_of, differing_buckets, summarize
from sync.documents import CollectionRules, Resolved, Version, canonical, frontier_digest
from sync.replica import Replica

CLOUD_NODE = "cloud"
BUCKETS = 16

SCHEMA = """CREATE TABLE IF NOT EXISTS docs (device TEXT NOT NULL, collection TEXT NOT NULL,
    key TEXT NOT NULL, versions TEXT NOT NULL, value TEXT NOT NULL,
    siblings TEXT NOT NULL DEFAULT '{}', digest TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device, collection, key))"""


class CloudDocStore:
    """DocStore over the fleet store's `docs` table, inside the caller's transaction."""

    def __init__(self, execute: Any, conn: Any, device: str) -> None:
        self._execute = execute  # SqlCloudStore._exec: the dialect's placeholders
        self.conn = conn
        self.device = device

    def _q(self, sql: str, *args: Any) -> Any:
        return self._execute(self.conn, sql, (self.device, *args))

    def get(self, collection: str, key: str) -> tuple[Version, ...]:
        row = self._q("SELECT versions FROM docs WHERE device = ? AND collection = ? AND"
                      " key = ?", collection, key).fetchone()
        return tuple(Version.decode(v) for v in json.loads(row[0])) if row else ()

    def put(self, collection: str, key: str, frontier: tuple[Version, ...],
            resolved: Resolved) -> None:
        self._q("INSERT INTO docs (device, collection, key, versions, value, siblings, digest,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, collection,"
                " key) DO UPDATE SET versions = excluded.versions, value = excluded.value,"
                " siblings = excluded.siblings, digest = excluded.digest,"
                " updated_at = excluded.updated_at",
                collection, key, canonical([v.encode() for v in frontier]).decode(),
                canonical(resolved.value).decode(), canonical(resolved.siblings).decode(),
                frontier_digest(frontier), time.time())

    def digests(self, collection: str) -> dict[str, str]:
        return dict(self._q("SELECT key, digest FROM docs WHERE device = ? AND"
                            " collection = ?", collection).fetchall())

    def conflicted(self) -> list[tuple[str, str]]:
        return [(c, k) for c, k in self._q(
            "SELECT collection, key FROM docs WHERE device = ? AND siblings != '{}'"
            " ORDER BY collection, key").fetchall()]

    def collections(self) -> list[str]:
        return [c for (c,) in self._q("SELECT DISTINCT collection FROM docs WHERE device = ?"
                                      " ORDER BY collection").fetchall()]


class CloudDocs:
    """Documents of the fleet, one replica per device; every method is one transaction."""

    def __init__(self, store: Any, rules: Mapping[str, CollectionRules] | None = None) -> None:
        self.store = store
        self.rules = dict(rules or {})

    def _replica(self, conn: Any, device: str) -> Replica:
        return Replica(CLOUD_NODE, CloudDocStore(self.store._exec, conn, device),
                       rules=self.rules)

    def apply(self, device: str, versions: list[Version]) -> int:
        """The device's versions; returns how many changed the cloud's replica."""
        with self.store.tx() as c:
            r = self._replica(c, device)
            return sum(r.apply(v) for v in versions)

    def write(self, device: str, collection: str, key: str,
              changes: Mapping[str, Any]) -> Version:
        """A cloud write; send the version to the device as a `doc_update` command."""
        with self.store.tx() as c:
            return self._replica(c, device).write(collection, key, changes)

    def write_on(self, device: str, base: Version, changes: Mapping[str, Any]) -> Version:
        """A cloud reply to the device's version `base` (Replica.write_on)."""
        with self.store.tx() as c:
            r = self._replica(c, device)
            r.apply(base)
            return r.write_on(base, changes)

    def read(self, device: str, collection: str, key: str) -> Resolved | None:
        with self.store.tx() as c:
            return self._replica(c, device).read(collection, key)

    def digest(self, device: str, collection: str, key: str) -> str:
        with self.store.tx() as c:
            return self._replica(c, device).digest(collection, key)

    def differences(self, device: str, theirs: Mapping[str, Summary]
                    ) -> list[dict[str, Any]]:
        """For a device's summaries: one `doc_sync` payload per collection that differs,
        with the cloud's versions in the differing buckets. Collections only the cloud has
        count as empty on the device (after a data loss there)."""
        out = []
        with self.store.tx() as c:
            docs = CloudDocStore(self.store._exec, c, device)
            for collection in sorted(set(theirs) | set(docs.collections())):
                digests = docs.digests(collection)
                other = theirs.get(collection) or summarize(collection, {}, BUCKETS)
                mine = summarize(collection, digests, len(other.buckets) or BUCKETS)
                wanted = differing_buckets(mine, other)
                if not wanted:
                    continue
                n = len(mine.buckets)
                versions = [v.encode() for key in sorted(digests)
                            if bucket_of(key, n) in wanted for v in docs.get(collection, key)]
                out.append({"collection": collection, "buckets": sorted(wanted), "n": n,
                            "versions": versions})
        return out


def decode_summaries(payload: Mapping[str, Any]) -> dict[str, Summary]:
    """A `doc.summary` record: {collection: {"root": str, "buckets": [str, ...]}}."""
    out = {}
    for collection, s in payload.items():
        if not isinstance(s, Mapping) or not isinstance(s.get("root"), str) \
                or not isinstance(s.get("buckets"), list) or not 0 < len(s["buckets"]) <= 256 \
                or not all(isinstance(b, str) for b in s["buckets"]):
            raise ValueError(f"summary of {collection!r} is malformed")
        out[str(collection)] = Summary(str(collection), s["root"], tuple(s["buckets"]))
    return out
