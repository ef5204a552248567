"""One contract over both fleet stores: SQLite and a real PostgreSQL cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.postgres import fresh_pg_url

from sync.cloud.store import SqlCloudStore
from sync.envelope import Batch, WireRecord


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlCloudStore]:
    if request.param == "sqlite":
        s = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    else:
        s = SqlCloudStore(fresh_pg_url(request.getfixturevalue("pg_cluster")))
    try:
        yield s
    finally:
        s.close()


def batch(after: int, seqs: range, device: str = "d1", stream: str = "checkpoints",
          epoch: str = "") -> Batch:
    recs = tuple(WireRecord(i, "k", f"{epoch}p{i}".encode(), float(i)) for i in seqs)
    return Batch(device, stream, after, recs[0].seq, recs[-1].seq, recs, epoch=epoch,
                 version=2 if epoch else 1)


def test_each_record_once_and_contiguous_acks(store: SqlCloudStore) -> None:
    assert store.store_batch(batch(0, range(1, 11))).watermark == 10
    assert store.store_batch(batch(0, range(1, 11))).watermark == 10  # a resend: no change
    assert store.store_batch(batch(20, range(21, 31))).watermark == 10  # a gap: not acked
    assert store.store_batch(batch(10, range(11, 21))).watermark == 30  # the gap fills
    assert store.store_batch(batch(10, range(11, 31))).watermark == 30  # a resend
    assert [s for s, _, _ in store.records("d1", "checkpoints")] == list(range(1, 31))
    dev = store.devices()[0]
    assert dev["device_id"] == "d1" and dev["streams"]["checkpoints"]["received_seq"] == 30


def test_a_new_epoch_is_a_sequence_space_of_its_own(store: SqlCloudStore) -> None:
    """A reflashed device starts at seq 1 again: both epochs' records are kept whole, on
    both stores (the PostgreSQL migration once keyed records without their epoch)."""
    old, new = "0123456789abcdef", "fedcba9876543210"
    assert store.store_batch(batch(0, range(1, 31), epoch=old)).watermark == 30
    stored = store.store_batch(batch(0, range(1, 11), epoch=new))
    assert (stored.watermark, stored.conflicts) == (10, 0)
    assert [p for _, _, p in store.records("d1", "checkpoints", old)] == \
        [f"{old}p{i}".encode() for i in range(1, 31)]
    assert [p for _, _, p in store.records("d1", "checkpoints", new)] == \
        [f"{new}p{i}".encode() for i in range(1, 11)]
    assert store.quarantined() == []


def test_registry_quarantine_and_commands(store: SqlCloudStore) -> None:
    store.seen("d2", True, {"state": "online"})
    store.seen("d2", False, {"state": "offline"})
    assert store.devices()[0]["online"] is False
    store.quarantine(device="d2", topic="edge/d2/up", reason="bad_version", detail="v=9",
                     payload=b"\x00")
    assert store.quarantined() == [{"device": "d2", "topic": "edge/d2/up",
                                    "reason": "bad_version", "detail": "v=9"}]
    store.add_command("c1", "d2", "approve", {"run_id": "r"})
    assert store.command("c1")["state"] == "sent"
    assert not store.confirm_command("c1", "d3", {"id": "c1", "ok": True})  # not its command
    assert store.command("c1")["state"] == "sent"
    assert store.confirm_command("c1", "d2", {"id": "c1", "ok": True, "result": {"x": 1}})
    assert not store.confirm_command("c1", "d2", {"id": "c1", "ok": False})  # confirmed once
    assert store.command("c1")["state"] == "confirmed"
    store.add_command("c2", "d2", "tool_result", {"key": "handoff/k"})
    store.add_command("c3", "d3", "tool_result", {"key": "handoff/j"})
    assert store.unconfirmed_commands("d2", "tool_result") == [("c2", {"key": "handoff/k"})]
    assert store.unconfirmed_commands("d2", "approve") == []  # c1 is confirmed


def test_documents_per_device_merge_and_summaries(store: SqlCloudStore) -> None:
    """The cloud's replica of each device's documents: the same merge as the device, kept
    apart per device, and anti-entropy payloads only where the summaries differ."""
    from sync.antientropy import summarize
    from sync.cloud.docs import CloudDocs
    from sync.documents import CollectionRules
    from sync.replica import MemoryDocStore, Replica
    rules = {"notes": CollectionRules({}, "manual")}
    docs = CloudDocs(store, rules)
    device = Replica("dev-a", MemoryDocStore(), rules=rules)
    mine = device.write("notes", "shift", {"text": "edge says"})
    kv = device.write("kv", "speed", {"value": 40})
    assert docs.apply("dev-a", [mine, kv]) == 2
    assert docs.apply("dev-a", [mine]) == 0  # idempotent
    assert docs.read("dev-b", "notes", "shift") is None  # devices are kept apart
    theirs = docs.write("dev-a", "notes", "shift", {"text": "cloud says"})
    assert docs.read("dev-a", "notes", "shift").value == {"text": "cloud says"}  # dominates
    concurrent = device.write("notes", "shift", {"text": "edge again"})  # never saw the cloud's
    docs.apply("dev-a", [concurrent])
    both = docs.read("dev-a", "notes", "shift")
    assert both.siblings == {"text": ["cloud says", "edge again"]}  # manual: both kept
    device.apply(theirs)
    same = {c: summarize(c, device.store.digests(c)) for c in ("notes", "kv")}
    assert docs.differences("dev-a", same) == []  # identical replicas: nothing to send
    assert docs.digest("dev-a", "kv", "speed") == device.digest("kv", "speed")
    lost = {"notes": same["notes"]}  # the device lost its kv collection
    payloads = docs.differences("dev-a", lost)
    assert [p["collection"] for p in payloads] == ["kv"]
    assert payloads[0]["versions"] == [kv.encode()]


def test_unreadable_documents_are_counted_and_the_batch_still_lands(
        store: SqlCloudStore) -> None:
    import time as _time

    import msgpack

    from sync.cloud.ingest import IngestWorker
    from sync.envelope import encode_batch
    from sync.replica import MemoryDocStore, Replica
    worker = IngestWorker(store, host="127.0.0.1", port=1)  # never connected: acks go nowhere
    good = Replica("dev-a", MemoryDocStore()).write("kv", "k", {"value": 1})
    now = _time.time()
    records = [WireRecord(1, "doc.version", msgpack.packb({"c": "kv"}), now),
               WireRecord(2, "doc.summary", msgpack.packb({"kv": {"root": 7}}), now),
               WireRecord(3, "doc.version", msgpack.packb(good.encode()), now),
               WireRecord(4, "doc.version", b"\xc1 not msgpack", now)]
    worker.handle("edge/dev-a/up", encode_batch("dev-a", "control", 0, records))
    assert worker.rejected["bad_document"] == 3
    assert [s for s, _, _ in store.records("dev-a", "control")] == [1, 2, 3, 4]
    assert worker.docs.read("dev-a", "kv", "k").value == {"value": 1}


def test_a_device_with_only_quarantined_batches_has_no_epoch_yet(store: SqlCloudStore) -> None:
    """It was shown as "epoch (protocol 1)": the empty epoch protocol 1 devices have."""
    store.seen("d3", True, {"state": "online"})
    for _ in range(2):
        store.quarantine(device="d3", topic="edge/d3/up", reason="bad_signature", detail="x",
                         payload=b"\x00")
    dev = store.devices()[0]
    assert dev["epoch"] is None and dev["quarantined"] == 2 and dev["streams"] == {}
    from sync.cloud.cli import _epoch
    assert _epoch(dev) == "no epoch yet (nothing stored; 2 quarantined)"
    store.store_batch(batch(0, range(1, 3), device="d3"))  # protocol 1: epoch ""
    assert _epoch(store.devices()[0]) == "epoch (protocol 1)"
