"""Issue 17, observation 1: no record can stop a stream, and the publisher never dies.

A 1.8 MB run record and a 3.2 MB tool output travel in chunks and are reassembled by the
cloud; a record above the largest kept becomes a stub (size and digest; the data stays on
the device); afterwards the stream goes on and commands are still confirmed.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack
from support.broker import Broker
from support.syncrig import assert_exactly_once, device_db, edge, ingest, wait_synced

from sync.outbox import Outbox


def put(db: Path, stream: str, kind: str, payload: bytes) -> int:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        return Outbox(conn).append(stream, kind, payload)
    finally:
        conn.close()


def test_large_records_travel_in_chunks_and_the_largest_as_stubs(tmp_path: Path,
                                                                 broker: Broker,
                                                                 cloud_url: str) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    finished = os.urandom(1_800_000)  # incompressible, as 30 outputs of 60 KB may be
    output = os.urandom(3_200_000)
    too_big = os.urandom(5_000_000)
    put(db, "checkpoints", "step.finished", b"small")
    put(db, "checkpoints", "run.finished", finished)
    put(db, "checkpoints", "step.finished", output)
    put(db, "checkpoints", "step.finished", too_big)
    for i in range(20):
        put(db, "checkpoints", "step.finished", b"after %d" % i)
    worker, store = ingest(cloud_url, broker.port)
    e = edge(db, broker.port, batch_max_bytes=256 * 1024, max_record_bytes=4_000_000,
             handler=lambda conn, cmd: {"seen": cmd.args["run_id"]})
    worker.start()
    e.start()
    try:
        wait_synced(db, 60)
        held = {s: (k, p) for s, k, p in store.records("dev-a", "checkpoints")}
        assert sorted(held) == list(range(1, 25))
        assert held[2] == ("run.finished", finished) and held[3] == ("step.finished", output)
        kind, stub = held[4]
        assert kind == "stub" and msgpack.unpackb(stub) == {
            "kind": "step.finished", "size": 5_000_000,
            "sha256": hashlib.sha256(too_big).hexdigest()}
        assert e.stats.chunks >= 20 and e.stats.stubbed == 1 and e.healthy
        # both sides count the stub the device made (the cloud counted only its own)
        assert store.devices()[0]["streams"]["checkpoints"]["stubs"] == 1
        # the control stream is alive: a command is applied and its result confirmed
        deadline = time.monotonic() + 10
        while not worker.connected.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cid = worker.send_command("dev-a", "approve", {"run_id": "r1"}, wait_s=5)
        while (store.command(cid) or {}).get("state") != "confirmed":
            assert time.monotonic() < deadline + 20
            time.sleep(0.05)
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()


def test_the_cloud_stubs_a_record_above_its_own_limit(tmp_path: Path, broker: Broker,
                                                      cloud_url: str) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    big = os.urandom(1_500_000)
    put(db, "traces", "span", big)
    put(db, "traces", "span", b"next")
    worker, store = ingest(cloud_url, broker.port)
    store.max_record_bytes = 1_000_000
    e = edge(db, broker.port, batch_max_bytes=200_000)
    worker.start()
    e.start()
    try:
        wait_synced(db, 60)
        (s1, k1, p1), (s2, _, p2) = store.records("dev-a", "traces")
        assert (s1, k1, s2, p2) == (1, "stub", 2, b"next")
        assert msgpack.unpackb(p1)["size"] == 1_500_000
        assert worker.stubs == 1 and store.devices()[0]["streams"]["traces"]["stubs"] == 1
        assert store.quarantined() == []
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()


def test_the_publisher_survives_unexpected_errors_and_says_so(tmp_path: Path,
                                                              broker: Broker) -> None:
    """An unexpected error is logged, counted and retried with backoff; meanwhile the status
    reports the sync unhealthy with the last error; then it goes on."""
    from edge_agent.cli.status import render_status
    from edge_agent.daemon.runtime import sync_status
    db = tmp_path / "device.db"
    device_db(db)
    put(db, "control", "k", b"x")
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
    e = edge(db, broker.port)
    real = e.client.publish
    import threading
    mended = threading.Event()

    def flaky(*args: Any, **kw: Any) -> Any:
        if not mended.is_set() and args and str(args[0]).endswith("/up"):
            raise RuntimeError("encoder exploded")
        return real(*args, **kw)
    e.client.publish = flaky  # type: ignore[method-assign]

    class Daemonish:  # what the daemon's DaemonSync exposes to the status
        connected, broker, last_sync = True, "b:1", None

        @property
        def health(self) -> dict[str, Any]:
            return {"healthy": e.healthy, "last_error": e.last_error}
    worker.start()
    e.start()
    try:
        deadline = time.monotonic() + 10
        while e.stats.errors < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        conn = sqlite3.connect(db, isolation_level=None)

        class Readable:  # the device store's read(), over the rig's database file
            read = staticmethod(lambda fn: fn(conn))
        try:
            status = sync_status(Readable(), Daemonish())  # type: ignore[arg-type]
        finally:
            conn.close()
        assert status["healthy"] is False
        assert status["last_error"] == "RuntimeError: encoder exploded"
        text = render_status({"daemon": {"answering": False, "running": False,
                                         "config": "c"}, "device_id": "d",
                              "sync": {**status, "configured": True}, "runs": {},
                              "approvals_pending": 0, "conflicts": 0, "models": []})
        assert "UNHEALTHY: RuntimeError: encoder exploded" in text
        mended.set()
        wait_synced(db, 30)
        assert e.healthy and e.stats.errors >= 2
        assert_exactly_once(store, "dev-a", db)
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()


def test_chunks_of_a_new_layout_replace_the_old(cloud_url: str) -> None:
    """A device whose batch budget changed mid-record sends its pieces in another layout:
    the cloud assembles the record from the new layout, and stores it once."""
    from sync.chunks import split
    from sync.cloud.store import SqlCloudStore
    from sync.envelope import Batch, WireRecord
    store = SqlCloudStore(cloud_url)
    payload = os.urandom(10_000)

    def send(piece: int, only: list[int] | None = None) -> int:
        wm = 0
        for i, (chunk, data) in enumerate(split(payload, piece)):
            if only is None or i in only:
                rec = (WireRecord(1, "big", data, 1.0),)
                wm = store.store_batch(Batch("d", "traces", 0, 1, 1, rec, "3" * 16, 2,
                                             chunk)).watermark
        return wm
    try:
        assert send(3000, only=[0, 2]) == 0  # 2 of 4 pieces, then the layout changes
        assert send(4000) == 1  # 3 pieces of 4,000
        assert store.records("d", "traces") == [(1, "big", payload)]
        assert send(4000) == 1  # a late resend changes nothing
        assert store.quarantined() == []
    finally:
        store.close()


def test_a_chunked_record_that_fails_its_digest_is_sent_again(
        tmp_path: Path, broker: Broker, monkeypatch: Any) -> None:
    """PROTOCOL.md 4 and 7: pieces that do not make the record are quarantined `bad_chunk`
    and dropped, the chunk message is acked with the watermark unchanged, and the device,
    every batch answered but its pointer still, sends the record's chunks again; the
    record is then stored whole and the stream goes on."""
    import sync.cloud.batches as batches
    from sync.envelope import EnvelopeError
    real, failed = batches.assemble, []

    def corrupt_once(chunk: Any, pieces: list[bytes]) -> bytes:
        if not failed:  # a piece damaged on the way, once
            failed.append(chunk)
            raise EnvelopeError("bad_chunk", "pieces do not match the record's digest")
        return real(chunk, pieces)
    monkeypatch.setattr(batches, "assemble", corrupt_once)
    db = tmp_path / "device.db"
    device_db(db)
    big = os.urandom(700_000)
    put(db, "checkpoints", "run.finished", big)
    put(db, "checkpoints", "step.finished", b"after")
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
    e = edge(db, broker.port, batch_max_bytes=200_000, ack_timeout_s=1.0)
    worker.start()
    e.start()
    try:
        wait_synced(db, 60)
        assert failed, "the damaged record never reached the cloud"
        held = {s: (k, p) for s, k, p in store.records("dev-a", "checkpoints")}
        assert held == {1: ("run.finished", big), 2: ("step.finished", b"after")}
        assert [q["reason"] for q in store.quarantined()] == ["bad_chunk"]
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()
