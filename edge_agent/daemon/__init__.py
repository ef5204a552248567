"""The daemon: the composition root (`service`) and what only it uses: runtime wiring,
sync runtime, triggers, control socket, sd_notify, the data-dir lock, service install."""

from edge_agent.daemon.service import run_daemon

__all__ = ["run_daemon"]
