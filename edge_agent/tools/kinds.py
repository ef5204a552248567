"""Tool kinds: what each `[tools.<name>]` table may hold beyond the common keys.

The common keys (kind, description, params, result, timeout_s, retry, idempotent,
location, on_unknown) belong to the config module; everything else is the kind's
`options`, checked here. Paths in options are relative to the config file's folder.
The config loader reads this module only: no tool is built or opened by a check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.tools.gpio_kind import check_gpio
from edge_agent.tools.kv_kind import check_kv
from edge_agent.tools.modbus_kind import check_modbus
from edge_agent.tools.options import Problems, unknown_keys
from edge_agent.tools.process_kinds import check_command, check_python
from edge_agent.tools.serial_kind import check_serial

log = logging.getLogger(__name__)

KINDS = frozenset({"serial", "modbus", "gpio", "command", "python", "remote", "kv"})


def _check_remote(options: Mapping[str, Any], base_dir: Path) -> Problems:
    problems = unknown_keys(options, {"fallback"})
    fb = options.get("fallback")
    if fb is not None and (not isinstance(fb, str) or not fb):
        problems.append(("fallback", "must name a local tool", fb))
    return problems


CHECKS: dict[str, Callable[[Mapping[str, Any], Path], Problems]] = {
    "command": check_command, "python": check_python, "serial": check_serial,
    "modbus": check_modbus, "gpio": check_gpio, "remote": _check_remote, "kv": check_kv,
}


def check_tool_options(kind: str, options: Mapping[str, Any], base_dir: Path) -> Problems:
    """Validate the kind-specific keys of one [tools.<name>] table; never raises.

    Returns problems as (subkey_path, message, offending_value); unknown keys are problems.
    """
    check = CHECKS.get(kind)
    if check is None:
        return [("kind", f"must be one of {', '.join(sorted(KINDS))}", kind)]
    if not isinstance(options, Mapping):
        return [("", "must be a table", options)]
    try:
        return check(options, base_dir)
    except Exception as exc:
        log.exception("checking %s tool options", kind)
        return [("kind", f"cannot check options: {exc}", kind)]


