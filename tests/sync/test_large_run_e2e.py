"""Observation 1 as the issue saw it: a run of 30 command steps each printing 60 KB makes a
`run.finished` record of about 1.8 MB; with the real daemon, broker and cloud it reaches the
cloud, the stream goes on, and the device reports its sync healthy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from support.broker import Broker
from support.daemon import DaemonProcess, cli_json, until

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
STEPS = 30


def test_a_run_of_thirty_60kb_outputs_syncs(tmp_path: Path, broker: Broker) -> None:
    nodes = "".join(f'[workflows.big.nodes.s{i}]\ntool = "blob"\n'
                    f'next = "{f"s{i + 1}" if i < STEPS else "done"}"\n' for i in range(1, STEPS + 1))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[device]
id = "press-9"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{broker.port}"
insecure = true
ack_timeout_s = 5
[tools.blob]
kind = "command"
argv = ["{sys.executable}", "-c", "import os, base64; print(base64.b64encode(os.urandom(45000)).decode())"]
idempotent = true
[workflows.big]
start = "s1"
{nodes}[workflows.big.nodes.done]
end = true
""")
    cloud_cfg = tmp_path / "cloud.toml"
    cloud_cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                         '[store]\nurl = "sqlite:///cloud.db"\n')
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(cloud_cfg)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = DaemonProcess(cfg, tmp_path)
    try:
        daemon.start()
        daemon.wait_for("READY=1")
        rid = cli_json(cfg, "start", "big")["run_id"]
        until(lambda: cli_json(cfg, "runs", "show", rid)["status"] == "completed", 120)

        def in_sync() -> bool:
            s = cli_json(cfg, "status")["sync"]
            return s["connected"] and all(v["pending"] == 0 for v in s["streams"].values())
        until(in_sync, 120)
        status = cli_json(cfg, "status")["sync"]
        assert status["healthy"] is True and status["last_error"] is None
        from sync.cloud.store import SqlCloudStore
        store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
        try:
            held = store.records("press-9", "checkpoints")
        finally:
            store.close()
        finished = [p for _, k, p in held if k == "run.finished"]
        assert len(finished) == 1 and len(finished[0]) > 1_500_000
        assert [s for s, _, _ in held] == list(range(1, len(held) + 1))
        assert len(held) == status["streams"]["checkpoints"]["last_seq"]
        r = subprocess.run([CLOUD, "status", "--json", "--config", str(cloud_cfg)],
                           capture_output=True, text=True, timeout=60, check=True)
        dev = json.loads(r.stdout)["devices"][0]
        assert dev["streams"]["checkpoints"]["received_seq"] == len(held)
    finally:
        daemon.close()
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(10)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait()
