"""Schedules, tools from the CLI, and log lines that carry the run's ids."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, cli, cli_json, until

CONFIG = """
[device]
id = "cell-9"
data_dir = "data"
runtime_dir = "run"

[telemetry]
log_format = "json"
log_level = "DEBUG"

[tools.echo]
kind = "command"
argv = ["./echo.sh", "{word}"]
params = { type = "object", properties = { word = { type = "string", maxLength = 10 } }, required = ["word"] }
idempotent = true
timeout_s = 5

[tools.flaky]
kind = "command"
argv = ["./flaky.sh"]
timeout_s = 5
retry = { max_attempts = 3, initial_delay_s = 0.05, retry_on = ["failed"] }

[workflows.tick]
start = "say"
trigger = { every_s = 0.3, input = { word = "tick" } }

[workflows.tick.nodes.say]
tool = "echo"
args_from = { word = "input.word" }
next = "done"

[workflows.tick.nodes.done]
end = true

[workflows.shaky]
start = "try"

[workflows.shaky.nodes.try]
tool = "flaky"
next = "done"

[workflows.shaky.nodes.done]
end = true
"""


def setup(tmp_path: Path) -> Path:
    (tmp_path / "config.toml").write_text(CONFIG)
    echo = tmp_path / "echo.sh"
    echo.write_text('#!/bin/sh\necho "{\\"said\\": \\"$1\\"}"\n')
    echo.chmod(0o755)
    flaky = tmp_path / "flaky.sh"
    flaky.write_text('#!/bin/sh\nf="$(dirname "$0")/count"\nn=$(cat "$f" 2>/dev/null || echo 0)\n'
                     'echo $((n+1)) > "$f"\n[ "$n" -ge 2 ] || { echo "jammed" >&2; exit 3; }\n')
    flaky.chmod(0o755)
    return tmp_path / "config.toml"


def test_trigger_starts_runs_on_a_schedule(tmp_path: Path) -> None:
    config = setup(tmp_path)
    d = DaemonProcess(config, tmp_path)
    try:
        d.start()
        d.wait_for("READY=1")
        time.sleep(1.2)
        runs = cli_json(config, "runs", "--state", "completed")["runs"]
        assert len(runs) >= 2 and all(r["workflow"] == "tick" for r in runs)
    finally:
        d.close()


def test_tools_list_and_call(tmp_path: Path) -> None:
    config = setup(tmp_path)
    tools = {t["name"]: t for t in cli_json(config, "tools", "list")["tools"]}
    assert tools["echo"]["kind"] == "command" and tools["echo"]["idempotent"] is True
    ok = cli_json(config, "tools", "call", "echo", "--args", '{"word": "hi"}')
    assert ok["ok"] and ok["result"]["json"] == {"said": "hi"}
    dry = cli_json(config, "tools", "call", "echo", "--args", '{"word": "hi"}', "--dry-run")
    assert dry["valid"] and dry["dry_run"]
    bad = cli(config, "tools", "call", "echo", "--args", '{"word": "far too long a word"}',
              check=False)
    assert bad.returncode == 65 and "too long" in bad.stderr
    fail = cli(config, "tools", "call", "flaky", "--json", check=False)
    assert fail.returncode == 1 and json.loads(fail.stdout)["error"].endswith("jammed")


def test_log_lines_carry_the_run_ids_and_trace_explains_retries(tmp_path: Path) -> None:
    config = setup(tmp_path)
    config.write_text(CONFIG.replace('trigger = { every_s = 0.3, input = { word = "tick" } }',
                                     ""))
    d = DaemonProcess(config, tmp_path)
    try:
        d.start()
        d.wait_for("READY=1")
        rid = cli_json(config, "start", "shaky")["run_id"]
        deadline = time.time() + 15
        while cli_json(config, "runs", "show", rid)["status"] != "completed":
            assert time.time() < deadline
            time.sleep(0.1)
        assert d.stop() == 0
    finally:
        d.close()
    lines = [json.loads(line) for line in d.log.read_text().splitlines()
             if line.startswith("{")]
    mine = [entry for entry in lines if entry.get("run_id") == rid]
    assert any("run started" in entry["message"] for entry in mine)
    retries = [entry for entry in mine if "attempt" in entry["message"]
               and "retrying" in entry["message"]]
    assert len(retries) == 2
    for entry in mine:
        assert entry["device_id"] == "cell-9"
        assert {"time", "level", "message", "logger"} <= set(entry)
    assert all(entry.get("workflow") == "shaky" and entry.get("trace_id") for entry in retries)
    text = cli(config, "trace", rid).stdout
    assert text.count("[failed]") == 2 and "jammed" in text


def test_spans_are_exported_to_an_otlp_endpoint(tmp_path: Path) -> None:
    from support.otlp import OtlpReceiver
    config = setup(tmp_path)
    with OtlpReceiver() as rx:
        config.write_text(CONFIG.replace('trigger = { every_s = 0.3, input = { word = "tick" } }',
                                         "").replace('log_level = "DEBUG"',
                                                     f'otlp_endpoint = "{rx.endpoint}"'))
        d = DaemonProcess(config, tmp_path)
        try:
            d.start()
            d.wait_for("READY=1")
            rid = cli_json(config, "start", "shaky")["run_id"]
            deadline = time.time() + 15
            while not any(s["name"] == "run shaky" for s in rx.spans):
                assert time.time() < deadline
                time.sleep(0.1)
        finally:
            d.close()
        trace = {s["trace_id"] for s in rx.spans}
        assert len(trace) == 1
        assert sum(1 for s in rx.spans if s["name"] == "step try" and s["error"]) == 2
        assert all(s["attributes"]["edge_agent.run_id"] == rid for s in rx.spans)


EDGE = """
[device]
id = "door-1"
data_dir = "data"
runtime_dir = "run"

