"""Build a tool from its checked `[tools.<name>]` table (`tools.kinds` checks it)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.tools.base import SchemaTool, Tool, ToolError
from edge_agent.tools.gpio_kind import build_gpio
from edge_agent.tools.kinds import KINDS, check_tool_options
from edge_agent.tools.modbus_kind import build_modbus
from edge_agent.tools.options import BoundCall
from edge_agent.tools.process_kinds import build_command, build_python
from edge_agent.tools.serial_kind import build_serial

log = logging.getLogger(__name__)

BUILDERS: dict[str, Callable[..., BoundCall]] = {
    "command": build_command, "python": build_python, "serial": build_serial,
    "modbus": build_modbus, "gpio": build_gpio,
}
_TAKE_RESULT_SCHEMA = frozenset({"serial", "modbus", "gpio"})

__all__ = ["BUILDERS", "KINDS", "build_tool", "check_tool_options", "describe_tools"]

def build_tool(name: str, kind: str, *, description: str, params: Mapping[str, Any],
               result_schema: Mapping[str, Any] | None, idempotent: bool, timeout_s: float,
               options: Mapping[str, Any], base_dir: Path) -> Tool:
    """Build one local tool from checked options. Devices are opened on first call, so a
    device that is absent at start does not stop the daemon.

    Raises ToolError (kind "not_supported") for `remote`, which the runtime binds itself,
    and (kind "failed") when the tool cannot be built at all.
    """
    builder = BUILDERS.get(kind)
    if builder is None:
        where = "bound by the runtime, not built here" if kind in ("remote", "kv") \
            else "not a tool kind"
        raise ToolError(f"{name}: kind {kind!r} is {where}", kind="not_supported")
    try:
        if kind in _TAKE_RESULT_SCHEMA:
            fn = builder(name, options, base_dir, timeout_s, result_schema)
        elif kind == "command":  # which values the schema pins down (see free_values)
            fn = builder(name, options, base_dir, timeout_s, params)
        else:
            fn = builder(name, options, base_dir, timeout_s)
    except Exception as exc:
        raise ToolError(f"{name}: cannot build the {kind} tool: {exc}",
                        kind=getattr(exc, "kind", "failed"),
                        retryable=bool(getattr(exc, "retryable", False))) from exc
    return SchemaTool(name, fn, description=description, params=params,
                      result_schema=result_schema, idempotent=idempotent, timeout_s=timeout_s,
                      close=fn.close, blocks=getattr(fn, "blocks", True))


def describe_tools(tools: Mapping[str, Tool]) -> list[dict[str, Any]]:
    """One JSON-ready entry per tool, sorted by name, for `edge-agent tools list`."""
    return [{"name": t.name, "description": t.description, "params": dict(t.params),
             "result": dict(t.result_schema) if t.result_schema else None,
             "idempotent": t.idempotent, "timeout_s": t.timeout_s}
            for _, t in sorted(tools.items())]
