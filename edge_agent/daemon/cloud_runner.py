"""`edge-agent cloud-run`: the same engine on the cloud's machine, beside the ingest.

One process runs two things:

- the engine, exactly as `edge-agent run` does (the Daemon, its SQLite file, control socket,
  tools, agents and workflows), from an edge-agent config file whose `[device]` table names
  the runner (for example `id = "cloud"`) and which usually has no `[sync]`: this is the
  cloud-only deployment, the same workflows with no device at all, driven by the same CLI
  (`edge-agent --config cloud-agent.toml start|runs|trace ...`);
- when `--cloud-config` is given, the ingest workers of that cloud.toml, whose `[handoffs]`
  entries may name `workflow:NAME`: a step a device hands over then runs as a child run of
  that workflow in this engine, in the device run's trace, and its output goes back down.

It lives in edge_agent because it runs the engine; `edge-agent-cloud run` stays free of
edge_agent (and of llama.cpp) and leaves `workflow:` handoffs to this command.
"""

from __future__ import annotations

import logging
import os
import string
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.config import Config, load_config
from edge_agent.engine import queries as q
from edge_agent.engine.control import queue_run
from edge_agent.engine.records import COMPLETED, TERMINAL
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.store.opening import open_database
from sync.cloud.handoffs import child_run_id

log = logging.getLogger(__name__)

WORKFLOW = "workflow:"
POLL_S = 0.1


class HandoffTargetError(EdgeAgentError):
    """A `[handoffs]` entry this runner cannot serve; a config error (exit 78)."""

    exit_code = 78

    def __init__(self, name: str, workflow: str, known: list[str]) -> None:
        self.name, self.workflow = name, workflow
        super().__init__(f"handoffs.{name}: workflow:{workflow} names no [workflows."
                         f"{workflow}] in the runner's config (known: "
                         f"{', '.join(known) or 'none'}) (got \"workflow:{workflow}\")")


class CloudStepFailed(Exception):
    """A child run that did not complete; its error goes to the device as the step's."""

    def __init__(self, run_id: str, status: str, error: str | None) -> None:
        self.run_id, self.status, self.error = run_id, status, error
        super().__init__(f"cloud run {run_id} {status}: {error or 'no output'}")


class WorkflowTarget:
    """A `[handoffs]` target `workflow:NAME`: start a child run in this engine, wait for it."""

    wants_request = True

    def __init__(self, config: Config, workflow: str, stopping: threading.Event,
                 clock: Callable[[], float] = time.time, name: str = "?") -> None:
        if workflow not in config.workflows:
            raise HandoffTargetError(name, workflow, sorted(config.workflows))
        self.config, self.workflow, self.stopping, self.clock = config, workflow, stopping, clock

    def __call__(self, *, input: Any, context: dict[str, Any],
                 request: dict[str, Any]) -> Any:
        rid = child_run_id(str(request["key"]))
        trace_id, parent_span = _trace_parent(request.get("traceparent"))
        store = open_database(self.config.database, synchronous=self.config.device.synchronous,
                              retry=True)
        try:
            def start(conn: Any) -> str:
                run_id = queue_run(lambda fn: fn(conn), workflow=self.workflow,
                                   input=input if input is not None else {},
                                   workflows=self.config.workflows, origin="handoff",
                                   run_id=rid)
                if trace_id:  # the child joins the device run's trace, under its handoff span
                    conn.execute("UPDATE runs SET trace_id = ?, parent_span = ? WHERE run_id = ?"
                                 " AND status = 'queued'", (trace_id, parent_span, run_id))
                return run_id
            store.write(start)
            log.info("handoff %s: child run %s of %s", str(request["key"])[:48], rid,
                     self.workflow)
            while not self.stopping.is_set():
                run = store.read(lambda c: q.get_run(c, rid))
                if run is not None and run.status in TERMINAL:
                    if run.status != COMPLETED:
                        raise CloudStepFailed(rid, run.status, run.error)
                    out = run.output
                    return out if isinstance(out, dict) else {"output": out}
                time.sleep(POLL_S)
            raise CloudStepFailed(rid, "interrupted", "the cloud runner is stopping")
        finally:
            store.close()


