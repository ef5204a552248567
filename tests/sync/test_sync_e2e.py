"""Every record reaches the cloud exactly once, in order, through broker deaths and cuts."""

from __future__ import annotations

import time
from pathlib import Path

from support.broker import Broker
from support.proxy import Proxy
from support.syncrig import (
    append,
    assert_exactly_once,
    device_db,
    edge,
    ingest,
    wait_synced,
    watermarks,
)

from sync.outbox import STREAMS


def test_sync_through_broker_restarts(tmp_path: Path, broker: Broker) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    for s in STREAMS:
        append(db, s, 5000)
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
    e = edge(db, broker.port, batch_max_records=200, window=4)
    worker.start()
    e.start()
    try:
        for _ in range(4):  # kill and restart the broker in the middle of the sync
            time.sleep(0.4)
            broker.restart()
            append(db, "checkpoints", 500)
            e.notify()
        wait_synced(db, 90)
        assert_exactly_once(store, "dev-a", db)
        assert e.stats.resends >= 1 or e.stats.published_records > 20_000
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()


def test_worker_killed_mid_batch_while_another_keeps_going(tmp_path: Path,
                                                         broker: Broker) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    w1, s1 = ingest(url, broker.port, group="g")
    w2, s2 = ingest(url, broker.port, group="g")
    w1.start()
    w2.start()
    e = edge(db, broker.port, batch_max_records=100)
    e.start()
    try:
        append(db, "checkpoints", 20_000, size=100)
        e.notify()
        time.sleep(0.5)
        w1.client.disconnect()  # dies: anything it had not committed is never acked
        w1.client.loop_stop()
        wait_synced(db, 90)
        assert_exactly_once(s2, "dev-a", db)
        assert w2.batches > 0
    finally:
        e.shutdown()
        w2.shutdown()
        s1.close()
        s2.close()


def test_cut_network_path_and_long_offline_backlog(tmp_path: Path, broker: Broker) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    proxy = Proxy(broker.port)
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
    worker.start()
    e = edge(db, proxy.port, batch_max_records=300)
    proxy.open = False  # offline: the backlog grows
    e.start()
    try:
        for s in STREAMS:
            append(db, s, 4000)
        time.sleep(0.5)
        proxy.open = True  # back online
        for _ in range(3):
            time.sleep(0.6)
            proxy.cut()
        wait_synced(db, 120)
        assert_exactly_once(store, "dev-a", db)
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()
        proxy.close()


def test_linger_waits_only_for_partial_batches(tmp_path: Path) -> None:
    """A backlog drains batch after batch; linger only gives a partial batch time to fill."""
    import sqlite3

    from sync.outbox import Outbox
    db = tmp_path / "dev.db"
    device_db(db)
    e = edge(db, 1, batch_max_records=100, linger_s=0.05, window=2)
    conn = sqlite3.connect(db, isolation_level=None)
    outbox = Outbox(conn)
    append(db, "traces", 99)
    assert not e._full_batch_waiting(outbox)  # a partial batch: linger
    append(db, "traces", 1)
    assert e._full_batch_waiting(outbox)  # a full one: no linger
    from sync.flights import Flight
    e._windows["traces"].flights = [Flight(1, 50, "a", 0.0), Flight(51, 100, "b", 0.0)]
    assert not e._full_batch_waiting(outbox)  # no room in the window: nothing to send now
    e._windows["traces"].flights = []
    e._windows["traces"].next_seq = 51  # 50 already sent, 50 pending
    assert not e._full_batch_waiting(outbox)
    conn.close()


def test_an_ack_with_the_wrong_digest_is_not_trusted(tmp_path: Path, broker: Broker) -> None:
    """An ack whose digest names no batch in flight (a corrupted or mixed-up store on the
    cloud side) moves no watermark and is counted; the batch goes again after the ack
    timeout, unchanged."""
    import threading

    from sync.acks import encode_ack
    from sync.envelope import decode_batch
    from sync.mqtt import Topics, make_client
    db = tmp_path / "dev.db"
    device_db(db)
    append(db, "checkpoints", 50)
    seen: list[tuple[int, int, str]] = []
    got = threading.Event()
    liar = make_client("liar")

    def on_message(client, userdata, msg):  # paho's callback shape
        batch = decode_batch(bytes(msg.payload), topic_device="dev-a", streams=STREAMS)
        seen.append((batch.after, batch.last, batch.digest))
        if len(seen) == 1:  # acknowledge the first batch with somebody else's digest
            client.publish(Topics("edge", "dev-a").ack,
                           encode_ack(batch.stream, batch.last, "0" * 64,
                                      epoch=batch.epoch), qos=1)
        got.set()
    liar.on_message = on_message
    liar.on_connect = lambda c, *a: c.subscribe("edge/dev-a/up", 1)
    liar.connect("127.0.0.1", broker.port)
    liar.loop_start()
    e = edge(db, broker.port, batch_max_records=50, ack_timeout_s=1, window=1)
    try:
        time.sleep(0.5)
        e.start()
        deadline = time.monotonic() + 10
        while len(seen) < 2:
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        assert e.stats.digest_mismatches == 1
        assert e.stats.rejected["ack:unknown_digest"] == 1
        assert seen[1][:2] == seen[0][:2] == (0, 50)  # the same batch again
        assert seen[1][2] == seen[0][2]  # its true digest never changed
        assert watermarks(db)["checkpoints"][0] == 0  # the lie moved nothing
    finally:
        e.shutdown()
        liar.loop_stop()
        liar.disconnect()
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
    worker.start()
    e2 = edge(db, broker.port, batch_max_records=50)
    try:
        e2.start()
        wait_synced(db, 30)
        assert_exactly_once(store, "dev-a", db)
    finally:
        e2.shutdown()
        worker.shutdown()
        store.close()


def test_records_leave_only_once_the_device_says_they_are_on_disk(tmp_path: Path,
                                                                  broker: Broker) -> None:
    """The device's writer syncs after it commits, so the publisher asks it (`durable`)
    between reading records and sending them; while it cannot say so, nothing leaves."""
    import threading

    db = tmp_path / "device.db"
    device_db(db)
    append(db, "checkpoints", 300)
    calls: list[int] = []
    on_disk = threading.Event()

    def durable() -> None:
        calls.append(e.stats.published_batches)
        if not on_disk.is_set():
            raise OSError(5, "Input/output error")
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
    e = edge(db, broker.port, batch_max_records=100, durable=durable)
    worker.start()
    e.start()
    try:
        deadline = time.monotonic() + 20
        while len(calls) < 2 and time.monotonic() < deadline:
            e.notify()
            time.sleep(0.05)
        assert len(calls) >= 2 and e.stats.published_records == 0  # held back, not lost
        on_disk.set()
        e.notify()
        wait_synced(db, 60)
        assert_exactly_once(store, "dev-a", db)
        # asked before each batch it sent (each call saw the batches sent before it)
        sent = e.stats.published_batches
        assert sent >= 3 and set(range(sent)) <= set(calls) and max(calls) == sent - 1
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()
