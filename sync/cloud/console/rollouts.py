"""A deployment's waves as its page shows them: each wave's devices, the figures its health
gate reads (sync.cloud.rollout_rules.metrics, the driver's own) and whether the gate holds
on them now, for the waves that have gone out."""

from __future__ import annotations

from typing import Any

from sync.cloud.rollout_rules import gate


def waves(d: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per wave of `deployments.deployment(store, id)`'s result, first to last."""
    out = []
    for n, upto in enumerate(d["waves"], start=1):
        devices = [x for x in d["devices"] if x["wave"] == n]
        holds, why, figures = gate(d["abort_if"], int(d["min_runs"]), devices)
        out.append({"wave": n, "upto": upto, "out": n <= d["wave"], "figures": figures,
                    "holds": holds, "why": why})
    return out
