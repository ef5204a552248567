"""A device outbox file, an EdgeSync over it, and ingest workers over a cloud store."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sync.cloud.ingest import IngestWorker
from sync.cloud.store import SqlCloudStore
from sync.edge import EdgeSync
from sync.outbox import SCHEMA, STREAMS, Outbox


def device_db(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for sql in SCHEMA:
        conn.execute(sql)
    conn.close()


def append(path: Path, stream: str, n: int, size: int = 200) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    ob = Outbox(conn)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(n):
        ob.append(stream, "rec", (f"{stream}-{i}-".encode() * size)[:size])
    conn.execute("COMMIT")
    conn.close()


def opener(path: Path) -> Any:
    return lambda: sqlite3.connect(path, isolation_level=None, timeout=30,
                                   check_same_thread=False)


def edge(path: Path, port: int, device: str = "dev-a", **kw: Any) -> EdgeSync:
    return EdgeSync(device_id=device, host="127.0.0.1", port=port, open_conn=opener(path),
                    **{"ack_timeout_s": 2.0, "linger_s": 0.0, **kw})


def ingest(store_url: str, port: int, **kw: Any) -> tuple[IngestWorker, SqlCloudStore]:
    store = SqlCloudStore(store_url)
    return IngestWorker(store, host="127.0.0.1", port=port, **kw), store


def watermarks(path: Path) -> dict[str, tuple[int, int]]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT stream, acked_seq, last_seq FROM outbox_streams").fetchall()
    conn.close()
    return {s: (a, last) for s, a, last in rows}


def wait_synced(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w = watermarks(path)
        if all(a == last for a, last in w.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"not synced: {watermarks(path)}")


def assert_exactly_once(store: SqlCloudStore, device: str, path: Path) -> None:
    w = watermarks(path)
    for stream in STREAMS:
        seqs = [s for s, _, _ in store.records(device, stream)]
        assert seqs == list(range(1, w[stream][1] + 1)), (stream, seqs[:5], len(seqs))
