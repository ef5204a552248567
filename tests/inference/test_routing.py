"""Routing between the local model and the remote fallback, through the real engine.

The config is parsed as a user writes it; the remote side is a local HTTP server speaking
the chat-completions shape; the store is a real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.engine import Harness, LedgerTool, ledger_lines
from support.openai_server import FakeOpenAI

from edge_agent.config.load import load_config
from edge_agent.daemon.runtime import build_agent_runner
from edge_agent.engine import ToolBinding

CONFIG = """
[device]
id = "press-7"
data_dir = "data"

[tools.stamp]
kind = "command"
argv = ["true"]
params = {{ type = "object", properties = {{ part = {{ type = "string" }} }}, required = ["part"] }}
idempotent = false

[model.small]
path = "models/absent.gguf"        # not there: the local model fails to load

[model.fallback]
kind = "openai"
base_url = "{url}"
max_hint_retries = 1

[agents.inspector]
model = "small"
system = "You inspect parts."
tools = ["stamp"]
max_turns = 3
allow_remote = {allow}

[workflows.inspect]
start = "look"

[workflows.inspect.nodes.look]
agent = "inspector"
input = "input.task"
next = "done"

[workflows.inspect.nodes.done]
end = true
"""


@pytest.fixture
def remote() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI([])
    yield f
    f.close()


def run_inspect(tmp: Path, remote: FakeOpenAI, *, allow: bool,
                until: tuple[str, ...]) -> tuple[Any, Harness]:
    cfg_file = tmp / "config.toml"
    cfg_file.write_text(CONFIG.format(url=remote.url, allow=str(allow).lower()))
    cfg = load_config(cfg_file)
    ledger = tmp / "ledger.jsonl"
    tools = {"stamp": ToolBinding(LedgerTool("stamp", ledger))}
    h = Harness(tmp / "edge-agent.db", cfg.workflows, tools,
                agent_runner=build_agent_runner(cfg, tools))

    async def main() -> Any:
        await h.start()
        try:
            rid = h.queue("inspect", {"task": "part 7"})
            return await h.wait(rid, *until, timeout=20)
        finally:
            await h.stop()
    return asyncio.run(main()), h


def test_remote_answers_when_allowed_and_the_local_model_is_missing(
        tmp_path: Path, remote: FakeOpenAI) -> None:
    remote.answers = ['{"tool": "stamp", "args": {"part": "A7"}}',
                      '{"tool": "final_answer", "args": {"answer": "stamped"}}']
    run, _ = run_inspect(tmp_path, remote, allow=True, until=("completed", "failed"))
    assert run.status == "completed", run.error
    assert [line["args"] for line in ledger_lines(tmp_path / "ledger.jsonl")] == [{"part": "A7"}]
    second_turn = remote.requests[1]["body"]["messages"]
    assert "Result of stamp" in second_turn[-1]["content"]


def test_no_remote_without_allow_remote(tmp_path: Path, remote: FakeOpenAI) -> None:
    remote.answers = ['{"tool": "final_answer", "args": {"answer": "x"}}']
    run, _ = run_inspect(tmp_path, remote, allow=False, until=("completed", "failed"))
    assert run.status == "failed" and "no model could answer" in run.error
    assert remote.requests == []  # data residency: nothing left the device


def test_remote_answers_that_never_validate_escalate_to_a_person(
        tmp_path: Path, remote: FakeOpenAI) -> None:
    remote.answers = ['{"tool": "stamp", "args": {}}', '{"tool": "drill", "args": {}}']
    run, _ = run_inspect(tmp_path, remote, allow=True,
                         until=("waiting_approval", "completed", "failed"))
    assert run.status == "waiting_approval"
    assert len(remote.requests) == 2  # the answer and one retry with the hint
    hint = remote.requests[1]["body"]["messages"][-1]["content"]
    assert "'part' is a required property" in hint
    assert not (tmp_path / "ledger.jsonl").exists()  # no invalid call reached the tool
    with sqlite3.connect(tmp_path / "edge-agent.db") as c:
        kind, prompt, context = c.execute(
            "SELECT kind, prompt, context FROM approvals WHERE run_id = ?",
            (run.run_id,)).fetchone()
    assert kind == "escalation" and "fallback" in prompt
    assert json.loads(context)["kind"] == "escalate"
