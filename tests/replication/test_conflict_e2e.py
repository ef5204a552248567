"""Offline: a local operator and the cloud answer the same gate differently. On reconnect
both sides hold the same decision (reject wins), the run followed it, and the conflict
shows in the trace and the logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from support.broker import Broker
from support.daemon import DaemonProcess, cli, cli_json, until
from support.proxy import Proxy

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
keepalive_s = 5
[workflows.ship]
start = "gate"
[workflows.ship.nodes.gate]
approval = {{ prompt = "Ship?" }}
next = "second"
[workflows.ship.nodes.second]
approval = {{ prompt = "Really?" }}
next = "done"
[workflows.ship.nodes.done]
end = true
"""




def test_offline_conflicting_decisions_converge(tmp_path: Path, broker: Broker) -> None:
    proxy = Proxy(broker.port)
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(port=proxy.port))
    cloud_cfg = tmp_path / "cloud.toml"
    cloud_cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                         '[store]\nurl = "sqlite:///cloud.db"\n')
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(cloud_cfg)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        a = cli_json(cfg, "start", "ship")["run_id"]  # local reject vs cloud approve
        b = cli_json(cfg, "start", "ship")["run_id"]  # local approve vs cloud reject
        until(lambda: all(cli_json(cfg, "runs", "show", r)["status"] == "waiting_approval"
                          for r in (a, b)))
        until(lambda: cli_json(cfg, "status")["sync"]["connected"])
        until(lambda: all(r in subprocess.run(  # the cloud has seen both gates
            [CLOUD, "approvals", "--config", str(cloud_cfg)], capture_output=True, text=True,
            timeout=30).stdout for r in (a, b)))
        proxy.open = False  # the device goes offline
        proxy.cut()
        until(lambda: not cli_json(cfg, "status")["sync"]["connected"])
        ids = {}
        for run, verb in ((a, "approve"), (b, "reject")):
            out = subprocess.run([CLOUD, verb, "--device", "press-9", run, "--config",
                                  str(cloud_cfg), "--json"], capture_output=True, text=True,
                                 timeout=30)
            assert out.returncode == 0, out.stderr
            ids[run] = json.loads(out.stdout)["command_id"]
        cli(cfg, "reject", a, "--note", "scratched")
        cli(cfg, "approve", b)
        until(lambda: cli_json(cfg, "runs", "show", a)["status"] == "cancelled")
        until(lambda: cli_json(cfg, "runs", "show", b)["node"] == "second")
        proxy.open = True  # back online: the queued cloud decisions arrive
        store = subprocess.run  # noqa: F841 - readability
        from sync.cloud.store import SqlCloudStore
        cloud_db = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
        until(lambda: all((cloud_db.command(c) or {}).get("state") == "confirmed"
                          for c in ids.values()), timeout=60)
        results = {r: cloud_db.command(c)["result"]["result"] for r, c in ids.items()}
        cloud_db.close()
        assert results[a]["conflict"] and results[a]["decision"] == "rejected"
        assert results[b]["conflict"] and results[b]["decision"] == "rejected"
        # the device: both runs followed the resolved decision
        ra = cli_json(cfg, "runs", "show", a)
        rb = wait_status(cfg, b, "cancelled")
        assert ra["status"] == "cancelled"
        assert "approval conflict" in rb["error"] and "reject_wins -> rejected" in rb["error"]
        assert rb["approvals"][0]["status"] == "rejected"  # the same decision as the cloud's
        for run in (a, b):
            trace = cli(cfg, "trace", run).stdout
            assert "[conflict]" in trace and "approval conflict" in trace
    finally:
        d.close()
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(10)
        proxy.close()
    assert "approval conflict" in d.log.read_text()


def wait_status(cfg: Path, rid: str, status: str) -> dict:
    until(lambda: cli_json(cfg, "runs", "show", rid)["status"] == status)
    return cli_json(cfg, "runs", "show", rid)
