"""The rules of a rollout, as pure functions: waves from their spec, the health gate of a
wave from what its devices reported, and what a person sees of each device.

The driver (sync/cloud/deployments.py) reads the store, calls these, and writes what they
decide; it holds no rule of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import cel

GATE_VARIABLES = ("failed_rate", "started", "failed", "tool_failure_rate", "offline",
                  "rejected", "devices")
DEFAULT_WAVES = "1,10%,50%,100%"
DEFAULT_ABORT_IF = "failed_rate > 0.05 || rejected > 0"


class RolloutError(ValueError):
    """A deployment that cannot start as asked (exit 64: the command line is wrong)."""

    exit_code = 64


def plan_waves(spec: str, n: int) -> list[int]:
    """Cumulative device counts per wave: `1,10%,50%,100%` over 40 devices is [1, 4, 20, 40].
    Each wave must reach further than the one before (shares resolved against the n
    devices: a share that rounds to the count already reached adds nobody and is dropped);
    a count over n is every device; devices the last wave leaves out form one more wave."""
    if n < 1:
        raise RolloutError("a deployment needs at least one device")
    out: list[int] = []
    before = 0
    for item in (s.strip() for s in spec.split(",")):
        try:
            if item.endswith("%"):
                share = float(item[:-1])
                if not 0 < share <= 100:
                    raise ValueError
                count = math.ceil(n * share / 100)
            else:
                count = int(item)
                if count < 1:
                    raise ValueError
        except ValueError:
            raise RolloutError(f"--waves: each wave is a device count (>= 1) or a share "
                               f"(1%..100%) (got {item!r} in {spec!r})") from None
        if count < before or (count == before and not item.endswith("%")):
            raise RolloutError(f"--waves: each wave counts the devices of all waves so far "
                               f"and must be larger than the one before (got {item!r}, "
                               f"{count} device(s), after {before}, in {spec!r})")
        before = count
        if not out or min(count, n) > out[-1]:
            out.append(min(count, n))
    if out[-1] < n:
        out.append(n)
    return out


@lru_cache(maxsize=64)
def _program(source: str) -> Any:
    return cel.compile(source)


def check_gate(source: str) -> None:
    """RolloutError unless `source` compiles and gives a boolean on a healthy wave."""
    try:
        value = _program(source).execute(metrics([]))
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise RolloutError(f"--abort-if: {source!r}: {str(exc).splitlines()[0] if str(exc) else exc}"
                           f" (variables: {', '.join(GATE_VARIABLES)})") from exc
    if not isinstance(value, bool):
        raise RolloutError(f"--abort-if: {source!r} must give a boolean (gave {value!r})")


def metrics(devices: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the gate sees of a wave: each device's state and its latest health report."""
    started = failed = calls = failures = 0
    for d in devices:
        h = d.get("health") or {}
        started += int(h.get("started", 0))
        failed += int(h.get("failed", 0))
        calls += int(h.get("tool_calls", 0))
        failures += int(h.get("tool_failures", 0))
    return {"devices": len(devices), "started": started, "failed": failed,
            "failed_rate": failed / started if started else 0.0,
            "tool_failure_rate": failures / calls if calls else 0.0,
            "offline": sum(1 for d in devices if d.get("state") == "pending"),
            "rejected": sum(1 for d in devices if d.get("state") == "rejected")}


def gate(abort_if: str, min_runs: int, devices: Sequence[Mapping[str, Any]]
         ) -> tuple[bool, str, dict[str, Any]]:
    """(holds, why not, the metrics). "No runs yet" does not hold unless min_runs is 0."""
    m = metrics(devices)
    try:
        abort = _program(abort_if).execute(dict(m))
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        return False, f"abort-if {abort_if!r} failed: {exc}", m
    if abort is True:
        return False, f"abort-if {abort_if!r} is true ({_shown(m)})", m
    if m["started"] < min_runs:
        return False, (f"only {m['started']} run(s) started on the new version, fewer than"
                       f" --min-runs {min_runs} ({_shown(m)})"), m
    return True, "", m


def _shown(m: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {round(v, 3) if isinstance(v, float) else v}"
                     for k, v in m.items())


def answered_state(deployment: str, mine: str, action: str, status: str) -> str | None:
    """A device's new state from its `deploy.result` (None: keep the one it has). A late
    apply of a deployment already stopped goes straight back; a late answer to the deploy
    never undoes a rollback."""
    if action == "rollback":
        return "rolled_back" if status in ("rolled_back", "unchanged") else "rollback_failed"
    if mine == "rolled_back":
        return None
    if status == "applied":
        return "rollback_pending" if deployment == "failed" else "applied"
    return "rejected"


def shown_state(state: str, health: Mapping[str, Any] | None, online: bool | None,
                expired: bool = False) -> str:
    """A device's line in `deployment show`: `online` None is a device the cloud has never
    seen; `expired`, a deployment past its expiry, which a device that has not answered
    will refuse (it never comes)."""
    if state in ("waiting", "pending"):
        if expired:
            return "expired"
        if online is None:
            return "never seen"
        if state == "pending" and online is False:
            return "offline"
    if state == "applied" and health:
        if int(health.get("failed", 0)) > 0:
            return "failing"
        if int(health.get("started", 0)) > 0 and health.get("sync_healthy", True):
            return "healthy"
    return {"rollback_pending": "rolling back", "rolled_back": "rolled back"}.get(state, state)
