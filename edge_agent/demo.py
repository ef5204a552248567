"""`make demo`: the whole product on one machine, end to end, then everything stopped.

A local Mosquitto run from the shipped example config and ACL (TLS, client certificates
from a throwaway CA, a listener each for the devices and the cloud), the cloud ingest on
SQLite signing every downlink message, a serial relay/sensor board on a pty, a
Modbus sensor block, and the daemon with a generated model run an inspection: sensors are
read over serial and Modbus, an agent decides under its grammar, a gate waits for a human
(answered from the cloud), a relay closes. In the middle the daemon is SIGKILLed and the
broker restarted; the run still completes, exactly once. Then hybrid execution: a run
hands its review step to the cloud runner's engine and gets the result back, and another
falls back locally while the broker is down.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo-data"
BIN = Path(sys.executable).parent

CONFIG = """\
# The demo's device configuration (made by edge_agent/demo.py; see systemd/ for the example).
[device]
id = "press-7"
data_dir = "state"
runtime_dir = "run"

[telemetry]
log_format = "json"

[sync]
broker = "127.0.0.1:{mqtt}"
topic_prefix = "edge"
ack_timeout_s = 3
cloud_keys = ["{cloud_key}"]      # printed by edge-agent-cloud keys init
tls = {{ ca = "pki/ca.pem", cert = "pki/press-7.pem", key = "pki/press-7.key" }}

[model.small]
path = "models/small.gguf"
n_ctx = 2048

[tools.temperature]
kind = "serial"
description = "Read a temperature sensor on the press (celsius)."
port = "ttyBOARD"
send = "TEMP {{sensor}}"
expect = '^TEMP (?P<sensor>\\d+) (?P<celsius>-?[0-9.]+)$'
error = '^ERR (?P<reason>.*)$'
params = {{ type = "object", properties = {{ sensor = {{ type = "integer", minimum = 1, maximum = 4 }} }}, required = ["sensor"], additionalProperties = false }}
result = {{ type = "object", properties = {{ celsius = {{ type = "number" }}, sensor = {{ type = "integer" }} }} }}
idempotent = true
timeout_s = 2
retry = {{ max_attempts = 3, initial_delay_s = 0.2 }}

[tools.vibration]
kind = "modbus"
description = "Read the spindle's vibration (mm/s) from the PLC."
transport = "tcp"
host = "127.0.0.1"
port = {modbus}
registers = {{ vibration = {{ table = "input", address = 0, type = "int16", scale = 0.01 }} }}
params = {{ type = "object", properties = {{ register = {{ enum = ["vibration"] }} }}, required = ["register"], additionalProperties = false }}
idempotent = true
timeout_s = 2

[tools.relay]
kind = "serial"
description = "Switch a relay on the press's board."
port = "ttyBOARD"
send = "SET {{channel}} {{state}}"
expect = '^OK (?P<channel>\\d+) (?P<state>ON|OFF)$'
error = '^ERR (?P<reason>.*)$'
request_id = true                 # the board drops a repeated request: idempotent for real
timeout_s = 2.0
idempotent = true
params = {{ type = "object", properties = {{ channel = {{ type = "integer", minimum = 1, maximum = 8 }}, state = {{ enum = ["ON", "OFF"] }} }}, required = ["channel", "state"] }}

[tools.beacon]
kind = "gpio"
description = "The green beacon over the station (simulated GPIO chip)."
chip = "sim:demo"
lines = {{ beacon = {{ offset = 17, direction = "output" }} }}
idempotent = true

[agents.inspector]
model = "small"
system = "You inspect pressed parts. Read the sensors, then answer with a verdict."
tools = ["temperature", "vibration"]
max_turns = 3
temperature = 0.8

[workflows.inspection]
start = "sense"

[workflows.inspection.nodes.sense]
parallel = ["read_temp", "read_vibration"]
join = "all"
next = "decide"

[workflows.inspection.nodes.read_temp]
tool = "temperature"
args = {{ sensor = 1 }}

[workflows.inspection.nodes.read_vibration]
tool = "vibration"
args = {{ register = "vibration" }}

[workflows.inspection.nodes.decide]
agent = "inspector"
input = "'part ' + input.part + ': temperature ' + string(read_temp.celsius) + ' C, vibration ' + string(read_vibration.value) + ' mm/s'"
fallback = "gate"
next = "gate"

