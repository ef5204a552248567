"""Nearest-rank percentiles and the `{count, p50, p95, max}` figure that the device's
`edge-agent metrics` and the cloud's `edge-agent-cloud metrics` both report (one definition,
so the two sides' figures agree)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def dist(values: Sequence[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values) if values else None}


__all__ = ["dist", "percentile"]
