"""A request/response line protocol over a serial port (pyserial).

One lock per port path in this process serializes every exchange on it. Waiting for that
lock has its own bound (`queue_timeout_s`): a call that never got the port fails with
PortBusy, retryable, having sent nothing. The reply deadline starts once the port is ours,
so time spent queueing never shortens it. Any failure after the first byte was handed to
the port carries `effect_may_have_happened`: the device may have acted. A port that
vanished (USB re-enumeration, a closed pty) raises DeviceGone and is reopened on the next
call. Stale bytes left by an earlier timed-out reply are discarded before each request;
a reply that arrives later than that can only be told apart with request ids, which is
why tools on devices that are not naturally idempotent should use them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import string
import termios
import threading
import time
from collections.abc import Mapping
from typing import Any

import serial

from hardware.errors import (
    BadReply,
    DeviceGone,
    DeviceRejected,
    DeviceTimeout,
    HardwareError,
    PortBusy,
)

log = logging.getLogger(__name__)


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
    """Names of the `{name}` placeholders; ValueError for anything but plain names."""
    names = set()
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ValueError(f"placeholder {{{name}}} must be a plain name")
        names.add(name)
    return names


def request_id(idempotency_key: str) -> str:
    """A short frame-safe id derived from an idempotency key (same key, same id)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]


class SerialLine:
    """One serial port opened on demand; `exchange` sends a line and reads the reply."""

    def __init__(self, port: str, *, baudrate: int = 115200, terminator: str = "\n",
                 encoding: str = "utf-8", timeout_s: float = 2.0,
                 queue_timeout_s: float = 10.0) -> None:
        self.port = port
        self.queue_timeout_s = queue_timeout_s
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

    def exchange(self, line: str, *, until: str | None = None, reply_prefix: str | None = None,
                 timeout_s: float | None = None) -> list[str]:
        """Send one line; read one reply line, or lines until the `until` line.

        With `reply_prefix`, first lines without it (late replies to earlier requests)
        are skipped.
        """
        if not self.lock.acquire(timeout=self.queue_timeout_s):
            raise PortBusy(f"{self.port}: port busy for {self.queue_timeout_s:g}s "
                           "(queue_timeout_s); nothing was sent")
        try:
            deadline = time.monotonic() + (timeout_s or self.timeout_s)  # the port is ours now
            sent = False
            try:
                ser = self._open()
                ser.reset_input_buffer()
                sent = True  # from here on, bytes may have reached the device
                ser.write(line.encode(self.encoding) + self.terminator)
                ser.flush()
                lines: list[str] = []
                while True:
                    got = self._read_line(ser, deadline)
                    if not lines and reply_prefix is not None \
                            and not got.startswith(reply_prefix):
                        log.debug("%s: skipping a stale reply %r", self.port, got[:80])
                        continue
                    lines.append(got)
                    if until is None or lines[-1] == until:
                        return lines
            except (serial.SerialException, OSError, termios.error) as exc:
                self._drop()
                raise DeviceGone(f"{self.port}: device went away ({exc})",
                                 effect_may_have_happened=sent) from exc
            except HardwareError as exc:
                exc.effect_may_have_happened = exc.effect_may_have_happened or sent
                raise
        finally:
            self.lock.release()

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
    """A declared command: fill `send`, match `expect` (named groups) or `error`.

    Request ids, derived from the idempotency key, let a device drop a repeated request:
    `request_id=True` prefixes the frame with `#<id> ` (and expects the reply to carry
    it back), `request_id_field="id"` fills the `{id}` placeholder of `send` instead.
    """

    def __init__(self, line: SerialLine, *, send: str, expect: str, error: str | None = None,
                 until: str | None = None, request_id: bool = False,
                 request_id_field: str | None = None,
                 types: Mapping[str, str] | None = None) -> None:
        self.line = line
        self.send = send
        self.fields = template_fields(send)
        if request_id_field is not None and request_id_field not in self.fields:
            raise ValueError(f"send has no {{{request_id_field}}} placeholder")
        self.expect = re.compile(expect)
        self.error = re.compile(error) if error else None
        self.until = until
        self.request_id = request_id
        self.request_id_field = request_id_field
        self.types = dict(types or {})

    def frame(self, args: Mapping[str, Any], idempotency_key: str | None) -> tuple[str, str | None]:
        """The line to send and the reply prefix to wait for."""
        values = dict(args)
        rid = request_id(idempotency_key) if idempotency_key else None
        if self.request_id_field is not None:
            if rid is None:
                raise HardwareError("this tool needs an idempotency key", kind="invalid_args")
            values[self.request_id_field] = rid
        missing = self.fields - set(values)
        if missing:
            raise HardwareError(f"missing {', '.join(sorted(missing))}", kind="invalid_args")
        text = self.send.format(**{k: values[k] for k in self.fields})
        if any(c in text for c in "\n\r\0"):
            raise HardwareError("arguments must not contain line breaks", kind="invalid_args")
        if self.request_id and rid is not None:
            return f"#{rid} {text}", f"#{rid} "
        return text, None

    def call(self, args: Mapping[str, Any], *, idempotency_key: str | None = None
             ) -> dict[str, Any]:
        frame, prefix = self.frame(args, idempotency_key)
        lines = self.line.exchange(frame, until=self.until, reply_prefix=prefix)
        if prefix is not None:
            lines[0] = lines[0][len(prefix):]
        text = "\n".join(lines if self.until is None else lines[:-1])
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
