"""One contract over both fleet stores: SQLite and a real PostgreSQL cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.postgres import Postgres, bindir

from sync.cloud.store import SqlCloudStore
from sync.envelope import Batch, WireRecord


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (make test installs it)")
    pg = Postgres().start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlCloudStore]:
    if request.param == "sqlite":
        s = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    else:
        pg = request.getfixturevalue("postgres")
        s = SqlCloudStore(pg.url)
        with s.tx() as c:
            for t in ("records", "devices", "streams", "quarantine", "commands"):
                c.execute(f"DELETE FROM {t}")
    try:
        yield s
    finally:
        s.close()


def batch(after: int, seqs: range, device: str = "d1", stream: str = "checkpoints") -> Batch:
    recs = tuple(WireRecord(i, "k", f"p{i}".encode(), float(i)) for i in seqs)
    return Batch(device, stream, after, recs[0].seq, recs[-1].seq, recs)


def test_each_record_once_and_contiguous_acks(store: SqlCloudStore) -> None:
    assert store.store_batch(batch(0, range(1, 11))) == 10
    assert store.store_batch(batch(0, range(1, 11))) == 10  # a resend changes nothing
    assert store.store_batch(batch(20, range(21, 31))) == 10  # a gap: stored, not acked
    assert store.store_batch(batch(10, range(11, 21))) == 20
    assert store.store_batch(batch(10, range(11, 31))) == 30  # the resend closes the gap
    assert [s for s, _, _ in store.records("d1", "checkpoints")] == list(range(1, 31))
    dev = store.devices()[0]
    assert dev["device_id"] == "d1" and dev["streams"]["checkpoints"]["received_seq"] == 30


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
    store.confirm_command("c1", {"id": "c1", "ok": True, "result": {"x": 1}})
    store.confirm_command("c1", {"id": "c1", "ok": False})  # confirmed once
    assert store.command("c1")["state"] == "confirmed"
