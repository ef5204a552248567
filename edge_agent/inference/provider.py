"""The provider protocol: one chat completion, optionally constrained to a JSON Schema."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.errors import EdgeAgentError

Message = Mapping[str, str]


class InferenceError(EdgeAgentError):
    """Root of inference errors; `retryable` says whether another try may help and `kind`
    names the failure (inference, model_load, timeout, cancelled, invalid_output, escalate,
    remote, context)."""

    def __init__(self, message: str, *, retryable: bool = False, kind: str = "inference") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind


class ModelLoadError(InferenceError):
    """The model file is missing, is not a GGUF, or asks for more than it can give."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: cannot load model: {reason}", kind="model_load")


class InvalidOutput(InferenceError):
    """The model's answer did not parse or validate, after the allowed retries."""

    def __init__(self, reason: str, attempts: int, *, kind: str = "invalid_output") -> None:
        self.reason = reason
        self.attempts = attempts
        super().__init__(f"model output invalid after {attempts} attempt(s): {reason}",
                         retryable=True, kind=kind)


class EscalationRequired(InvalidOutput):
    """An unconstrained provider kept answering outside the schema, even with the schema and
    the validation error as hints: a person (or a fallback) has to decide."""

    def __init__(self, provider: str, reason: str, attempts: int) -> None:
        self.provider = provider
        super().__init__(f"{provider}: {reason}", attempts, kind="escalate")
        self.retryable = False


class Cancelled(InferenceError):
    def __init__(self, why: str = "cancelled") -> None:
        super().__init__(why, retryable=True, kind="cancelled")


class InferenceTimeout(InferenceError):
    def __init__(self, provider: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"{provider}: no answer within {timeout_s:g}s", retryable=True,
                         kind="timeout")


@dataclass
class Completion:
    """One answer with the numbers telemetry records for it."""

    text: str
    parsed: Any = None
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0   # request start (worker picked it up) to the first sampled token
    decode_s: float = 0.0  # first to last sampled token
    total_s: float = 0.0
    finish_reason: str = ""
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        """Generation speed after the first token (the prompt is TTFT's business)."""
        if self.completion_tokens > 1 and self.decode_s > 0:
            return (self.completion_tokens - 1) / self.decode_s
        return 0.0

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "ttft_s": round(self.ttft_s, 4),
                "tokens_per_s": round(self.tokens_per_s, 1),
                "finish_reason": self.finish_reason, "attempts": self.attempts}


class Provider(Protocol):
    name: str
    constrained: bool  # True when the output is generated under a grammar

    def generate(self, messages: Sequence[Message], *,
                 schema: Mapping[str, Any] | None = None, max_tokens: int = 256,
                 temperature: float = 0.2, seed: int | None = None,
                 timeout_s: float | None = None,
                 cancel: threading.Event | None = None) -> Completion: ...

    def close(self) -> None: ...
