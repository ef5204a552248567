"""`edge-agent-cloud keys`: the cloud's downlink signing key (see sync/SIGNING.md)."""

from __future__ import annotations

from pathlib import Path

from sync.signing import create_private_key, load_private_key, public_key_text


def init_key(path: str) -> str:
    """Create the signing key (mode 0600, never over an existing file); its public key."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return public_key_text(create_private_key(path))


def show_key(path: str) -> str:
    """The public key of an existing signing key, to pin on devices."""
    return public_key_text(load_private_key(path))
