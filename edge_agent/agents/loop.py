"""The agent loop: think under a grammar, act through the journal, answer or hand off.

Every model turn is remembered (`ctx.remembered("turn:N", ...)`) and every tool call goes
through the durable journal (`ctx.call_tool`), so after a crash the loop replays finished
turns and calls from the store and carries on at the first unfinished one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from edge_agent.config.model import AgentConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.inference.provider import (
    EscalationRequired,
    InferenceError,
    ModelLoadError,
    Provider,
)
from edge_agent.inference.schema_grammar import tool_choice_schema

log = logging.getLogger(__name__)


class AgentStepContext(Protocol):
    run_id: str
    node: str

    def remembered(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]: ...

    def call_tool(self, name: str, args: dict[str, Any], *, turn: int,
                  index: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ToolInfo:
    name: str
    description: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class AgentResult:
    output: Any
    handoff_to: str | None
    turns: int


class AgentError(EdgeAgentError):
    def __init__(self, message: str, *, kind: str = "agent", retryable: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


def system_prompt(agent: AgentConfig, tools: Sequence[ToolInfo]) -> str:
    """The static prefix: identical across turns and runs, so its KV cache is reused."""
    lines = [agent.system.strip(), "", "Tools you can call (answer with one JSON object "
             '{"tool": NAME, "args": {...}}; use "final_answer" when done):']
    for t in tools:
        lines.append(f"- {t.name}: {t.description} params={json.dumps(dict(t.params))}")
    if agent.handoff:
        lines.append(f"- handoff: pass the task to one of {', '.join(agent.handoff)}")
    return "\n".join(lines)


def run_agent(agent: AgentConfig, user_message: str, ctx: AgentStepContext, *,
              provider: Provider | None, tools: Mapping[str, ToolInfo],
              remote: Provider | None = None) -> AgentResult:
    allowed = [tools[t] for t in agent.tools if t in tools]
    schema = tool_choice_schema([{"name": t.name, "params": t.params} for t in allowed],
                                handoff=agent.handoff, output_schema=agent.output_schema)
    messages: list[dict[str, str]] = [
        {"role": "system", "content": system_prompt(agent, allowed)},
        {"role": "user", "content": user_message}]
    for turn in range(agent.max_turns):
        decision = ctx.remembered(f"turn:{turn}", partial(
            _decide, agent, messages, schema, provider, remote, turn))
        tool, args = decision["tool"], decision["args"]
        if tool == "final_answer":
            out = args if agent.output_schema else args.get("answer")
            return AgentResult(out, None, turn + 1)
        if tool == "handoff":
            log.info("agent %s hands off to %s", agent.name, args["to"])
            return AgentResult(args.get("note", ""), str(args["to"]), turn + 1)
        try:
            result = ctx.call_tool(tool, dict(args), turn=turn, index=0)
        except EdgeAgentError as exc:
            if type(exc).__name__ == "UnknownOutcome":
                raise
            result = {"error": str(exc), "kind": getattr(exc, "kind", "failed")}
        messages += [{"role": "assistant", "content": json.dumps({"tool": tool, "args": args})},
                     {"role": "user", "content": f"Result of {tool}: "
                      f"{json.dumps(result, default=str)[:2000]}"}]
    raise AgentError(f"agent {agent.name} did not finish within max_turns={agent.max_turns}",
                     kind="max_turns")


def _decide(agent: AgentConfig, messages: list[dict[str, str]], schema: Mapping[str, Any],
            provider: Provider | None, remote: Provider | None, turn: int) -> dict[str, Any]:
    """One model turn: local first; remote only if allowed and the local model fails."""
    errors = []
    for p in (provider, remote if agent.allow_remote else None):
        if p is None:
            continue
        try:
            c = p.generate(messages, schema=schema, max_tokens=agent.max_tokens,
                           temperature=agent.temperature, seed=turn)
        except (ModelLoadError, InferenceError) as exc:
            if isinstance(exc, EscalationRequired):
                raise AgentError(str(exc), kind="escalate") from exc
            errors.append(f"{p.name}: {exc}")
            log.warning("model %s failed on turn %d: %s", p.name, turn, exc)
            continue
        summary = {**c.summary(), "provider": getattr(p, "provider", None)}
        log.info("model turn %d on %s: chose %s", turn, p.name, c.parsed["tool"],
                 extra={"model": p.name, "turn": turn})
        return {"tool": c.parsed["tool"], "args": c.parsed["args"], "completion": summary}
    raise AgentError("no model could answer: " + ("; ".join(errors) or "none configured"),
                     kind="no_model", retryable=True)
