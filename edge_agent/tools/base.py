"""The tool layer's contract: a Tool validates its arguments before any I/O and raises
only ToolError, which carries its kind and whether a retry can help."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jsonschema

from edge_agent.errors import EdgeAgentError


class ToolError(EdgeAgentError):
    """kind: timeout | device_gone | bad_reply | device_error | invalid_args | invalid_result |
    failed | not_declared | not_supported | port_busy. `fields` holds extra data (the named
    groups of a device's error pattern, a command's exit code and stderr tail).
    `effect_may_have_happened`: the request may have reached the device before the failure,
    so for a non-idempotent tool the engine treats the outcome as unknown."""

    def __init__(self, message: str, *, kind: str = "failed", retryable: bool = False,
                 fields: Mapping[str, Any] | None = None,
                 effect_may_have_happened: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.fields = dict(fields or {})
        self.effect_may_have_happened = effect_may_have_happened


class Tool(Protocol):
    name: str
    description: str
    params: Mapping[str, Any]
    result_schema: Mapping[str, Any] | None
    idempotent: bool
    timeout_s: float

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


class SchemaTool:
    """A Tool around a blocking function: validates arguments and result, translates errors."""

    def __init__(self, name: str, fn: Callable[[Mapping[str, Any], str], dict[str, Any]], *,
                 description: str, params: Mapping[str, Any],
                 result_schema: Mapping[str, Any] | None, idempotent: bool, timeout_s: float,
                 close: Callable[[], None] | None = None, blocks: bool = True) -> None:
        self.name = name
        self.blocks = blocks  # whether a call may wait; the engine's scheduler reads it
        self.description = description
        self.params = params
        self.result_schema = result_schema
        self.idempotent = idempotent
        self.timeout_s = timeout_s
        self._fn = fn
        self._close = close
        self._params_validator = jsonschema.Draft202012Validator(dict(params))
        self._result_validator = (jsonschema.Draft202012Validator(dict(result_schema))
                                  if result_schema else None)

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        error = jsonschema.exceptions.best_match(self._params_validator.iter_errors(dict(args)))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            raise ToolError(f"{self.name}: {where}: {error.message}", kind="invalid_args")
        try:
            result = self._fn(args, idempotency_key)
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"{self.name}: {exc}", kind=getattr(exc, "kind", "failed"),
                            retryable=bool(getattr(exc, "retryable", False)),
                            fields=getattr(exc, "fields", None),
                            effect_may_have_happened=bool(
                                getattr(exc, "effect_may_have_happened", False))) from exc
        if not isinstance(result, dict):
            raise ToolError(f"{self.name}: returned {type(result).__name__}, not an object",
                            kind="invalid_result")
        if self._result_validator is not None:
            error = jsonschema.exceptions.best_match(self._result_validator.iter_errors(result))
            if error is not None:
                raise ToolError(f"{self.name}: result does not match its schema: "
                                f"{error.message}", kind="invalid_result")
        return result

    def close(self) -> None:
        if self._close is not None:
            self._close()
