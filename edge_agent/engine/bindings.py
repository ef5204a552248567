"""What the engine needs from the outside: tools with their policies, and an agent runner."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.config.model import RetryPolicy
from edge_agent.errors import EdgeAgentError


class ToolLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def idempotent(self) -> bool: ...

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RemoteTool:
    """A tool the cloud executes: the request goes out through the outbox, the result comes
    back as a `tool_result` command; the step waits durably, up to `timeout_s`."""

    name: str
    idempotent: bool = False
    timeout_s: float = 30.0
    fallback: str | None = None

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        raise StepFailed(f"remote tool {self.name} runs in the cloud, not here",
                         kind="not_declared")


@dataclass(frozen=True)
class ToolBinding:
    """A tool and the engine-side policy declared with it."""

    tool: ToolLike
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_unknown: str = "escalate"  # escalate | fail | assume_failed

    @property
    def idempotent(self) -> bool:
        return bool(self.tool.idempotent)

    @property
    def blocks(self) -> bool:
        """Whether a call may wait (I/O, a process, a lock): every tool unless it declares
        `blocks = False` (pure computation), which lets the engine call it without handing
        its queue of runs to another worker first."""
        return bool(getattr(self.tool, "blocks", True))


class AgentContext(Protocol):
    """The journal an agent loop writes through (see edge_agent.agents.loop.AgentStepContext)."""

    run_id: str
    node: str

    def remembered(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]: ...

    def call_tool(self, name: str, args: dict[str, Any], *, turn: int,
                  index: int) -> dict[str, Any]: ...


class AgentOutcome(Protocol):
    @property
    def output(self) -> Any: ...

    @property
    def handoff_to(self) -> str | None: ...


# (agent name, user message, journal context) -> outcome; runs in a worker thread.
AgentRunner = Callable[[str, str, AgentContext], AgentOutcome]


class UnknownOutcome(EdgeAgentError):
    """A non-idempotent tool call has an intent but no result: it may or may not have acted."""

    def __init__(self, key: str, attempt: int, tool: str, args: Any) -> None:
        self.key, self.attempt, self.tool, self.args = key, attempt, tool, args
        super().__init__(f"outcome of {tool} call {key} (attempt {attempt}) is unknown: the "
                         "process stopped after it started and before it reported")


class StepFailed(EdgeAgentError):
    """A node's attempt failed; carries the error's kind and retryability."""

    def __init__(self, message: str, *, kind: str = "failed", retryable: bool = False) -> None:
        self.kind = kind
        self.retryable = retryable
        super().__init__(message)
