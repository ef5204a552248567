"""The fleet store: SQLite (embedded default) or PostgreSQL, behind one interface.

Each (device, stream, seq) is stored once. A stream's `received_seq` is the highest
sequence up to which the cloud holds everything the device still had (batches chain by
their `after` field); that is what the ack carries, and it is only moved inside the same
transaction that stored the records.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from sync.envelope import Batch

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS records (device TEXT NOT NULL, stream TEXT NOT NULL,
        seq BIGINT NOT NULL, kind TEXT NOT NULL, payload {blob} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (device, stream, seq))""",
    """CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY,
        first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
        online BOOLEAN NOT NULL DEFAULT FALSE, status TEXT)""",
    """CREATE TABLE IF NOT EXISTS streams (device TEXT NOT NULL, stream TEXT NOT NULL,
        received_seq BIGINT NOT NULL DEFAULT 0, acked_seq BIGINT NOT NULL DEFAULT 0,
        last_created_at DOUBLE PRECISION, PRIMARY KEY (device, stream))""",
    """CREATE TABLE IF NOT EXISTS quarantine (id {serial}, device TEXT, topic TEXT NOT NULL,
        reason TEXT NOT NULL, detail TEXT, payload {blob}, received_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, device TEXT NOT NULL,
        type TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, confirmed_at DOUBLE PRECISION, result TEXT)""",
)


