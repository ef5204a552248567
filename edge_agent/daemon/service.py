"""The composition root: the one place that wires config, store, engine, tools, models, sync.

Startup order: config (errors exit 78), data-dir lock, store and migrations, tools and models,
engine recovery, sync, control socket, then READY=1. SIGTERM drains, a second SIGTERM
aborts; SIGHUP reloads tools, agents and workflows, keeping the old ones if the new are bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.config import Config, load_config
from edge_agent.config.model_files import model_warnings, unavailable_models
from edge_agent.daemon.control_socket import ControlServer
from edge_agent.daemon.lock import DataDirLock
from edge_agent.daemon.notify import SystemdNotifier, watchdog_interval
from edge_agent.daemon.runtime import build_agent_runner, build_tools, close_tools, sync_status
from edge_agent.daemon.triggers import EdgeTrigger, stop_all
from edge_agent.engine import Engine, queue_run
from edge_agent.engine import queries as q
from edge_agent.errors import ConfigError, EdgeAgentError, StoreError
from edge_agent.store.backend import Database, Writer
from edge_agent.store.opening import open_database, writer_for
from edge_agent.store.postgres import PgStore
from edge_agent.telemetry.export import OtlpHttpExporter
from edge_agent.telemetry.logs import bind

log = logging.getLogger(__name__)
EXTERNAL_POLL_S = 0.25
SPAN_INTERVAL_S = 0.5
STATUS_WAIT_S = 2.0  # how long `status` waits for the store's figures


class Daemon:
    """`edge-agent run`: one event loop that owns everything."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.notifier = SystemdNotifier()
        self.lock = DataDirLock(config.device.data_dir)
        self.store: Database | None = None
        self.writer: Writer | None = None
        self.engine: Engine | None = None
        self.leases: Any = None  # RunLeases, when runners share a PostgreSQL database
        self.sync: Any = None
        self.control: ControlServer | None = None
        self.tools: dict[str, Any] = {}
        self.edge_triggers: list[EdgeTrigger] = []
        self._stop = asyncio.Event()
        self._terms = 0
        self._tasks: list[asyncio.Task[Any]] = []
        # the config's endpoint, else OTEL_EXPORTER_OTLP_ENDPOINT; None when neither is set
        self.exporter = OtlpHttpExporter.from_env(config.telemetry.otlp_endpoint)

    @property
    def socket_path(self) -> Path:
        return self.config.device.runtime_dir / "control.sock"

    async def run(self) -> int:
        bind(device_id=self.config.device.id)
        self.lock.acquire()
        try:
            return await self._run()
        finally:
            self.lock.release()

    async def _run(self) -> int:
        cfg = self.config
        for warning in model_warnings(cfg):
            log.warning("%s", warning)
        self.store = open_database(cfg.database, synchronous=cfg.device.synchronous,
                                   retry=True)
        if isinstance(self.store, PgStore):  # runners share the database, run by run
            from edge_agent.store.pg_leases import RunLeases, lease_seconds, runner_id
            self.leases = RunLeases(self.store, runner_id(cfg.device.id),
                                    lease_seconds(os.environ)).start()
            log.info("runner %s on %s", self.leases.owner, self.store.path)
        self.writer = writer_for(self.store)
        self.tools = build_tools(cfg, self.store)
        self.sync = self._build_sync()
        limits = cfg.sync.outbox_max_bytes if cfg.sync else None
        self.engine = Engine(store=self.store, writer=self.writer, workflows=cfg.workflows,
                             tools=self.tools, agent_runner=build_agent_runner(cfg, self.tools),
                             notify=self._outbox_changed, outbox_limits=limits,
                             device_id=cfg.device.id, leases=self.leases)
        await self.engine.start()
        if self.sync is not None:
            await self.sync.start()
        self.control = ControlServer(self.socket_path, self._handlers())
        await self.control.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_term)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        self._tasks = [loop.create_task(self._watch_external(), name="external-changes"),
                       loop.create_task(self._status_loop(), name="status"),
                       loop.create_task(self._span_loop(), name="spans")]
        if cfg.sync is not None and cfg.sync.anti_entropy_s > 0:
            self._tasks.append(loop.create_task(self._anti_entropy(cfg.sync.anti_entropy_s),
                                                name="anti-entropy"))
        interval = watchdog_interval()
        if interval:
            self._tasks.append(loop.create_task(self._watchdog(interval), name="watchdog"))
        self._tasks += [loop.create_task(self._trigger(wf), name=f"trigger-{wf.name}")
                        for wf in cfg.workflows.values() if wf.trigger and wf.trigger.every_s]
        self._start_edge_triggers(loop)
        status = self.status_line()
        self.notifier.ready(status)
        log.info("edge-agent %s ready: %s (pid %d)", __version__, status, os.getpid())
        await self._stop.wait()
        await self.shutdown()
        return 0

    def _record_spans(self) -> None:
        """Turn newly committed steps into spans: outbox and watermark in one transaction."""
        from edge_agent.telemetry.record import record_spans
        assert self.writer is not None
        cfg = self.config
        kinds = {(w.name, n.name): n.kind for w in cfg.workflows.values()
                 for n in w.nodes.values()}
        try:
            agents = {(w.name, n.name): n.agent for w in cfg.workflows.values()
                      for n in w.nodes.values() if n.agent}
            payloads = record_spans(self.writer, service=cfg.telemetry.service_name,
                                    device_id=cfg.device.id, kinds=kinds, agents=agents,
                                    limits=cfg.sync.outbox_max_bytes if cfg.sync else None)
        except Exception as exc:  # noqa: BLE001 - telemetry must never stop the daemon
            log.warning("span export failed: %s", exc)
            return
        for payload in payloads:
            if self.exporter is not None:
                self.exporter(payload)
        if payloads:
            self._outbox_changed()

    def _build_sync(self) -> Any:
        if self.config.sync is None:
            return None
        from edge_agent.daemon.runtime import build_sync
        assert self.store is not None
        return build_sync(self.config, self)

    def _outbox_changed(self) -> None:
        if self.sync is not None:
            self.sync.notify()

    # signals and shutdown ---------------------------------------------------------------------
    def _on_term(self) -> None:
        self._terms += 1
        if self._terms == 1:
            log.info("stopping: draining in-flight steps (send SIGTERM again to abort)")
            self.notifier.stopping()
            self._stop.set()
        else:
            log.warning("second stop signal: aborting now")
            os._exit(1)

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.get_running_loop().run_in_executor(None, stop_all, self.edge_triggers)
        if self.control:
            await self.control.shutdown()
        if self.engine:
            await self.engine.shutdown(timeout=self.config.device.drain_timeout_s)
        if self.leases is not None:  # handed back: other runners take over at once
            await asyncio.get_running_loop().run_in_executor(None, self.leases.close)
        if self.writer:
            self._record_spans()  # the last steps' spans go out with the final flush
        if self.sync is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sync.shutdown(), 10)
        close_tools(self.tools)
        if self.exporter is not None:
            self.exporter.shutdown()
        if self.writer:
            self.writer.shutdown()
        if self.store:
            self.store.close()
        self.notifier.close()
        log.info("stopped")

    async def reload(self) -> None:
        """SIGHUP: new tools, agents and workflows; runs in flight keep going."""
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            log.error("reload rejected, keeping the running configuration:\n%s", exc)
            self.notifier.status("reload rejected: config errors (see log)")
            return
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, the daemon stays
            log.error("reload rejected, keeping the running configuration: %s: %s",
                      type(exc).__name__, exc)
            self.notifier.status("reload rejected: config unreadable (see log)")
            return
        # an unchanged tool keeps its instance (and its open device); a changed or removed
        # one is closed, so its port or GPIO lines are free for the new one
        old_tools, old_cfg = self.tools, self.config
        unchanged = {name: binding for name, binding in old_tools.items()
                     if name in new.tools and new.tools[name] == old_cfg.tools.get(name)}
        try:
            tools = build_tools(new, self.store, reuse=unchanged)
        except Exception as exc:  # noqa: BLE001 - a bad tool must not take the daemon down
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return
        self.tools = tools
        self.config = new
        assert self.engine is not None
        self.engine.workflows = new.workflows
        self.engine.tools = tools
        self.engine.journal.tools = tools
        self.engine.agent_runner = build_agent_runner(new, tools)
        loop = asyncio.get_running_loop()
        # edge triggers wait through the old tools: all stop (together) before those close
        await loop.run_in_executor(None, stop_all, self.edge_triggers)
        close_tools({k: v for k, v in old_tools.items() if tools.get(k) is not v})
        self.edge_triggers = []
        self._start_edge_triggers(loop)
        log.info("reloaded %d tools, %d agents, %d workflows", len(tools), len(new.agents),
                 len(new.workflows))
        self.notifier.status(await asyncio.to_thread(self.status_line))

    # background loops -------------------------------------------------------------------------
    async def _watch_external(self) -> None:
        """Notice writes by other processes (the CLI) with one cheap query per tick, on one
        thread of its own: off the loop (on PostgreSQL it is a round trip to the server), and
        always the same connection (SQLite's data_version is counted per connection)."""
        assert self.store is not None and self.engine is not None
        store, loop = self.store, asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch") as watch:
            last = await loop.run_in_executor(watch, store.changes)
            while True:
                await asyncio.sleep(EXTERNAL_POLL_S)
                now = await loop.run_in_executor(watch, store.changes)
                if now != last:
                    last = now
                    self.engine.wake(None)

    async def _anti_entropy(self, interval: float) -> None:
        """A document summary goes up at start and then every `anti_entropy_s`; the cloud
        answers only where it differs."""
        from edge_agent.store.documents import record_summary
        assert self.writer is not None
        writer, config = self.writer, self.config
        while True:
            try:
                await asyncio.wrap_future(writer.submit(lambda c: record_summary(c, config)))
                self._outbox_changed()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("anti-entropy summary failed: %s", exc)
            await asyncio.sleep(interval)

    async def _span_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SPAN_INTERVAL_S)
            await loop.run_in_executor(None, self._record_spans)

    async def _status_loop(self) -> None:
        from edge_agent.telemetry.metrics import MetricsCollector
        collector = MetricsCollector(device_id=self.config.device.id,
                                     service=self.config.telemetry.service_name)
        interval = self.config.telemetry.metrics_interval_s
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(5.0, interval))
            try:
                line = await asyncio.wait_for(asyncio.to_thread(self.status_line),
                                              STATUS_WAIT_S)
            except Exception:  # noqa: BLE001 - said below; the loop goes on
                line = f"store {self.writer.health.line() if self.writer else 'closed'}"
            self.notifier.status(line)
            if time.monotonic() - last >= interval:
                last = time.monotonic()
                await asyncio.get_running_loop().run_in_executor(
                    None, self._record_metrics, collector)

    def _record_metrics(self, collector: Any) -> None:
        """Collected in a read snapshot, so the scan never holds up a step's commit."""
        from edge_agent.telemetry.record import in_snapshot
        from sync.outbox import Outbox
        assert self.writer is not None
        lag = None
        if self.sync is not None and self.sync.last_sync is not None:
            lag = max(0.0, time.time() - self.sync.last_sync)
        limits = self.config.sync.outbox_max_bytes if self.config.sync else None
        try:
            payload: bytes = self.writer.store.read(
                lambda c: in_snapshot(c, lambda c2: collector.collect(c2, lag)))
            self.writer.write(lambda c: Outbox(c, limits=limits).append(
                "metrics", "otlp.metrics", payload))
        except Exception as exc:  # noqa: BLE001 - metrics must never stop the daemon
            log.warning("metrics collection failed: %s", exc)
            return
        if self.exporter is not None:
            self.exporter.metrics(payload)

    async def _watchdog(self, interval: float) -> None:
        """Ping only while the loop runs and the store can commit."""
        assert self.writer is not None
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(asyncio.wrap_future(
                    self.writer.submit(lambda c: c.execute("SELECT 1"))), interval)
            except Exception as exc:  # noqa: BLE001 - no ping is the signal
                if self.writer.health.state != "retrying":
                    log.error("watchdog: store cannot commit: %s", exc)
                    continue
                # the store is waiting out a transient error (`status` says which): a
                # restart would not bring the database back sooner, so the pings go on
            self.notifier.watchdog()

    def _start_edge_triggers(self, loop: asyncio.AbstractEventLoop) -> None:
        """One thread per workflow started by a GPIO edge; each edge queues one run."""
        assert self.writer is not None and self.engine is not None
        writer, engine = self.writer, self.engine
        for wf in self.config.workflows.values():
            spec = wf.trigger
            if spec is None or spec.gpio is None or spec.gpio not in self.tools:
                continue

            def start(input: Any, name: str = wf.name) -> None:
                run_id = queue_run(writer.write, workflow=name, input=dict(input),
                                   workflows=self.config.workflows, origin="trigger")
                loop.call_soon_threadsafe(engine.wake, run_id)
            trigger = EdgeTrigger(wf.name, spec, self.tools[spec.gpio], start)
            trigger.begin()
            self.edge_triggers.append(trigger)

    async def _trigger(self, wf: Any) -> None:
        assert self.writer is not None and self.engine is not None
        while True:
            await asyncio.sleep(wf.trigger.every_s)
            # off the event loop: the commit may wait for a batch of other runs' steps
            run_id = await asyncio.to_thread(
                queue_run, self.writer.write, workflow=wf.name, input=dict(wf.trigger.input),
                workflows=self.config.workflows, origin="trigger")
            self.engine.wake(run_id)

    # status -----------------------------------------------------------------------------------
    def status_line(self) -> str:
        assert self.store is not None and self.engine is not None
        counts = self.store.read(q.count_by_status)
        pending = sum(s["pending"] for s in sync_status(self.store, self.sync)["streams"]
                      .values())
        cloud = ("cloud not configured" if self.sync is None else
                 "cloud connected" if self.sync.connected else "cloud offline")
        waiting = counts.get("waiting_approval", 0)
        store = "" if self.writer is None or self.writer.health.state == "ok" else \
            f", store {self.writer.health.line()}"
        return (f"{self.engine.active} runs active, {waiting} waiting approval, "
                f"outbox {pending} pending, {cloud}{store}")

    def _handlers(self) -> dict[str, Any]:
        async def status(req: dict[str, Any]) -> Any:
            out = {"pid": os.getpid(), "uptime_s": time.time() - self.started_at,
                   "version": __version__, "config": str(self.config.path),
                   "active": self.engine.active if self.engine else 0,
                   "store": self.writer.health.as_dict() if self.writer else None,
                   "runner": self.leases.owner if self.leases is not None else None,
                   "models": sorted(self.config.models),
                   "models_unavailable": unavailable_models(self.config)}
            try:  # off the loop, and not waited for while the store is retrying
                sync, line = await asyncio.wait_for(asyncio.to_thread(
                    lambda: (sync_status(self.store, self.sync) if self.store else None,
                             self.status_line())), STATUS_WAIT_S)
            except Exception as exc:  # noqa: BLE001 - a status answers whatever happens
                sync, line = None, f"store unavailable: {exc or type(exc).__name__}"
            return {**out, "sync": sync, "status_line": line}

        async def wake(req: dict[str, Any]) -> Any:
            assert self.engine is not None
            self.engine.wake(req.get("run_id"))
            return {"woken": req.get("run_id") or "all"}

        async def migrate(req: dict[str, Any]) -> Any:
            """`runs migrate` with the daemon up: committed while the engine holds the run
            (refused while a step of it is in flight). Versions come from the database,
            where the CLI registered its config's before asking."""
            from edge_agent.engine import VersionError, migrate_run
            assert self.engine is not None
            run_id, to_version = str(req["run_id"]), str(req["to_version"])
            mapping = {str(k): str(v) for k, v in dict(req.get("map") or {}).items()}
            try:
                return {"moved": await self.engine.while_held(run_id, lambda c: migrate_run(
                    c, run_id, to_version=to_version, mapping=mapping, current=None,
                    by=str(req.get("by") or "local")))}
            except (VersionError, EdgeAgentError) as exc:
                return {"error": str(exc), "exit_code": int(getattr(exc, "exit_code", 1))}

        async def sync_now(req: dict[str, Any]) -> Any:
            if self.sync is None:
                raise RuntimeError("sync is not configured ([sync] table missing)")
            self.sync.notify()
            return {"requested": True}

        async def block_loop(req: dict[str, Any]) -> Any:
            time.sleep(float(req.get("seconds", 1)))  # noqa: ASYNC251 - a test hook: a hung loop
            return {"blocked": True}

        async def gpio_inject(req: dict[str, Any]) -> Any:
            # a test hook: a sensor driving a line of a simulated chip (`chip = "sim:NAME"`)
            from hardware.gpio import SimulatedChip
            chip = SimulatedChip.existing(str(req["chip"]))
            chip.inject(int(req["offset"]), int(req["level"]))
            return {"injected": True}

        async def reload(req: dict[str, Any]) -> Any:  # `edge-agent config rollback`
            self._tasks.append(asyncio.get_running_loop().create_task(self.reload()))
            return {"reloading": True}  # as on SIGHUP: the log says how it went

        handlers = {"status": status, "wake": wake, "sync_now": sync_now, "reload": reload,
                    "migrate": migrate}
        if os.environ.get("EDGE_AGENT_TEST_HOOKS") == "1":
            handlers["block_loop"] = block_loop
            handlers["gpio_inject"] = gpio_inject
        return handlers


def run_daemon(config_path: str | None) -> int:
    from edge_agent.telemetry.logs import setup_logging
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, flush=True)
        return ConfigError.exit_code
    t = config.telemetry
    setup_logging(t.log_format, t.log_level, t.levels)
    return run_engine(config)


def run_engine(config: Config) -> int:
    """Run the daemon on `config` to its end: its exit status, with the README's codes for
    what stops it at start (75 another holds the data directory or database, 73, 74)."""
    from edge_agent.daemon.lock import AlreadyRunning, DataDirUnusable
    try:
        return asyncio.run(Daemon(config).run())
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return 75  # EX_TEMPFAIL
    except ConfigError as exc:  # found once running (the environment's settings)
        log.error("%s", exc)
        return ConfigError.exit_code
    except DataDirUnusable as exc:
        log.error("%s", exc)
        return DataDirUnusable.exit_code
    except StoreError as exc:
        log.error("%s", exc)
        return exc.exit_code
