"""Rolling upgrade: stores written by protocol 1 migrate in place, from their frozen DDL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack

from sync.cloud.schema import MIGRATIONS
from sync.cloud.store import SqlCloudStore
from sync.envelope import Batch, WireRecord

EP = "2222222222222222"


def old_cloud(url: str) -> None:
    """A fleet store as protocol 1's cloud left it: migration 1's tables and some rows."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        blob, serial, ph = "BLOB", "INTEGER PRIMARY KEY", "?"
    else:
        import psycopg
        conn = psycopg.connect(url, autocommit=True)  # type: ignore[assignment]
        blob, serial, ph = "BYTEA", "BIGSERIAL PRIMARY KEY", "%s"
    for sql in dict(MIGRATIONS["sqlite"])[1]:
        conn.execute(sql.format(blob=blob, serial=serial))
    conn.execute("INSERT INTO devices (device, first_seen, last_seen) VALUES ('old', 1, 2)")
    conn.execute("INSERT INTO streams (device, stream, received_seq, acked_seq) VALUES"
                 " ('old', 'checkpoints', 3, 3)")
    for seq in (1, 2, 3):
        conn.execute(f"INSERT INTO records VALUES ('old', 'checkpoints', {ph}, 'k', {ph},"
                     f" 1.0, 2.0)", (seq, b"v1-%d" % seq))
    conn.close()


def test_a_protocol_1_fleet_store_upgrades_in_place(cloud_url: str) -> None:
    old_cloud(cloud_url)
    store = SqlCloudStore(cloud_url)
    try:
        assert [s for s, _, _ in store.records("old", "checkpoints", "")] == [1, 2, 3]
        dev = store.devices()[0]
        assert dev["epoch"] == "" and dev["streams"]["checkpoints"]["received_seq"] == 3
        # the device goes on speaking protocol 1, then upgrades: its seqs continue in a new
        # epoch, above a floor that covers what the old epoch holds
        v1 = (WireRecord(4, "k", b"v1-4", 1.0),)
        assert store.store_batch(Batch("old", "checkpoints", 3, 4, 4, v1)).watermark == 4
        v2 = (WireRecord(5, "k", b"v2-5", 1.0),)
        assert store.store_batch(Batch("old", "checkpoints", 4, 5, 5, v2, EP, 2)
                                 ).watermark == 5
        dev = store.devices()[0]
        assert dev["epoch"] == EP and dev["resets"][0]["upgrade"] is True
        assert [s for s, _, _ in store.records("old", "checkpoints", "")] == [1, 2, 3, 4]
    finally:
        store.close()
    again = SqlCloudStore(cloud_url)  # opening a migrated store changes nothing
    try:
        assert len(again.records("old", "checkpoints", "")) == 4
    finally:
        again.close()


def test_a_device_database_of_schema_4_gets_an_epoch_in_place(tmp_path: Path) -> None:
    from edge_agent.store.db import Store
    from edge_agent.store.migrations import MIGRATIONS as DEVICE
    from sync.outbox import Outbox, epoch
    path = tmp_path / "device.db"
    old = Store(path, migrations=DEVICE[:4])
    with old.atomic() as c:
        Outbox(c).append("control", "k", msgpack.packb({"x": 1}))
    old.close()
    s = Store(path)
    try:
        ep = s.read(epoch)
        assert len(ep) == 16 and int(ep, 16) >= 0
        assert s.read(lambda c: Outbox(c).last_seqs()["control"]) == 1
    finally:
        s.close()
    s = Store(path)
    try:
        assert s.read(epoch) == ep  # made once
    finally:
        s.close()
    other = Store(tmp_path / "fresh.db")
    try:
        assert other.read(epoch) != ep  # a new database, a new epoch
    finally:
        other.close()
