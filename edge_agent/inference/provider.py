"""The provider protocol: one completion, optionally constrained to a JSON Schema."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.errors import EdgeAgentError

Message = Mapping[str, str]


class InferenceError(EdgeAgentError):
    """Root of inference errors; `retryable` says whether another try may help."""

    def __init__(self, message: str, *, retryable: bool = False, kind: str = "inference") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind


class ModelLoadError(InferenceError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: cannot load model: {reason}", kind="model_load")


class InvalidOutput(InferenceError):
    """The model's answer did not parse or validate, after the allowed retries."""

    def __init__(self, reason: str, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"model output invalid after {attempts} attempt(s): {reason}",
                         retryable=True, kind="invalid_output")


class Cancelled(InferenceError):
    def __init__(self, why: str = "cancelled") -> None:
        super().__init__(why, retryable=True, kind="cancelled")


@dataclass
class Completion:
    text: str
    parsed: Any = None
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = ""
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        gen = self.total_s - self.ttft_s
        return self.completion_tokens / gen if gen > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "ttft_s": round(self.ttft_s, 4),
                "tokens_per_s": round(self.tokens_per_s, 1), "finish_reason":
                    self.finish_reason, "attempts": self.attempts}


class Provider(Protocol):
    name: str
    constrained: bool  # True when the output is generated under a grammar

    def generate(self, messages: Sequence[Message], *, schema: Mapping[str, Any] | None,
                 max_tokens: int = 256, temperature: float = 0.2, seed: int | None = None,
                 timeout_s: float | None = None,
                 cancel: threading.Event | None = None) -> Completion: ...

    def close(self) -> None: ...
