"""The conformance suite against the project's own cloud (SQLite, PostgreSQL) and device."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from support.broker import Broker
from support.syncrig import append, device_db, edge, ingest, watermarks

from sync.conformance import as_cloud


def test_the_cloud_passes_on_both_backends(broker: Broker, cloud_url: str) -> None:
    worker, store = ingest(cloud_url, broker.port)
    worker.start()
    try:
        assert worker.connected.wait(10)
        time.sleep(0.2)
        r = subprocess.run([sys.executable, "-m", "sync.conformance", "--broker",
                            f"127.0.0.1:{broker.port}", "--play", "device",
                            "--ack-timeout", "10"], capture_output=True, text=True,
                           timeout=240, env={**os.environ}, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert " 0 failed" in r.stdout and "FAIL" not in r.stdout
        reasons = {q["reason"] for q in store.quarantined()}
        assert {"bad_version", "bad_epoch", "bad_kind", "bad_created_at",
                "seq_conflict"} <= reasons
    finally:
        worker.shutdown()
        store.close()


def test_the_device_passes(tmp_path: Path, broker: Broker) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    append(db, "checkpoints", 300)
    e = edge(db, broker.port, batch_max_records=50, window=8, ack_timeout_s=1.5)
    report = None
    try:
        e.start()
        report = as_cloud.run({"host": "127.0.0.1", "port": broker.port}, "dev-a",
                              ack_timeout=1.5)
        assert report.passed, report.render()
        assert len(report.checks) == 7
        w = watermarks(db)["checkpoints"]
        assert w == (300, 300)  # left in sync by the suite's acks
    finally:
        e.shutdown()
