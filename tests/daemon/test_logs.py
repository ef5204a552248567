"""Logs an operator can filter: journald priorities under systemd, and every line of a run
with its workflow, run, step, attempt and, inside an agent, agent ids."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.engine import STAMP, Harness, LedgerTool

from edge_agent.config.model import AgentConfig
from edge_agent.engine import ToolBinding
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.telemetry.logs import JsonFormatter, setup_logging, writes_to_journal


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _lines(path: Path, fmt: str, journal: bool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    with open(path, "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}" if journal
                           else f"{st.st_dev}:{st.st_ino + 1}")
        setup_logging(fmt, "DEBUG", stream=f)
        log = logging.getLogger("edge_agent.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("e")
        log.critical("c")
        f.flush()
    return path.read_text().splitlines()


def test_lines_carry_journald_priorities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         restore_root: None) -> None:
    lines = _lines(tmp_path / "out", "json", True, monkeypatch)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert json.loads(lines[3][3:])["exc"].startswith("Traceback")
    text = _lines(tmp_path / "out2", "text", True, monkeypatch)
    assert len(text) > 5 and all(line.startswith("<") for line in text)  # traceback lines too
    assert any(line.startswith("<3>Traceback") for line in text)


def test_no_prefix_off_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   restore_root: None) -> None:
    lines = _lines(tmp_path / "out", "json", False, monkeypatch)
    assert all(line.startswith("{") for line in lines)
    monkeypatch.delenv("JOURNAL_STREAM")
    with open(tmp_path / "x", "w") as f:
        assert not writes_to_journal(f)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(JsonFormatter().format(record)))


class _Out:
    def __init__(self, output: Any, handoff_to: str | None = None) -> None:
        self.output, self.handoff_to = output, handoff_to


def test_run_lines_carry_the_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 restore_root: None) -> None:
    """Tool calls, the handoff and `run completed` are logged; each line of the run names
    workflow, run, step and attempt, and an agent's lines name the agent."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("json", "INFO", stream=open(os.devnull, "w"))
    from edge_agent.telemetry.logs import ContextFilter
    cap = _Capture()
    cap.addFilter(ContextFilter())
    logging.getLogger().addHandler(cap)
    ledger = tmp_path / "ledger"

    def runner(agent: str, message: str, ctx: Any) -> _Out:
        logging.getLogger("edge_agent.agents.loop").info("thinking")
        ctx.call_tool("stamp", {"part": agent}, turn=0, index=0)
        if agent == "triage":
            return _Out({"summary": "needs a specialist"}, handoff_to="specialist")
        return _Out({"verdict": "pass"})
    agents = {n: AgentConfig(name=n, model="m", tools=("stamp",))
              for n in ("triage", "specialist")}
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="look")
          .agent("look", "triage", input="input.task", next="done").end("done")
          .build(tools={"stamp": tool_config("stamp", STAMP)}, agents=agents))
    h = Harness(tmp_path / "db", {"w": wf}, {"stamp": ToolBinding(LedgerTool("stamp", ledger))},
                agent_runner=runner)

    async def main() -> str:
        await h.start()
        try:
            rid = h.queue("w", {"task": "inspect"})
            await h.wait(rid, "completed")
            return str(rid)
        finally:
            await h.stop()
    rid = asyncio.run(main())
    mine = [line for line in cap.lines if line.get("run_id") == rid]
    tools = [line for line in mine if line["message"].startswith("tool stamp ok")]
    assert len(tools) == 3, mine
    for line in tools:
        assert line["workflow"] == "w" and line["attempt"] == 1 and line["tool"] == "stamp"
    assert tools[0]["step"] == "a" and "agent" not in tools[0]
    assert [t.get("agent") for t in tools[1:]] == ["triage", "specialist"]
    assert all(t["step"] == "look" for t in tools[1:])
    thinking = [line for line in mine if line["message"] == "thinking"]
    assert [t["agent"] for t in thinking] == ["triage", "specialist"]
    handoff = next(line for line in mine if line["message"].startswith("handoff"))
    assert handoff["agent"] == "triage" and "specialist" in handoff["message"]
    done = next(line for line in mine if line["message"].startswith("run completed"))
    assert done["workflow"] == "w" and done["step"] == "done"
    # like every line of the run (the README's Logs section): its attempt and trace id
    assert done["attempt"] == 1 and done["trace_id"] == tools[0]["trace_id"], done
