"""Workflow triggers: a timer, or an edge on a declared GPIO input line.

An edge trigger waits on the line through its gpio tool (the tool's declaration is what it
may touch, as for any caller) in a thread of its own, and queues one run per edge with the
edge in the run's input. A device error is logged and retried after a pause; the loop
never ends on its own and stops when the daemon stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.config.model import TriggerSpec
from edge_agent.engine.bindings import ToolBinding

log = logging.getLogger(__name__)
WAIT_S = 1.0  # each wait is bounded, so a stop is noticed within this time
PAUSE_S = 2.0  # after a device error


class EdgeTrigger:
    def __init__(self, workflow: str, spec: TriggerSpec, tool: ToolBinding,
                 start: Callable[[Mapping[str, Any]], None]) -> None:
        assert spec.gpio is not None and spec.line is not None
        self.workflow = workflow
        self.spec = spec
        self.tool = tool
        self.start = start
        self.fired = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"trigger-{workflow}",
                                        daemon=True)

    def begin(self) -> None:
        self._thread.start()

    def signal(self) -> None:
        """Ask the loop to end (it notices within WAIT_S); `join` waits for it."""
        self._stop.set()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join(WAIT_S + 1)

    def _run(self) -> None:
        args = {"op": "wait_edge", "line": self.spec.line, "edge": self.spec.edge,
                "timeout_s": WAIT_S}
        while not self._stop.is_set():
            try:
                got = self.tool.tool.call(args, idempotency_key=f"trigger-{self.workflow}")
            except Exception as exc:  # noqa: BLE001 - a timeout is the quiet case
                if getattr(exc, "kind", None) == "timeout":
                    continue
                log.warning("trigger %s: waiting on %s.%s failed: %s", self.workflow,
                            self.spec.gpio, self.spec.line, exc)
                self._stop.wait(PAUSE_S)
                continue
            edge = {"tool": self.spec.gpio, "line": self.spec.line, "edge": got.get("edge"),
                    "ts": time.time()}
            try:
                self.start({**self.spec.input, "trigger": edge})
                self.fired += 1
            except Exception:  # a full outbox or store: log, keep waiting
                log.exception("trigger %s: could not queue a run", self.workflow)


def stop_all(triggers: list[EdgeTrigger]) -> None:
    """Stop several triggers in the time of one: all are told first, then awaited."""
    for trigger in triggers:
        trigger.signal()
    for trigger in triggers:
        trigger.join()
