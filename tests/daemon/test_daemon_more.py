"""Schedules, tools from the CLI, and log lines that carry the run's ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

from support.daemon import DaemonProcess, cli, cli_json

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
