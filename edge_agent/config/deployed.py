"""Deployed config: what the cloud replaced of this device's config, kept on the device.

The local file stays the owner of everything; a deployment is a fragment naming only tables
of `[sync] remote_config` (tools, agents, workflows). Each of its entries (`[tools.NAME]`,
`[workflows.NAME]`, ...) replaces or adds the local entry of that name; every load merges the
current fragment over the local file, so `[device]`, `[sync]` and `[telemetry]` are always
the local file's, even when an operator edits it after a deployment.

On disk, in `<data_dir>/deployed/` (the service may write its data dir; the config's
directory is read-only for it under the hardened unit):

  <sha256>.toml   each fragment applied, named by the SHA-256 of its bytes
  state.json      the marker: the current fragment's digest (null: the local file alone)
                  and the history of what was applied and when

A switch writes the fragment file durably first, then replaces state.json by an atomic
rename: a device restarted mid-apply loads one whole config, the old or the new, never a mix.
The previous fragments stay, so a rollback needs nothing from the cloud.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

REMOTE_TABLES = ("tools", "agents", "workflows")
LOCAL_ONLY = ("device", "sync", "telemetry")
MAX_FRAGMENT_BYTES = 48 << 10  # it travels in one signed command (64 KiB with its seal)
KEEP_FRAGMENTS = 10
LOCAL = "local"  # the digest name of "no deployment: the local file alone"


class FragmentError(ValueError):
    """A fragment this device will not take; `reasons` lists why."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def folder(data_dir: Path) -> Path:
    return data_dir / "deployed"


def parse_fragment(text: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The fragment's tables; FragmentError if it is not TOML or names a table this device
    keeps to itself (`[device]`, `[sync]`, `[telemetry]`, anything not in remote_config)."""
    if len(text.encode()) > MAX_FRAGMENT_BYTES:
        raise FragmentError([f"the fragment is larger than {MAX_FRAGMENT_BYTES} bytes"])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FragmentError([f"TOML syntax error: {exc}"]) from exc
    refused = [name for name in data if name not in allowed]
    if refused:
        raise FragmentError([
            f"[{name}] is " + ("kept local: a deployment never replaces it"
                               if name in LOCAL_ONLY or name not in REMOTE_TABLES
                               else "not in this device's [sync] remote_config")
            + f" (remote_config = {list(allowed)})" for name in refused])
    bad = [n for n, v in data.items() if not isinstance(v, dict)
           or not all(isinstance(e, dict) for e in v.values())]
    if bad:
        raise FragmentError([f"[{n}] must be a table of [{n}.NAME] tables" for n in bad])
    return data


def merge(local: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """The local config with each entry of the fragment replacing or adding its own."""
    out = copy.deepcopy(local)
    for table, entries in fragment.items():
        merged = dict(out.get(table) or {})
        merged.update(copy.deepcopy(entries))
        out[table] = merged
    return out


class DeployedState:
    """The marker and the fragments of one device's data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = folder(data_dir)
        self.marker = self.dir / "state.json"

    def read(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.marker.read_text())
        except FileNotFoundError:
            return {"current": None, "history": []}
        return state

    def current(self) -> str | None:
        cur = self.read().get("current")
        return str(cur) if cur else None

    def fragment_text(self, sha: str) -> str:
        """The stored fragment; ValueError if missing or not the bytes its name says."""
        text = (self.dir / f"{sha}.toml").read_text()
        if digest(text) != sha:
            raise ValueError(f"{self.dir / sha}.toml does not match its SHA-256")
        return text

    def store_fragment(self, text: str) -> str:
        sha = digest(text)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{sha}.toml"
        if not path.exists():
            _write_durably(path, text.encode())
        return sha

    def switch(self, sha: str | None, entry: dict[str, Any]) -> dict[str, Any]:
        """Make `sha` (a stored fragment, or None for the local file) current, in one rename;
        the history gains `entry` (with the digest left and the time)."""
        state = self.read()
        entry = {**entry, "digest": sha or LOCAL, "previous": state.get("current") or LOCAL,
                 "at": time.time()}
        history = [*state.get("history", []), entry][-100:]
        new = {"current": sha, "history": history}
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_durably(self.marker, json.dumps(new, indent=1).encode())
        self._prune(new)
        return entry

    def previous(self) -> str | None:
        """The digest held before the current one was applied (None: the local file)."""
        state = self.read()
        applied = [e for e in state.get("history", []) if e.get("action") == "apply"
                   and e.get("digest") == state.get("current")]
        prev = applied[-1].get("previous") if applied else None
        return None if prev in (None, LOCAL) else str(prev)

    def _prune(self, state: dict[str, Any]) -> None:
        keep = {e.get("digest") for e in state["history"][-KEEP_FRAGMENTS:]} | \
            {e.get("previous") for e in state["history"][-KEEP_FRAGMENTS:]}
        for f in self.dir.glob("*.toml"):
            if f.stem not in keep:
                f.unlink(missing_ok=True)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def overlay(data: dict[str, Any], data_dir: Path, allowed: tuple[str, ...]
            ) -> tuple[dict[str, Any], str | None]:
    """The raw config with the current deployment merged in, and its digest (None when
    there is none). A fragment that no longer fits remote_config is not applied."""
    state = DeployedState(data_dir)
    sha = state.current() if allowed else None
    if sha is None:
        return data, None
    fragment = parse_fragment(state.fragment_text(sha), allowed)
    return merge(data, fragment), sha
