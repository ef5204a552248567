"""Files below an install root, reached without following a link inside it.

`install-service --root DIR` writes, chmods and removes paths below DIR as root. A symbolic
link planted below DIR (`etc/systemd/system/edge-agent.service` pointing at /etc/shadow,
`etc/edge-agent` pointing at another directory) must not carry those writes outside it: every
path is walked one component at a time from a descriptor of DIR with O_NOFOLLOW, and acted on
through the descriptor of its parent. DIR itself may be a link (the operator named it).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class InstallRootError(Exception):
    """A path below the root cannot be used safely (or the root is not a directory)."""

    def __init__(self, path: Path | str, reason: str, exit_code: int = 73) -> None:
        self.path, self.reason, self.exit_code = Path(path), reason, exit_code
        super().__init__(f"{path}: {reason}")


class InstallRoot:
    """The directory files are installed below; every method takes a path relative to it."""

    def __init__(self, root: str | Path, *, create: bool) -> None:
        self.base = Path(root)
        if create and not self.base.exists():
            self.base.mkdir(parents=True)
        if not self.base.is_dir():
            raise InstallRootError(root, "the install root is not a directory"
                                   + ("" if self.base.exists() else " (it does not exist)"),
                                   exit_code=64)

    def path(self, rel: str) -> Path:
        return self.base / rel.lstrip("/")

    @contextmanager
    def _parent(self, rel: str, *, create: bool) -> Iterator[tuple[int, str]]:
        """A descriptor of `rel`'s parent directory, and `rel`'s last name."""
        parts = PurePosixPath(rel.lstrip("/")).parts
        fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(parts[:-1]):
                nxt = self._step(fd, name, "/".join(parts[:i + 1]), create=create)
                os.close(fd)
                fd = nxt
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _step(self, fd: int, name: str, shown: str, *, create: bool) -> int:
        """Open directory `name` below `fd`, never through a link."""
        try:
            try:
                nxt = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                nxt = os.open(name, _DIR, dir_fd=fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._refusal(shown, exc) from None
        return nxt

    def _refusal(self, rel: str, exc: OSError) -> InstallRootError:
        where = self.path(rel)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(where):
            return InstallRootError(where, "is a symbolic link inside the install root; "
                                    "refusing to follow it (remove it and run again)")
        return InstallRootError(where, exc.strerror or str(exc))

    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            with self._parent(rel, create=False) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        return self.lstat(rel) is not None

    def write(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        """Create or replace the file at `rel` (a link there is refused, not followed)."""
        with self._parent(rel, create=True) as (dfd, name):
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                             | os.O_CLOEXEC, mode, dir_fd=dfd)
            except OSError as exc:
                raise self._refusal(rel, exc) from None
            try:
                os.fchmod(fd, mode)
                os.write(fd, data)
            finally:
                os.close(fd)

    def set_owner_mode(self, rel: str, mode: int, gid: int | None) -> None:
        """chmod (and chown root:gid) the file or directory at `rel`, not a link's target."""
        with self._parent(rel, create=False) as (dfd, name):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                             dir_fd=dfd)
            except OSError as exc:
                raise self._refusal(rel, exc) from None
            try:
                os.fchmod(fd, mode)
                if gid is not None:
                    os.fchown(fd, 0, gid)
            finally:
                os.close(fd)

    def remove(self, rel: str) -> bool:
        """Unlink the file (or link) at `rel`; False if there was none."""
        try:
            with self._parent(rel, create=False) as (fd, name):
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return False
        return True

    def purge(self, rel: str) -> bool:
        """Remove the directory tree at `rel`; a link in its place is refused."""
        st = self.lstat(rel)
        if st is None:
            return False
        if stat.S_ISLNK(st.st_mode):
            raise InstallRootError(self.path(rel), "is a symbolic link; refusing to purge "
                                   "through it (remove the link yourself)")
        with self._parent(rel, create=False) as (fd, name):
            shutil.rmtree(name, dir_fd=fd)
        return True
