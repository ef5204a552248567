"""Hybrid execution: a device hands a step to the cloud and gets its result back over real
MQTT; a device killed meanwhile applies the result once; an outage longer than the step's
timeout takes the local fallback, and the late cloud result becomes a conflict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.broker import Broker
from support.daemon import DaemonProcess, cli_json

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
CONFIG = """
[device]
id = "cell-1"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
[tools.local_review]
kind = "command"
argv = ["./local_review.sh"]
params = {{ type = "object", properties = {{}} }}
[workflows.inspect]
start = "review"
[workflows.inspect.nodes.review]
handoff = "cloud:reviewer"
input = "input"
timeout_s = {timeout}
fallback = "local"
next = "done"
[workflows.strict]
start = "review"
[workflows.strict.nodes.review]
handoff = "cloud:reviewer"
input = "input"
timeout_s = 40
next = "done"
[workflows.strict.nodes.done]
end = true
[workflows.inspect.nodes.local]
tool = "local_review"
next = "done"
[workflows.inspect.nodes.done]
end = true
"""


def setup(tmp: Path, port: int, timeout: float, store: str = "sqlite:///cloud.db",
          limits: str = "") -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(CONFIG.format(port=port, timeout=timeout))
    script = tmp / "local_review.sh"
    script.write_text('#!/bin/sh\necho \'{"verdict": "approved", "by": "local"}\'\n')
    script.chmod(0o755)
    (tmp / "cloud.toml").write_text(f'[mqtt]\nbroker = "127.0.0.1:{port}"\ninsecure = true\n'
                                    f'[store]\nurl = "{store}"\n[handoffs]\n'
                                    f'reviewer = "cloud_tools:review"\n[limits]\n{limits}\n')
    return cfg


def start_cloud(tmp: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(  # cloud_tools, and the code under test
        [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([CLOUD, "run", "--config", str(tmp / "cloud.toml")], cwd=tmp,
                            env=env, stdout=open(tmp / "cloud.log", "ab"),
                            stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait(cfg: Path, rid: str, statuses: set[str], timeout: float = 40) -> dict:
    deadline = time.time() + timeout
    while True:
        run = cli_json(cfg, "runs", "show", rid)
        if run["status"] in statuses:
            return run
        assert time.time() < deadline, run
        time.sleep(0.2)


def wait_file(path: Path, lines: int = 1, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= lines):
        assert time.time() < deadline, f"{path} has fewer than {lines} line(s)"
        time.sleep(0.1)


def busy_answers(tmp: Path) -> int:
    """The cloud's `busy` answers to cell-1, from `edge-agent-cloud status --json` (its
    counters are written every second)."""
    time.sleep(1.5)
    r = subprocess.run([CLOUD, "status", "--json", "--config", str(tmp / "cloud.toml")],
                       capture_output=True, text=True, timeout=60, cwd=tmp, check=True)
    work = json.loads(r.stdout)["work"]["handoffs"]
    return int(work["devices"].get("cell-1", {}).get("busy", 0))


def steps_of(run: dict, node: str) -> list[dict]:
    return [s for s in run["steps"] if s["node"] == node]


def test_a_step_goes_to_the_cloud_and_comes_back(tmp_path: Path, broker: Broker,
                                                 cloud_url: str) -> None:
    """On both cloud stores: SQLite and a real PostgreSQL cluster."""
    cfg = setup(tmp_path, broker.port, timeout=30, store=cloud_url)
    cloud = start_cloud(tmp_path)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        rid = cli_json(cfg, "start", "inspect", "--input",
                       '{"id": "r1", "doc": "weld seam 4"}')["run_id"]
        run = wait(cfg, rid, {"completed", "failed"})
        assert run["status"] == "completed", run
        assert run["output"]["review"] == {"verdict": "approved", "by": "cloud-reviewer",
                                           "doc": "weld seam 4"}
        review = steps_of(run, "review")
        assert [s["status"] for s in review] == ["handoff", "completed"], review
        assert review[0]["output"]["cloud_run"].startswith("h-")  # the cloud's child run
        assert not steps_of(run, "local")
        assert cli_json(cfg, "conflicts")["conflicts"] == []

        # a step the cloud reports failed takes the local fallback at once
        rid = cli_json(cfg, "start", "inspect", "--input", '{"id": "r0", "fail": true}'
                       )["run_id"]
        run = wait(cfg, rid, {"completed", "failed"}, timeout=20)
        assert run["status"] == "completed", run
        review = steps_of(run, "review")[-1]["output"]
        assert review["fallback"] == "local" and "cannot read this document" in review["error"]
        assert run["output"]["local"]["json"]["by"] == "local"
    finally:
        d.close()
        stop(cloud)


def test_a_device_killed_while_the_cloud_holds_the_step_applies_it_once(
        tmp_path: Path, broker: Broker) -> None:
    cfg = setup(tmp_path, broker.port, timeout=60)
    cloud = start_cloud(tmp_path)
    d = DaemonProcess(cfg, tmp_path).start()
    d2 = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_for("READY=1")
        rid = cli_json(cfg, "start", "inspect", "--input",
                       '{"id": "r2", "doc": "bolt torque", "delay": 2}')["run_id"]
        wait_file(tmp_path / "reviews.log")  # the cloud holds the step
        d.kill()
        time.sleep(3)  # the cloud answers while the device is down
        d2.start()
        d2.wait_for("READY=1")
        run = wait(cfg, rid, {"completed", "failed"})
        assert run["status"] == "completed", run
        assert run["output"]["review"]["by"] == "cloud-reviewer"
        assert [s["status"] for s in steps_of(run, "review")] == ["handoff", "completed"]
        assert not steps_of(run, "local")
        time.sleep(1)
        assert (tmp_path / "reviews.log").read_text().splitlines() == ["r2"]  # run once
    finally:
        d.close()
        d2.close()
        stop(cloud)


def test_an_outage_longer_than_the_timeout_takes_the_fallback_and_records_the_late_result(
        tmp_path: Path, broker: Broker) -> None:
    cfg = setup(tmp_path, broker.port, timeout=3)
    cloud = start_cloud(tmp_path)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        rid = cli_json(cfg, "start", "inspect", "--input",
                       '{"id": "r3", "doc": "paint", "delay": 2}')["run_id"]
        wait_file(tmp_path / "reviews.log")  # the request reached the cloud
        broker.kill()  # the link goes down while the cloud works on the step
        run = wait(cfg, rid, {"completed", "failed"}, timeout=20)
        assert run["status"] == "completed", run
        assert run["output"]["local"]["json"] == {"verdict": "approved", "by": "local"}
        assert steps_of(run, "review")[0]["output"]["fallback"] == "local"
        broker.start()  # the link comes back; the cloud's late result arrives
        deadline = time.time() + 40
        while not (conflicts := cli_json(cfg, "conflicts")["conflicts"]):
            assert time.time() < deadline, "no conflict recorded"
            time.sleep(0.3)
        assert conflicts[0]["key"] == f"runs.lease/{rid}"
        states = sorted(str(s["value"].get("state")) for s in conflicts[0]["siblings"])
        assert states == ["done", "fallback"]
        run = cli_json(cfg, "runs", "show", rid)
        late = [s for s in run["steps"] if s["status"] == "conflict"]
        assert len(late) == 1 and late[0]["output"]["by"] == "cloud-reviewer"
        assert run["output"]["local"]["json"]["by"] == "local"  # not applied
    finally:
        d.close()
        stop(cloud)


def test_a_result_later_than_the_timeout_keeps_both_lease_versions_with_the_link_up(
        tmp_path: Path, broker: Broker) -> None:
    """Issue 26, observation 4: the device takes the step back at timeout_s and its lease
    version reaches the cloud before the cloud's result; the cloud writes its result on
    the request's lease version, so the two stay siblings and `edge-agent conflicts` lists
    them (it used to write on top of the device's take-back, hiding the conflict)."""
    cfg = setup(tmp_path, broker.port, timeout=2)
    cloud = start_cloud(tmp_path)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        rid = cli_json(cfg, "start", "inspect", "--input",
                       '{"id": "r4", "doc": "paint", "delay": 5}')["run_id"]
        run = wait(cfg, rid, {"completed", "failed"}, timeout=20)
        assert run["status"] == "completed" and run["output"]["local"]["json"]["by"] == "local"
        deadline = time.time() + 30
        while not (conflicts := cli_json(cfg, "conflicts")["conflicts"]):
            assert time.time() < deadline, "no conflict listed"
            time.sleep(0.3)
        assert conflicts[0]["key"] == f"runs.lease/{rid}"
        states = sorted(str(s["value"].get("state")) for s in conflicts[0]["siblings"])
        assert states == ["done", "fallback"]
        late = [s for s in cli_json(cfg, "runs", "show", rid)["steps"]
                if s["status"] == "conflict"]
        assert len(late) == 1 and late[0]["output"]["by"] == "cloud-reviewer"
    finally:
        d.close()
        stop(cloud)


def test_a_busy_cloud_answers_at_once_and_the_device_takes_its_fallback(
        tmp_path: Path, broker: Broker) -> None:
    """Issue 26, observation 1: over its share of the cloud's hand-off pool a request is
    answered `busy` at once (not run, not queued), and the device takes its fallback then,
    not at timeout_s."""
    cfg = setup(tmp_path, broker.port, timeout=60, limits="per_device_in_flight = 1")
    cloud = start_cloud(tmp_path)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        first = cli_json(cfg, "start", "inspect", "--input",
                         '{"id": "b1", "doc": "a", "delay": 4}')["run_id"]
        wait_file(tmp_path / "reviews.log")  # the cloud runs the first one
        began = time.time()
        second = cli_json(cfg, "start", "inspect", "--input",
                          '{"id": "b2", "doc": "b", "delay": 4}')["run_id"]
        run = wait(cfg, second, {"completed", "failed"}, timeout=30)
        assert run["status"] == "completed", run
        assert run["output"]["local"]["json"]["by"] == "local"
        assert "busy" in steps_of(run, "review")[0]["output"]["error"]
        assert time.time() - began < 20  # answered at once, not at timeout_s (60 s)
        run = wait(cfg, first, {"completed", "failed"}, timeout=30)
        assert run["output"]["review"]["by"] == "cloud-reviewer", run
        assert (tmp_path / "reviews.log").read_text().split() == ["b1"]  # b2 never ran
        assert busy_answers(tmp_path) == 1
    finally:
        d.close()
        stop(cloud)


def test_a_busy_cloud_is_asked_again_by_a_step_without_fallback(tmp_path: Path,
                                                                broker: Broker) -> None:
    """Without a fallback a `busy` answer is a refusal to retry: the device asks again after
    a backoff (within timeout_s) and the cloud runs it once it has room."""
    cfg = setup(tmp_path, broker.port, timeout=60, limits="per_device_in_flight = 1")
    cloud = start_cloud(tmp_path)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        d.wait_for("READY=1")
        first = cli_json(cfg, "start", "strict", "--input",
                         '{"id": "s1", "doc": "a", "delay": 3}')["run_id"]
        wait_file(tmp_path / "reviews.log")
        second = cli_json(cfg, "start", "strict", "--input",
                          '{"id": "s2", "doc": "b", "delay": 0}')["run_id"]
        for rid in (first, second):
            run = wait(cfg, rid, {"completed", "failed"}, timeout=40)
            assert run["status"] == "completed", run
            assert run["output"]["review"]["by"] == "cloud-reviewer", run
        assert sorted((tmp_path / "reviews.log").read_text().split()) == ["s1", "s2"]
        assert busy_answers(tmp_path) >= 1  # s2 was refused before it ran
    finally:
        d.close()
        stop(cloud)
