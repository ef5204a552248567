"""Run a fixed argv (never a shell) with arguments substituted into declared positions.

Placeholders like `{part}` may only stand inside argv elements after the first; a value
always stays one argument, whatever it contains, so no value can add options, commands or
choose the program. Output is read as it comes and the process group is killed as soon as
it passes the size limit or the timeout.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import string
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hardware.errors import BadReply, CommandFailed, DeviceTimeout, HardwareError

log = logging.getLogger(__name__)
_FORMATTER = string.Formatter()
STDERR_TAIL = 500


def placeholders(argv: Sequence[str]) -> set[str]:
    """Names used as `{name}` in argv; raises ValueError on a malformed template."""
    names: set[str] = set()
    for i, part in enumerate(argv):
        for _, field, spec, conv in _FORMATTER.parse(part):
            if field is None:
                continue
            if not field.isidentifier() or spec or conv:
                raise ValueError(f"placeholder {{{field}}} must be a plain name")
            if i == 0:
                raise ValueError("the program (argv[0]) must not contain a placeholder")
            names.add(field)
    return names


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class CommandRunner:
    """One declared command line; `run` fills its placeholders and runs it."""

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
        """The argv with values filled in; strings as they are, anything else as JSON."""
        missing = self.names - set(args)
        if missing:
            raise HardwareError(f"missing arguments for argv: {', '.join(sorted(missing))}",
                                kind="invalid_args")
        values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in args.items()}
        argv = [part.format(**values) for part in self.argv]
        if any("\0" in part for part in argv):
            raise HardwareError("arguments must not contain NUL bytes", kind="invalid_args")
        exe = argv[0]
        if "/" in exe and not os.path.isabs(exe):
            argv[0] = str((self.cwd / exe).resolve())
        return argv

    def run(self, args: Mapping[str, Any], *, idempotency_key: str | None = None
            ) -> dict[str, Any]:
        argv = self.render(args)
        env = {**os.environ, **self.env}
        if idempotency_key:
            env["EDGE_AGENT_IDEMPOTENCY_KEY"] = idempotency_key
        try:
            proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            raise CommandFailed(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
        try:
            out, err = self._collect(proc, argv[0])
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if proc.returncode != 0:
            tail = stderr.strip()[-STDERR_TAIL:]
            raise CommandFailed(f"{argv[0]} exited {proc.returncode}: {tail}",
                                fields={"exit_code": proc.returncode, "stderr": tail})
        result: dict[str, Any] = {"exit_code": 0, "stdout": stdout, "stderr": stderr}
        try:
            parsed = json.loads(stdout)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            result["json"] = parsed
        return result

    def _collect(self, proc: subprocess.Popen[bytes], exe: str) -> tuple[bytes, bytes]:
        """Read both pipes until EOF, the deadline, or the size limit."""
        assert proc.stdout is not None and proc.stderr is not None
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        deadline = time.monotonic() + self.timeout_s
        with selectors.DefaultSelector() as sel:
            for f in (proc.stdout, proc.stderr):
                sel.register(f.fileno(), selectors.EVENT_READ)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    _kill_group(proc)
                    raise DeviceTimeout(f"{exe} did not finish within {self.timeout_s:g}s")
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = bufs[key.fd]
                    buf += chunk
                    if len(buf) > self.max_output_bytes:
                        _kill_group(proc)
                        raise BadReply(f"{exe} wrote more than {self.max_output_bytes} bytes")
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise DeviceTimeout(f"{exe} did not exit within {self.timeout_s:g}s") from None
        return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()])
