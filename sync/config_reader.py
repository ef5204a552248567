"""A small typed reader over a parsed TOML table that collects every problem with its key path.

Shared by the device's and the cloud's configuration: every issue names its key and the value
found, and every key nobody read is reported as unknown."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = object()
# the longest duration any `*_s` key takes: 366 days
MAX_DURATION_S = 366 * 86400.0


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file: where it is, what is wrong, what was found."""

    path: str
    message: str
    value: Any = None
    has_value: bool = True

    def render(self, file: str) -> str:
        where = f"{file}: {self.path}: " if self.path else f"{file}: "
        got = f" (got {self.value!r})" if self.has_value else ""
        return f"{where}{self.message}{got}"


class Table:
    """Reads keys of one TOML table, records issues, and reports keys nobody asked for."""

    def __init__(self, data: Mapping[str, Any], path: str, issues: list[ConfigIssue]) -> None:
        self.data = data
        self.path = path
        self.issues = issues
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str, value: Any = _MISSING) -> None:
        self.issues.append(ConfigIssue(self.key(name) if name else self.path, message,
                                       None if value is _MISSING else value,
                                       value is not _MISSING))

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = None) -> Any:
        self._seen.add(name)
        return self.data.get(name, default)

    def _get(self, name: str, types: tuple[type, ...], what: str, default: Any, required: bool) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if required:
                self.error(name, "is required")
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in types:
            self.error(name, f"must be {what}", value)
            return default
        if not isinstance(value, types):
            self.error(name, f"must be {what}", value)
            return default
        return value

    def string(self, name: str, default: Any = None, *, required: bool = False,
            choices: tuple[str, ...] | None = None, nonempty: bool = True) -> Any:
        value = self._get(name, (str,), "a string", default, required)
        if isinstance(value, str) and name in self.data:
            if nonempty and not value.strip():
                self.error(name, "must not be empty", value)
                return default
            if choices is not None and value not in choices:
                self.error(name, "must be one of " + ", ".join(repr(c) for c in choices), value)
                return default
        return value

    def boolean(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        return self._get(name, (bool,), "true or false", default, required)

    def integer(self, name: str, default: Any = None, *, required: bool = False,
            min: int | None = None, max: int | None = None) -> Any:
        value = self._get(name, (int,), "an integer", default, required)
        if name in self.data and isinstance(value, int) and not isinstance(value, bool):
            return self._range(name, value, min, max, default)
        return value

    def number(self, name: str, default: Any = None, *, required: bool = False,
              min: float | None = None, max: float | None = None, exclusive_min: bool = False) -> Any:
        """A finite number in [min, max]. A duration (a key ending in `_s`) is also at most
        MAX_DURATION_S: a larger one passes a float check and then breaks every use (a
        deadline of 1e308 s overflows to infinity where it becomes milliseconds)."""
        if name.endswith("_s"):
            max = MAX_DURATION_S if max is None else builtins.min(max, MAX_DURATION_S)
        value = self._get(name, (int, float), "a number", default, required)
        if name in self.data and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value):
                self.error(name, "must be a finite number", value)
                return default
            if exclusive_min and min is not None and value <= min:
                self.error(name, f"must be > {min:g}", self.data[name])
                return default
            return self._range(name, value, min, max, default)
        return value

    def _range(self, name: str, value: Any, lo: Any, hi: Any, default: Any) -> Any:
        if lo is not None and value < lo:
            self.error(name, f"must be >= {lo}", self.data[name])
            return default
        if hi is not None and value > hi:
            self.error(name, f"must be <= {hi}", self.data[name])
            return default
        return value

    def list_of_str(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        value = self._get(name, (list,), "a list of strings", default, required)
        if name in self.data and isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                self.error(name, "must be a list of strings", value)
                return default
            return tuple(value)
        return value

    def table(self, name: str, *, required: bool = False) -> Table | None:
        value = self._get(name, (dict,), "a table", None, required)
        if isinstance(value, dict):
            return Table(value, self.key(name), self.issues)
        return None

    def mapping(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        return self._get(name, (dict,), "a table", default, required)

    def tables(self, name: str) -> dict[str, Table]:
        """A table of named sub-tables, such as [tools.<name>]."""
        outer = self.table(name)
        if outer is None:
            return {}
        out: dict[str, Table] = {}
        for sub, value in outer.data.items():
            outer._seen.add(sub)
            if not isinstance(value, dict):
                outer.error(sub, "must be a table", value)
                continue
            out[sub] = Table(value, outer.key(sub), self.issues)
        return out

    def convert(self, name: str, fn: Callable[[Any], T], what: str) -> T | None:
        if name not in self.data:
            return None
        try:
            return fn(self.data[name])
        except (TypeError, ValueError):
            self.error(name, f"must be {what}", self.data[name])
            return None

    def rest(self) -> dict[str, Any]:
        """Keys not read so far, handed to a kind-specific validator; marks them seen."""
        out = {k: v for k, v in self.data.items() if k not in self._seen}
        self._seen.update(out)
        return out

    def finish(self) -> None:
        """Report every key nobody read as unknown."""
        for name, value in self.data.items():
            if name not in self._seen:
                self.error(name, "unknown key", value)
