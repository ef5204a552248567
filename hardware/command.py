"""Run a fixed argv (never a shell) with arguments substituted into declared positions.

Placeholders like `{part}` may only stand inside argv elements after the first (`{{` and
`}}` are a literal brace); a value always stays one argument, whatever it contains, so no
value can add arguments, commands or choose the program. One argument can still *be* an
option or a path to elsewhere, so each argument is checked as it results: one that a value
begins with `-` (before any literal `--` in argv) or with `/`, or in which values put a `..`
path component, is refused, unless the values involved are in `free_values` (the tool kind
puts there the parameters whose schema pins their values down: `enum`, `const`, `pattern`).
A list or object value is refused: only scalars stand in an argument.

Output is read as it comes. At the size limit or the timeout the whole tree is killed: the
process group, and every descendant that left it (`setsid`) while its parent still lived.
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


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, read from /proc (empty where there is no /proc)."""
    tree: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return tree
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal(pid: int, sig: int, *, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group and every descendant, also those in a session of their own:
    stopped first, so none forks a new child while the tree is being walked."""
    if proc.poll() is None:
        _signal(proc.pid, signal.SIGSTOP, group=True)
        seen: set[int] = set()
        while (new := _descendants(proc.pid) - seen):
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            seen |= new
        for pid in seen:
            _signal(pid, signal.SIGKILL)
            _signal(pid, signal.SIGKILL, group=True)
    _signal(proc.pid, signal.SIGKILL, group=True)
    proc.wait()


def _climbs(text: str) -> int:
    """How many `..` path components `text` holds."""
    return text.replace("\\", "/").split("/").count("..")


def _refuse(message: str) -> HardwareError:
    return HardwareError(message, kind="invalid_args")


def _scalar(name: str, value: Any) -> str:
    """A value as it stands in an argument: a string as it is, a number or boolean as JSON;
    a list or object is refused (its JSON would be one argument nobody declared)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise _refuse(f"{name}: a {type(value).__name__} cannot stand in an argument; only a "
                  "string, number, boolean or null can")


class CommandRunner:
    """One declared command line; `run` fills its placeholders and runs it."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, timeout_s: float,
                 max_output_bytes: int = 64 * 1024, env: Mapping[str, str] | None = None,
                 free_values: frozenset[str] = frozenset()) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv = list(argv)
        self.cwd = cwd
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self.env = dict(env or {})
        self.names = placeholders(argv)
        self.free_values = free_values

    def render(self, args: Mapping[str, Any]) -> list[str]:
        """The argv with values filled in; strings as they are, other scalars as JSON.
        Each argument is checked as it results, not value by value."""
        missing = self.names - set(args)
        if missing:
            raise _refuse(f"missing arguments for argv: {', '.join(sorted(missing))}")
        values = {k: _scalar(k, args[k]) for k in sorted(self.names)}
        argv = [self.argv[0]]
        options_ended = False
        for part in self.argv[1:]:
            argv.append(self._fill(part, values, options_ended))
            options_ended = options_ended or part == "--"
        if any("\0" in part for part in argv):
            raise _refuse("arguments must not contain NUL bytes")
        exe = argv[0]
        if "/" in exe and not os.path.isabs(exe):
            argv[0] = str((self.cwd / exe).resolve())
        return argv

    def _fill(self, part: str, values: Mapping[str, str], options_ended: bool) -> str:
        """One argument: its placeholders filled, then refused if a value (not the
        operator's literal text) made it an option, an absolute path, or one that climbs."""
        pieces = list(_FORMATTER.parse(part))
        text: list[str] = []
        literal: list[str] = []  # the template with each placeholder as a plain name
        lead: str | None = None  # the placeholder whose value begins the argument
        started = False
        for lit, field, _, _ in pieces:
            text.append(lit)
            literal.append(lit)
            started = started or bool(lit)
            if field is not None:
                text.append(values[field])
                literal.append("x")
                if not started and values[field]:
                    lead, started = field, True
        arg = "".join(text)
        guarded = [f for _, f, _, _ in pieces if f is not None and f not in self.free_values]
        if not guarded:
            return arg
        shown = f"{part!r} would be {arg[:60]!r}"
        if lead is not None and lead not in self.free_values:
            if arg.startswith("-") and not options_ended:
                raise _refuse(f"{lead}: {shown}, read as an option (a value may begin an "
                              "argument with '-' only after '--' in argv, or where the "
                              "parameter's schema allows it)")
            if arg.startswith("/"):
                raise _refuse(f"{lead}: {shown}, an absolute path (write the folder in argv, "
                              "as in 'parts/{name}', or pin the value down in the schema)")
        if _climbs(arg) > _climbs("".join(literal)):
            raise _refuse(f"{', '.join(guarded)}: {shown}, which climbs out of its folder "
                          "('..'); refused unless the parameter's schema allows it")
        return arg

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
                    raise DeviceTimeout(f"{exe} did not finish within {self.timeout_s:g}s",
                                        effect_may_have_happened=True)
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = bufs[key.fd]
                    buf += chunk
                    if len(buf) > self.max_output_bytes:
                        _kill_group(proc)
                        raise BadReply(f"{exe} wrote more than {self.max_output_bytes} bytes",
                                       effect_may_have_happened=True)
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise DeviceTimeout(f"{exe} did not exit within {self.timeout_s:g}s",
                                effect_may_have_happened=True) from None
        return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()])
