"""Run the real daemon as a subprocess, with a NOTIFY_SOCKET the test reads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class DaemonProcess:
    def __init__(self, config: Path, tmp: Path, env: dict[str, str] | None = None,
                 argv: list[str] | None = None, cwd: Path | None = None) -> None:
        """argv and cwd: the command line to start it with, as a user would type it
        (default: this interpreter's `-m edge_agent run --config CONFIG`)."""
        self.config = config
        self.argv = argv or [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
        self.cwd = cwd
        self.notify_path = tmp / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.sock.settimeout(0.1)
        self.env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.messages: list[tuple[float, str]] = []
        self.log = tmp / f"daemon-{time.monotonic_ns()}.log"

    def start(self) -> DaemonProcess:
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._logf,
                                     stderr=subprocess.STDOUT, text=True)
        return self

    def read(self, timeout: float = 0.1) -> list[tuple[float, str]]:
        end = time.monotonic() + timeout
        got = []
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            for line in data.splitlines():
                got.append((time.monotonic(), line))
        self.messages += got
        return got

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        end = time.monotonic() + timeout
        for _, line in self.messages:
            if line.startswith(prefix):
                return line
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            for _, line in self.read(0.1):
                if line.startswith(prefix):
                    return line
        raise AssertionError(f"no {prefix!r} from the daemon within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.sock.close()
        if hasattr(self, "_logf"):
            self._logf.close()


def cli(config: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "edge_agent", *args, "--config", str(config)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"edge-agent {' '.join(args)} exited {r.returncode}:\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


def cli_json(config: Path, *args: str) -> Any:
    return json.loads(cli(config, *args, "--json").stdout)


def until(condition: Any, timeout: float = 30.0, every: float = 0.1,
          why: Callable[[], Any] | None = None) -> None:
    """Poll until condition() is true; fail the test after `timeout` seconds, with `why()`
    (what the test was waiting on, such as the daemon's output) in the message."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, (f"not true within {timeout:g}s"
                                         + (f": {why()}" if why else ""))
        time.sleep(every)
