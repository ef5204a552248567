"""Console tokens: who may log in, with which role. Only hashes are kept.

A token is 32 random bytes (256 bits, `secrets.token_urlsafe`), shown once by `console
token add`. The file keeps its SHA-256, compared with `hmac.compare_digest`. A slow hash
(scrypt, argon2) exists to make guessing a low-entropy password costly; a 256-bit random
token cannot be guessed however fast the hash is, so SHA-256 loses nothing and lets every
request check its session against the file at no cost. The file is written 0600 through a
new file and a rename, never through a symbolic link.

    {"tokens": [{"name": "ana", "role": "operator", "sha256": "...", "created": 1700000000.0}]}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("viewer", "operator")
PREFIX = "eac_"  # recognisable in a leaked log or a secret scanner
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TokenError(Exception):
    """The token file cannot be used, or a request on it is invalid."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        self.exit_code = exit_code
        super().__init__(message)


@dataclass(frozen=True)
class Holder:
    """Whoever presented a known token: its name, role, and which token (a digest prefix,
    so that a revoked and re-added name does not revive old sessions)."""

    name: str
    role: str
    key: str

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """The tokens of one file; reads it again whenever it changed on disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[dict[str, Any]] = []

    def entries(self) -> list[dict[str, Any]]:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self._stamp, self._entries = None, []
            return []
        except OSError as exc:
            raise TokenError(f"console.tokens: cannot read {self.path} ({exc.strerror})",
                             66) from exc
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise TokenError(f"console.tokens: {self.path} is not a regular file (a symbolic"
                             " link is never followed)", 78)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._entries = self._read()
            self._stamp = stamp
        return list(self._entries)

    def _read(self) -> list[dict[str, Any]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read() or b'{"tokens": []}')
        except OSError as exc:
            raise TokenError(f"console.tokens: cannot read {self.path} ({exc.strerror})",
                             66) from exc
        except ValueError as exc:
            raise TokenError(f"console.tokens: {self.path} is not valid JSON ({exc})",
                             78) from exc
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str)
                and t.get("role") in ROLES and isinstance(t.get("sha256"), str)
                for t in tokens):
            raise TokenError(f"console.tokens: {self.path}: expected {{\"tokens\": [{{name,"
                             " role, sha256}, ...]}", 78)
        return tokens

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if self.path.is_symlink():
            raise TokenError(f"console.tokens: {self.path} is a symbolic link; it is never"
                             " followed (remove it, or point console.tokens at the file)", 73)
        if not self.path.parent.is_dir():
            raise TokenError(f"console.tokens: the directory {str(self.path.parent)!r} does"
                             " not exist", 78)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"tokens": entries}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # replaces a name, never writes through a link
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def add(self, name: str, role: str) -> str:
        """A new token for NAME with ROLE; returns the token (shown once, never stored)."""
        if not NAME.match(name):
            raise TokenError(f"NAME: letters, digits, . _ @ - (up to 64), got {name!r}", 64)
        if role not in ROLES:
            raise TokenError(f"--role: one of {', '.join(ROLES)} (got {role!r})", 64)
        entries = self.entries()
        if any(e["name"] == name for e in entries):
            raise TokenError(f"a token named {name!r} exists (console token revoke {name}"
                             " first)", 73)
        token = PREFIX + secrets.token_urlsafe(32)
        self._write(entries + [{"name": name, "role": role, "sha256": digest(token),
                                "created": time.time()}])
        return token

    def revoke(self, name: str) -> bool:
        entries = self.entries()
        kept = [e for e in entries if e["name"] != name]
        if len(kept) == len(entries):
            return False
        self._write(kept)
        return True

    def listing(self) -> list[dict[str, Any]]:
        """Names, roles and creation times; never the hashes."""
        return [{"name": e["name"], "role": e["role"], "created": e.get("created")}
                for e in self.entries()]

    def holder(self, token: str) -> Holder | None:
        """Who holds this token, compared in constant time against every entry."""
        wanted = digest(token.strip())
        found = None
        for e in self.entries():
            if hmac.compare_digest(e["sha256"], wanted):
                found = e
        return None if found is None else Holder(found["name"], found["role"],
                                                 found["sha256"][:16])

    def still(self, name: str, key: str) -> Holder | None:
        """The holder of a session, if its token is still in the file."""
        for e in self.entries():
            if e["name"] == name and hmac.compare_digest(e["sha256"][:16], key):
                return Holder(e["name"], e["role"], key)
        return None
