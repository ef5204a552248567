"""Command-line words that are not text.

Bytes that are not UTF-8 reach Python's argv as lone surrogates, which no database, JSON
document or MQTT message can carry. Both CLIs refuse such a word as a usage error (64)
before any command runs, naming the argument. File names are exempt: a path may be any
bytes, and the file's own checks answer for it.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection

from sync.json_arguments import JsonArgumentError, check_text

PATHS = frozenset({"config", "cloud_config", "path", "db", "root", "fragment"})
SHOWN = {"rest": "argument", "label": "--version"}  # dests whose name says little


def undecodable(args: argparse.Namespace, paths: Collection[str] = PATHS) -> str | None:
    """The message for the first argument that is not UTF-8 text, or None."""
    for name, value in vars(args).items():
        if name in paths:
            continue
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                check_text(SHOWN.get(name, name.replace("_", "-")), text)
            except JsonArgumentError as exc:
                return str(exc)
    return None
