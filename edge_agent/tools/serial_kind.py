"""The `serial` kind: a line protocol on a serial port (see hardware.serial_line)."""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.tools.options import BoundCall, Problems, is_int, resolve_path, unknown_keys

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
KEYS = {"port", "baudrate", "terminator", "encoding", "send", "expect", "error", "until",
        "request_id", "request_id_field", "queue_timeout_s"}
DEFAULT_QUEUE_TIMEOUT_S = 10.0


def check_serial(options: Mapping[str, Any], base_dir: Path) -> Problems:
    from hardware.serial_line import template_fields
    problems = unknown_keys(options, KEYS)
    for key in ("port", "send", "expect"):
        if not isinstance(options.get(key), str) or not options.get(key):
            problems.append((key, "is required (a non-empty string)", options.get(key)))
    fields: set[str] = set()
    if isinstance(options.get("send"), str):
        try:
            fields = template_fields(options["send"])
        except ValueError as exc:
            problems.append(("send", str(exc), options["send"]))
    for key in ("expect", "error"):
        value = options.get(key)
        if key == "error" and value is not None and not isinstance(value, str):
            problems.append((key, "must be a regular expression (a string)", value))
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as exc:
                problems.append((key, f"is not a regular expression: {exc}", value))
    baud = options.get("baudrate", 115200)
    if not is_int(baud) or baud not in BAUDRATES:
        problems.append(("baudrate", "must be a standard baud rate", baud))
    for key in ("terminator", "until"):
        value = options.get(key, "\n" if key == "terminator" else None)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append((key, "must be a non-empty string", value))
    encoding = options.get("encoding", "utf-8")
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        problems.append(("encoding", "is not a known text encoding", encoding))
    queue = options.get("queue_timeout_s", DEFAULT_QUEUE_TIMEOUT_S)
    if isinstance(queue, bool) or not isinstance(queue, (int, float)) or not 0 < queue <= 3600:
        problems.append(("queue_timeout_s", "must be a number of seconds, > 0 and <= 3600",
                         queue))
    if not isinstance(options.get("request_id", False), bool):
        problems.append(("request_id", "must be true or false", options.get("request_id")))
    rid_field = options.get("request_id_field")
    if rid_field is not None:
        if not isinstance(rid_field, str) or not rid_field.isidentifier():
            problems.append(("request_id_field", "must be a placeholder name", rid_field))
        elif rid_field not in fields:
            problems.append(("request_id_field", f"send has no {{{rid_field}}} placeholder",
                             rid_field))
        if options.get("request_id"):
            problems.append(("request_id_field", "use either request_id or request_id_field",
                             rid_field))
    return problems


def build_serial(name: str, options: Mapping[str, Any], base_dir: Path, timeout_s: float,
                 result_schema: Mapping[str, Any] | None = None) -> BoundCall:
    from hardware.serial_line import SerialLine, SerialTool
    line = SerialLine(resolve_path(base_dir, options["port"]),
                      baudrate=int(options.get("baudrate", 115200)),
                      terminator=options.get("terminator", "\n"),
                      encoding=options.get("encoding", "utf-8"), timeout_s=timeout_s,
                      queue_timeout_s=float(options.get("queue_timeout_s",
                                                        DEFAULT_QUEUE_TIMEOUT_S)))
    props = (result_schema or {}).get("properties", {})
    types = {k: v["type"] for k, v in dict(props).items()
             if isinstance(v, Mapping) and isinstance(v.get("type"), str)}
    try:
        tool = SerialTool(line, send=options["send"], expect=options["expect"],
                          error=options.get("error"), until=options.get("until"),
                          request_id=bool(options.get("request_id", False)),
                          request_id_field=options.get("request_id_field"), types=types)
    except Exception:
        line.close()
        raise
    return BoundCall(lambda args, key: tool.call(args, idempotency_key=key), tool.close)
