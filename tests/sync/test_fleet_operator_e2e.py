"""An operator at the cloud, with real processes (device daemon, mosquitto, `edge-agent-cloud
run` and its CLI): from "something is waiting" to "approved, and the run completed" without
knowing a run id in advance; and an approval sent for a gate the run has left is refused
`stale` by the device, which keeps the gate it waits at now."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.broker import Broker
from support.daemon import DaemonProcess, cli, cli_json, until
from support.proxy import Proxy

from sync.cloud.store import SqlCloudStore

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
DEVICE = """
[device]
id = "press-4"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
keepalive_s = 5
[workflows.ship]
start = "check"
[workflows.ship.nodes.check]
approval = {{ prompt = "Check lot 7?" }}
next = "launch"
[workflows.ship.nodes.launch]
approval = {{ prompt = "Launch?" }}
next = "done"
[workflows.ship.nodes.done]
end = true
"""


def cloud(cfg: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLOUD, *words, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60)


def cloud_json(cfg: Path, *words: str) -> Any:
    r = cloud(cfg, *words, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@contextmanager
def fleet(tmp_path: Path, broker_port: int, device_port: int
          ) -> Iterator[tuple[Path, Path, DaemonProcess]]:
    """A device daemon (through `device_port`) and an ingest on the broker; both stopped."""
    dev = tmp_path / "config.toml"
    dev.write_text(DEVICE.format(port=device_port))
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker_port}"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n[groups]\nline-4 = ["press-4"]\n')
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(cfg)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = DaemonProcess(dev, tmp_path)
    try:
        daemon.start()
        daemon.wait_for("READY=1")
        yield dev, cfg, daemon
    finally:
        daemon.close()
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(10)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait(5)


def waiting(cfg: Path, node: str) -> dict[str, Any]:
    """The one approval the cloud sees pending at `node`, once it sees it."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [a for a in cloud_json(cfg, "approvals")["approvals"] if a["node"] == node]
        return bool(found)
    until(seen, timeout=30, every=0.3)
    return found[0]


def test_an_operator_approves_what_waits_without_knowing_its_run_id(tmp_path: Path,
                                                                     broker: Broker) -> None:
    with fleet(tmp_path, broker.port, broker.port) as (dev, cfg, _):
        cli(dev, "start", "ship")  # started on the device; the operator never sees its id
        gate = waiting(cfg, "check")
        assert (gate["device"], gate["prompt"], gate["visit"]) == ("press-4", "Check lot 7?", 1)
        rid = gate["run_id"]
        for node in ("check", "launch"):
            out = cloud_json(cfg, "approve", "--device", "press-4", rid, "--wait",
                             "--note", "from HQ")
            assert out["state"] == "confirmed" and out["node"] == node, out
            if node == "check":
                assert waiting(cfg, "launch")["run_id"] == rid
        until(lambda: cloud_json(cfg, "runs", "--group", "line-4", "--status", "completed",
                                 "--since", "1h")["runs"] != [], timeout=30, every=0.3)
        done = cloud_json(cfg, "runs", "--device", "press-4")["runs"][0]
        assert (done["run_id"], done["status"], done["steps"], done["pending_approval"]) == (
            rid, "completed", 3, None)
        assert cli_json(dev, "runs", "show", rid)["status"] == "completed"
        assert cloud_json(cfg, "approvals")["approvals"] == []
        tree = cloud(cfg, "trace", "--device", "press-4", rid).stdout
        assert tree.startswith(f"run {rid} (ship") and "completed" in tree.splitlines()[0]
        assert tree.count("approved by cloud from cloud: from HQ") == 2, tree
        # the records are the truth: rebuilt from them, the projection is the same
        store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
        try:
            with store.tx() as c:
                before = sorted(c.execute("SELECT * FROM fleet_runs").fetchall())
            cloud_json(cfg, "reindex")
            with store.tx() as c:
                assert sorted(c.execute("SELECT * FROM fleet_runs").fetchall()) == before
        finally:
            store.close()


def test_an_approval_for_a_gate_the_run_has_left_is_refused_stale(tmp_path: Path,
                                                                   broker: Broker) -> None:
    """Issue 26, observation 3: the cloud saw gate 1 (`check`); offline, the device's
    operator approves it and the run moves to gate 2 (`launch`), which the cloud never saw.
    The cloud's approve names gate 1; the device refuses it `stale`, says it waits at
    `launch`, and `launch` stays pending."""
    proxy = Proxy(broker.port)
    try:
        with fleet(tmp_path, broker.port, proxy.port) as (dev, cfg, _):
            rid = cli_json(dev, "start", "ship")["run_id"]
            assert waiting(cfg, "check")["run_id"] == rid
            proxy.open = False  # the device goes offline
            proxy.cut()
            until(lambda: not cli_json(dev, "status")["sync"]["connected"])
            cli(dev, "approve", rid)
            until(lambda: cli_json(dev, "runs", "show", rid)["node"] == "launch")
            sent = cloud_json(cfg, "approve", "--device", "press-4", rid)
            assert (sent["approval_id"], sent["node"], sent["visit"]) == (1, "check", 1)
            proxy.open = True  # back online: the command arrives
            store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
            try:
                until(lambda: (store.command(sent["command_id"]) or {}).get("state")
                      not in (None, "sent"), timeout=60, every=0.3)
                answer = store.command(sent["command_id"])
            finally:
                store.close()
            assert answer is not None and answer["state"] == "failed", answer
            result = answer["result"]
            assert result["reason"] == "stale" and "stale" in result["error"]
            assert result["pending"]["node"] == "launch" and result["pending"]["visit"] == 1
            assert result["pending"]["approval_id"] == 2
            shown = cli_json(dev, "runs", "show", rid)
            assert shown["status"] == "waiting_approval" and shown["node"] == "launch"
            pending = [a for a in shown["approvals"] if a["status"] == "pending"]
            assert [a["node"] for a in pending] == ["launch"]
            assert waiting(cfg, "launch")["approval_id"] == 2  # the cloud now sees it too
    finally:
        proxy.close()
