"""The transactional outbox: what the cloud must learn, appended in the writer's transaction.

Append-only, one gap-free sequence per stream. Rows are never updated: a per-stream
watermark records what the cloud acknowledged, and acked rows are deleted by retention.
Bounded by bytes: telemetry streams drop their oldest pending records (counted); control
and checkpoints refuse with `OutboxFull` so the caller applies back-pressure.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from sync.dbapi import Connection

STREAMS = ("control", "checkpoints", "traces", "metrics")  # priority order
DEFAULT_LIMITS = {"control": 16 << 20, "checkpoints": 256 << 20, "traces": 64 << 20,
                  "metrics": 16 << 20}
DEFAULT_POLICIES = {"control": "refuse", "checkpoints": "refuse", "traces": "drop_oldest",
                    "metrics": "drop_oldest"}

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE outbox (
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        payload BLOB NOT NULL,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (stream, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE outbox_streams (
        stream TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL DEFAULT 0,
        acked_seq INTEGER NOT NULL DEFAULT 0,
        pending_count INTEGER NOT NULL DEFAULT 0,
        pending_bytes INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0
    )""",
    "INSERT INTO outbox_streams (stream) VALUES " + ", ".join(f"('{s}')" for s in STREAMS),
    """CREATE TABLE inbox (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        received_at REAL NOT NULL,
        result BLOB
    )""",
)


# The device database's epoch: random, made once when the database is made (the device's
# migration 5 carries the same text); a reflashed device starts a new sequence space.
EPOCH_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS sync_epoch (epoch TEXT NOT NULL, created_at REAL NOT NULL)",
    "INSERT INTO sync_epoch (epoch, created_at) SELECT lower(hex(randomblob(8))),"
    " (julianday('now') - 2440587.5) * 86400.0 WHERE NOT EXISTS (SELECT 1 FROM sync_epoch)",
)


def epoch(conn: Connection) -> str:
    """This database's epoch (16 lowercase hex digits), made on first use if a database
    from before epochs was not migrated."""
    try:
        row = conn.execute("SELECT epoch FROM sync_epoch").fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in EPOCH_SCHEMA:
                conn.execute(sql)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        row = conn.execute("SELECT epoch FROM sync_epoch").fetchone()
    return str(row[0])


class OutboxError(Exception):
    """Root of the outbox's errors."""

    retryable = False


class OutboxFull(OutboxError):
    """A stream that must not drop is at its byte bound: apply back-pressure."""

    retryable = True

    def __init__(self, stream: str, limit_bytes: int, pending_bytes: int) -> None:
        self.stream, self.limit_bytes, self.pending_bytes = stream, limit_bytes, pending_bytes
        super().__init__(f"outbox stream {stream!r} is full ({pending_bytes} of {limit_bytes} "
                         "bytes pending); waiting for the cloud to acknowledge")


class UnknownStream(OutboxError):
    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"no outbox stream {stream!r} (streams: {', '.join(STREAMS)})")


@dataclass(frozen=True)
class Record:
    stream: str
    seq: int
    kind: str
    payload: bytes
    created_at: float


@dataclass(frozen=True)
class StreamStats:
    stream: str
    pending: int
    pending_bytes: int
    oldest_pending_age_s: float | None
    acked_seq: int
    last_seq: int
    dropped: int


def has_reader(conn: object) -> bool:
    """Whether anything will read what is appended through `conn` (a connection, or the
    store that makes them). The outbox's one reader is the device's sync; a database that
    cannot have one (the cloud runner's PostgreSQL: `[sync]` is refused with a database
    URL) says so with `outbox_reader = False` on its store and connections, and appends
    there write nothing: a record nobody reads would only grow the
    table until a stream that refuses is full, and every step would update its stream's
    one row (which serializes runners that share the database)."""
    return getattr(conn, "outbox_reader", True) is not False


_BUMP = ("UPDATE outbox_streams SET last_seq = last_seq + 1, pending_count = pending_count + 1,"
         " pending_bytes = pending_bytes + ? WHERE stream = ?")


