"""Issue 17, observation 6: workers sharing a subscription store one device's batches out of
order and concurrently; the watermark comes from the store, so it catches up when a gap
fills and no device waits out an ack timeout."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

from support.broker import Broker
from support.syncrig import append, assert_exactly_once, device_db, edge, ingest, wait_synced

from sync.cloud.store import SqlCloudStore
from sync.envelope import Batch, WireRecord

EP = "1111111111111111"


def batch(first: int, n: int, stream: str = "traces") -> Batch:
    recs = tuple(WireRecord(i, "k", b"p%d" % i, 1.7e9) for i in range(first, first + n))
    return Batch("d1", stream, 0, first, first + n - 1, recs, EP, 2)


def test_out_of_order_batches_move_the_watermark_when_the_gap_fills(cloud_url: str) -> None:
    store = SqlCloudStore(cloud_url)
    try:
        assert store.store_batch(batch(21, 10)).watermark == 0
        assert store.store_batch(batch(11, 10)).watermark == 0
        assert store.store_batch(batch(1, 10)).watermark == 30
    finally:
        store.close()


def test_concurrent_workers_on_postgresql_agree_on_the_watermark(
        new_pg_url: Callable[[], str]) -> None:
    """Two workers (two connections) store 200 batches of one stream in shuffled order at
    the same time; every batch acked is stored, and the last watermark is the end."""
    url = new_pg_url()
    stores = [SqlCloudStore(url) for _ in range(2)]
    order = list(range(200))
    random.Random(7).shuffle(order)
    acks: list[list[tuple[int, int]]] = [[], []]

    def work(i: int) -> None:
        for k in order[i::2]:
            acks[i].append((k, stores[i].store_batch(batch(k * 10 + 1, 10)).watermark))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        held = {s for s, _, _ in stores[0].records("d1", "traces")}
        assert held == set(range(1, 2001))
        assert max(wm for a in acks for _, wm in a) == 2000
        for a in acks:  # no ack ever claimed a hole (checked against what is stored now)
            assert all(wm == 0 or set(range(1, wm + 1)) <= held for _, wm in a)
        assert stores[1].devices()[0]["streams"]["traces"]["received_seq"] == 2000
    finally:
        for s in stores:
            s.close()


def test_two_workers_sharing_a_subscription_need_no_resend(
        tmp_path: Path, broker: Broker, new_pg_url: Callable[[], str]) -> None:
    url = new_pg_url()
    db = tmp_path / "device.db"
    device_db(db)
    for s in ("checkpoints", "traces"):
        append(db, s, 5000, size=100)
    w1, s1 = ingest(url, broker.port, group="g")
    w2, s2 = ingest(url, broker.port, group="g")
    e = edge(db, broker.port, batch_max_records=50, window=8, ack_timeout_s=30)
    for w in (w1, w2):
        w.start()
    try:
        w1.connected.wait(10)
        w2.connected.wait(10)
        e.start()
        wait_synced(db, 120)
        assert_exactly_once(s1, "dev-a", db)
        assert e.stats.resends == 0 and e.stats.digest_mismatches == 0
        assert w1.batches > 0 and w2.batches > 0
    finally:
        e.shutdown()
        for w, s in ((w1, s1), (w2, s2)):
            w.shutdown()
            s.close()
