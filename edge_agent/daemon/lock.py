"""One daemon per data directory: an flock held for the process's life.

The lock file is opened with O_NOFOLLOW: a symlink planted in a data directory that someone
else can write must not make a root daemon truncate the file it points to.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from edge_agent.errors import EdgeAgentError


class AlreadyRunning(EdgeAgentError):
    def __init__(self, path: Path, pid: str) -> None:
        self.path, self.pid = path, pid
        super().__init__(f"another edge-agent (pid {pid or 'unknown'}) holds {path}")


class DataDirUnusable(EdgeAgentError):
    """The data directory cannot hold the lock (read-only, not ours, a symlink planted)."""

    exit_code = 73  # EX_CANTCREAT

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "edge-agent.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataDirUnusable(self.path, "is a symbolic link; refusing to follow it "
                                      "(remove it, and check who can write the data "
                                      "directory)") from None
            raise DataDirUnusable(self.path, f"cannot create the lock file: "
                                  f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_holder(data_dir: Path) -> int | None:
    """The pid holding the lock, or None if nobody does."""
    path = data_dir / "edge-agent.lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None