def append(conn: Connection, stream: str, kind: str, payload: bytes, *,
           limit: int | None = None, policy: str | None = None, now: float | None = None) -> int:
    """Append one record inside the caller's transaction (the engine's hot path: no object,
    two statements); returns its sequence number. Limit and policy default to the stream's."""
    if stream not in DEFAULT_LIMITS:
        raise UnknownStream(stream)
    if not has_reader(conn):
        return 0
    size = len(payload)
    if limit is None:
        limit = DEFAULT_LIMITS[stream]
    # the common case in one statement: the bound holds, the sequence moves
    row = conn.execute(_BUMP + " AND pending_bytes + ? <= ? RETURNING last_seq",
                       (size, stream, size, limit)).fetchone()
    if row is None:
        pending = conn.execute("SELECT pending_bytes FROM outbox_streams WHERE stream = ?",
                               (stream,)).fetchone()[0]
        if (policy or DEFAULT_POLICIES[stream]) == "refuse":
            raise OutboxFull(stream, limit, pending)
        _drop_oldest(conn, stream, pending + size - limit)
        row = conn.execute(_BUMP + " RETURNING last_seq", (size, stream)).fetchone()
    seq = row[0]
    conn.execute("INSERT INTO outbox (stream, seq, kind, payload, size, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (stream, seq, kind, payload, size, time.time() if now is None else now))
    return int(seq)


_ROWS_PER_INSERT = 4096  # 6 variables a row, well under SQLite's 32,766 per statement


def append_many(conn: Connection, stream: str, records: list[tuple[str, bytes]], *,
                limit: int | None = None, now: float | None = None) -> bool:
    """Append several records with one sequence bump and one multi-row insert; False (and
    nothing written) when they do not all fit under the stream's bound, for the caller to
    append them one by one under the stream's policy."""
    if stream not in DEFAULT_LIMITS:
        raise UnknownStream(stream)
    if not has_reader(conn):
        return True
    n, total = len(records), sum(len(payload) for _, payload in records)
    row = conn.execute(
        "UPDATE outbox_streams SET last_seq = last_seq + ?, pending_count = pending_count + ?,"
        " pending_bytes = pending_bytes + ? WHERE stream = ? AND pending_bytes + ? <= ?"
        " RETURNING last_seq",
        (n, n, total, stream, total, DEFAULT_LIMITS[stream] if limit is None else limit)
    ).fetchone()
    if row is None:
        return False
    first, at = row[0] - n + 1, time.time() if now is None else now
    # one multi-row statement: one call into SQLite, where executemany makes one per row
    for start in range(0, n, _ROWS_PER_INSERT):
        chunk = records[start:start + _ROWS_PER_INSERT]
        conn.execute("INSERT INTO outbox (stream, seq, kind, payload, size, created_at) VALUES "
                     + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                     [v for i, (kind, payload) in enumerate(chunk, first + start)
                      for v in (stream, i, kind, payload, len(payload), at)])
    return True


def _drop_oldest(conn: Connection, stream: str, need: int) -> None:
    acked = conn.execute("SELECT acked_seq FROM outbox_streams WHERE stream = ?",
                         (stream,)).fetchone()[0]
    freed = count = 0
    last = acked
    for seq, size in conn.execute(
            "SELECT seq, size FROM outbox WHERE stream = ? AND seq > ? ORDER BY seq",
            (stream, acked)):
        if freed >= need:
            break
        freed += size
        count += 1
        last = seq
    if count:
        conn.execute("DELETE FROM outbox WHERE stream = ? AND seq > ? AND seq <= ?",
                     (stream, acked, last))
        conn.execute(
            "UPDATE outbox_streams SET pending_count = pending_count - ?, pending_bytes ="
            " pending_bytes - ?, dropped = dropped + ? WHERE stream = ?",
            (count, freed, count, stream))


class Outbox:
    """The outbox over a connection opened with isolation_level=None by the caller."""

    def __init__(self, conn: Connection, *, limits: Mapping[str, int] | None = None,
                 policies: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.policies = {**DEFAULT_POLICIES, **(policies or {})}
        self.clock = clock

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        """Join the caller's transaction, or run a short one of our own."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def append(self, stream: str, kind: str, payload: bytes) -> int:
        """Append inside the caller's transaction; returns the record's sequence number."""
        if stream not in DEFAULT_LIMITS:
            raise UnknownStream(stream)
        return append(self.conn, stream, kind, payload, limit=self.limits[stream],
                      policy=self.policies[stream], now=self.clock())

    def pending(self, stream: str, *, after: int | None = None, limit: int = 500,
                max_bytes: int | None = None) -> list[Record]:
        """Unacknowledged records in order (after `after` if given), at most limit/max_bytes
        (always at least one record, so an oversized record cannot stall a stream)."""
        if after is None:
            after = self.watermark(stream)
        out: list[Record] = []
        total = 0
        for seq, kind, payload, size, created in self.conn.execute(
                "SELECT seq, kind, payload, size, created_at FROM outbox WHERE stream = ? AND"
                " seq > ? ORDER BY seq LIMIT ?", (stream, after, limit)):
            if max_bytes is not None and out and total + size > max_bytes:
                break
            total += size
            out.append(Record(stream, seq, kind, bytes(payload), created))
        return out

    def record(self, stream: str, seq: int) -> Record | None:
        row = self.conn.execute("SELECT kind, payload, created_at FROM outbox WHERE stream = ?"
                                " AND seq = ?", (stream, seq)).fetchone()
        return None if row is None else Record(stream, seq, row[0], bytes(row[1]), row[2])

    def floor(self, stream: str) -> int:
        """The seq below the oldest record still pending: the device holds nothing unacked
        at or below it (what lay there was acked, or dropped under the stream's bound)."""
        row = self.conn.execute(
            "SELECT min(o.seq), s.acked_seq FROM outbox_streams s LEFT JOIN outbox o ON"
            " o.stream = s.stream AND o.seq > s.acked_seq WHERE s.stream = ?",
            (stream,)).fetchone()
        if row is None:
            raise UnknownStream(stream)
        return int(row[1]) if row[0] is None else int(row[0]) - 1

    def last_seqs(self) -> dict[str, int]:
        """The last sequence appended to each stream."""
        return dict(self.conn.execute("SELECT stream, last_seq FROM outbox_streams").fetchall())

    def watermark(self, stream: str) -> int:
        row = self.conn.execute("SELECT acked_seq FROM outbox_streams WHERE stream = ?",
                                (stream,)).fetchone()
        if row is None:
            raise UnknownStream(stream)
        return int(row[0])

    def ack(self, stream: str, upto_seq: int) -> int:
        """Move the watermark forward to upto_seq (never back, never past the last record).
        Returns the new watermark."""
        with self._tx() as c:
            row = c.execute("SELECT acked_seq, last_seq FROM outbox_streams WHERE stream = ?",
                            (stream,)).fetchone()
            if row is None:
                raise UnknownStream(stream)
            acked, last = row
            new: int = min(int(upto_seq), last)
            if new <= acked:
                return int(acked)
            count, size = c.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE stream = ? AND"
                " seq > ? AND seq <= ?", (stream, acked, new)).fetchone()
            c.execute("UPDATE outbox_streams SET acked_seq = ?, pending_count = pending_count -"
                      " ?, pending_bytes = pending_bytes - ? WHERE stream = ?",
                      (new, count, size, stream))
            return new

    def truncate(self, *, keep_acked: int = 0) -> int:
        """Delete acknowledged records, keeping the newest `keep_acked` per stream."""
        deleted = 0
        with self._tx() as c:
            for stream, acked in c.execute("SELECT stream, acked_seq FROM outbox_streams"
                                           ).fetchall():
                cur = c.execute("DELETE FROM outbox WHERE stream = ? AND seq <= ?",
                                (stream, acked - keep_acked))
                deleted += cur.rowcount
        return deleted

    def stats(self) -> dict[str, StreamStats]:
        now = self.clock()
        out: dict[str, StreamStats] = {}
        for stream, last, acked, count, size, dropped in self.conn.execute(
                "SELECT stream, last_seq, acked_seq, pending_count, pending_bytes, dropped FROM"
                " outbox_streams").fetchall():
            oldest = self.conn.execute(
                "SELECT created_at FROM outbox WHERE stream = ? AND seq > ? ORDER BY seq"
                " LIMIT 1", (stream, acked)).fetchone()
            out[stream] = StreamStats(stream, count, size,
                                      None if oldest is None else max(0.0, now - oldest[0]),
                                      acked, last, dropped)
        return {s: out[s] for s in sorted(out, key=lambda s: (STREAMS + (s,)).index(s))}
