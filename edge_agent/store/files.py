"""Who may read the device database: its file is created 0600, or 0640 when the data
directory belongs to the service group (so the group's operators can run the CLI), whatever
the process's umask. SQLite gives the WAL and shared-memory files the database file's mode.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

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
