"""Safe expressions over a run's context, evaluated with CEL (common-expression-language).

No `eval`, no `exec`: a CEL program can read the context and compute, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import cel

from edge_agent.errors import EdgeAgentError


class ExpressionError(EdgeAgentError):
    """An expression does not compile, or failed on this context."""

    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"expression {source!r}: {reason}")


@lru_cache(maxsize=1024)
def compile_expression(source: str) -> Any:
    """Compile once; raises ExpressionError with the parser's message."""
    try:
        return cel.compile(source)
    except (ValueError, RuntimeError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExpressionError(source, reason) from exc


def evaluate(source: str, context: Mapping[str, Any]) -> Any:
    """Evaluate `source` with the context's top-level keys as variables."""
    program = compile_expression(source)
    try:
        return program.execute(dict(context))
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise ExpressionError(source, str(exc).splitlines()[0] if str(exc) else
                              type(exc).__name__) from exc


def evaluate_condition(source: str, context: Mapping[str, Any]) -> bool:
    """A branch condition must give a boolean; anything else is an error, not "falsy"."""
    value = evaluate(source, context)
    if not isinstance(value, bool):
        raise ExpressionError(source, f"must give a boolean, gave {type(value).__name__} {value!r}")
    return value
