"""Run a fixed argv (never a shell) with arguments substituted into declared positions.

Placeholders like `{part}` may only stand inside argv elements; a value always stays one
argument, whatever it contains, so no value can add options or commands.
"""

from __future__ import annotations

import json
import os
import signal
import string
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hardware.errors import CommandFailed, DeviceTimeout, HardwareError

_FORMATTER = string.Formatter()


def placeholders(argv: Sequence[str]) -> set[str]:
    """Names used as `{name}` in argv; raises ValueError on a malformed template."""
    names: set[str] = set()
    for part in argv:
        for _, field, spec, conv in _FORMATTER.parse(part):
            if field is None:
                continue
            if not field.isidentifier() or spec or conv:
                raise ValueError(f"placeholder {{{field}}} must be a plain name")
            names.add(field)
    return names


class CommandRunner:
    def __init__(self, argv: Sequence[str], *, cwd: Path, timeout_s: float,
                 max_output_bytes: int = 64 * 1024, env: Mapping[str, str] | None = None) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv = list(argv)
        self.cwd = cwd
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self.env = dict(env or {})
        self.names = placeholders(argv)

    def render(self, args: Mapping[str, Any]) -> list[str]:
        missing = self.names - set(args)
        if missing:
            raise HardwareError(f"missing arguments for argv: {', '.join(sorted(missing))}",
                                kind="invalid_args")
        values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in args.items()}
        return [part.format(**values) for part in self.argv]

    def run(self, args: Mapping[str, Any], *, idempotency_key: str | None = None
            ) -> dict[str, Any]:
        argv = self.render(args)
        exe = argv[0]
        if "/" in exe and not os.path.isabs(exe):
            argv[0] = str((self.cwd / exe).resolve())
        env = {**os.environ, **self.env}
        if idempotency_key:
            env["EDGE_AGENT_IDEMPOTENCY_KEY"] = idempotency_key
        try:
            proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            raise CommandFailed(f"cannot start {argv[0]}: {exc.strerror}") from exc
        try:
            out, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise DeviceTimeout(f"{argv[0]} did not finish within {self.timeout_s:g}s") \
                from None
        if len(out) > self.max_output_bytes or len(err) > self.max_output_bytes:
            raise CommandFailed(f"{argv[0]} wrote more than {self.max_output_bytes} bytes",
                                kind="bad_reply")
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if proc.returncode != 0:
            raise CommandFailed(f"{argv[0]} exited {proc.returncode}: {stderr.strip()[-500:]}",
                                fields={"exit_code": proc.returncode})
        result: dict[str, Any] = {"exit_code": 0, "stdout": stdout, "stderr": stderr}
        try:
            parsed = json.loads(stdout)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            result["json"] = parsed
        return result
