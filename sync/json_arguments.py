"""JSON typed on a command line (`--input`, `--patch`, `--value`): UTF-8 text, nested at
most MAX_JSON_DEPTH levels (bounded before the recursive parser runs), with no lone
surrogate. Shared by `edge-agent` and `edge-agent-cloud`, which turn the error into their
usage error (exit 64)."""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64


class JsonArgumentError(ValueError):
    """The argument is not JSON a store can keep; the message names the option."""


def json_depth(text: str) -> int:
    """How deep `[` and `{` nest outside strings: a cheap pass before any parser."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def check_text(name: str, text: str) -> None:
    """Raise JsonArgumentError unless `text` is valid UTF-8 (a command line's undecodable
    bytes arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JsonArgumentError(f"{name}: not valid UTF-8 text (a lone surrogate at position "
                                f"{exc.start})") from None


def parse_json_argument(name: str, text: str) -> Any:
    """The value of option `name`; JsonArgumentError says what is wrong with it."""
    check_text(name, text)
    if json_depth(text) > MAX_JSON_DEPTH:
        raise JsonArgumentError(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # "\ud800" escapes too
    except json.JSONDecodeError as exc:
        raise JsonArgumentError(f"{name}: not valid JSON ({exc.msg} at column {exc.colno})"
                                ) from None
    except UnicodeEncodeError:
        raise JsonArgumentError(f"{name}: holds a lone surrogate (\\udXXX), which is not text"
                                ) from None
    return value