[workflows.inspection.nodes.gate]
approval = {{ prompt = "Release the part to the next station?", timeout_s = 600, on_timeout = "reject" }}
next = "release"

[workflows.inspection.nodes.release]
tool = "relay"
args = {{ channel = 1, state = "ON" }}
next = "beacon"

[workflows.inspection.nodes.beacon]
tool = "beacon"
args = {{ line = "beacon", op = "write", value = true }}
next = "done"

[workflows.inspection.nodes.done]
end = true

# hybrid execution: the review step is handed to the cloud, with a local fallback
[workflows.second_opinion]
start = "review"

[workflows.second_opinion.nodes.review]
handoff = "cloud:reviewer"        # cloud.toml's [handoffs] reviewer = "workflow:review"
input = "input"
timeout_s = 6
fallback = "local_check"
next = "done"

[workflows.second_opinion.nodes.local_check]
tool = "temperature"
args = {{ sensor = 1 }}
next = "done"

[workflows.second_opinion.nodes.done]
end = true
"""

CLOUD_AGENT = """\
# The cloud runner's engine (edge-agent cloud-run): the same engine, on the cloud's machine.
[device]
id = "cloud"
data_dir = "cloud-state"
runtime_dir = "cloud-run"

[model.big]
path = "models/small.gguf"
n_ctx = 2048

[agents.reviewer]
model = "big"
system = "You give a second opinion on inspection reports."
max_turns = 2

[workflows.review]
start = "think"

[workflows.review.nodes.think]
agent = "reviewer"
input = "'second opinion on part ' + input.part"
next = "done"

