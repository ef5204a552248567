"""A request/response line protocol over a serial port (pyserial).

One lock per port path in this process serializes every exchange on it. A port that
vanished (USB re-enumeration, a closed pty) raises DeviceGone and is reopened on the next
call. Stale bytes left by an earlier timed-out reply are discarded before each request.
"""

from __future__ import annotations

import hashlib
import re
import string
import termios
import threading
import time
from collections.abc import Mapping
from typing import Any

import serial

from hardware.errors import BadReply, DeviceGone, DeviceRejected, DeviceTimeout, HardwareError

class _Port:
    """One open port shared by every tool declared on it, with the lock that serializes it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ser: serial.Serial | None = None
        self.users = 0


_PORTS: dict[str, _Port] = {}
_PORTS_GUARD = threading.Lock()


def _port(path: str) -> _Port:
    with _PORTS_GUARD:
        return _PORTS.setdefault(path, _Port())


def template_fields(template: str) -> set[str]:
    names = set()
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ValueError(f"placeholder {{{name}}} must be a plain name")
        names.add(name)
    return names


class SerialLine:
    def __init__(self, port: str, *, baudrate: int = 115200, terminator: str = "\n",
                 encoding: str = "utf-8", timeout_s: float = 2.0) -> None:
        self.port = port
        self.baudrate = baudrate
        self.terminator = terminator.encode(encoding)
        self.encoding = encoding
        self.timeout_s = timeout_s
        self._shared = _port(port)
        self.lock = self._shared.lock
        with self.lock:
            self._shared.users += 1
        self._closed = False

    def _open(self) -> serial.Serial:
        shared = self._shared
        if shared.ser is None:
            try:
                shared.ser = serial.Serial(self.port, self.baudrate, timeout=0.05,
                                           write_timeout=self.timeout_s, exclusive=True)
            except (serial.SerialException, OSError) as exc:
                raise DeviceGone(f"{self.port}: cannot open ({exc})") from exc
        return shared.ser

    def _drop(self) -> None:
        """Forget a port that failed, so the next call reopens it (held lock)."""
        if self._shared.ser is not None:
            try:
                self._shared.ser.close()
            except (serial.SerialException, OSError):
                pass
            self._shared.ser = None

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self._shared.users -= 1
            if self._shared.users <= 0:
                self._drop()

    def exchange(self, line: str, *, until: str | None = None,
                 timeout_s: float | None = None) -> list[str]:
        """Send one line; read one reply line, or lines until the `until` line."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        with self.lock:
            ser = self._open()
            try:
                ser.reset_input_buffer()
                ser.write(line.encode(self.encoding) + self.terminator)
                ser.flush()
                lines: list[str] = []
                while True:
                    lines.append(self._read_line(ser, deadline))
                    if until is None or lines[-1] == until:
                        return lines
            except (serial.SerialException, OSError, termios.error) as exc:
                self._drop()
                raise DeviceGone(f"{self.port}: device went away ({exc})") from exc

    def _read_line(self, ser: serial.Serial, deadline: float) -> str:
        buf = bytearray()
        while time.monotonic() < deadline:
            chunk = ser.read_until(self.terminator)
            if chunk:
                buf += chunk
                if buf.endswith(self.terminator):
                    raw = bytes(buf[:-len(self.terminator)]).rstrip(b"\r")
                    try:
                        return raw.decode(self.encoding)
                    except UnicodeDecodeError as exc:
                        raise BadReply(f"{self.port}: undecodable reply {raw[:40]!r}") from exc
        what = f"a partial line {bytes(buf[:40])!r}" if buf else "silence"
        raise DeviceTimeout(f"{self.port}: no complete reply within the timeout ({what})")


class SerialTool:
    """A declared command: fill `send`, match `expect` (named groups) or `error`."""

    def __init__(self, line: SerialLine, *, send: str, expect: str, error: str | None = None,
                 until: str | None = None, request_id: bool = False,
                 types: Mapping[str, str] | None = None) -> None:
        self.line = line
        self.send = send
        self.fields = template_fields(send)
        self.expect = re.compile(expect)
        self.error = re.compile(error) if error else None
        self.until = until
        self.request_id = request_id
        self.types = dict(types or {})

    def call(self, args: Mapping[str, Any], *, idempotency_key: str | None = None
             ) -> dict[str, Any]:
        missing = self.fields - set(args)
        if missing:
            raise HardwareError(f"missing {', '.join(sorted(missing))}", kind="invalid_args")
        frame = self.send.format(**{k: v for k, v in args.items()})
        if "\n" in frame or "\r" in frame:
            raise HardwareError("arguments must not contain line breaks", kind="invalid_args")
        if self.request_id and idempotency_key:
            rid = hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]
            frame = f"#{rid} {frame}"
        lines = self.line.exchange(frame, until=self.until)
        text = "\n".join(lines if self.until is None else lines[:-1])
        if self.request_id and text.startswith("#"):
            text = text.split(" ", 1)[1] if " " in text else ""
        if self.error is not None and (m := self.error.search(text)):
            raise DeviceRejected(f"{self.line.port}: device error: {text[:200]}",
                                 fields=m.groupdict())
        m = self.expect.search(text)
        if m is None:
            raise BadReply(f"{self.line.port}: unexpected reply {text[:200]!r}")
        return {k: self._convert(k, v) for k, v in m.groupdict().items()}

    def _convert(self, name: str, value: str | None) -> Any:
        kind = self.types.get(name)
        if value is None or kind is None:
            return value
        try:
            if kind == "integer":
                return int(value)
            if kind == "number":
                return float(value)
            if kind == "boolean":
                return value.lower() in ("1", "true", "on", "yes")
        except ValueError as exc:
            raise BadReply(f"{name}: {value!r} is not {kind}") from exc
        return value

    def close(self) -> None:
        self.line.close()
