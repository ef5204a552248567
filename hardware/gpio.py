"""GPIO lines through libgpiod (`gpiod` v2 bindings), or a simulated chip with the same
interface. Only declared lines can be touched.

GPIO chips cannot be created on machines without the hardware (and not in containers), so
tests and the demo use `SimulatedChip`: same operations, active-low, bias and debounce
handling, and edges a test can inject.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from hardware.errors import DeviceGone, DeviceTimeout, HardwareError, NotDeclared

DIRECTIONS = ("input", "output")
BIASES = ("as_is", "disabled", "pull_up", "pull_down")
EDGES = ("rising", "falling", "both")


@dataclass(frozen=True)
class LineSpec:
    name: str
    offset: int
    direction: str = "input"  # input | output
    active_low: bool = False
    bias: str = "as_is"  # as_is | disabled | pull_up | pull_down
    debounce_ms: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {self.offset!r})")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be input or output (got {self.direction!r})")
        if self.bias not in BIASES:
            raise ValueError(f"bias must be one of {', '.join(BIASES)} (got {self.bias!r})")
        if not isinstance(self.active_low, bool):
            raise TypeError(f"active_low must be true or false (got {self.active_low!r})")
        if (isinstance(self.debounce_ms, bool) or not isinstance(self.debounce_ms, int)
                or not 0 <= self.debounce_ms <= 10_000):
            raise ValueError(f"debounce_ms must be an integer 0..10000 (got {self.debounce_ms!r})")


class GpioBackend(Protocol):
    def get(self, offset: int) -> int: ...

    def set(self, offset: int, value: int) -> None: ...

    def wait_edge(self, offset: int, edge: str, timeout_s: float) -> tuple[str, float] | None:
        ...

    def close(self) -> None: ...


class SimulatedChip:
    """A GPIO chip simulated in memory, for tests and the demo where no chip exists.

    It keeps physical levels (active-low is applied above it, as with libgpiod), starts
    inputs at their pull level, and drops edges inside a line's debounce period.
    """

    _chips: ClassVar[dict[str, SimulatedChip]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, lines: Mapping[str, LineSpec]) -> None:
        self.levels: dict[int, int] = {}
        for spec in lines.values():
            pull = {"pull_up": 1, "pull_down": 0}.get(spec.bias, 0)
            self.levels[spec.offset] = pull
        self.debounce = {s.offset: s.debounce_ms / 1000 for s in lines.values()}
        self._last_edge: dict[int, float] = {}
        self._edges: list[tuple[int, str, float]] = []
        self._cond = threading.Condition()

    @classmethod
    def existing(cls, name: str) -> SimulatedChip:
        """The chip `sim:NAME` opened in this process (KeyError if none)."""
        with cls._guard:
            return cls._chips[name]

    @classmethod
    def named(cls, name: str, lines: Mapping[str, LineSpec]) -> SimulatedChip:
        """One chip per name in a process, as one /dev/gpiochipN."""
        with cls._guard:
            chip = cls._chips.get(name)
            if chip is None:
                chip = cls._chips[name] = cls(lines)
            else:
                for spec in lines.values():
                    chip.levels.setdefault(spec.offset, 0)
                    chip.debounce.setdefault(spec.offset, spec.debounce_ms / 1000)
            return chip

    def get(self, offset: int) -> int:
        with self._cond:
            return self.levels[offset]

    def set(self, offset: int, value: int) -> None:
        self.inject(offset, value)

    def inject(self, offset: int, level: int) -> None:
        """Drive a physical level (what a sensor or a test does to an input)."""
        with self._cond:
            old = self.levels.get(offset, 0)
            self.levels[offset] = 1 if level else 0
            if old != self.levels[offset]:
                now = time.monotonic()
                if now - self._last_edge.get(offset, -1e9) >= self.debounce.get(offset, 0):
                    self._last_edge[offset] = now
                    self._edges.append((offset, "rising" if level else "falling", now))
                    self._cond.notify_all()

    def wait_edge(self, offset: int, edge: str, timeout_s: float) -> tuple[str, float] | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            start = len(self._edges)
            while True:
                for off, kind, ts in self._edges[start:]:
                    if off == offset and (edge == "both" or kind == edge):
                        return kind, ts
                start = len(self._edges)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        pass


class GpiodBackend:
    """libgpiod v2: requests the declared lines with their settings on first use.

    A chip that cannot be opened (bindings missing, chip gone) raises DeviceGone on the
    call that needed it, and the request is tried again on the next call.
    """

    def __init__(self, chip: str, lines: Mapping[str, LineSpec], consumer: str = "edge-agent"):
        self.chip = chip
        self.lines = dict(lines)
        self.consumer = consumer
        self._request: Any = None
        self._lock = threading.Lock()

    @property
    def request(self) -> Any:
        with self._lock:
            if self._request is None:
                self._request = self._open()
            return self._request

    def _open(self) -> Any:
        try:
            import gpiod
            from gpiod.line import Bias, Direction, Edge, Value
        except ImportError as exc:
            raise DeviceGone("the gpiod Python bindings are not installed") from exc
        import datetime as dt
        self._value = Value
        bias = {"as_is": Bias.AS_IS, "disabled": Bias.DISABLED, "pull_up": Bias.PULL_UP,
                "pull_down": Bias.PULL_DOWN}
        config = {}
        for s in self.lines.values():
            config[s.offset] = gpiod.LineSettings(
                direction=Direction.OUTPUT if s.direction == "output" else Direction.INPUT,
                active_low=False, bias=bias[s.bias],
                edge_detection=Edge.BOTH if s.direction == "input" else Edge.NONE,
                debounce_period=dt.timedelta(milliseconds=s.debounce_ms))
        try:
            return gpiod.request_lines(self.chip, consumer=self.consumer, config=config)
        except OSError as exc:
            raise DeviceGone(f"{self.chip}: cannot request lines ({exc})") from exc

    def get(self, offset: int) -> int:
        return 1 if self.request.get_value(offset) == self._value.ACTIVE else 0

    def set(self, offset: int, value: int) -> None:
        self.request.set_value(offset, self._value.ACTIVE if value else self._value.INACTIVE)

    def wait_edge(self, offset: int, edge: str, timeout_s: float) -> tuple[str, float] | None:
        import datetime as dt
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.request.wait_edge_events(dt.timedelta(seconds=left)):
                return None
            for ev in self.request.read_edge_events():
                kind = "rising" if ev.event_type == ev.Type.RISING_EDGE else "falling"
                if ev.line_offset == offset and (edge == "both" or kind == edge):
                    return kind, time.monotonic()
        return None

    def close(self) -> None:
        with self._lock:
            if self._request is not None:
                self._request.release()
                self._request = None


class GpioLines:
    """read, write, pulse and wait-for-edge on declared lines, with active-low applied."""

    def __init__(self, backend: GpioBackend, lines: Mapping[str, LineSpec]) -> None:
        self.backend = backend
        self.lines = dict(lines)

    def _line(self, name: str, direction: str | None = None) -> LineSpec:
        spec = self.lines.get(name)
        if spec is None:
            raise NotDeclared(f"line {name!r} is not declared (declared: "
                              f"{', '.join(sorted(self.lines))})")
        if direction and spec.direction != direction:
            raise NotDeclared(f"line {name!r} is declared as an {spec.direction}")
        return spec

    def read(self, name: str) -> bool:
        spec = self._line(name)
        level = self.backend.get(spec.offset)
        return bool(level ^ spec.active_low)

    def write(self, name: str, active: bool) -> bool:
        spec = self._line(name, "output")
        self.backend.set(spec.offset, int(bool(active) ^ spec.active_low))
        return bool(active)

    def pulse(self, name: str, duration_s: float) -> bool:
        if not 0 < duration_s <= 60:
            raise HardwareError("pulse duration must be in (0, 60] s", kind="invalid_args")
        self.write(name, True)
        try:
            time.sleep(duration_s)
        finally:
            self.write(name, False)
        return True

    def wait_edge(self, name: str, edge: str = "both", timeout_s: float = 5.0) -> str:
        """Wait for a logical edge ("rising" = becoming active); returns the edge seen."""
        spec = self._line(name, "input")
        if edge not in EDGES:
            raise HardwareError(f"edge must be one of {', '.join(EDGES)}", kind="invalid_args")
        if not 0 < timeout_s <= 3600:
            raise HardwareError("timeout must be in (0, 3600] s", kind="invalid_args")
        if spec.active_low and edge != "both":
            edge = "falling" if edge == "rising" else "rising"  # logical -> physical
        got = self.backend.wait_edge(spec.offset, edge, timeout_s)
        if got is None:
            raise DeviceTimeout(f"no {edge} edge on {name} within {timeout_s:g}s")
        kind = got[0]
        if spec.active_low:
            kind = "falling" if kind == "rising" else "rising"
        return kind

    def close(self) -> None:
        self.backend.close()


def open_lines(chip: str, lines: Mapping[str, LineSpec]) -> GpioLines:
    """`sim:<name>` opens a simulated chip; anything else is a libgpiod chip path."""
    if chip.startswith("sim:"):
        return GpioLines(SimulatedChip.named(chip[4:], lines), lines)
    return GpioLines(GpiodBackend(chip, lines), lines)


def call(lines: GpioLines, args: Mapping[str, Any]) -> dict[str, Any]:
    op = args.get("op", "read")
    name = str(args.get("line"))
    if op == "read":
        return {"line": name, "value": lines.read(name)}
    if op == "write":
        return {"line": name, "value": lines.write(name, bool(args.get("value")))}
    if op == "pulse":
        lines.pulse(name, float(args.get("duration_ms", 100)) / 1000)
        return {"line": name, "pulsed_ms": args.get("duration_ms", 100)}
    if op == "wait_edge":
        edge = lines.wait_edge(name, str(args.get("edge", "both")),
                               float(args.get("timeout_s", 5)))
        return {"line": name, "edge": edge}
    raise HardwareError(f"unknown gpio op {op!r}", kind="invalid_args")
