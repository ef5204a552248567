"""A real Mosquitto on a free loopback port, that tests can kill and restart."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_path() -> str:
    path = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(path).exists():
        raise RuntimeError("mosquitto is not installed (make test installs it)")
    return path


class Broker:
    def __init__(self, tmp: Path, *, extra: str = "", port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.conf = tmp / f"mosquitto-{self.port}.conf"
        self.log = tmp / f"mosquitto-{self.port}.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + ("allow_anonymous true\n" if "allow_anonymous" not in extra else "")
            + "persistence false\nmax_queued_messages 100000\nmax_inflight_messages 100\n"
            + "set_tcp_nodelay true\n"
            # run as whoever runs the tests, so it can read the test's own files
            + f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" + extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([mosquitto_path(), "-c", str(self.conf)],
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}"
                                       ) from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_logf"):
            self._logf.close()

    def restart(self) -> None:
        self.kill()
        self.start()