class CloudStore(Protocol):
    def store_batch(self, batch: Batch) -> int: ...

    def quarantine(self, *, device: str | None, topic: str, reason: str, detail: str,
                   payload: bytes) -> None: ...

    def seen(self, device: str, online: bool | None, status: Any = None) -> None: ...

    def add_command(self, cid: str, device: str, ctype: str, args: Any) -> None: ...

    def confirm_command(self, cid: str, result: Any) -> None: ...

    def command(self, cid: str) -> dict[str, Any] | None: ...

    def devices(self) -> list[dict[str, Any]]: ...

    def records(self, device: str, stream: str) -> list[tuple[int, str, bytes]]: ...

    def last_approval(self, device: str, run_id: str) -> int | None:
        """The latest approval the device asked for on this run, as the cloud has seen it."""
        import msgpack
        with self.tx() as c:
            rows = self._exec(c, "SELECT payload FROM records WHERE device = ? AND stream ="
                                 " 'control' AND kind = 'approval.requested' ORDER BY seq DESC",
                              (device,)).fetchall()
        for (payload,) in rows:
            try:
                rec = msgpack.unpackb(bytes(payload), raw=False)
            except (ValueError, msgpack.UnpackException):
                continue
            if rec.get("run_id") == run_id:
                return int(rec["approval_id"])
        return None

    def quarantined(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class SqlCloudStore:
    """One implementation for both engines; only the dialect differs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            path = url[len("sqlite:///"):]
            self.conn: Any = sqlite3.connect(path, isolation_level=None,
                                             check_same_thread=False, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            blob, serial = "BLOB", "INTEGER PRIMARY KEY"
        elif url.startswith(("postgresql://", "postgres://")):
            import psycopg
            self.dialect = "postgresql"
            self.conn = psycopg.connect(url, autocommit=True)
            blob, serial = "BYTEA", "BIGSERIAL PRIMARY KEY"
        else:
            raise ValueError(f"store url must be sqlite:///PATH or postgresql://... (got {url!r})")
        from sync.cloud.docs import SCHEMA as DOCS_SCHEMA
        with self.tx() as c:
            for sql in SCHEMA:
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

    def store_batch(self, batch: Batch) -> int:
        now = time.time()
        with self.tx() as c:
            self._touch(c, batch.device, now)
            self._exec(c, "INSERT INTO streams (device, stream) VALUES (?, ?) ON CONFLICT"
                          " (device, stream) DO NOTHING", (batch.device, batch.stream))
            row = self._exec(c, "SELECT received_seq FROM streams WHERE device = ? AND"
                                " stream = ?", (batch.device, batch.stream)).fetchone()
            received = int(row[0])
            rows = [(batch.device, batch.stream, r.seq, r.kind, r.payload, r.created_at, now)
                    for r in batch.records if r.seq > received]
            if rows:
                sql = self._sql("INSERT INTO records (device, stream, seq, kind, payload,"
                                " created_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                                " ON CONFLICT (device, stream, seq) DO UPDATE SET"
                                " payload = excluded.payload, kind = excluded.kind")
                if self.dialect == "sqlite":
                    c.executemany(sql, rows)
                else:
                    with c.cursor() as cur:
                        cur.executemany(sql, rows)
            if batch.after <= received < batch.last:
                received = batch.last
                self._exec(c, "UPDATE streams SET received_seq = ?, acked_seq = ?,"
                              " last_created_at = ? WHERE device = ? AND stream = ?",
                           (received, received, batch.records[-1].created_at, batch.device,
                            batch.stream))
            return received

    def _touch(self, c: Any, device: str, now: float) -> None:
        self._exec(c, "INSERT INTO devices (device, first_seen, last_seen) VALUES (?, ?, ?)"
                      " ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen",
                   (device, now, now))

    def quarantine(self, *, device: str | None, topic: str, reason: str, detail: str,
                   payload: bytes) -> None:
        with self.tx() as c:
            self._exec(c, "INSERT INTO quarantine (device, topic, reason, detail, payload,"
                          " received_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (device, topic, reason, detail[:500], payload[:65536], time.time()))

    def seen(self, device: str, online: bool | None, status: Any = None) -> None:
        now = time.time()
        with self.tx() as c:
            self._touch(c, device, now)
            if online is not None:
                self._exec(c, "UPDATE devices SET online = ?, status = ? WHERE device = ?",
                           (online, json.dumps(status), device))

    def add_command(self, cid: str, device: str, ctype: str, args: Any) -> None:
        with self.tx() as c:
            self._exec(c, "INSERT INTO commands (id, device, type, args, state, created_at)"
                          " VALUES (?, ?, ?, ?, 'sent', ?) ON CONFLICT (id) DO NOTHING",
                       (cid, device, ctype, json.dumps(args), time.time()))

    def confirm_command(self, cid: str, result: Any) -> None:
        with self.tx() as c:
            self._exec(c, "UPDATE commands SET state = ?, confirmed_at = ?, result = ? WHERE"
                          " id = ? AND state = 'sent'",
                       ("confirmed" if result.get("ok") else "failed", time.time(),
                        json.dumps(result, default=str), cid))

    def command(self, cid: str) -> dict[str, Any] | None:
        with self.tx() as c:
            row = self._exec(c, "SELECT id, device, type, state, result FROM commands WHERE"
                                " id = ?", (cid,)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "device": row[1], "type": row[2], "state": row[3],
                "result": json.loads(row[4]) if row[4] else None}

    def devices(self) -> list[dict[str, Any]]:
        with self.tx() as c:
            devs = self._exec(c, "SELECT device, online, first_seen, last_seen FROM devices"
                                 " ORDER BY device").fetchall()
            streams = self._exec(c, "SELECT device, stream, received_seq, acked_seq,"
                                    " last_created_at FROM streams").fetchall()
        out = []
        for device, online, first, last in devs:
            mine = {s: {"received_seq": int(r), "acked_seq": int(a),
                        "lag_s": None if lc is None else max(0.0, time.time() - lc)}
                    for d, s, r, a, lc in streams if d == device}
            out.append({"device_id": device, "online": bool(online), "first_seen": first,
                        "last_seen": last, "streams": mine})
        return out

    def records(self, device: str, stream: str) -> list[tuple[int, str, bytes]]:
        with self.tx() as c:
            rows = self._exec(c, "SELECT seq, kind, payload FROM records WHERE device = ? AND"
                                 " stream = ? ORDER BY seq", (device, stream)).fetchall()
        return [(int(s), k, bytes(p)) for s, k, p in rows]

    def last_approval(self, device: str, run_id: str) -> int | None:
        """The latest approval the device asked for on this run, as the cloud has seen it."""
        import msgpack
        with self.tx() as c:
            rows = self._exec(c, "SELECT payload FROM records WHERE device = ? AND stream ="
                                 " 'control' AND kind = 'approval.requested' ORDER BY seq DESC",
                              (device,)).fetchall()
        for (payload,) in rows:
            try:
                rec = msgpack.unpackb(bytes(payload), raw=False)
            except (ValueError, msgpack.UnpackException):
                continue
            if rec.get("run_id") == run_id:
                return int(rec["approval_id"])
        return None

    def quarantined(self) -> list[dict[str, Any]]:
        with self.tx() as c:
            rows = self._exec(c, "SELECT device, topic, reason, detail FROM quarantine"
                                 " ORDER BY id").fetchall()
        return [{"device": d, "topic": t, "reason": r, "detail": x} for d, t, r, x in rows]

    def close(self) -> None:
        self.conn.close()
