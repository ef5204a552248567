"""What `edge-agent-cloud` checks in its arguments before it opens a store or a broker.

A device would refuse a command addressed or shaped wrongly, but only after it travelled,
and some arguments never get that far (a `+` or `#` in a device id is an MQTT wildcard the
client refuses to publish to, a 5,000-deep JSON stops the parser). Each is a usage error
here (exit 64), or a data error (exit 65) for JSON too large to travel as one command.
"""

from __future__ import annotations

import argparse
import json
import re

from sync.envelope import MAX_COMMAND_BYTES

# a device id names MQTT topics: the device's own config rule ([device] id)
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_JSON_DEPTH = 64
# what a command's JSON argument may take, leaving room for the envelope and the seal
MAX_JSON_ARGUMENT_BYTES = MAX_COMMAND_BYTES - 4096
JSON_OPTIONS = ("input", "patch", "value")
PATHS = ("config", "root")  # file names: any bytes the system allows


class ArgumentProblem(Exception):
    """One argument that cannot be used; `exit_code` 64 (usage) or 65 (data)."""

    def __init__(self, message: str, exit_code: int = 64) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def _text(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ArgumentProblem(f"{name}: not valid UTF-8 text (a lone surrogate at position "
                              f"{exc.start})") from None


def _device(name: str, value: str) -> None:
    if not DEVICE_ID.fullmatch(value):
        shown = value if len(value) <= 80 else f"{value[:80]}... ({len(value)} characters)"
        raise ArgumentProblem(f"{name}: a device id is 1-64 letters, digits, '.', '_' or '-' "
                              f"(got {shown!r})")


def _depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for c in text:  # a cheap bound before the recursive parser runs
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _json(name: str, text: str) -> None:
    size = len(text.encode("utf-8"))
    if size > MAX_JSON_ARGUMENT_BYTES:
        raise ArgumentProblem(f"{name}: {size} bytes, more than one command carries "
                              f"({MAX_JSON_ARGUMENT_BYTES} bytes); put large data where the "
                              "device can fetch it and pass its name", exit_code=65)
    if _depth(text) > MAX_JSON_DEPTH:
        raise ArgumentProblem(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # "\ud800" escapes too
    except json.JSONDecodeError as exc:
        raise ArgumentProblem(f"{name}: not valid JSON ({exc.msg} at column {exc.colno})"
                              ) from None
    except UnicodeEncodeError:
        raise ArgumentProblem(f"{name}: holds a lone surrogate (\\udXXX), which is not text"
                              ) from None


def check_arguments(args: argparse.Namespace) -> None:
    """Raise ArgumentProblem for the first argument that cannot be used."""
    for key, value in sorted(vars(args).items()):
        if isinstance(value, str) and key not in PATHS:
            _text(f"--{key.replace('_', '-')}", value)
    if getattr(args, "device", None) is not None:
        _device("--device", args.device)
    if getattr(args, "devices", None) is not None:
        for one in (d.strip() for d in args.devices.split(",")):
            if one:
                _device("--devices", one)
    for key in JSON_OPTIONS:
        value = getattr(args, key, None)
        if isinstance(value, str):
            _json(f"--{key}", value)
