"""What every CLI command needs: the config, the database, and the daemon if it runs."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from edge_agent.config import Config, load_config
from edge_agent.daemon.control_socket import request
from edge_agent.store import Store
from edge_agent.store.backend import Database
from edge_agent.store.opening import open_database


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse, except that with --json a usage error is a JSON object on stderr (the same
    exit code, 2) rather than the usage text."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--json" not in args:
        return parser.parse_args(args)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(args)
    except SystemExit as exc:
        if not exc.code:  # --help, --version
            raise
        lines = captured.getvalue().strip().splitlines()
        print(json.dumps({"error": lines[-1] if lines else "invalid arguments",
                          "exit_code": exc.code}), file=sys.stderr)
        raise


class CliError(Exception):
    """A user-facing failure: printed without a traceback, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        self.code = code
        super().__init__(message)


class Context:
    def __init__(self, config_path: str | None, as_json: bool) -> None:
        self.config_path = config_path
        self.as_json = as_json

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    @property
    def socket(self) -> Path:
        return self.config.device.runtime_dir / "control.sock"

    def daemon(self, cmd: str, **fields: Any) -> Any:
        """Ask the running daemon; None when it does not answer."""
        try:
            return request(self.socket, cmd, **fields)
        except (OSError, ValueError):
            return None

    def store(self, *, write: bool = False) -> Database:
        if self.config.device.database:  # PostgreSQL (the cloud runner's engine)
            return open_database(self.config.device.database, readonly=not write)
        path = self.config.db_path
        if not write and not path.exists():
            raise CliError(f"no database at {path} yet: the daemon has never run here and no "
                           "run was started")
        if write:
            return Store(path, synchronous=self.config.device.synchronous)
        return Store(path, readonly=True)

    def out(self, data: Any, text: str | None = None) -> None:
        if self.as_json:
            json.dump(data, sys.stdout, indent=2, default=str)
            sys.stdout.write("\n")
        else:
            print(text if text is not None else data)

    def fail(self, message: str, code: int, prefix: str = "edge-agent: ") -> int:
        """Report an error on stderr, as {"error", "exit_code"} under --json; returns the
        exit code, the same either way."""
        if self.as_json:
            print(json.dumps({"error": message, "exit_code": code}), file=sys.stderr)
        else:
            print(f"{prefix}{message}", file=sys.stderr)
        return code

    def note(self, message: str) -> None:
        """A side remark for people; kept off stdout so --json stays parseable."""
        print(message, file=sys.stderr)
