"""Remote tools: the cloud answers over MQTT; the step waits durably; offline falls back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.broker import Broker
from support.daemon import DaemonProcess, cli, cli_json

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
CONFIG = """
[device]
id = "kiosk-1"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
[tools.price]
kind = "remote"
description = "Price lookup in the cloud."
params = {{ type = "object", properties = {{ part = {{ type = "string" }} }}, required = ["part"] }}
timeout_s = {timeout}
{fallback}
[tools.cached_price]
kind = "command"
argv = ["./cached.sh", "{{part}}"]
params = {{ type = "object", properties = {{ part = {{ type = "string" }} }} }}
[workflows.quote]
start = "lookup"
[workflows.quote.nodes.lookup]
tool = "price"
args_from = {{ part = "input.part" }}
next = "done"
[workflows.quote.nodes.done]
end = true
output = "lookup"
"""


def setup(tmp: Path, port: int, timeout: float, fallback: bool) -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(CONFIG.format(port=port, timeout=timeout,
                                 fallback='fallback = "cached_price"' if fallback else ""))
    cached = tmp / "cached.sh"
    cached.write_text('#!/bin/sh\necho "{\\"part\\": \\"$1\\", \\"eur\\": 10.0}"\n')
    cached.chmod(0o755)
    (tmp / "cloud.toml").write_text(f'[mqtt]\nbroker = "127.0.0.1:{port}"\ninsecure = true\n'
                                    f'[store]\nurl = "sqlite:///cloud.db"\n[tools]\n'
                                    f'price = "cloud_tools:price"\n')
    return cfg


def wait(cfg: Path, rid: str, statuses: set[str], timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while True:
        run = cli_json(cfg, "runs", "show", rid)
        if run["status"] in statuses:
            return run
        assert time.time() < deadline, run
        time.sleep(0.1)


def slow_cloud(tmp: Path) -> subprocess.Popen[bytes]:
    """`edge-agent-cloud run` whose price tool takes its time, with one place per device in
    its tool pool."""
    cloud_toml = tmp / "cloud.toml"
    cloud_toml.write_text(cloud_toml.read_text().replace("cloud_tools:price",
                                                         "cloud_tools:slow_price")
                          + "[limits]\nper_device_in_flight = 1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([CLOUD, "run", "--config", str(cloud_toml)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_the_cloud_answers_remote_tools(tmp_path: Path, broker: Broker) -> None:
    cfg = setup(tmp_path, broker.port, timeout=30, fallback=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(  # cloud_tools, and the code under test
        [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(tmp_path / "cloud.toml")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        ok = cli_json(cfg, "start", "quote", "--input", '{"part": "bolt"}')["run_id"]
        bad = cli_json(cfg, "start", "quote", "--input", '{"part": "broken"}')["run_id"]
        assert wait(cfg, ok, {"completed"})["output"] == {"part": "bolt", "eur": 12.5}
        failed = wait(cfg, bad, {"failed"})
        assert "no price for broken parts" in failed["error"]
    finally:
        d.close()
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(10)


def test_waits_durably_across_a_restart_then_falls_back(tmp_path: Path,
                                                       broker: Broker) -> None:
    cfg = setup(tmp_path, broker.port, timeout=3, fallback=True)  # no cloud worker at all
    d = DaemonProcess(cfg, tmp_path).start()
    d2 = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_for("READY=1")
        rid = cli_json(cfg, "start", "quote", "--input", '{"part": "nut"}')["run_id"]
        time.sleep(1.0)
        assert cli_json(cfg, "runs", "show", rid)["status"] == "running"
        d.kill()
        d2.start()
        d2.wait_for("READY=1")
        start = time.time()
        run = wait(cfg, rid, {"completed"})
        assert time.time() - start < 3.0  # the remaining wait, not a new one
        assert run["output"]["fallback"] == "cached_price"
        assert run["output"]["json"] == {"part": "nut", "eur": 10.0}
    finally:
        d.close()
        d2.close()


def test_a_non_idempotent_call_without_an_answer_is_never_sent_twice_unasked(
        tmp_path: Path, broker: Broker) -> None:
    """No fallback, no answer within timeout_s: the cloud may have run it, so the step is an
    unknown outcome a person answers, not a retry that could run it twice. The request,
    delivered once the cloud is up, is past its timeout_at and is not run; after the person
    says it did not happen, the step asks again and the cloud answers."""
    cfg = setup(tmp_path, broker.port, timeout=2, fallback=False)
    d = DaemonProcess(cfg, tmp_path).start()
    ingest = None
    log = tmp_path / "ingest.log"
    try:
        d.wait_for("READY=1")
        rid = cli_json(cfg, "start", "quote", "--input", '{"part": "bolt"}')["run_id"]
        run = wait(cfg, rid, {"waiting_approval", "failed", "completed"})
        assert run["status"] == "waiting_approval", run
        pending = cli_json(cfg, "approvals")
        asked = [a for a in (pending if isinstance(pending, list) else pending["approvals"])
                 if a["run_id"] == rid]
        assert asked and asked[0]["kind"] == "unknown_outcome", asked
        assert "may have reached the cloud" in asked[0]["prompt"], asked
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with log.open("w") as out:
            ingest = subprocess.Popen([CLOUD, "run", "--config", str(tmp_path / "cloud.toml")],
                                      env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while "came after its timeout; not run" not in log.read_text():
            assert time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        assert cli_json(cfg, "runs", "show", rid)["status"] == "waiting_approval"
        cli(cfg, "reject", rid, "--by", "operator")  # it did not happen: ask again
        run = wait(cfg, rid, {"completed", "failed"})
        assert run["status"] == "completed", run
        assert run["output"] == {"part": "bolt", "eur": 12.5}
    finally:
        d.close()
        if ingest is not None:
            ingest.send_signal(signal.SIGTERM)
            ingest.wait(10)


def test_a_busy_cloud_answers_at_once_and_the_tool_falls_back(tmp_path: Path,
                                                             broker: Broker) -> None:
    """Issue 26, observation 2: a request over the device's share of the cloud's tool pool
    is answered `busy` at once (not run, not queued behind the others): the step takes the
    tool's fallback then, not at timeout_s."""
    cfg = setup(tmp_path, broker.port, timeout=60, fallback=True)
    ingest = slow_cloud(tmp_path)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        first = cli_json(cfg, "start", "quote", "--input", '{"part": "bolt"}')["run_id"]
        time.sleep(1.0)  # its request holds the device's one place
        began = time.time()
        second = cli_json(cfg, "start", "quote", "--input", '{"part": "nut"}')["run_id"]
        run = wait(cfg, second, {"completed", "failed"})
        assert time.time() - began < 15  # at once, not at timeout_s (60 s)
        assert run["output"]["fallback"] == "cached_price", run
        assert wait(cfg, first, {"completed"})["output"] == {"part": "bolt", "eur": 13.0}
    finally:
        d.close()
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(10)


