"""Offline, a run crashes mid-way, resumes and completes; after reconnect the cloud ingest
re-exports one trace with correct parent/child links and no missing steps, and metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from support.broker import Broker
from support.daemon import DaemonProcess, cli_json
from support.otlp import OtlpReceiver
from support.proxy import Proxy

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
CONFIG = """
[device]
id = "cell-3"
data_dir = "data"
runtime_dir = "run"
[telemetry]
metrics_interval_s = 1
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
[tools.step]
kind = "command"
argv = ["./step.sh", "{{n}}"]
params = {{ type = "object", properties = {{ n = {{ type = "string" }} }}, required = ["n"] }}
idempotent = true
timeout_s = 10
[workflows.w]
start = "a"
[workflows.w.nodes.a]
tool = "step"
args = {{ n = "a" }}
next = "b"
[workflows.w.nodes.b]
tool = "step"
args = {{ n = "b" }}
next = "c"
[workflows.w.nodes.c]
tool = "step"
args = {{ n = "c" }}
next = "done"
[workflows.w.nodes.done]
end = true
"""


def test_one_trace_after_crash_offline_and_reexport(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    proxy = Proxy(broker.port)
    proxy.open = False  # the device is offline the whole time the run happens
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(port=proxy.port))
    step = tmp_path / "step.sh"
    step.write_text('#!/bin/sh\n[ "$1" = b ] && [ ! -e "$(dirname "$0")/b-once" ] && '
                    '{ touch "$(dirname "$0")/b-once"; sleep 3; }\necho ok\n')
    step.chmod(0o755)
    with OtlpReceiver() as rx:
        (tmp_path / "cloud.toml").write_text(
            f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n[store]\nurl = "sqlite:///c.db"\n'
            f'[otlp]\nendpoint = "{rx.endpoint}"\n')
        ingest = subprocess.Popen([CLOUD, "run", "--config", str(tmp_path / "cloud.toml")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d1, d2 = DaemonProcess(cfg, tmp_path), DaemonProcess(cfg, tmp_path)
        try:
            d1.start()
            d1.wait_for("READY=1")
            rid = cli_json(cfg, "start", "w")["run_id"]
            deadline = time.time() + 20
            while not (tmp_path / "b-once").exists():  # inside step b
                assert time.time() < deadline
                time.sleep(0.05)
            d1.proc.send_signal(signal.SIGKILL)
            d1.proc.wait()
            d2.start()
            d2.wait_for("READY=1")
            while cli_json(cfg, "runs", "show", rid)["status"] != "completed":
                assert time.time() < deadline + 20
                time.sleep(0.1)
            assert rx.spans == []  # nothing could leave the device yet
            proxy.open = True
            while not any(s["name"] == "run w" for s in rx.spans) or not rx.metrics:
                assert time.time() < deadline + 60
                time.sleep(0.2)
        finally:
            d1.close()
            d2.close()
            ingest.send_signal(signal.SIGTERM)
            ingest.wait(10)
            proxy.close()
            broker.kill()
    spans = rx.spans
    assert len({s["trace_id"] for s in spans}) == 1
    by_id = {s["span_id"]: s for s in spans}
    run_span = next(s for s in spans if s["name"] == "run w")
    steps = [s for s in spans if s["name"].startswith("step ")]
    assert {s["name"] for s in steps} == {"step a", "step b", "step c", "step done"}
    assert all(s["parent_id"] == run_span["span_id"] for s in steps)
    tools = [s for s in spans if s["name"] == "execute_tool step"]
    assert len(tools) == 3 and all(by_id[t["parent_id"]]["name"].startswith("step ")
                                   for t in tools)
    names = set().union(*(m.keys() for m in rx.metrics))
    assert {"edge_agent.step.duration", "edge_agent.tool.calls",
            "edge_agent.outbox.pending"} <= names