[tools.door]
kind = "gpio"
chip = "sim:door"
lines = { sensor = { offset = 4, direction = "input", bias = "pull_down" } }
params = { type = "object" }

[workflows.opened]
start = "done"
trigger = { gpio = "door", line = "sensor", edge = "rising", input = { door = "north" } }

[workflows.opened.nodes.done]
end = true
"""


def test_a_gpio_edge_starts_a_run_per_edge(tmp_path: Path) -> None:
    from edge_agent.daemon.control_socket import request
    config = tmp_path / "config.toml"
    config.write_text(EDGE)
    d = DaemonProcess(config, tmp_path, {"EDGE_AGENT_TEST_HOOKS": "1"}).start()
    try:
        d.wait_for("READY=1")
        sock = tmp_path / "run" / "control.sock"
        time.sleep(0.3)  # the trigger is waiting on the line
        for level in (1, 0, 1, 0):  # two rising edges, two falling ones
            request(sock, "gpio_inject", chip="door", offset=4, level=level, timeout=5)
            time.sleep(0.2)
        until(lambda: len(cli_json(config, "runs")["runs"]) >= 2,
              timeout=10, every=0.05,
              why=lambda: cli_json(config, "runs")["runs"])
        time.sleep(0.5)
        runs = cli_json(config, "runs")["runs"]
        assert len(runs) == 2  # rising edges only
        shown = [cli_json(config, "runs", "show", r["run_id"]) for r in runs]
        for run in shown:
            assert run["input"]["door"] == "north"
            assert run["input"]["trigger"]["line"] == "sensor"
            assert run["input"]["trigger"]["edge"] == "rising"
            assert run["origin"] == "trigger"
        d.signal(signal.SIGHUP)  # a reload restarts the trigger on the kept tool
        # old trigger stopped, new one started
        until(lambda: "reloaded 1 tools" in d.output(), timeout=10, every=0.05,
              why=d.output)
        time.sleep(0.3)
        request(sock, "gpio_inject", chip="door", offset=4, level=1, timeout=5)
        until(lambda: len(cli_json(config, "runs")["runs"]) >= 3, timeout=10, every=0.05,
              why=d.output)
        # a changed tool is built anew; the old one closes only after its trigger stopped
        config.write_text(EDGE.replace('kind = "gpio"', 'kind = "gpio"\ndescription = "front"'))
        request(sock, "gpio_inject", chip="door", offset=4, level=0, timeout=5)
        d.signal(signal.SIGHUP)
        until(lambda: d.output().count("reloaded 1 tools") >= 2, timeout=10, every=0.05,
              why=d.output)
        time.sleep(0.3)
        request(sock, "gpio_inject", chip="door", offset=4, level=1, timeout=5)
        until(lambda: len(cli_json(config, "runs")["runs"]) >= 4, timeout=10, every=0.05,
              why=d.output)
        assert "waiting on door.sensor failed" not in d.output()
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("trigger, message", [
    ('{ every_s = 1, gpio = "door", line = "sensor" }', "exactly one of every_s"),
    ('{ gpio = "ghost", line = "sensor" }', "names no [tools.*] entry of kind gpio"),
    ('{ gpio = "door", line = "window" }', "is not a line declared by tools.door"),
    ('{ gpio = "door", line = "sensor", edge = "sideways" }', "sideways"),
])
def test_bad_edge_triggers_are_config_errors(tmp_path: Path, trigger: str,
                                             message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(EDGE.replace(
        'trigger = { gpio = "door", line = "sensor", edge = "rising", input = { door = "north" } }',
        f"trigger = {trigger}"))
    r = cli(config, "config", "check", check=False)
    assert r.returncode == 78 and "workflows.opened.trigger" in r.stderr + r.stdout
    assert message in r.stderr + r.stdout


def test_edge_triggers_are_all_told_to_stop_before_any_is_awaited() -> None:
    """Each trigger notices a stop within its wait; stopping several takes one wait, not N."""
    from edge_agent.daemon.triggers import stop_all

    events: list[tuple[str, int]] = []

    class Recorder:
        def __init__(self, n: int) -> None:
            self.n = n

        def signal(self) -> None:
            events.append(("signal", self.n))

        def join(self) -> None:
            events.append(("join", self.n))

    stop_all([Recorder(i) for i in range(3)])  # type: ignore[list-item]
    assert events == [("signal", 0), ("signal", 1), ("signal", 2),
                      ("join", 0), ("join", 1), ("join", 2)]
