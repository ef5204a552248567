"""Answering a device's approval gate from the cloud: the one action the CLI's `approve` /
`reject` and the web console both call.

    decide(cfg, store, device, run_id, approval_id, approve, *, note=None, patch=None,
           by="cloud", expires_in_s=None, wait_s=0.0) -> dict

`cfg` is the CloudConfig (broker, signing key), `store` the SqlCloudStore. The command names
exactly the gate it answers: `approval_id`, the gate's `node` and `visit`, as the cloud saw
them in the device's `approval.requested` (the projection). `approval_id=None` takes the
approval the cloud sees pending on that run; when it sees none, DecisionError (exit_code 1)
and nothing is sent. A device whose run waits at another gate by the time the command
arrives refuses it as `stale` and answers what is pending now (sync/PROTOCOL.md, section 8).

Returns {command_id, device, run_id, approval_id, node, visit, decision ("approve" |
"reject"), state ("sent"; with wait_s, the device's answer: "confirmed" | "failed", or
"sent" when none came in time), result (the device's cmd.result, or None)}.
"""

from __future__ import annotations

import time
from typing import Any

from sync.cloud.views import gates, run

MAX_APPROVAL_ID = 2**63 - 1  # the store's integer; a larger one cannot name an approval


class DecisionError(Exception):
    """The cloud will not send the decision (or cannot); `exit_code` for the CLI."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def target(store: Any, device: str, run_id: str, approval_id: int | None) -> dict[str, Any]:
    """The gate a decision names: {approval_id, node, visit}, from what the cloud saw."""
    if approval_id is not None and not 0 < approval_id <= MAX_APPROVAL_ID:
        raise DecisionError(f"--approval: an approval id, 1 to {MAX_APPROVAL_ID} (got "
                            f"{approval_id})", 64)
    if approval_id is None:
        seen = run(store, device, run_id)
        gate = seen["pending_approval"] if seen is not None else None
        if gate is None:
            state = "has not seen that run" if seen is None else \
                f"sees no pending approval on it (status {seen['status']})"
            raise DecisionError(
                f"run {run_id!r} on {device!r}: the cloud {state}; `edge-agent-cloud "
                "approvals` lists what waits, --approval ID names a gate explicitly")
        return {"approval_id": gate["approval_id"], "node": gate["node"],
                "visit": gate["visit"]}
    g = gates(store, device, run_id).get(approval_id, {})
    return {"approval_id": approval_id, "node": g.get("node"), "visit": g.get("visit")}


def decide(cfg: Any, store: Any, device: str, run_id: str, approval_id: int | None,
           approve: bool, *, note: str | None = None, patch: dict[str, Any] | None = None,
           by: str = "cloud", expires_in_s: float | None = None,
           wait_s: float = 0.0) -> dict[str, Any]:
    """Send a signed approve/reject naming its gate; with `wait_s`, wait for the answer."""
    gate = target(store, device, run_id, approval_id)
    ctype = "approve" if approve else "reject"
    args: dict[str, Any] = {"run_id": run_id, "note": note, "by": by,
                            **{k: v for k, v in gate.items() if v is not None}}
    if patch is not None:
        args["patch"] = patch
    cid = send(cfg, store, device, ctype, args, expires_in_s=expires_in_s)
    out: dict[str, Any] = {"command_id": cid, "device": device, "run_id": run_id, **gate,
                           "decision": ctype, "state": "sent", "result": None}
    deadline = time.time() + wait_s
    while wait_s and time.time() < deadline:
        c = store.command(cid)
        if c and c["state"] != "sent":
            out.update(state=c["state"], result=c["result"])
            break
        time.sleep(0.2)
    return out


def send(cfg: Any, store: Any, device: str, ctype: str, args: dict[str, Any], *,
         expires_in_s: float | None = None) -> str:
    """Record and publish one command through a short-lived client (never subscribed)."""
    from sync.cloud.wiring import worker
    sender = worker(cfg, store, worker_id=f"cli-{time.time_ns()}", tools={}, listen=False)
    try:
        sender.client.connect(cfg.host, cfg.port, keepalive=30)
    except OSError as exc:
        raise DecisionError(f"cannot reach the broker at {cfg.host}:{cfg.port} "
                            f"({exc.strerror or exc}); nothing was sent") from exc
    sender.client.loop_start()
    try:
        return sender.send_command(device, ctype, args, wait_s=10, expires_in_s=expires_in_s)
    finally:
        sender.client.disconnect()
        sender.client.loop_stop()


__all__ = ["DecisionError", "decide", "send", "target"]
