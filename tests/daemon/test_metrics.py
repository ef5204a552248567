"""`edge-agent metrics` and the status line: computed from what the database holds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from support.engine import STAMP, Harness, LedgerError, LedgerTool, fast_retry

from edge_agent.cli import main
from edge_agent.config.model import AgentConfig
from edge_agent.engine import ToolBinding
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.telemetry.summary import collect, one_line, parse_duration
from sync.distribution import percentile

CONFIG = """
[device]
id = "m-1"
data_dir = "{data}"
runtime_dir = "{data}/run"
[tools.stamp]
kind = "command"
argv = ["/bin/true"]
params = {{ type = "object", properties = {{ part = {{ type = "string" }} }} }}
[workflows.w]
start = "a"
[workflows.w.nodes.a]
tool = "stamp"
args = {{ part = "A" }}
next = "done"
[workflows.w.nodes.done]
end = true
"""


class _Out:
    def __init__(self, output: Any) -> None:
        self.output, self.handoff_to = output, None


def _fill(db: Path, runs: int = 3) -> None:
    """Runs of `w` (a tool that fails once per run, then succeeds) and of `g` (an agent
    with one model turn and one call of another tool)."""
    tool = LedgerTool("stamp", db.parent / "ledger", idempotent=True,
                      fail=lambda n: LedgerError("busy", kind="busy", retryable=True)
                      if n % 2 == 1 else None)

    def runner(agent: str, message: str, ctx: Any) -> _Out:
        ctx.remembered("turn:0", lambda: {"tool": "stamp", "args": {}, "completion": {
            "model": "tiny", "prompt_tokens": 40, "completion_tokens": 10, "ttft_s": 0.05,
            "tokens_per_s": 25.0, "finish_reason": "stop"}})
        ctx.call_tool("probe", {"part": "G"}, turn=0, index=0)
        return _Out("fine")
    stamp = {"stamp": tool_config("stamp", STAMP), "probe": tool_config("probe", STAMP)}
    w = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done", retry=fast_retry(3))
         .end("done").build(tools=stamp))
    g = (Workflow("g").agent("look", "inspector", input="input.task", next="done").end("done")
         .build(tools=stamp, agents={"inspector": AgentConfig(name="inspector", model="tiny",
                                                               tools=("probe",))}))
    probe = LedgerTool("probe", db.parent / "ledger", idempotent=True)
    h = Harness(db, {"w": w, "g": g}, {"stamp": ToolBinding(tool), "probe": ToolBinding(probe)},
                agent_runner=runner)

    async def go() -> None:
        await h.start()
        try:
            for _ in range(runs):
                await h.wait(h.queue("w", {}), "completed")
            await h.wait(h.queue("g", {"task": "x"}), "completed")
        finally:
            await h.stop()
    asyncio.run(go())


def test_collect_counts_what_happened(tmp_path: Path) -> None:
    import sqlite3
    db = tmp_path / "edge-agent.db"
    _fill(db)
    kinds = {("w", "a"): "tool", ("w", "done"): "end", ("g", "look"): "agent",
             ("g", "done"): "end"}
    with sqlite3.connect(db) as conn:
        data = collect(conn, since=0, kinds=kinds)
    stamp = next(t for t in data["tools"] if t["tool"] == "stamp")
    assert (stamp["calls"], stamp["ok"], stamp["failed"]) == (6, 3, 3)
    assert stamp["success_rate"] == pytest.approx(0.5)
    assert [t["tool"] for t in data["tools"]] == ["probe", "stamp"]
    assert data["retries"] == {"total": 3, "runs": 3, "by_node": {"a": 3}}
    a = next(s for s in data["steps"] if s["node"] == "a")
    assert a["kind"] == "tool" and a["duration_s"]["count"] == 6 and a["failed"] == 3
    assert a["duration_s"]["p50"] is not None and a["duration_s"]["p95"] >= a["duration_s"]["p50"]
    assert data["agents"]["execution_s"]["count"] == 1
    [model] = data["models"]
    assert model["model"] == "tiny" and model["turns"] == 1
    assert model["tokens_per_s"]["p50"] == 25.0
    assert model["time_to_first_token_s"]["p50"] == 0.05
    assert (model["input_tokens"], model["output_tokens"]) == (40, 10)
    line = one_line(data)
    assert line.startswith("7 tool calls (57.1% ok), 3 retries") and "25.0 tokens/s" in line


def test_metrics_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data"))
    (tmp_path / "data").mkdir()
    _fill(tmp_path / "data" / "edge-agent.db", runs=2)
    assert main(["metrics", "--config", str(cfg), "--json", "--since", "1h"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["window"] == "1h"
    assert [s["kind"] for s in data["steps"] if s["workflow"] == "w"] == ["tool", "end"]
    assert main(["metrics", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    for piece in ("tools", "stamp", "retries   2 in 2 runs (a 2)", "steps", "models", "tiny"):
        assert piece in text, text
    assert main(["status", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_hour"].startswith("5 tool calls")
    assert main(["metrics", "--config", str(cfg), "--json", "--since", "soon"]) == 64
    err = json.loads(capsys.readouterr().err)
    assert err["exit_code"] == 64 and err["error"].startswith("--since")


def test_helpers() -> None:
    assert parse_duration("90s") == 90 and parse_duration("1h") == 3600
    assert parse_duration("7d") == 7 * 86400 and parse_duration("30") == 30
    with pytest.raises(ValueError):
        parse_duration("-1h")
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2 and percentile(list(range(1, 101)), 95) == 95