[workflows.review.nodes.done]
end = true
"""


class DemoFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str) -> None:
    bold = sys.stdout.isatty()
    print(f"\n\033[1m== {text}\033[0m" if bold else f"\n== {text}", flush=True)


class Demo:
    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.mqtt = free_port()
        self.mqtt_cloud = free_port()
        self.modbus = free_port()

    def spawn(self, name: str, argv: list[str], ready: str | None = None) -> None:
        log = open(DATA / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child's, for life
        proc = subprocess.Popen(argv, cwd=DATA, stdout=subprocess.PIPE if ready else log,
                                stderr=log)
        self.procs[name] = proc
        if ready:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if not line.startswith(ready):
                raise DemoFailed(f"{name} did not start (see {log.name})")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)

    def cli(self, *args: str, json_out: bool = False) -> Any:
        r = subprocess.run([str(BIN / "edge-agent"), *args, "--config", "config.toml",
                            *(["--json"] if json_out else [])], cwd=DATA,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise DemoFailed(f"edge-agent {' '.join(args)}: {r.stderr.strip()}")
        return json.loads(r.stdout) if json_out else r.stdout

    def cloud(self, *args: str) -> str:
        r = subprocess.run([str(BIN / "edge-agent-cloud"), *args, "--config", "cloud.toml"],
                           cwd=DATA, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise DemoFailed(f"edge-agent-cloud {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout

    def pki(self) -> None:
        """Throwaway CAs (one for devices, one for the cloud), the broker's certificate and
        one client certificate per identity: its CN is the device id (or "cloud")."""
        import trustme  # a dev dependency, installed by `make setup`
        pki = DATA / "pki"
        pki.mkdir()
        devices, cloud = trustme.CA(), trustme.CA()
        devices.cert_pem.write_to_path(str(pki / "ca.pem"))
        devices.cert_pem.write_to_path(str(pki / "devices-ca.pem"))
        cloud.cert_pem.write_to_path(str(pki / "cloud-ca.pem"))
        for ca, name in ((devices, "broker"), (devices, "press-7"), (cloud, "cloud")):
            cert = (ca.issue_cert("127.0.0.1", "localhost") if name == "broker"
                    else ca.issue_cert(name, common_name=name))
            cert.cert_chain_pems[0].write_to_path(str(pki / f"{name}.pem"))
            cert.private_key_pem.write_to_path(str(pki / f"{name}.key"))

    def broker(self) -> None:
        from sync.cloud.broker_example import render
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        shipped = render(device_port=self.mqtt, cloud_port=self.mqtt_cloud, etc=DATA / "pki")
        (DATA / "pki" / "edge-agent.acl").write_text(shipped.acl)
        conf = DATA / "mosquitto.conf"
        conf.write_text(shipped.conf + f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
        self.spawn("mosquitto", [exe, "-c", str(conf)])
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.mqtt), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise DemoFailed("mosquitto did not start (see demo-data/logs/mosquitto.log)")

    def daemon(self) -> None:
        self.spawn("edge-agent", [str(BIN / "edge-agent"), "run", "--config", "config.toml"])
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.procs["edge-agent"].poll() is not None:
                raise DemoFailed("the daemon exited (see demo-data/logs/edge-agent.log)")
            try:
                if self.cli("status", json_out=True)["daemon"]["answering"]:
                    return
            except DemoFailed:
                pass
            time.sleep(0.2)
        raise DemoFailed("the daemon did not become ready")

    def wait_run(self, run_id: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            run: dict[str, Any] = self.cli("runs", "show", run_id, json_out=True)
            if run["node"] != last:
                last = run["node"]
                print(f"   run {run_id[:12]}: {run['status']} at {run['node'] or '-'}")
            if run["status"] in statuses:
                return run
            time.sleep(0.2)
        raise DemoFailed(f"run {run_id} did not reach {statuses}")

    def run(self) -> None:
        if DATA.exists():
            shutil.rmtree(DATA)
        (DATA / "logs").mkdir(parents=True)
        self.pki()
        (DATA / "cloud.toml").write_text(
            f'[mqtt]\nbroker = "127.0.0.1:{self.mqtt_cloud}"\ntopic_prefix = "fleet/edge"\n'
            'tls = { ca = "pki/ca.pem", cert = "pki/cloud.pem", key = "pki/cloud.key" }\n'
            '[store]\nurl = "sqlite:///cloud.db"\n[signing]\nkey = "signing.key"\n'
            '[handoffs]\nreviewer = "workflow:review"\n')
        (DATA / "cloud-agent.toml").write_text(CLOUD_AGENT)
        cloud_key = self.cloud("keys", "init").strip()
        (DATA / "config.toml").write_text(CONFIG.format(mqtt=self.mqtt, modbus=self.modbus,
                                                        cloud_key=cloud_key))
        say("setting up: a model, a broker, the cloud ingest, two devices")
        print(f"   the cloud's signing key: signing.key; the device pins {cloud_key}")
        from edge_agent.inference.testmodel import make_test_model
        make_test_model(DATA / "models" / "small.gguf")
        print("   generated models/small.gguf (tiny, random weights: its words are nonsense,"
              " its tool calls are valid by grammar)")
        self.broker()
        print(f"   mosquitto (the shipped example config and ACL, TLS with client certificates)"
              f" on 127.0.0.1:{self.mqtt} (devices) and :{self.mqtt_cloud} (cloud)")
        self.spawn("cloud", [str(BIN / "edge-agent"), "cloud-run", "--config",
                             "cloud-agent.toml", "--cloud-config", "cloud.toml"])
        print("   edge-agent cloud-run: the cloud ingest on SQLite (cloud.db) and the cloud's"
              " engine (cloud-agent.toml: a reviewer agent on a model of its own)")
        self.spawn("board", [sys.executable, "-m", "hardware.simulator", "--link",
                             str(DATA / "ttyBOARD"), "--ledger", str(DATA / "board-ledger.jsonl")],
                   ready="ready")
        print("   serial relay board + sensors on a pty (ttyBOARD)")
        self.spawn("plc", [sys.executable, "-m", "hardware.modbus_sim", "--port",
                           str(self.modbus)], ready="ready")
        print(f"   Modbus TCP sensor block on 127.0.0.1:{self.modbus}")
        print("   " + self.cli("config", "check").strip() + ": config.toml")
        self.daemon()
        say("edge-agent status")
        print(self.cli("status"))

        say("an inspection run: sensors over serial and Modbus, then the agent decides")
        run_id = self.cli("start", "inspection", "--input", '{"part": "A-113"}',
                          json_out=True)["run_id"]
        self.wait_run(run_id, {"waiting_approval"})
        run = self.cli("runs", "show", run_id, json_out=True)
        ctx = run["context"]
        print(f"   temperature {ctx['read_temp']['celsius']} C (serial), vibration "
              f"{ctx['read_vibration']['value']} mm/s (Modbus)")
        verdict = ctx.get("decide", ctx.get("error"))
        print(f"   agent said: {json.dumps(verdict)[:160]}")

        say("pulling the plug: SIGKILL the daemon while the gate waits, restart the broker")
        self.stop("edge-agent", signal.SIGKILL)
        print("   daemon killed (no shutdown, no flush)")
        self.stop("mosquitto", signal.SIGKILL)
        self.broker()
        print("   broker restarted")
        self.daemon()
        print("   daemon restarted: the run resumes from its last checkpoint")
        self.wait_run(run_id, {"waiting_approval"})

        say("the cloud approves the gate (edge-agent-cloud approve --wait)")
        print("   " + self.cloud("approve", "--device", "press-7", run_id, "--note",
                               "released by the line lead", "--wait").strip()[:200])
        run = self.wait_run(run_id, {"completed", "failed", "cancelled"})
        if run["status"] != "completed":
            raise DemoFailed(f"the run ended {run['status']}: {run['error']}")
        board = [json.loads(x) for x in (DATA / "board-ledger.jsonl").read_text().splitlines()]
        print(f"   the relay board executed: {[(b['cmd'], b['channel'], b['state']) for b in board]}"
              " (exactly once)")

        say(f"edge-agent trace {run_id}")
        print(self.cli("trace", run_id))
        self.hybrid()
        deadline = time.time() + 30
        while True:
            status = self.cli("status", json_out=True)
            pending = sum(s["pending"] for s in status["sync"]["streams"].values())
            if status["sync"]["connected"] and pending == 0:
                break
            if time.time() > deadline:
                raise DemoFailed(f"still {pending} records pending after 30 s")
            time.sleep(0.3)
        say("edge-agent status (device side)")
        print(self.cli("status"))
        say("edge-agent-cloud status (the cloud's view)")
        print(self.cloud("status"))
        say("done: the run completed, survived a SIGKILL and a broker restart, a step went to"
            " the cloud and back, another fell back during an outage; nothing pending")


    def cloud_cli(self, *args: str) -> Any:
        r = subprocess.run([str(BIN / "edge-agent"), *args, "--config", "cloud-agent.toml",
                            "--json"], cwd=DATA, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise DemoFailed(f"edge-agent {' '.join(args)} (cloud): {r.stderr.strip()}")
        return json.loads(r.stdout)

    def hybrid(self) -> None:
        """A step handed to the cloud and back; then the same during a broker outage."""
        say("hybrid: the review step is handed to the cloud (handoff = \"cloud:reviewer\")")
        run_id = self.cli("start", "second_opinion", "--input", '{"part": "A-114"}',
                          json_out=True)["run_id"]
        run = self.wait_run(run_id, {"completed", "failed", "cancelled"})
        if run["status"] != "completed" or "fallback" in (run["context"].get("review") or {}):
            raise DemoFailed(f"the handed-off run ended {run['status']}: {run['error']}")
        handoff = next(s for s in run["steps"] if s["status"] == "handoff")
        child = self.cloud_cli("runs", "show", handoff["output"]["cloud_run"])
        print(f"   the cloud ran {child['workflow']} as child run {child['run_id']}"
              f" ({child['status']}); its output came back as the node's output")
        print(self.cli("trace", run_id))

        say("hybrid during a broker outage longer than the step's timeout_s (6 s)")
        self.stop("mosquitto", signal.SIGKILL)
        print("   broker down")
        run_id = self.cli("start", "second_opinion", "--input", '{"part": "A-115"}',
                          json_out=True)["run_id"]
        run = self.wait_run(run_id, {"completed", "failed", "cancelled"}, timeout=60)
        review = run["context"].get("review") or {}
        if run["status"] != "completed" or review.get("fallback") != "local_check":
            raise DemoFailed(f"the run did not fall back: {run['status']} {review}")
        print(f"   the device took the lease back and ran {review['fallback']} locally:"
              f" {review['error']}")
        self.broker()
        print("   broker back: the late request is not run by the cloud (past its timeout)")
        print(self.cli("trace", run_id))


def main() -> int:
    demo = Demo()
    try:
        demo.run()
        return 0
    except (DemoFailed, OSError, subprocess.SubprocessError) as exc:
        print(f"\ndemo failed: {exc}\nlogs: {DATA / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        demo.stop_all()


if __name__ == "__main__":
    sys.exit(main())
