"""Fleet commands: start one workflow on many devices, named one by one or by group.

Groups are the `[groups]` table of cloud.toml (`line-a = ["cell-1", "cell-2"]`), read
with the config; `edge-agent-cloud groups` lists them. Each device gets its own signed
`start` command (its own id, so its own confirmation); one line of result per device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class FleetError(Exception):
    """A fleet selection that names nothing to start on."""

    exit_code = 64

    def __init__(self, message: str) -> None:
        super().__init__(message)


def select_devices(groups: Mapping[str, Sequence[str]], *, devices: str | None,
                   group: str | None) -> list[str]:
    """The devices named by `--devices A,B` or `--group NAME`, in order, once each."""
    if group is not None:
        if group not in groups:
            known = ", ".join(sorted(groups)) or "none"
            raise FleetError(f"--group: no group {group!r} in [groups] (groups: {known})")
        return list(groups[group])
    names = [d.strip() for d in (devices or "").split(",") if d.strip()]
    if not names:
        raise FleetError(f"--devices: a comma-separated list of device ids (got {devices!r})")
    return list(dict.fromkeys(names))


@dataclass
class Started:
    """One device's line: the command sent, and (with --wait) what the device answered."""

    device: str
    command_id: str | None
    state: str  # queued | sent | confirmed | failed | expired | unconfirmed | error
    result: Any = None

    def line(self) -> str:
        detail = ""
        if isinstance(self.result, dict):
            inner = self.result.get("result")
            detail = (f" run {inner['run_id']}" if isinstance(inner, dict) and "run_id" in inner
                      else f" {self.result.get('error') or ''}".rstrip())
        elif self.result:
            detail = f" {self.result}"
        return f"{self.device:20} {self.state}{detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "command_id": self.command_id, "state": self.state,
                "result": self.result}


def start_on(devices: Sequence[str], send: Callable[[str], str],
             lookup: Callable[[str], dict[str, Any] | None], *, wait: bool,
             timeout: float) -> list[Started]:
    """Send `start` to each device; with `wait`, poll the store for each confirmation."""
    out = []
    for device in devices:
        try:
            cid = send(device)
            known = lookup(cid)  # queued: a device never seen gets it when it connects
            out.append(Started(device, cid, str(known["state"]) if known else "sent"))
        except Exception as exc:  # noqa: BLE001 - one device's failure is its own line
            out.append(Started(device, None, "error", str(exc)))
    if not wait:
        return out
    deadline = time.time() + timeout
    waiting = [s for s in out if s.command_id is not None]
    while waiting and time.time() < deadline:
        for s in list(waiting):
            c = lookup(str(s.command_id))
            if c and c["state"] not in ("sent", "queued"):
                s.state, s.result = c["state"], c["result"]
                waiting.remove(s)
        if waiting:
            time.sleep(0.2)
    for s in waiting:
        where = ("it is queued until the device first connects" if s.state == "queued"
                 else "the command waits in its session")
        s.state = "unconfirmed"
        s.result = f"no confirmation within {timeout:g}s ({where})"
    return out


def exit_code(results: Sequence[Started]) -> int:
    """0 when every device took it (or it was sent, without --wait); 1 when one failed;
    2 when one did not answer in time."""
    states = {s.state for s in results}
    if states & {"failed", "error", "expired"}:
        return 1
    return 2 if "unconfirmed" in states else 0


__all__ = ["FleetError", "Started", "exit_code", "select_devices", "start_on"]
