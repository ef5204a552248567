"""Issue 26, observations 1 and 2: the cloud's work for devices (remote tools, hand-offs)
runs on bounded pools with per-device limits, never in the ingest path; a device over its
share is answered `busy`. Real mosquitto, real cloud processes, real outbox files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.broker import Broker
from support.flood import measure
from support.syncrig import append, device_db, edge, ingest, wait_synced

from sync.cloud.work import FairQueue, WorkPool
from sync.outbox import Outbox


def test_a_pool_refuses_over_the_device_share_and_the_queue_bound() -> None:
    pool = WorkPool("t", workers=2, per_device=2, max_queued=3)
    gate = threading.Event()
    try:
        assert pool.submit("a", gate.wait) and pool.submit("a", gate.wait)
        assert not pool.submit("a", gate.wait)  # a's share is taken
        assert pool.submit("b", gate.wait)  # b still gets in
        stats = pool.stats()
        assert stats["in_flight"] == 3 and stats["busy"] == 1 and stats["threads"] == 2
        assert stats["devices"]["a"] == {"in_flight": 2, "busy": 1}
    finally:
        gate.set()
    deadline = time.monotonic() + 5
    while not pool.idle():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert pool.submit("a", lambda: None)  # its share is back
    pool.shutdown()


def test_the_ingest_queue_serves_devices_in_turn() -> None:
    q: FairQueue[str] = FairQueue(100)
    for i in range(5):
        q.put("flood", f"f{i}")
    q.put("quiet", "q0")
    assert [q.get() for _ in range(3)] == ["f0", "q0", "f1"]
    q.close()
    assert [q.get() for _ in range(4)] == ["f2", "f3", "f4", None]


def test_limits_are_validated_naming_key_and_value(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1883"\ninsecure = true\n[store]\n'
                   'url = "sqlite:///cloud.db"\n[limits]\nhandoff_workers = 0\n'
                   'per_device_in_flight = "x"\nworkers = 3\n')
    r = subprocess.run([sys.executable, "-m", "sync.cloud.cli", "status", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert "limits.handoff_workers: must be >= 1 (got 0)" in r.stderr
    assert "limits.per_device_in_flight: must be an integer (got 'x')" in r.stderr
    assert "limits.workers: unknown key" in r.stderr


def slow(part: str) -> dict[str, Any]:
    time.sleep(2)
    return {"part": part}


def test_a_slow_remote_tool_does_not_delay_another_devices_acks(tmp_path: Path,
                                                                broker: Broker) -> None:
    """Observation 2: 30 requests to a 2 s remote tool from one device used to hold the
    ingest thread for 60 s, and every other device's acks with it."""
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port,
                           tools={"slow": slow})
    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    device_db(a_db)
    device_db(b_db)
    conn = sqlite3.connect(a_db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(30):
        Outbox(conn).append("control", "tool.request", msgpack.packb({
            "run_id": f"r{i}", "node": "n", "key": f"k{i}", "tool": "slow",
            "args": {"part": str(i)}, "timeout_at": time.time() + 120, "ts": time.time()}))
    conn.execute("COMMIT")
    conn.close()
    answers: Counter[str] = Counter()

    def handler(c: Any, cmd: Any) -> dict[str, Any]:
        answers["busy" if cmd.args.get("busy") else "ran"] += 1
        return {}
    a = edge(a_db, broker.port, "asker", handler=handler)
    b = edge(b_db, broker.port, "other")
    worker.start()
    a.start()
    try:
        wait_synced(a_db, timeout=20)  # its requests are in (acked at once)
        append(b_db, "checkpoints", 200)
        began = time.monotonic()
        b.start()
        wait_synced(b_db, timeout=60)
        assert time.monotonic() - began < 5.0  # not behind 30 x 2 s of tool calls
        deadline = time.monotonic() + 20
        while sum(answers.values()) < 30:
            assert time.monotonic() < deadline, answers
            time.sleep(0.1)
        share = worker.work.limits.per_device_in_flight
        assert answers == {"ran": share, "busy": 30 - share}
        assert worker.work.tools.stats()["devices"]["asker"]["busy"] == 30 - share
    finally:
        a.shutdown()
        b.shutdown()
        worker.shutdown()
        store.close()


@pytest.mark.timeout(300)
def test_a_flood_of_handoff_requests_is_refused_busy_and_others_sync_on(
        tmp_path: Path, broker: Broker) -> None:
    """Observation 1, a smaller flood than the issue's (2,000 requests in 2 s while another
    device syncs 5,000 records; the issue's 10,000 in 5 s is `python -m bench.cloud_flood`):
    the cloud's threads and memory stay bounded, the flood is answered `busy`, and the other
    device's sync takes at most twice its time alone (plus 0.5 s: scheduling noise on a
    shared machine, where the sync alone takes a fraction of a second). One batch of N
    requests used to start N threads."""
    r = measure(tmp_path, broker.port, requests=2000, records=5000, spread_s=2.0)
    assert r["peak_threads"] <= r["idle_threads"] + 12, r  # pools of 4 + sweep + sends
    assert r["peak_rss_mib"] <= r["idle_rss_mib"] + 64, r
    assert sum(r["answers"].values()) == 2000, r
    assert r["answers"]["busy"] >= 1500, r
    assert r["sync_during_flood_s"] <= 2 * r["sync_alone_s"] + 0.5, r
    handoffs = r["work"]["handoffs"]
    assert handoffs["devices"]["flooder"]["busy"] == r["answers"]["busy"]
    assert handoffs["busy"] == r["answers"]["busy"] and handoffs["workers"] == 4
