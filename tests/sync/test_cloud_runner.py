"""The cloud runner (`edge-agent cloud-run`): the same engine on the cloud's machine.

Cloud-only: a workflow with a cloud agent on the generated GGUF model runs with no device at
all. Hybrid: a device hands a step to a cloud workflow (`[handoffs] reviewer =
"workflow:review"`), which runs as a child run in the device run's trace, and its output
comes back as the device node's output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import Broker
from support.daemon import DaemonProcess, cli_json
from support.otlp import OtlpReceiver
from support.postgres import fresh_pg_url

EXE = str(Path(sys.executable).parent / "edge-agent")
CLOUD_AGENT = """
[device]
id = "cloud"
data_dir = "cloud-data"
runtime_dir = "cloud-run"

[model.big]
path = "models/small.gguf"
n_ctx = 2048

[agents.reviewer]
model = "big"
system = "You review inspection reports."
max_turns = 2

[tools.verdict]
kind = "command"
argv = ["./verdict.sh"]
params = { type = "object", properties = {} }

[workflows.review]
start = "think"
[workflows.review.nodes.think]
agent = "reviewer"
input = "input.doc"
next = "verdict"
[workflows.review.nodes.verdict]
tool = "verdict"
next = "done"
[workflows.review.nodes.done]
end = true
output = "verdict.json"
"""
DEVICE = """
[device]
id = "cell-9"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
[tools.local_review]
kind = "command"
argv = ["./verdict.sh"]
params = {{ type = "object", properties = {{}} }}
[workflows.inspect]
start = "review"
[workflows.inspect.nodes.review]
handoff = "cloud:reviewer"
input = "input"
timeout_s = 60
fallback = "local"
next = "done"
[workflows.inspect.nodes.local]
tool = "local_review"
next = "done"
[workflows.inspect.nodes.done]
end = true
"""


def cloud_side(tmp: Path, otlp: str | None = None, database: str | None = None) -> Path:
    """The runner's config; `database`: its engine in PostgreSQL, else its SQLite file."""
    cfg = tmp / "cloud-agent.toml"
    text = CLOUD_AGENT if database is None else CLOUD_AGENT.replace(
        'runtime_dir = "cloud-run"\n', f'runtime_dir = "cloud-run"\ndatabase = "{database}"\n')
    cfg.write_text(text + (f'[telemetry]\notlp_endpoint = "{otlp}"\n' if otlp else ""))
    script = tmp / "verdict.sh"
    script.write_text('#!/bin/sh\necho \'{"verdict": "approved", "by": "cloud-workflow"}\'\n')
    script.chmod(0o755)
    r = subprocess.run([EXE, "model", "make-test-model", str(tmp / "models" / "small.gguf")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return cfg


def runner(tmp: Path, cfg: Path, cloud_toml: Path | None = None) -> DaemonProcess:
    argv = [sys.executable, "-m", "edge_agent", "cloud-run", "--config", str(cfg)]
    if cloud_toml is not None:
        argv += ["--cloud-config", str(cloud_toml)]
    return DaemonProcess(cfg, tmp, argv=argv, cwd=tmp)


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    """A collector on loopback for the spans of both sides."""
    with OtlpReceiver() as rx:
        yield rx


def _flat(steps: list) -> list:
    return [x for s in steps for x in (s, *_flat(s.get("children", [])))]


def wait(cfg: Path, rid: str, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while (run := cli_json(cfg, "runs", "show", rid))["status"] not in (
            "completed", "failed", "cancelled"):
        assert time.time() < deadline, run
        time.sleep(0.2)
    return run


def test_a_workflow_runs_in_the_cloud_with_no_device(tmp_path: Path) -> None:
    cfg = cloud_side(tmp_path)
    r = runner(tmp_path, cfg).start()
    try:
        r.wait_for("READY=1", timeout=60)
        rid = cli_json(cfg, "start", "review", "--input", '{"doc": "seam 4 is even"}')["run_id"]
        run = wait(cfg, rid)
        assert run["status"] == "completed", run
        assert run["output"] == {"verdict": "approved", "by": "cloud-workflow"}
        assert [s["node"] for s in run["steps"] if s["status"] == "completed"][:2] == \
            ["think", "verdict"]
    finally:
        r.close()


@pytest.mark.parametrize("stores", ["sqlite", "postgresql"])
def test_a_device_hands_a_step_to_a_cloud_workflow(tmp_path: Path, broker: Broker,
                                                   otlp: OtlpReceiver, stores: str,
                                                   request: pytest.FixtureRequest) -> None:
    """One collector gets the device's spans (through the ingest) and the cloud runner's:
    one trace, the child run's root span under the device's handoff span. On SQLite files,
    and with both the fleet store and the runner's engine in PostgreSQL."""
    store_url, database = "sqlite:///cloud.db", None
    if stores == "postgresql":
        pg = request.getfixturevalue("pg_cluster")
        store_url, database = fresh_pg_url(pg), fresh_pg_url(pg)
    cfg = cloud_side(tmp_path, otlp=otlp.endpoint, database=database)
    cloud_toml = tmp_path / "cloud.toml"
    cloud_toml.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                          f'[store]\nurl = "{store_url}"\n'
                          f'[otlp]\nendpoint = "{otlp.endpoint}"\n'
                          '[handoffs]\nreviewer = "workflow:review"\n')
    dev_home = tmp_path / "device"
    dev_home.mkdir()
    dcfg = dev_home / "config.toml"
    dcfg.write_text(DEVICE.format(port=broker.port))
    (dev_home / "verdict.sh").write_text('#!/bin/sh\necho \'{"by": "local"}\'\n')
    (dev_home / "verdict.sh").chmod(0o755)
    r = runner(tmp_path, cfg, cloud_toml).start()
    d = DaemonProcess(dcfg, dev_home).start()
    try:
        r.wait_for("READY=1", timeout=60)
        d.wait_for("READY=1")
        rid = cli_json(dcfg, "start", "inspect", "--input", '{"doc": "bolt 7"}')["run_id"]
        run = wait(dcfg, rid)
        assert run["status"] == "completed", run
        assert run["output"]["review"] == {"verdict": "approved", "by": "cloud-workflow"}
        handoff = [s for s in run["steps"] if s["status"] == "handoff"]
        child_id = handoff[0]["output"]["cloud_run"]
        child = cli_json(cfg, "runs", "show", child_id)  # the cloud's own view of its part
        assert child["status"] == "completed" and child["origin"] == "handoff"
        # one trace across device and cloud: `edge-agent trace` on both sides
        device_trace = cli_json(dcfg, "trace", rid)
        assert cli_json(cfg, "trace", child_id)["trace_id"] == device_trace["trace_id"]
        assert any(c.get("cloud_run") == child_id for c in _flat(device_trace["steps"])), \
            device_trace
        text = subprocess.run([EXE, "--config", str(dcfg), "trace", rid], capture_output=True, check=False,
                              text=True, timeout=30).stdout
        assert f"handed to cloud:reviewer: cloud run {child_id}" in text, text
        # the runner's ingest sweeps as `edge-agent-cloud run` does: its pools' counters
        # reach `status` (commands expire at their expiry by the same sweep)
        deadline = time.time() + 30
        while True:
            st = subprocess.run([str(Path(EXE).parent / "edge-agent-cloud"), "status",
                                 "--config", str(cloud_toml), "--json"], capture_output=True,
                                text=True, timeout=30, check=False, cwd=tmp_path)
            assert st.returncode == 0, st.stderr
            work = json.loads(st.stdout)["work"]
            if work.get("processes", 0) >= 1:
                break
            assert time.time() < deadline, work
            time.sleep(0.5)
        deadline = time.time() + 60
        want = {"run inspect", "execute_tool cloud:reviewer", "run review"}
        while not want <= {s["name"] for s in otlp.spans}:
            assert time.time() < deadline, sorted({s["name"] for s in otlp.spans})
            time.sleep(0.2)
    finally:
        d.close()
        r.close()
    # with PostgreSQL the runner's engine made no SQLite file: the child run is in PostgreSQL
    assert (tmp_path / "cloud-data" / "edge-agent.db").exists() == (database is None)
    spans = otlp.spans
    by_id = {s["span_id"]: s for s in spans}
    root = next(s for s in spans if s["name"] == "run review")  # the cloud's child run
    handoff = by_id.get(root["parent_id"])  # the device's handoff span
    assert handoff is not None, root
    assert handoff["name"] == "execute_tool cloud:reviewer"
    assert handoff["attributes"]["edge_agent.run_id"] == rid
    assert by_id[handoff["parent_id"]]["name"] == "step review"
    device_root = next(s for s in spans if s["name"] == "run inspect")
    assert by_id[handoff["parent_id"]]["parent_id"] == device_root["span_id"]
    assert root["trace_id"] == handoff["trace_id"] == device_trace["trace_id"]
    assert {s["trace_id"] for s in spans if s["attributes"].get("edge_agent.run_id") in
            (rid, child_id)} == {device_trace["trace_id"]}


def test_a_handoff_naming_no_workflow_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud-agent.toml"
    cfg.write_text('[device]\nid = "cloud"\ndata_dir = "d"\nruntime_dir = "r"\n'
                   '[workflows.w]\nstart = "done"\n[workflows.w.nodes.done]\nend = true\n')
    cloud_toml = tmp_path / "cloud.toml"
    cloud_toml.write_text('[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n[store]\n'
                          'url = "sqlite:///cloud.db"\n[handoffs]\nreviewer = "workflow:nope"\n')
    r = subprocess.run([EXE, "cloud-run", "--config", str(cfg), "--cloud-config",
                        str(cloud_toml)], capture_output=True, text=True, timeout=60,
                       check=False, cwd=tmp_path)
    assert r.returncode == 78, r.stdout + r.stderr
    assert "handoffs.reviewer: workflow:nope names no [workflows.nope]" in r.stdout + r.stderr
