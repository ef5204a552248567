"""A Python API that builds the same graph as `[workflows.<name>]` in TOML.

The builder writes the TOML-shaped table and validates it with the very same parser, so a
graph built in code obeys exactly the rules of one declared in a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge_agent.config.model import AgentConfig, RetryPolicy, ToolConfig, WorkflowConfig
from edge_agent.config.workflows import parse_workflow
from edge_agent.errors import ConfigError
from sync.config_reader import ConfigIssue, Table


def _retry(policy: RetryPolicy | None) -> dict[str, Any]:
    if policy is None:
        return {}
    out: dict[str, Any] = {"max_attempts": policy.max_attempts,
                           "initial_delay_s": policy.initial_delay_s,
                           "multiplier": policy.multiplier, "max_delay_s": policy.max_delay_s,
                           "jitter": policy.jitter}
    if policy.retry_on is not None:
        out["retry_on"] = sorted(policy.retry_on)
    return {"retry": out}


class Workflow:
    """Fluent builder: `Workflow("w").tool(...).branch(...).end("done").build(...)`."""

    def __init__(self, name: str, *, start: str | None = None, description: str = "") -> None:
        self.name = name
        self._start = start
        self._description = description
        self._nodes: dict[str, dict[str, Any]] = {}

    def _add(self, name: str, table: dict[str, Any]) -> Workflow:
        if self._start is None:
            self._start = name
        self._nodes[name] = {k: v for k, v in table.items() if v is not None}
        return self

    def tool(self, name: str, tool: str, *, args: Mapping[str, Any] | None = None,
             args_from: Mapping[str, str] | None = None, next: str | None = None,
             retry: RetryPolicy | None = None, on_unknown: str | None = None,
             escalate: str | None = None, fallback: str | None = None,
             max_visits: int | None = None) -> Workflow:
        return self._add(name, {"tool": tool, "args": dict(args or {}),
                                "args_from": dict(args_from or {}) or None, "next": next,
                                "on_unknown": on_unknown, "escalate": escalate,
                                "fallback": fallback, "max_visits": max_visits, **_retry(retry)})

    def agent(self, name: str, agent: str, *, input: str | None = None, next: str | None = None,
              retry: RetryPolicy | None = None, fallback: str | None = None) -> Workflow:
        return self._add(name, {"agent": agent, "input": input, "next": next,
                                "fallback": fallback, **_retry(retry)})

    def handoff(self, name: str, agent: str, *, input: str | None = None,
                next: str | None = None) -> Workflow:
        return self._add(name, {"handoff": agent, "input": input, "next": next})

    def branch(self, name: str, rules: Sequence[tuple[str, str]], *, default: str,
               max_visits: int | None = None) -> Workflow:
        table = [{"when": when, "next": nxt} for when, nxt in rules] + [{"next": default}]
        return self._add(name, {"branch": table, "max_visits": max_visits})

    def approval(self, name: str, *, prompt: str, next: str, timeout_s: float | None = None,
                 on_timeout: str = "reject", on_reject: str | None = None) -> Workflow:
        spec: dict[str, Any] = {"prompt": prompt, "on_timeout": on_timeout}
        if timeout_s is not None:
            spec["timeout_s"] = timeout_s
        return self._add(name, {"approval": spec, "next": next, "on_reject": on_reject})

    def parallel(self, name: str, branches: Sequence[str], *, next: str, join: str = "all",
                 quorum: int | None = None, fallback: str | None = None) -> Workflow:
        return self._add(name, {"parallel": list(branches), "join": join, "quorum": quorum,
                                "next": next, "fallback": fallback})

    def end(self, name: str, *, output: str | None = None) -> Workflow:
        return self._add(name, {"end": True, "output": output})

    def table(self) -> dict[str, Any]:
        """The `[workflows.<name>]` table this builder describes."""
        out: dict[str, Any] = {"start": self._start, "nodes": self._nodes}
        if self._description:
            out["description"] = self._description
        return out

    def build(self, *, tools: Mapping[str, ToolConfig] | None = None,
              agents: Mapping[str, AgentConfig] | None = None) -> WorkflowConfig:
        issues: list[ConfigIssue] = []
        wf = parse_workflow(self.name, Table(self.table(), f"workflows.{self.name}", issues),
                            tools or {}, agents or {})
        if issues or wf is None:
            raise ConfigError(f"<workflow {self.name}>", issues)
        return wf


def tool_config(name: str, params: Mapping[str, Any] | None = None, **kw: Any) -> ToolConfig:
    """A ToolConfig for code-built graphs (only the parameters schema matters to validation)."""
    return ToolConfig(name=name, kind=kw.pop("kind", "python"),
                      params=dict(params or {"type": "object"}), **kw)


__all__ = ["Workflow", "tool_config"]
