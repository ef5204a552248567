"""Records per second end to end (outbox read, publish, ingest commit, ack, watermark moved)
against raw paho QoS 1 publishing to the same broker in the same run.

Run: .venv/bin/python -m bench.sync_throughput [--records N]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.broker import Broker
from support.syncrig import append, device_db, edge, wait_synced

from sync.envelope import WireRecord, encode_batch
from sync.mqtt import make_client


def raw_paho(port: int, n: int, pipelined: bool) -> float:
    c = make_client(f"raw-{time.time_ns()}")
    c.max_inflight_messages_set(100 if pipelined else 1)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = b"x" * 200
    start = time.perf_counter()
    infos = []
    for _ in range(n):
        info = c.publish("bench/raw", payload, qos=1)
        if pipelined:
            infos.append(info)
        else:
            info.wait_for_publish(10)
    for info in infos:
        info.wait_for_publish(30)
    rate = n / (time.perf_counter() - start)
    c.disconnect()
    c.loop_stop()
    return rate


def end_to_end(tmp: Path, port: int, n: int, compression: bool) -> tuple[float, float]:
    db = tmp / f"dev-{compression}-{n}.db"
    device_db(db)
    append(db, "checkpoints", n, size=200)
    cfg = tmp / f"cloud-{compression}-{n}.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{port}"\ninsecure = true\n'
                   f'[store]\nurl = "sqlite:///{tmp / f"cloud-{compression}-{n}.db"}"\n')
    worker = subprocess.Popen([str(Path(sys.executable).parent / "edge-agent-cloud"), "run",
                               "--config", str(cfg)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    e = edge(db, port, batch_max_records=2000, batch_max_bytes=1 << 20, window=8,
             compression=compression, ack_timeout_s=30)
    start = time.perf_counter()
    e.start()
    wait_synced(db, 600)
    elapsed = time.perf_counter() - start
    e.shutdown()
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    return n / elapsed, elapsed


def wire_bytes(compression: bool) -> float:
    recs = [WireRecord(i, "step.completed", (f"run-{i % 7} node step.completed ok ".encode()
                                             * 8)[:200], time.time()) for i in range(1, 2001)]
    return len(encode_batch("press-7", "checkpoints", 0, recs, compress=compression)) / 2000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp).start()
        try:
            per_record = raw_paho(broker.port, 5000, pipelined=False)
            pipelined = raw_paho(broker.port, 30000, pipelined=True)
            e2e, _ = end_to_end(tmp, broker.port, args.records, compression=False)
            e2e_z, _ = end_to_end(tmp, broker.port, args.records, compression=True)
            _, backlog_s = end_to_end(tmp, broker.port, args.backlog, compression=True)
        finally:
            broker.kill()
    plain, packed = wire_bytes(False), wire_bytes(True)
    rows = [("raw paho QoS1, wait for each PUBACK", per_record, None),
            ("raw paho QoS1, pipelined", pipelined, None),
            ("edge-agent end to end (no compression)", e2e, pipelined),
            ("edge-agent end to end (zstd)", e2e_z, pipelined)]
    print(f"{'benchmark (200-byte records)':44} {'records/s':>12} {'vs pipelined':>13}")
    for name, v, anchor in rows:
        print(f"{name:44} {v:12.0f} {(f'{v / anchor:.1f}x') if anchor else '':>13}")
    print(f"{args.backlog:,}-record backlog drained in {backlog_s:.1f} s")
    print(f"bytes on the wire per record: {plain:.1f} plain, {packed:.1f} zstd")
    print(json.dumps({"raw_per_record": per_record, "raw_pipelined": pipelined, "e2e": e2e,
                      "e2e_zstd": e2e_z, "backlog_1m_s": backlog_s, "bytes_plain": plain,
                      "bytes_zstd": packed}))


if __name__ == "__main__":
    main()
