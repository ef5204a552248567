"""The hardware package's root error. Every failure says whether retrying can help."""

from __future__ import annotations

from typing import Any


class HardwareError(Exception):
    """Root of device I/O errors; `kind` names the failure, `retryable` says if a retry helps.

    `effect_may_have_happened` is true when the request may have reached the device before
    the failure (bytes written, a process started, a write sent): for an action that is not
    idempotent the outcome is then unknown, not failed.
    """

    kind = "failed"
    retryable = False
    effect_may_have_happened = False

    def __init__(self, message: str, *, kind: str | None = None, retryable: bool | None = None,
                 fields: dict[str, Any] | None = None,
                 effect_may_have_happened: bool | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if retryable is not None:
            self.retryable = retryable
        if effect_may_have_happened is not None:
            self.effect_may_have_happened = effect_may_have_happened
        self.fields = dict(fields or {})


class DeviceTimeout(HardwareError):
    kind, retryable = "timeout", True


class DeviceGone(HardwareError):
    kind, retryable = "device_gone", True


class PortBusy(HardwareError):
    """The shared port stayed busy for the whole queue bound: nothing was sent."""

    kind, retryable = "port_busy", True


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
