"""Documents between a device and the cloud on a real broker: device writes reach the cloud's
replica, cloud writes reach the device, and anti-entropy repairs a data loss on either side
until both hold identical digests."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from support.broker import Broker
from support.daemon import DaemonProcess, cli_json, until

from edge_agent.config import load_config
from edge_agent.store import Store
from edge_agent.store.documents import replica, write_doc
from sync.cloud.docs import CloudDocs
from sync.cloud.store import SqlCloudStore

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
CONFIG = """
[device]
id = "press-9"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
anti_entropy_s = 1
[workflows.gated]
start = "gate"
[workflows.gated.nodes.gate]
approval = {{ prompt = "Go?" }}
next = "done"
[workflows.gated.nodes.done]
end = true
"""


def device_digest(cfg_path: Path, collection: str, key: str) -> str:
    cfg = load_config(cfg_path)
    store = Store(cfg.db_path)
    try:
        return store.read(lambda c: replica(c, cfg).digest(collection, key))
    finally:
        store.close()


def device_value(cfg_path: Path, collection: str, key: str) -> dict | None:
    cfg = load_config(cfg_path)
    store = Store(cfg.db_path)
    try:
        doc = store.read(lambda c: replica(c, cfg).read(collection, key))
        return None if doc is None else doc.value
    finally:
        store.close()


def cloud_digest(db: Path, collection: str, key: str) -> str:
    store = SqlCloudStore(f"sqlite:///{db}")
    try:
        return CloudDocs(store).digest("press-9", collection, key)
    finally:
        store.close()


def test_documents_converge_and_losses_are_repaired(tmp_path: Path, broker: Broker) -> None:
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(CONFIG.format(port=broker.port))
    cloud_cfg = tmp_path / "cloud.toml"
    cloud_cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                         '[store]\nurl = "sqlite:///cloud.db"\n')
    cloud_db = tmp_path / "cloud.db"
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(cloud_cfg)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = DaemonProcess(cfg_path, tmp_path).start()
    try:
        d.wait_for("READY=1")
        cfg = load_config(cfg_path)
        store = Store(cfg.db_path)
        write_doc(store, cfg, "kv", "speed", {"value": 40})  # a device write
        store.close()

        def cloud(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([CLOUD, "doc", *args, "--device", "press-9", "--config",
                                   str(cloud_cfg), "--json"], capture_output=True, text=True,
                                  timeout=60)
        until(lambda: cloud("get", "kv/speed").returncode == 0)
        assert json.loads(cloud("get", "kv/speed").stdout)["value"] == {"value": 40}
        out = cloud("set", "kv/mode", "--value", '{"value": "fast"}', "--wait")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.splitlines()[-1])["state"] == "confirmed"
        assert device_digest(cfg_path, "kv", "mode") == cloud_digest(cloud_db, "kv", "mode")
        bad = cloud("set", "kv/mode", "--value", "[1, 2]")
        assert bad.returncode == 64 and "--value" in bad.stderr

        with sqlite3.connect(cloud_db) as c:  # the cloud loses what the device wrote
            c.execute("DELETE FROM docs WHERE key = 'speed'")
        with sqlite3.connect(cfg.db_path, timeout=30) as c:  # the device loses the cloud's
            c.execute("DELETE FROM docs WHERE key = 'mode'")
        until(lambda: cloud("get", "kv/speed").returncode == 0)  # the cloud got it back
        until(lambda: device_value(cfg_path, "kv", "mode") == {"value": "fast"})  # and the device
        for key in ("speed", "mode"):  # repaired both ways: identical everywhere
            until(lambda k=key: device_digest(cfg_path, "kv", k) ==
                  cloud_digest(cloud_db, "kv", k))
        assert json.loads(cloud("get", "kv/speed").stdout)["value"] == {"value": 40}
    finally:
        d.close()
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(10)


def test_a_runs_control_document_steers_the_run(tmp_path: Path, broker: Broker) -> None:
    """The cloud writes `runs.control/<run>`; the device follows it: a context patch on a
    waiting run, then a cancel (merged by max: once asked, it stays asked)."""
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(CONFIG.format(port=broker.port))
    cloud_cfg = tmp_path / "cloud.toml"
    cloud_cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                         '[store]\nurl = "sqlite:///cloud.db"\n')
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(cloud_cfg)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = DaemonProcess(cfg_path, tmp_path).start()
    try:
        d.wait_for("READY=1")
        rid = cli_json(cfg_path, "start", "gated")["run_id"]
        until(lambda: cli_json(cfg_path, "runs", "show", rid)["status"] == "waiting_approval")

        def control(value: dict) -> dict:
            out = subprocess.run([CLOUD, "doc", "set", f"runs.control/{rid}", "--device",
                                  "press-9", "--value", json.dumps(value), "--wait",
                                  "--config", str(cloud_cfg), "--json"], capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout.splitlines()[-1])["result"]["result"]
        patched = control({"context_patch": {"bin": "B7"}, "priority": 5})
        assert patched["run"] == {"run_id": rid, "priority": 5, "context_patch": ["bin"]}
        assert cli_json(cfg_path, "runs", "show", rid)["context"]["bin"] == "B7"
        cancelled = control({"cancel_requested": True})
        assert cancelled["run"]["cancel_requested"] is True
        until(lambda: cli_json(cfg_path, "runs", "show", rid)["status"] == "cancelled")
    finally:
        d.close()
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(10)
