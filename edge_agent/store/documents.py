"""Replicated documents on the device: the docs table, conflicts, and their resolution.
What a remote version does to a run is the engine's (`engine.remote_documents`): the store
knows tables, never runs.

Every local write of a replicated document commits with its outbox record (stream
`control`, kind `doc.version`), so a resolution replicates like any write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgpack

from edge_agent.errors import EdgeAgentError
from edge_agent.store.backend import Database
from sync.dbapi import Connection
from sync.documents import CollectionRules, DocumentError, Version
from sync.replica import Replica, SqliteDocStore

if TYPE_CHECKING:  # the store reads the device id and merge rules; it never loads a config
    from edge_agent.config import Config


def replica(conn: Connection, config: Config) -> Replica:
    rules = {name: CollectionRules.from_mapping(r) for name, r in
             (config.sync.collections.items() if config.sync else ())}
    return Replica(config.device.id, SqliteDocStore(conn), rules=rules)


def record_version(conn: Connection, version: Version) -> None:
    from sync.outbox import Outbox
    Outbox(conn).append("control", "doc.version", msgpack.packb(version.encode()))


def write_doc(store: Database, config: Config, collection: str, key: str,
              changes: dict[str, Any]) -> Version:
    def tx(conn: Connection) -> Version:
        version = replica(conn, config).write(collection, key, changes)
        record_version(conn, version)
        return version
    result: Version = store.write(tx)
    return result


def record_summary(conn: Connection, config: Config) -> dict[str, Any]:
    """Append a `doc.summary` record: per collection, a digest per bucket of keys. The
    cloud answers a difference with `doc_sync` (see `engine.remote_documents`)."""
    from sync.outbox import Outbox
    r = replica(conn, config)
    collections = [c for (c,) in conn.execute("SELECT DISTINCT collection FROM docs")]
    summaries = {c: {"root": s.root, "buckets": list(s.buckets)}
                 for c in collections for s in (r.summary(c),)}
    Outbox(conn).append("control", "doc.summary", msgpack.packb(summaries))
    return summaries


def list_conflicts(store: Database) -> list[dict[str, Any]]:
    rows = store.read(lambda c: c.execute(
        "SELECT collection, key, versions, siblings FROM docs WHERE siblings != '{}'"
        " ORDER BY collection, key").fetchall())
    out = []
    for collection, key, versions, siblings in rows:
        import json
        vs = [Version.decode(v) for v in json.loads(versions)]
        out.append({"key": f"{collection}/{key}", "collection": collection,
                    "fields": json.loads(siblings),
                    "siblings": [{"version": v.digest[:12], "value": v.value,
                                  "clock": dict(v.clock)} for v in vs]})
    return out


def resolve_conflict(store: Database, config: Config, full_key: str, *, take: str | None,
                     value: Any) -> dict[str, Any]:
    collection, sep, key = full_key.rpartition("/")
    if not sep:
        raise EdgeAgentError(f"a conflict key is COLLECTION/KEY (got {full_key!r})")

    def tx(conn: Connection) -> Version:
        try:
            version = replica(conn, config).resolve_conflict(
                collection, key, take=take, value=value if isinstance(value, dict) else
                None if value is None else {"value": value})
        except DocumentError as exc:
            raise EdgeAgentError(str(exc)) from exc
        record_version(conn, version)
        return version
    version: Version = store.write(tx)
    return {"key": full_key, "version": version.digest[:12], "value": version.value}


class KvState:
    """Reads and writes one collection of the device's replicated documents."""

    def __init__(self, store: Any, config: Any, collection: str = "kv") -> None:
        self.store = store
        self.config = config
        self.collection = collection

    def __call__(self, args: Mapping[str, Any], key: str) -> dict[str, Any]:
        name = str(args["key"])
        if args["op"] == "get":
            doc = self.store.read(lambda c: replica(c, self.config).read(self.collection,
                                                                          name))
            found = doc is not None and "value" in doc.value
            return {"key": name, "found": found, "value": doc.value["value"] if found else None}
        version = write_doc(self.store, self.config, self.collection, name,
                            {"value": args.get("value")})
        return {"key": name, "written": True, "version": version.digest[:12]}
