"""The fleet store: SQLite (embedded default) or PostgreSQL, behind one interface.

Each (device, epoch, stream, seq) is stored once, whatever order batches arrive in and
however many workers store them. A stream's watermark is computed from what the store
holds (sync.watermark), inside the transaction that stored the batch, under a lock on the
stream's row: workers never hold a watermark of their own. See sync/PROTOCOL.md.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sync.chunks import DEFAULT_MAX_RECORD_BYTES
from sync.cloud import schema
from sync.cloud.batches import Stored, store_batch
from sync.cloud.projection import project
from sync.dbapi import redact, scrub
from sync.envelope import Batch

TOUCH_EVERY_S = 1.0  # a device's last_seen is written at most this often per store


class CloudStoreError(Exception):
    """The fleet store cannot be opened or used."""

    exit_code = 78
    retryable = False


def clean(text: str | None, limit: int = 500) -> str | None:
    """Text any backend stores: no NUL (PostgreSQL refuses it), bounded."""
    return None if text is None else text[:limit].replace("\x00", "\\x00")


class CloudStore(Protocol):
    def store_batch(self, batch: Batch) -> Stored: ...

    def quarantine(self, *, device: str | None, topic: str, reason: str, detail: str,
                   payload: bytes) -> None: ...

    def seen(self, device: str, online: bool | None, status: Any = None) -> None: ...

    def add_command(self, cid: str, device: str, ctype: str, args: Any,
                    expires_at: float | None = None) -> str: ...

    def confirm_command(self, cid: str, device: str, result: Any) -> bool: ...

    def unconfirmed_commands(self, device: str, ctype: str) -> list[tuple[str, Any]]: ...

    def command(self, cid: str) -> dict[str, Any] | None: ...

    def devices(self) -> list[dict[str, Any]]: ...

    def records(self, device: str, stream: str,
                epoch: str | None = None) -> list[tuple[int, str, bytes]]: ...

    def quarantined(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class SqlCloudStore:
    """One implementation for both engines; only the dialect differs."""

    def __init__(self, url: str, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 projection: bool = True) -> None:
        self.url = url
        self.max_record_bytes = max_record_bytes
        self.projection = projection  # keep the fleet's projection with each batch
        self._lock = threading.Lock()
        self._epochs: set[tuple[str, str]] = set()  # stored already: not written again
        self._touched: dict[str, float] = {}  # device -> when this store last wrote last_seen
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            path = url[len("sqlite:///"):]
            if not Path(path).parent.is_dir():
                raise CloudStoreError(f"store.url: directory {str(Path(path).parent)!r} does"
                                      f" not exist (got {url!r})")
            try:
                self.conn: Any = sqlite3.connect(path, isolation_level=None,
                                                 check_same_thread=False, timeout=30)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise CloudStoreError(f"store.url: cannot open {path!r}: {exc}") from exc
            blob, serial = "BLOB", "INTEGER PRIMARY KEY"
        elif url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError:  # the `cloud` extra; a config the service cannot serve: 78
                raise CloudStoreError("store.url: a postgresql:// store needs psycopg: "
                                      "install edge-agent[cloud]") from None
            self.dialect = "postgresql"
            try:
                self.conn = psycopg.connect(url, autocommit=True)
            except psycopg.Error as exc:
                raise CloudStoreError(f"store.url: cannot connect: {scrub(str(exc), url)}"
                                      ) from None
            blob, serial = "BYTEA", "BIGSERIAL PRIMARY KEY"
        else:
            raise CloudStoreError(f"store url must be sqlite:///PATH or postgresql://..."
                                  f" (got {redact(url)!r})")
        self._migrate(blob, serial)

    def _migrate(self, blob: str, serial: str) -> None:
        from sync.cloud.docs import SCHEMA as DOCS_SCHEMA
        with self.tx() as c:
            if self.dialect == "postgresql":  # one migrator at a time across workers
                c.execute("SELECT pg_advisory_xact_lock(7117)")
                tables = {r[0] for r in c.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
            else:
                tables = {r[0] for r in c.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
            row = (self._exec(c, "SELECT version FROM schema_version").fetchone()
                   if "schema_version" in tables else None)
            for _, sqls in schema.pending(self.dialect, schema.current_version(tables, row)):
                for sql in sqls:
                    self._exec(c, sql.format(blob=blob, serial=serial))
            self._exec(c, DOCS_SCHEMA)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def _exec(self, c: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        return c.execute(self._sql(sql), tuple(args))

    @contextmanager
    def tx(self) -> Iterator[Any]:
        with self._lock:
            if self.dialect == "sqlite":
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            else:
                with self.conn.transaction():
                    yield self.conn

    def store_batch(self, batch: Batch) -> Stored:
        """Store a batch (idempotent), then compute the stream's watermark; one transaction."""
        now = time.time()
        known = (batch.device, batch.epoch) in self._epochs
        touch = now - self._touched.get(batch.device, 0.0) >= TOUCH_EVERY_S
        with self.tx() as c:
            if touch:
                self._touch(c, batch.device, now)
            stored = store_batch(self, c, batch, now, new_epoch=not known)
            if self.projection:  # the fleet's view of runs, in the batch's transaction
                project(self, c, batch.device, batch.epoch, batch.stream, stored.new)
        self._epochs.add((batch.device, batch.epoch))
        if touch:
            self._touched[batch.device] = now
        return stored

    def _touch(self, c: Any, device: str, now: float) -> None:
        self._exec(c, "INSERT INTO devices (device, first_seen, last_seen) VALUES (?, ?, ?)"
                      " ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen",
                   (device, now, now))

    def quarantine(self, *, device: str | None, topic: str, reason: str, detail: str,
                   payload: bytes) -> None:
        with self.tx() as c:
            self.quarantine_in(c, device=device, topic=topic, reason=reason, detail=detail,
                               payload=payload)

    def quarantine_in(self, c: Any, *, device: str | None, topic: str, reason: str,
                      detail: str, payload: bytes) -> None:
        self._exec(c, "INSERT INTO quarantine (device, topic, reason, detail, payload,"
                      " received_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (clean(device, 256), clean(topic, 512), reason, clean(detail),
                    payload[:65536], time.time()))

    def seen(self, device: str, online: bool | None, status: Any = None) -> None:
        now = time.time()
        with self.tx() as c:
            self._touch(c, device, now)
            if online is not None:
                self._exec(c, "UPDATE devices SET online = ?, status = ? WHERE device = ?",
                           (online, json.dumps(status), device))

    def add_command(self, cid: str, device: str, ctype: str, args: Any,
                    expires_at: float | None = None) -> str:
        """Record a command; its state: `sent`, or `queued` for a device never seen
        (sync/cloud/commands.py)."""
        from sync.cloud.commands import Commands, NewCommand
        now = time.time()
        return Commands(self).add([NewCommand(cid, device, ctype, args, expires_at or
                                              now + 86400)], now)[cid]

    def confirm_command(self, cid: str, device: str, result: Any) -> bool:
        """Record a device's result for a command sent to `device` (the one whose stream
        carried it); False when no such command waits for a result from that device."""
        from sync.cloud.commands import Commands
        return Commands(self).answer(device, [(cid, result)])[0]

    def unconfirmed_commands(self, device: str, ctype: str) -> list[tuple[str, Any]]:
        """(id, args) of the commands of a type sent to `device` and not yet confirmed."""
        with self.tx() as c:
            rows = self._exec(c, "SELECT id, args FROM commands WHERE device = ? AND type = ?"
                                 " AND state = 'sent' ORDER BY created_at",
                              (device, ctype)).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def command(self, cid: str) -> dict[str, Any] | None:
        with self.tx() as c:
            row = self._exec(c, "SELECT id, device, type, state, result FROM commands WHERE"
                                " id = ?", (cid,)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "device": row[1], "type": row[2], "state": row[3],
                "result": json.loads(row[4]) if row[4] else None}

    def devices(self) -> list[dict[str, Any]]:
        """Each device, the streams of its current epoch, and every epoch met."""
        with self.tx() as c:
            devs = self._exec(c, "SELECT device, online, first_seen, last_seen FROM devices"
                                 " ORDER BY device").fetchall()
            streams = self._exec(c, "SELECT device, epoch, stream, received_seq, acked_seq,"
                                    " last_created_at, conflicts, stubs FROM streams"
                                    ).fetchall()
            epochs = self._exec(c, "SELECT device, epoch, first_seen, protocol FROM epochs"
                                   " ORDER BY first_seen, epoch").fetchall()
            quarantined = dict(self._exec(c, "SELECT device, count(*) FROM quarantine WHERE"
                                             " device IS NOT NULL GROUP BY device").fetchall())
        by_device: dict[str, list[dict[str, Any]]] = {}  # a device's epochs, oldest first
        for d, e, f, p in epochs:
            by_device.setdefault(d, []).append({"epoch": e, "first_seen": f,
                                                "protocol": int(p)})
        held: dict[tuple[str, str | None], list[Any]] = {}  # (device, epoch) -> its streams
        for row in streams:
            held.setdefault((row[0], row[1]), []).append(row)
        out = []
        now = time.time()
        for device, online, first, last in devs:
            mine = by_device.get(device, [])
            # None: nothing of the device stored yet (not protocol 1's epoch "")
            current = mine[-1]["epoch"] if mine else None
            streams_now = {s: {"received_seq": int(r), "acked_seq": int(a),
                               "lag_s": None if lc is None else max(0.0, now - lc),
                               "conflicts": int(cf), "stubs": int(st)}
                           for _, _, s, r, a, lc, cf, st in held.get((device, current), [])}
            resets = [{"at": b["first_seen"], "from": a["epoch"], "to": b["epoch"],
                       "upgrade": a["epoch"] == ""} for a, b in itertools.pairwise(mine)]
            out.append({"device_id": device, "online": bool(online), "first_seen": first,
                        "last_seen": last, "epoch": current, "streams": streams_now,
                        "epochs": mine, "resets": resets,
                        "quarantined": int(quarantined.get(device, 0))})
        return out

    def records(self, device: str, stream: str,
                epoch: str | None = None) -> list[tuple[int, str, bytes]]:
        """A stream's records (of one epoch, or of the device's latest one)."""
        with self.tx() as c:
            if epoch is None:
                row = self._exec(c, "SELECT epoch FROM epochs WHERE device = ? ORDER BY"
                                    " first_seen DESC, epoch DESC LIMIT 1", (device,)
                                 ).fetchone()
                epoch = row[0] if row else ""
            rows = self._exec(c, "SELECT seq, kind, payload FROM records WHERE device = ? AND"
                                 " epoch = ? AND stream = ? ORDER BY seq",
                              (device, epoch, stream)).fetchall()
        return [(int(s), k, bytes(p)) for s, k, p in rows]

    def quarantined(self) -> list[dict[str, Any]]:
        with self.tx() as c:
            rows = self._exec(c, "SELECT device, topic, reason, detail FROM quarantine"
                                 " ORDER BY id").fetchall()
        return [{"device": d, "topic": t, "reason": r, "detail": x} for d, t, r, x in rows]

    def close(self) -> None:
        self.conn.close()
