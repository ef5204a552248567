"""Recording derived spans into the outbox without holding up the steps that made them.

The spans are derived in a read snapshot (WAL readers never block the writer) and encoded
outside any lock; only the append and the watermark move take the write transaction, and
that commits only if the watermark is still where the snapshot found it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.store.backend import Writer
from edge_agent.telemetry.derive import SpanBatch, commit_marks, derive_spans
from edge_agent.telemetry.spans import encode
from sync.dbapi import Connection
from sync.outbox import Outbox


def in_snapshot(conn: Connection, fn: Callable[[Connection], Any]) -> Any:
    """fn over one consistent read snapshot (a deferred read transaction)."""
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        conn.execute("COMMIT")


def record_spans(writer: Writer, *, service: str, device_id: str,
                 kinds: Mapping[tuple[str, str], str] | None = None,
                 agents: Mapping[tuple[str, str], str] | None = None,
                 limits: Mapping[str, int] | None = None, max_rounds: int = 16) -> list[bytes]:
    """Append spans of newly committed steps to the outbox's traces stream; returns the
    encoded payloads (for a direct OTLP export). Keeps going while batches come back full."""
    payloads: list[bytes] = []
    for _ in range(max_rounds):
        batch: SpanBatch = writer.store.read(
            lambda c: in_snapshot(c, lambda c2: derive_spans(c2, kinds=kinds,
                                                               agents=agents)))
        if not batch.moved:
            break
        payload = encode(batch.spans, service=service, device_id=device_id) \
            if batch.spans else None

        def tx(conn: Connection, batch: SpanBatch = batch,
               payload: bytes | None = payload) -> bool:
            if not commit_marks(conn, batch):
                return False
            if payload is not None:
                Outbox(conn, limits=limits).append("traces", "otlp.traces", payload)
            return True
        if not writer.write(tx):
            break
        if payload is not None:
            payloads.append(payload)
        if not batch.full:
            break
    return payloads
