"""The `gpio` kind: read, write, pulse and wait-for-edge on declared lines (hardware.gpio).

`chip = "sim:NAME"` selects the simulated chip (tests, demo); a path selects libgpiod.
Arguments: `{"op": "read"|"write"|"pulse"|"wait_edge", "line": NAME, ...}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.tools.options import BoundCall, Problems, unknown_keys

LINE_KEYS = {"offset", "direction", "active_low", "bias", "debounce_ms"}


def check_gpio(options: Mapping[str, Any], base_dir: Path) -> Problems:
    from hardware.gpio import LineSpec
    problems = unknown_keys(options, {"chip", "lines"})
    chip = options.get("chip")
    if not isinstance(chip, str) or not chip or chip == "sim:":
        problems.append(("chip", "is required (a /dev/gpiochipN path, or sim:NAME)", chip))
    lines = options.get("lines")
    if not isinstance(lines, dict) or not lines:
        problems.append(("lines", "must declare at least one line", lines))
        return problems
    offsets: dict[int, str] = {}
    for lname, spec in lines.items():
        where = f"lines.{lname}"
        if not isinstance(spec, dict):
            problems.append((where, "must be a table", spec))
            continue
        extra = sorted(set(spec) - LINE_KEYS)
        for key in extra:
            problems.append((f"{where}.{key}", "unknown key", spec[key]))
        if "offset" not in spec:
            problems.append((f"{where}.offset", "is required", None))
        if extra or "offset" not in spec:
            continue
        try:
            LineSpec(lname, **spec)
        except (TypeError, ValueError) as exc:
            key = str(exc).split(" ", 1)[0]
            problems.append((f"{where}.{key}" if key in LINE_KEYS else where, str(exc),
                             spec.get(key, spec)))
            continue
        if spec["offset"] in offsets:
            problems.append((f"{where}.offset", f"is already used by {offsets[spec['offset']]}",
                             spec["offset"]))
        offsets[spec["offset"]] = lname
    return problems


def build_gpio(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float,
               result_schema: Mapping[str, Any] | None = None) -> BoundCall:
    from hardware.gpio import LineSpec, call, open_lines
    specs = {n: LineSpec(n, **spec) for n, spec in options["lines"].items()}
    lines = open_lines(options["chip"], specs)
    return BoundCall(lambda args, key: call(lines, args), lines.close)
