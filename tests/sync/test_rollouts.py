"""Issue 29, fleet rollouts, with real parts: five device daemons, a real Mosquitto, the
ingest service (`edge-agent-cloud run`, its wave driver inside) on SQLite and PostgreSQL.

One fleet carries every scenario, in order: a fragment that adds a tool and changes two
workflows reaches all five in three waves (a worker SIGKILLed and the broker restarted
during it, one device offline until it has finished), new runs use it while a run waiting
at a gate finishes on its old version; a fragment failing `config check` is rejected with
the reason and changes nothing; a fragment whose workflow fails every run stops after its
first wave, which rolls back by itself; a fragment naming [device] is refused; forged and
expired deploy commands are refused; `edge-agent config rollback` reloads the daemon onto
the config held before.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.broker import Broker
from support.daemon import DaemonProcess, cli, cli_json, until

from sync.envelope import Command, encode_command
from sync.mqtt import make_client
from sync.signing import Sealer, load_private_key

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
DEVICES = [f"cell-{i}" for i in range(1, 6)]
DEVICE = """
[device]
id = "{id}"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true  # an anonymous lab broker; the downlink is still signed
cloud_keys = ["{key}"]
ack_timeout_s = 2
remote_config = ["workflows", "tools"]
[tools.echo]
kind = "command"
argv = ["/bin/echo", "v1"]
[workflows.tick]
start = "say"
trigger = {{ every_s = 0.5 }}
[workflows.tick.nodes.say]
tool = "echo"
next = "done"
[workflows.tick.nodes.done]
end = true
[workflows.gated]
start = "gate"
[workflows.gated.nodes.gate]
approval = {{ prompt = "Ship it?" }}
next = "done"
[workflows.gated.nodes.done]
end = true
"""
# adds a tool, changes both workflows
GOOD = """
[tools.stamp]
kind = "command"
argv = ["/bin/echo", "v2"]
[workflows.tick]
start = "stamp"
trigger = { every_s = 0.5 }
[workflows.tick.nodes.stamp]
tool = "stamp"
next = "done"
[workflows.tick.nodes.done]
end = true
[workflows.gated]
start = "gate"
[workflows.gated.nodes.gate]
approval = { prompt = "Ship it?" }
next = "stamp"
[workflows.gated.nodes.stamp]
tool = "stamp"
next = "done"
[workflows.gated.nodes.done]
end = true
"""
BROKEN = """
[workflows.tick]
start = "say"
[workflows.tick.nodes.say]
tool = "no_such_tool"
next = "done"
[workflows.tick.nodes.done]
end = true
"""
FAILING = """
[tools.fail]
kind = "command"
argv = ["/bin/false"]
[workflows.tick]
start = "boom"
trigger = { every_s = 0.5 }
[workflows.tick.nodes.boom]
tool = "fail"
next = "done"
[workflows.tick.nodes.done]
end = true
"""
LOCAL_ONLY = """
[device]
id = "hijacked"
[workflows.tick]
start = "done"
[workflows.tick.nodes.done]
end = true
"""


def cloud(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([CLOUD, *args, "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60, cwd=cfg.parent)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


class Fleet:
    def __init__(self, tmp: Path, broker: Broker, store_url: str) -> None:
        self.tmp, self.broker = tmp, broker
        self.cfg = tmp / "cloud.toml"
        self.cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                            f'[store]\nurl = "{store_url}"\n[signing]\nkey = "signing.key"\n'
                            f'[groups]\nline = {json.dumps(DEVICES)}\n')
        self.public = cloud(self.cfg, "keys", "init").stdout.strip()
        self.key = load_private_key(tmp / "signing.key")
        self.configs: dict[str, Path] = {}
        self.daemons: dict[str, DaemonProcess] = {}
        self.ingest: subprocess.Popen[bytes] | None = None
        self.stop = threading.Event()
        self.ingest_log = open(tmp / "ingest.log", "ab")  # every ingest process, in turn
        # read the daemons' sd_notify datagrams as systemd does: a full socket would block
        # the daemon's STATUS lines, and with them its event loop
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        for name in DEVICES:
            home = tmp / name
            home.mkdir()
            self.configs[name] = home / "config.toml"
            self.configs[name].write_text(DEVICE.format(id=name, port=broker.port,
                                                        key=self.public))

    def _drain(self) -> None:
        while not self.stop.wait(0.5):
            for d in list(self.daemons.values()):
                if not any(line.startswith("READY=1") for _, line in d.messages):
                    continue  # its wait_for("READY=1") reads it
                try:
                    d.read(0.01)
                except OSError:
                    pass  # closed meanwhile

    def start_ingest(self) -> None:
        self.ingest = subprocess.Popen([CLOUD, "run", "--config", str(self.cfg)],
                                       cwd=self.tmp, stdout=subprocess.DEVNULL,
                                       stderr=self.ingest_log)

    def start(self, *names: str) -> None:
        for name in names:
            if name in self.daemons:
                self.daemons[name].close()
            self.daemons[name] = DaemonProcess(self.configs[name], self.configs[name].parent)
            self.daemons[name].start()
        for name in names:
            self.daemons[name].wait_for("READY=1", timeout=60)

    def deploy(self, text: str, *args: str) -> str:
        fragment = self.tmp / f"fragment-{time.monotonic_ns()}.toml"
        fragment.write_text(text)
        out = json.loads(cloud(self.cfg, "deploy", str(fragment), *args, "--json").stdout)
        return str(out["id"])

    def show(self, dep_id: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(cloud(self.cfg, "deployment", "show", dep_id,
                                               "--json").stdout)
        return out

    def wait_state(self, dep_id: str, *states: str, timeout: float = 90) -> dict[str, Any]:
        until(lambda: self.show(dep_id)["state"] in states, timeout=timeout, every=0.5,
              why=lambda: json.dumps(self.show(dep_id), indent=1)
              + (self.tmp / "ingest.log").read_text()[-3000:])
        return self.show(dep_id)

    def history(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = cli_json(self.configs[name], "config", "history")["history"]
        return out

    def last_tick(self, name: str) -> dict[str, Any]:
        """The context of the latest tick run started (and finished) on the device."""
        db = self.configs[name].parent / "data" / "edge-agent.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            row = c.execute("SELECT context, status FROM runs WHERE workflow = 'tick' AND"
                            " status IN ('completed', 'failed') ORDER BY created_at DESC"
                            " LIMIT 1").fetchone()
        return {"context": json.loads(row[0]), "status": row[1]} if row else {}

    def stop_ingest(self) -> None:
        if self.ingest is not None and self.ingest.poll() is None:
            self.ingest.send_signal(signal.SIGTERM)
            try:
                self.ingest.wait(10)
            except subprocess.TimeoutExpired:
                self.ingest.kill()
                self.ingest.wait()

    def close(self) -> None:
        self.stop.set()
        self.reader.join(5)
        for d in self.daemons.values():
            d.close()
        self.stop_ingest()
        self.ingest_log.close()


@pytest.fixture
def fleet(tmp_path: Path, broker: Broker, cloud_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, broker, cloud_url)
    try:
        f.start_ingest()
        f.start(*DEVICES)
        yield f
    finally:
        f.close()


def test_rollout_waves_gates_rollback_and_refusals(fleet: Fleet, broker: Broker) -> None:
    one = fleet.configs["cell-1"]
    gated = cli_json(one, "start", "gated")["run_id"]
    until(lambda: cli_json(one, "runs", "show", gated)["status"] == "waiting_approval")
    old_version = cli_json(one, "runs", "show", gated)["version"]
    fleet.daemons["cell-5"].stop()  # offline for the whole rollout

    # 1. adds a tool and changes two workflows: three waves (1, 2, 2 devices)
    good = fleet.deploy(GOOD, "--group", "line", "--version", "stamp-1", "--waves", "1,60%,100%",
                        "--bake", "4s", "--min-runs", "1")
    until(lambda: fleet.show(good)["devices"][0]["state"] == "applied", timeout=60)
    # mid-rollout: the ingest worker SIGKILLed, the broker restarted, another worker takes over
    assert fleet.ingest is not None
    fleet.ingest.kill()
    fleet.ingest.wait()
    broker.restart()
    fleet.start_ingest()
    done = fleet.wait_state(good, "completed", "failed")
    assert done["state"] == "completed", done
    shown = {d["device"]: d for d in done["devices"]}
    assert [shown[n]["wave"] for n in DEVICES] == [1, 2, 2, 3, 3]
    assert {shown[n]["shown"] for n in DEVICES[:4]} == {"healthy"}, shown
    assert shown["cell-5"]["state"] == "pending"  # offline: it gets it when it returns
    for name in DEVICES[:4]:
        until(lambda name=name: "stamp" in fleet.last_tick(name).get("context", {}))
        assert fleet.history(name)[-1]["version"] == "stamp-1"
    # the run waiting at its gate finishes on its old version (no stamp step)
    cli(one, "approve", gated)
    until(lambda: cli_json(one, "runs", "show", gated)["status"] == "completed")
    run = cli_json(one, "runs", "show", gated)
    assert run["version"] == old_version and "stamp" not in run["context"]
    # the offline device catches up when it returns
    fleet.start("cell-5")
    until(lambda: fleet.show(good)["devices"][-1]["state"] == "applied", timeout=60)
    until(lambda: "stamp" in fleet.last_tick("cell-5").get("context", {}))

    # 2. a fragment config check refuses: rejected everywhere with the reason, nothing changes
    broken = fleet.deploy(BROKEN, "--group", "line", "--waves", "100%", "--bake", "2s")
    out = fleet.wait_state(broken, "failed")
    assert {d["state"] for d in out["devices"]} == {"rejected"}, out
    assert all("no_such_tool" in d["reason"] for d in out["devices"]), out
    for name in DEVICES:
        assert fleet.history(name)[-1]["version"] == "stamp-1"

    # 3. a workflow that fails every run: stops after wave 1, which rolls back by itself
    failing = fleet.deploy(FAILING, "--group", "line", "--waves", "1,100%", "--bake", "4s")
    out = fleet.wait_state(failing, "failed")
    assert "failed_rate" in out["reason"], out
    until(lambda: fleet.show(failing)["devices"][0]["state"] == "rolled_back")
    out = fleet.show(failing)
    assert [d["state"] for d in out["devices"][1:]] == ["waiting"] * 4
    actions = [e["action"] for e in fleet.history("cell-1")]
    assert actions[-2:] == ["apply", "rollback"] and fleet.history("cell-1")[-1][
        "digest"] == fleet.history("cell-2")[-1]["digest"]  # back on stamp-1
    until(lambda: "stamp" in fleet.last_tick("cell-1").get("context", {}))
    for name in DEVICES[1:]:
        assert fleet.history(name)[-1]["version"] == "stamp-1"

    # 4. a fragment naming [device] is refused by the device
    local = fleet.deploy(LOCAL_ONLY, "--devices", "cell-2", "--waves", "100%", "--bake", "1s",
                         "--min-runs", "0")
    out = fleet.wait_state(local, "failed")
    assert out["devices"][0]["state"] == "rejected"
    assert "[device] is kept local" in out["devices"][0]["reason"], out

    # 5. forged (another key) and expired (the right key) deploy commands are refused
    before = fleet.history("cell-3")
    args = {"deployment": "forged", "action": "apply", "fragment": FAILING,
            "sha256": __import__("hashlib").sha256(FAILING.encode()).hexdigest()}
    body = encode_command(Command("forged-1", "deploy", args, time.time()))
    forged = Sealer(Ed25519PrivateKey.generate()).seal("cell-3", "deploy", body,
                                                       msg_id="forged-1")
    body = encode_command(Command("late-1", "deploy", args, time.time()))
    expired = Sealer(fleet.key).seal("cell-3", "deploy", body, msg_id="late-1", ttl_s=0.001)
    time.sleep(0.01)
    anon = make_client("anonymous")
    anon.connect("127.0.0.1", broker.port)
    anon.loop_start()
    try:
        for payload in (forged, expired):
            anon.publish("edge/cell-3/cmd", payload, qos=1).wait_for_publish(5)
    finally:
        anon.disconnect()
        anon.loop_stop()
    cfg3 = fleet.configs["cell-3"]

    def refused() -> dict[str, int]:  # as the daemon counts them (not read from the file)
        out: dict[str, int] = cli_json(cfg3, "status")["sync"].get("downlink", {}).get(
            "rejected", {})
        return out
    until(lambda: refused().get("cmd:expired") == 1 and refused().get("cmd:unknown_key") == 1,
          why=refused)
    assert fleet.history("cell-3") == before

    # 6. a local rollback: the daemon reloads onto what stamp-1 replaced (the local file)
    out = cli_json(one, "config", "rollback")
    assert out["reloaded"] is True and out["digest"] == "local", out
    until(lambda: "say" in fleet.last_tick("cell-1").get("context", {}))

    listed = json.loads(cloud(fleet.cfg, "deployments", "--json").stdout)["deployments"]
    assert [d["state"] for d in listed] == ["failed", "failed", "failed", "completed"]
