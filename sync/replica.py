"""A replica of replicated documents over a store; the same code runs on devices and cloud.

The store is a Protocol with two implementations run through one contract test: an
in-memory one, and SQLite (`SqliteDocStore`, table `docs`, whose SCHEMA the device adds to
its migrations). The SQLite store works inside the caller's transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from sync.antientropy import Summary, summarize
from sync.clocks import HybridClock, Stamp, increment, merge, vc
from sync.dbapi import Connection
from sync.documents import (
    BUILTIN,
    CollectionRules,
    DocumentError,
    FieldState,
    Resolved,
    Version,
    add_version,
    canonical,
    frontier_clock,
    frontier_digest,
    resolve,
)


class DocStore(Protocol):
    def get(self, collection: str, key: str) -> tuple[Version, ...]: ...

    def put(self, collection: str, key: str, frontier: tuple[Version, ...],
            resolved: Resolved) -> None: ...

    def digests(self, collection: str) -> dict[str, str]: ...

    def conflicted(self) -> list[tuple[str, str]]: ...


class MemoryDocStore:
    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], tuple[Version, ...]] = {}
        self.resolved: dict[tuple[str, str], Resolved] = {}

    def get(self, collection: str, key: str) -> tuple[Version, ...]:
        return self.docs.get((collection, key), ())

    def put(self, collection: str, key: str, frontier: tuple[Version, ...],
            resolved: Resolved) -> None:
        self.docs[(collection, key)] = frontier
        self.resolved[(collection, key)] = resolved

    def digests(self, collection: str) -> dict[str, str]:
        return {k: frontier_digest(f) for (c, k), f in self.docs.items() if c == collection}

    def conflicted(self) -> list[tuple[str, str]]:
        return sorted(ck for ck, r in self.resolved.items() if r.conflicted)


class SqliteDocStore:
    """The documents in a `docs` table of the database `conn` is open on (plain SQL: the
    device's SQLite file, or the engine's PostgreSQL store)."""

    SCHEMA: tuple[str, ...] = (
        """CREATE TABLE docs (
            collection TEXT NOT NULL,
            key TEXT NOT NULL,
            versions TEXT NOT NULL,
            value TEXT NOT NULL,
            siblings TEXT NOT NULL DEFAULT '{}',
            digest TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (collection, key)
        )""",
    )

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, collection: str, key: str) -> tuple[Version, ...]:
        row = self.conn.execute("SELECT versions FROM docs WHERE collection = ? AND key = ?",
                                (collection, key)).fetchone()
        return tuple(Version.decode(v) for v in json.loads(row[0])) if row else ()

    def put(self, collection: str, key: str, frontier: tuple[Version, ...],
            resolved: Resolved) -> None:
        self.conn.execute(
            "INSERT INTO docs (collection, key, versions, value, siblings, digest, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (collection, key) DO UPDATE SET"
            " versions = excluded.versions, value = excluded.value, siblings ="
            " excluded.siblings, digest = excluded.digest, updated_at = excluded.updated_at",
            (collection, key, canonical([v.encode() for v in frontier]).decode(),
             canonical(resolved.value).decode(), canonical(resolved.siblings).decode(),
             frontier_digest(frontier), time.time()))

    def digests(self, collection: str) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, digest FROM docs WHERE collection = ?",
                                      (collection,)).fetchall())

    def conflicted(self) -> list[tuple[str, str]]:
        return [(c, k) for c, k in self.conn.execute(
            "SELECT collection, key FROM docs WHERE siblings != '{}' ORDER BY collection, key")]


class Replica:
    def __init__(self, node: str, store: DocStore, *,
                 rules: Mapping[str, CollectionRules] | None = None,
                 clock: HybridClock | None = None) -> None:
        self.node = node
        self.store = store
        self.rules = {**BUILTIN, **(rules or {})}
        self.clock = clock or HybridClock(node)

    def rules_for(self, collection: str) -> CollectionRules:
        return self.rules.get(collection, CollectionRules())

    def frontier(self, collection: str, key: str) -> tuple[Version, ...]:
        return self.store.get(collection, key)

    def read(self, collection: str, key: str) -> Resolved | None:
        frontier = self.store.get(collection, key)
        return resolve(frontier, self.rules_for(collection)) if frontier else None

    def digest(self, collection: str, key: str) -> str:
        return frontier_digest(self.store.get(collection, key))

    def write(self, collection: str, key: str, changes: Mapping[str, Any], *,
              delete: bool = False) -> Version:
        """A local write: a version that dominates everything this replica has seen."""
        frontier = self.store.get(collection, key)
        current = resolve(frontier, self.rules_for(collection)) if frontier else None
        stamp = self.clock.now()
        fields = dict(current.stamps) if current else {}
        for name, value in changes.items():
            fields[name] = FieldState(value, stamp)
        version = Version(collection, key, fields,
                          increment(frontier_clock(frontier), self.node), delete)
        self._store(version, frontier)
        return version

    def write_on(self, base: Version, changes: Mapping[str, Any]) -> Version:
        """A write made on top of `base` alone (and this replica's own earlier writes), not
        of everything seen since: a reply to `base`. A version another node wrote after
        `base` meanwhile stays concurrent with it, so both are kept as siblings."""
        frontier = self.store.get(base.collection, base.key)
        stamp = self.clock.now()
        fields = dict(base.fields)
        for name, value in changes.items():
            fields[name] = FieldState(value, stamp)
        mine = vc({self.node: frontier_clock(frontier).get(self.node, 0)})
        version = Version(base.collection, base.key, fields,
                          increment(merge(base.clock, mine), self.node), False)
        self._store(version, frontier)
        return version

    def increment(self, collection: str, key: str, name: str, by: int = 1) -> Version:
        """Add to a `counter` field: each node counts its own increments."""
        current = self.read(collection, key)
        value = dict(current.value.get(name) or {}) if current else {}
        side = "p" if by >= 0 else "n"
        counts = {s: dict(value.get(s, {})) for s in ("p", "n")}
        counts[side][self.node] = counts[side].get(self.node, 0) + abs(by)
        return self.write(collection, key, {name: counts})

    def apply(self, version: Version) -> bool:
        """Take a version from elsewhere; True if it changed this replica."""
        frontier = self.store.get(version.collection, version.key)
        top = max((s.stamp for s in version.fields.values()), default=None)
        if top is not None and top.node != self.node:
            self.clock.update(top)
        new = add_version(frontier, version)
        if new == frontier:
            return False
        self.store.put(version.collection, version.key, new,
                       resolve(new, self.rules_for(version.collection)))
        return True

    def _store(self, version: Version, frontier: tuple[Version, ...]) -> None:
        new = add_version(frontier, version)
        self.store.put(version.collection, version.key, new,
                       resolve(new, self.rules_for(version.collection)))

    def resolve_conflict(self, collection: str, key: str, *, take: str | None = None,
                         value: Mapping[str, Any] | None = None) -> Version:
        """End a conflict: keep the sibling version whose digest is `take`, or write `value`.
        The result dominates every sibling, so it replicates like any write."""
        frontier = self.store.get(collection, key)
        if not frontier:
            raise DocumentError(f"no document {collection}/{key}")
        if take is not None:
            chosen = [v for v in frontier if v.digest.startswith(take)]
            if len(chosen) != 1:
                raise DocumentError(f"{take!r} names {len(chosen)} of the versions of "
                                    f"{collection}/{key} (" + ", ".join(v.digest[:12]
                                                                        for v in frontier) + ")")
            return self.write(collection, key, chosen[0].value)
        return self.write(collection, key, dict(value or {}))

    def summary(self, collection: str, buckets: int = 16) -> Summary:
        return summarize(collection, self.store.digests(collection), buckets)


def stamp_of(version: Version) -> Stamp | None:
    return max((s.stamp for s in version.fields.values()), default=None)
