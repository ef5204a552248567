"""The hardware package's root error. Every failure says whether retrying can help."""

from __future__ import annotations

from typing import Any


class HardwareError(Exception):
    """Root of device I/O errors; `kind` names the failure, `retryable` says if a retry helps."""

    kind = "failed"
    retryable = False

    def __init__(self, message: str, *, kind: str | None = None, retryable: bool | None = None,
                 fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if retryable is not None:
            self.retryable = retryable
        self.fields = dict(fields or {})


class DeviceTimeout(HardwareError):
    kind, retryable = "timeout", True


class DeviceGone(HardwareError):
    kind, retryable = "device_gone", True


class BadReply(HardwareError):
    kind, retryable = "bad_reply", False


class DeviceRejected(HardwareError):
    """The device answered with its error pattern; the named groups are in `fields`."""

    kind, retryable = "device_error", False


class NotDeclared(HardwareError):
    """A pin, register or port the configuration does not declare."""

    kind, retryable = "not_declared", False


class CommandFailed(HardwareError):
    kind, retryable = "failed", False