def _trace_parent(traceparent: Any) -> tuple[str | None, str | None]:
    """The trace id and the parent span id of a W3C traceparent (None, None if malformed:
    the ids become span bytes, so anything but hex would stop the runner's span export)."""
    parts = str(traceparent or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or \
            not all(c in string.hexdigits for c in parts[1] + parts[2]):
        return None, None
    return parts[1].lower(), parts[2].lower()


def handoff_targets(config: Config, entries: Any, stopping: threading.Event
                    ) -> dict[str, Any]:
    """The cloud.toml `[handoffs]`: `workflow:NAME` runs here, `module:function` is imported."""
    import importlib
    out: dict[str, Any] = {}
    for name, entry in entries:
        if entry.startswith(WORKFLOW):
            out[name] = WorkflowTarget(config, entry[len(WORKFLOW):], stopping, name=name)
        else:
            module, _, attr = entry.partition(":")
            out[name] = getattr(importlib.import_module(module), attr)
    return out


def run_cloud(config_path: str | None, cloud_config_path: str | None) -> int:
    """The engine on `config_path`; with `cloud_config_path`, its ingest workers too."""
    from edge_agent.daemon.service import run_engine
    from edge_agent.telemetry.logs import setup_logging
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, flush=True)
        return ConfigError.exit_code
    t = config.telemetry
    setup_logging(t.log_format, t.log_level, t.levels)
    from edge_agent.daemon.lock import lock_holder
    holder = None if config.device.database else lock_holder(config.device.data_dir)
    if holder is not None:  # before any ingest worker starts beside the one running
        log.error("another edge-agent (pid %s) holds %s", holder if holder > 0 else "unknown",
                  config.device.data_dir / "edge-agent.lock")
        return 75  # EX_TEMPFAIL, as `edge-agent run`
    stopping = threading.Event()
    workers: list[Any] = []
    stores: list[Any] = []
    work: Any = None
    sweeper: Any = None
    if cloud_config_path:
        from sync.cloud.config import CloudConfigError, load_cloud_config
        from sync.cloud.deploy_cli import start_driver
        from sync.cloud.sweep import Sweeper
        from sync.cloud.wiring import store_of, worker
        from sync.cloud.work import Work
        try:
            cloud = load_cloud_config(cloud_config_path)
            handoffs = handoff_targets(config, cloud.handoffs, stopping)
            # as `edge-agent-cloud run`: one set of bounded pools for the workers, the sweep
            # (commands expire at their expiry, `status` shows the pools) and the rollouts' driver
            stores = [store_of(cloud) for _ in range(cloud.workers + 1)]
            work = Work(cloud.limits)
            workers = [worker(cloud, s, handoffs=handoffs, work=work) for s in stores[:-1]]
        except (CloudConfigError, HandoffTargetError) as exc:
            for s in stores:
                s.close()
            if work is not None:
                work.shutdown()
            print(exc, flush=True)
            return int(getattr(exc, "exit_code", ConfigError.exit_code))
        for w in workers:
            w.start()
        sweeper = Sweeper(stores[-1], work, f"{os.uname().nodename}:{os.getpid()}")
        sweeper.start()
        start_driver(store_of(cloud), workers[0], stopping)
        log.info("cloud runner: %d ingest worker(s) on %s:%d, handoffs %s", len(workers),
                 cloud.host, cloud.port, ", ".join(sorted(handoffs)) or "none")
    try:
        return run_engine(config)
    finally:
        stopping.set()
        if sweeper is not None:
            sweeper.shutdown()
        for w in workers:
            w.shutdown()
        if work is not None:
            work.shutdown()
        for s in stores:
            s.close()


__all__ = ["HandoffTargetError", "WorkflowTarget", "handoff_targets", "run_cloud"]
