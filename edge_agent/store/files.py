"""Who may read the device database, and where it is safe to open.

Its file is created 0600, or 0640 when the data directory belongs to the service group (so
the group's operators can run the CLI), whatever the process's umask. SQLite gives the WAL
and shared-memory files the database file's mode.

SQLite opens the database, `-wal` and `-shm` by name and follows symbolic links (its unix VFS
even resolves a link to find the "real" database, and names the WAL after that), so a link
planted in the data directory would make a root daemon write another application's file.
Two checks together close that: the directory must be writable by its owner alone, and that
owner must be this process's user or root (so nobody else can plant or swap a name between
our check and SQLite's open); and the three names are checked with lstat before SQLite opens
them (so a link or a hard link planted earlier, while the directory was open to others, is
refused rather than followed). Opening through /proc/self/fd/N of an O_NOFOLLOW descriptor
would not help: SQLite resolves that magic link back to the name and opens `-wal`/`-shm` by
name anyway.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from edge_agent.errors import StoreError

SERVICE_GROUP = "edge-agent"  # the unit's Group= (see systemd/)


def db_file_mode(data_dir: Path, service_group: str = SERVICE_GROUP) -> int:
    """0640 when `data_dir`'s group is the service group, else 0600."""
    try:
        gid = grp.getgrnam(service_group).gr_gid
    except KeyError:
        return 0o600
    try:
        return 0o640 if os.stat(data_dir).st_gid == gid else 0o600
    except OSError:
        return 0o600


def create_db_file(path: Path, service_group: str = SERVICE_GROUP) -> None:
    """Create an empty database file with its mode set exactly (never through a symlink);
    an existing file is left as it is."""
    mode = db_file_mode(path.parent, service_group)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
    finally:
        os.close(fd)


class UnsafeDataPath(StoreError):
    """The database's directory or files could let another user redirect our writes."""

    exit_code = 73  # EX_CANTCREAT, as for the data directory's lock

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}; refusing to open the database")


def check_data_dir(data_dir: Path, *, writing: bool) -> None:
    """Refuse a directory that others than its owner can write, and (when we write) one whose
    owner is neither this process's user nor root."""
    try:
        st = os.stat(data_dir)
    except OSError:
        return  # SQLite says why it cannot open the file
    writable_by = ("everyone" if st.st_mode & stat.S_IWOTH
                   else "its group" if st.st_mode & stat.S_IWGRP else "")
    if writable_by:
        raise UnsafeDataPath(data_dir, f"the data directory is writable by {writable_by} "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}); make it writable by the "
                             "service user alone (chmod go-w)")
    euid = os.geteuid()
    if writing and st.st_uid not in (euid, 0):
        raise UnsafeDataPath(data_dir, f"the data directory belongs to uid {st.st_uid}, not to "
                             f"this user (uid {euid}) or root, who could plant links in it; run "
                             "as the directory's owner or chown it")


def check_db_files(db: Path) -> None:
    """The database, its -wal and -shm: absent, or plain files with one name each."""
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UnsafeDataPath(path, f"cannot be checked: {exc.strerror or exc}") from None
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeDataPath(path, "is a symbolic link; refusing to follow it (remove it, "
                                 "and check who can write the data directory)")
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeDataPath(path, "is not a regular file")
        if st.st_nlink > 1:
            raise UnsafeDataPath(path, f"has {st.st_nlink} hard links; the database's files "
                                 "must have one name each")