def test_a_busy_answer_without_fallback_is_retried_by_the_node_policy(
        tmp_path: Path, broker: Broker) -> None:
    """Without a fallback a `busy` answer fails the step retryably (the cloud did not run
    it, so asking again cannot run it twice): the node's retry asks again and the cloud
    answers once it has room."""
    cfg = setup(tmp_path, broker.port, timeout=60, fallback=False)
    cfg.write_text(cfg.read_text().replace(
        'args_from = { part = "input.part" }\n',
        'args_from = { part = "input.part" }\n'
        'retry = { max_attempts = 5, initial_delay_s = 2, multiplier = 1, jitter = 0 }\n'))
    ingest = slow_cloud(tmp_path)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        first = cli_json(cfg, "start", "quote", "--input", '{"part": "bolt"}')["run_id"]
        time.sleep(1.0)
        second = cli_json(cfg, "start", "quote", "--input", '{"part": "nut"}')["run_id"]
        run = wait(cfg, second, {"completed", "failed"})
        assert run["output"] == {"part": "nut", "eur": 13.0}, run
        assert any(s["error_kind"] == "busy" for s in run["steps"]), run["steps"]
        assert wait(cfg, first, {"completed"})["output"] == {"part": "bolt", "eur": 13.0}
    finally:
        d.close()
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(10)
