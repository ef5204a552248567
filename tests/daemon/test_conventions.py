"""Spans and metrics follow the OpenTelemetry GenAI semantic conventions: execute_tool with
gen_ai.tool.name, invoke_agent with gen_ai.agent.name, chat spans with gen_ai.provider.name
and gen_ai.response.finish_reasons as an array, and the conventions' metric names."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from support.engine import STAMP, Harness, LedgerTool, spans_in

from edge_agent.config.model import AgentConfig
from edge_agent.engine import ToolBinding
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.telemetry.metrics import MetricsCollector
from edge_agent.telemetry.metrics import decode as decode_metrics
from edge_agent.telemetry.record import record_spans


class _Out:
    def __init__(self, output: Any, handoff_to: str | None = None) -> None:
        self.output, self.handoff_to = output, handoff_to


def test_spans_and_metrics_use_the_genai_conventions(tmp_path: Path) -> None:
    def runner(agent: str, message: str, ctx: Any) -> _Out:
        ctx.remembered("turn:0", lambda: {"tool": "stamp", "args": {}, "completion": {
            "model": "tiny", "provider": "llama.cpp", "prompt_tokens": 40,
            "completion_tokens": 10, "ttft_s": 0.05, "tokens_per_s": 20.0,
            "finish_reason": "stop"}})
        ctx.call_tool("stamp", {"part": agent}, turn=0, index=0)
        if agent == "triage":
            return _Out("needs a specialist", handoff_to="specialist")
        return _Out("pass")
    agents = {n: AgentConfig(name=n, model="tiny", tools=("stamp",))
              for n in ("triage", "specialist")}
    wf = (Workflow("w").agent("look", "triage", input="input.task", next="done").end("done")
          .build(tools={"stamp": tool_config("stamp", STAMP)}, agents=agents))
    h = Harness(tmp_path / "db", {"w": wf},
                {"stamp": ToolBinding(LedgerTool("stamp", tmp_path / "ledger"))},
                agent_runner=runner)

    async def go() -> list[dict[str, Any]]:
        await h.start()
        try:
            await h.wait(h.queue("w", {"task": "x"}), "completed")
            assert h.writer is not None and h.store is not None
            record_spans(h.writer, service="t", device_id="d",
                         kinds={("w", "look"): "agent", ("w", "done"): "end"},
                         agents={("w", "look"): "triage"})
            return list(spans_in(h.store))
        finally:
            await h.stop()
    spans = asyncio.run(go())
    by_id = {s["span_id"]: s for s in spans}
    invokes = [s for s in spans if s["name"].startswith("invoke_agent")]
    assert [s["name"] for s in invokes] == ["invoke_agent triage", "invoke_agent specialist"]
    for s in invokes:
        assert s["attributes"]["gen_ai.operation.name"] == "invoke_agent"
        assert by_id[s["parent_id"]]["name"] == "step look"
    tools = [s for s in spans if s["name"] == "execute_tool stamp"]
    assert len(tools) == 2
    for s in tools:
        assert s["attributes"]["gen_ai.operation.name"] == "execute_tool"
        assert s["attributes"]["gen_ai.tool.name"] == "stamp"
        assert by_id[s["parent_id"]]["name"].startswith("invoke_agent")
    chats = [s for s in spans if s["name"] == "chat tiny"]
    assert len(chats) == 2
    for s in chats:
        a = s["attributes"]
        assert a["gen_ai.provider.name"] == "llama.cpp"
        assert a["gen_ai.response.finish_reasons"] == ["stop"]
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (40, 10)
    assert not any("tokens_per_second" in k for s in spans for k in s["attributes"])

    with sqlite3.connect(tmp_path / "db") as conn:
        collector = MetricsCollector(device_id="d")
        collector.since = 0
        metrics = decode_metrics(collector.collect(conn))
    usage = {p["attributes"]["gen_ai.token.type"]: p for p in metrics["gen_ai.client.token.usage"]}
    assert usage["input"]["sum"] == 80 and usage["output"]["sum"] == 20
    assert usage["input"]["attributes"]["gen_ai.provider.name"] == "llama.cpp"
    [ttft] = metrics["gen_ai.server.time_to_first_token"]
    assert ttft["count"] == 2 and abs(ttft["sum"] - 0.1) < 1e-9
    [tpot] = metrics["gen_ai.server.time_per_output_token"]
    assert abs(tpot["sum"] - 0.1) < 1e-9  # 1/20 s per token, twice
    [duration] = metrics["gen_ai.client.operation.duration"]
    assert abs(duration["sum"] - 2 * (0.05 + 10 / 20)) < 1e-9
    assert not any(name in metrics for name in ("gen_ai.client.tokens_per_second",
                                                "gen_ai.client.time_to_first_token"))
