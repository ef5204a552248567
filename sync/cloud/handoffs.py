"""The cloud's side of a handed-off step (`handoff.request` records on the control stream).

A device hands a step to the cloud with a `handoff.request` record carrying the run's
checkpoint (context and the step's input), its W3C traceparent and the version of the run's
lease document that names the cloud as owner. The worker that serves the target:

1. queues it on the process's bounded hand-off pool (sync/cloud/work.py); when the pool or
   the device's share of it is full, the request is answered `busy` at once (a
   `tool_result` with `ok: false, busy: true`, no version: the cloud never took the lease)
   and the device takes its fallback or asks again;
2. on a pool thread, runs the target, a `[handoffs]` callable `fn(input=..., context=...) -> dict` (a python
   function, or a cloud workflow wrapped by the cloud runner), as the child run
   `child_run_id(key)` of the same trace (a callable with `wants_request = True` also gets
   the request, traceparent included);
3. applies the lease version to its replica of the device's documents and writes
   `{owner: "device", state: "done" | "failed", result: DIGEST}` on top of the
   request's lease version (not on whatever the device wrote since: a device that took the
   step back meanwhile wrote a concurrent version, and both stay as siblings), and sends
   one signed `tool_result` command carrying the result, that version and the child run's
   timings, with the request's traceparent. Until the device confirms it, the command is
   published again (same id) each time the device comes online.

A request that reaches the cloud after its `timeout_at` is not run: the device has taken the
step back by then. See edge_agent/engine/cloud_handoff.py for the device's side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgpack

from sync.cloud.work import BUSY, WorkPool
from sync.documents import DocumentError, Version

log = logging.getLogger(__name__)

LEASES = "runs.lease"
Handoff = Callable[..., Any]


class Sender(Protocol):
    """What a handoff needs of the ingest worker."""

    docs: Any
    store: Any

    def send_command(self, device: str, ctype: str, args: dict[str, Any],
                     traceparent: str | None = None, wait_s: float = 0.0,
                     expires_in_s: float | None = None, resend: str | None = None) -> str: ...


def child_run_id(key: str) -> str:
    """The child run of a request: the same request always names the same run."""
    return "h-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def digest_of(result: Any) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode()
                          ).hexdigest()


def busy_answer(key: str, what: str) -> dict[str, Any]:
    """The answer to a request the cloud refused unrun: the device may ask again later."""
    return {"key": key, "ok": False, "busy": True,
            "error": f"{BUSY}: the cloud runs as many {what} for this device as it allows"}


class HandoffServer:
    """Serves the `[handoffs]` targets this worker knows; other requests are left alone."""

    def __init__(self, worker: Sender, handoffs: Mapping[str, Handoff],
                 worker_id: str = "cloud", clock: Callable[[], float] = time.time,
                 pool: WorkPool | None = None) -> None:
        self.worker = worker
        self.handoffs = dict(handoffs)
        self.worker_id = worker_id
        self.clock = clock
        self.pool = pool or WorkPool("handoff", workers=4, per_device=4, max_queued=64)

    def request(self, device: str, payload: bytes) -> dict[str, Any] | None:
        """Queue a request on the pool; the `busy` answer to send when it is refused."""
        try:
            req = msgpack.unpackb(payload, raw=False)
            target, key = str(req["target"]), str(req["key"])
            lease = Version.decode(req["lease"])
        except (ValueError, KeyError, TypeError, DocumentError,
                msgpack.UnpackException) as exc:
            log.warning("handoff: unreadable request from %s: %s", device, exc)
            return None
        fn = self.handoffs.get(target)
        if fn is None:
            return None  # another service runs it, or the device falls back on its timeout
        if float(req.get("timeout_at") or 0) and self.clock() > float(req["timeout_at"]):
            log.warning("handoff: %s's request %s for %s came after its timeout; not run",
                        device, key[:64], target)
            return None
        if self.pool.submit(device, lambda: self._run(device, req, fn, lease)):
            return None
        log.debug("handoff: %s's request %s refused: busy", device, key[:64])
        return busy_answer(key, "hand-offs")

    def resend(self, device: str) -> int:
        """Publish again every handoff result the device has not confirmed (a broker that
        restarted forgets queued messages); the device applies each command id once."""
        pending = [(cid, args) for cid, args in
                   self.worker.store.unconfirmed_commands(device, "tool_result")
                   if str(args.get("key", "")).startswith("handoff/")]
        for cid, args in pending:
            self.worker.send_command(device, "tool_result", args, resend=cid)
        if pending:
            log.info("handoff: sent %d unconfirmed result(s) to %s again", len(pending), device)
        return len(pending)

    def _run(self, device: str, req: dict[str, Any], fn: Handoff, lease: Version) -> None:
        key, target = str(req["key"]), str(req["target"])
        child = child_run_id(key)
        started = self.clock()
        log.info("handoff: running %s for %s (child run %s)", target, device, child)
        try:
            extra = {"request": req} if getattr(fn, "wants_request", False) else {}
            result = fn(input=req.get("input"), context=req.get("context") or {}, **extra)
            if not isinstance(result, dict):
                result = {"output": result}
            answer: dict[str, Any] = {"key": key, "ok": True, "result": result}
        except Exception as exc:  # noqa: BLE001 - reported to the device as the step's error
            answer = {"key": key, "ok": False, "error": str(exc)[:500]}
        finished = self.clock()
        version = self.worker.docs.write_on(device, lease, {
            "owner": "device", "state": "done" if answer["ok"] else "failed",
            "result": digest_of(answer.get("result", answer.get("error")))})
        answer["version"] = version.encode()
        answer["cloud"] = {"target": target, "child_run": child, "worker": self.worker_id,
                           "started_at": started, "finished_at": finished}
        self.worker.send_command(device, "tool_result", answer,
                                 traceparent=req.get("traceparent") or None)


__all__ = ["LEASES", "HandoffServer", "busy_answer", "child_run_id"]
