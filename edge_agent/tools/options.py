"""What every tool kind module shares: the problem list type, option readers, bound calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Problems = list[tuple[str, str, Any]]
CallFn = Callable[[Mapping[str, Any], str], dict[str, Any]]


def unknown_keys(options: Mapping[str, Any], allowed: set[str]) -> Problems:
    return [(k, "unknown key", v) for k, v in options.items() if k not in allowed]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_path(base_dir: Path, value: str) -> str:
    """A path from the config, relative to the config file's folder unless absolute."""
    p = Path(value)
    return str(p if p.is_absolute() else base_dir / p)


class BoundCall:
    """A tool function with a close() for the resources behind it."""

    def __init__(self, fn: CallFn, close: Callable[[], None] | None = None, *,
                 blocks: bool = True) -> None:
        self.fn = fn
        self.close = close or (lambda: None)
        self.blocks = blocks  # False: pure computation, it never waits

    def __call__(self, args: Mapping[str, Any], key: str) -> dict[str, Any]:
        return self.fn(args, key)
