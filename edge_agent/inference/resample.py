"""Draw again with the next seed while a sample fails its schema (both llama.cpp paths)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.inference.provider import Completion, InvalidOutput
from edge_agent.inference.schema_grammar import check

log = logging.getLogger(__name__)
MAX_RESAMPLES = 8


def complete_validated(name: str, once: Callable[[int], Completion],
                       schema: Mapping[str, Any] | None, base_seed: int) -> Completion:
    """`once(seed)` until its text parses and validates (schema) or just once (no schema);
    InvalidOutput after MAX_RESAMPLES invalid samples."""
    reason = ""
    for attempt in range(1, (MAX_RESAMPLES if schema else 1) + 1):
        out = once(base_seed + attempt - 1)
        out.attempts = attempt
        if schema is None:
            return out
        value, problem = check(out.text, schema)
        if problem is None:
            out.parsed = value
            return out
        reason = problem
        log.debug("%s: sample %d invalid (%s); drawing again", name, attempt, reason)
    raise InvalidOutput(reason or "invalid", MAX_RESAMPLES)
