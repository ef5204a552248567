"""What `edge-agent-cloud` checks in its arguments before it opens a store or a broker.

A device would refuse a command addressed or shaped wrongly, but only after it travelled,
and some arguments never get that far (a `+` or `#` in a device id is an MQTT wildcard the
client refuses to publish to, a 5,000-deep JSON stops the parser). Each is a usage error
here (exit 64), or a data error (exit 65) for JSON too large to travel as one command.
"""

from __future__ import annotations

import argparse
import re

from sync.argv_text import undecodable
from sync.envelope import MAX_COMMAND_BYTES
from sync.json_arguments import JsonArgumentError, parse_json_argument

# a device id names MQTT topics: the device's own config rule ([device] id)
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# what a command's JSON argument may take, leaving room for the envelope and the seal
MAX_JSON_ARGUMENT_BYTES = MAX_COMMAND_BYTES - 4096
JSON_OPTIONS = ("input", "patch", "value")


class ArgumentProblem(Exception):
    """One argument that cannot be used; `exit_code` 64 (usage) or 65 (data)."""

    def __init__(self, message: str, exit_code: int = 64) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def _device(name: str, value: str) -> None:
    if not DEVICE_ID.fullmatch(value):
        shown = value if len(value) <= 80 else f"{value[:80]}... ({len(value)} characters)"
        raise ArgumentProblem(f"{name}: a device id is 1-64 letters, digits, '.', '_' or '-' "
                              f"(got {shown!r})")


def _json(name: str, text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_JSON_ARGUMENT_BYTES:
        raise ArgumentProblem(f"{name}: {size} bytes, more than one command carries "
                              f"({MAX_JSON_ARGUMENT_BYTES} bytes); put large data where the "
                              "device can fetch it and pass its name", exit_code=65)
    try:
        parse_json_argument(name, text)
    except JsonArgumentError as exc:
        raise ArgumentProblem(str(exc)) from None


def check_arguments(args: argparse.Namespace) -> None:
    """Raise ArgumentProblem for the first argument that cannot be used."""
    odd = undecodable(args)  # any word but a file name that is not UTF-8 text
    if odd is not None:
        raise ArgumentProblem(odd)
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
