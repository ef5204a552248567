"""`edge-agent sync init-key`: the device's own key, that seals its uplink batches."""

from __future__ import annotations

import argparse

from edge_agent.cli.context import CliError, Context


def cmd_init_key(ctx: Context, args: argparse.Namespace) -> int:
    """Create `[sync] device_key` (0600, never over an existing file); print its public key
    for the cloud's keyring (`[signing] device_keys`)."""
    from sync.signing import create_private_key, public_key_text
    s = ctx.config.sync
    if s is None or s.device_key is None:
        raise CliError("sync.device_key is not set: name the key's file in [sync] first", 78)
    try:
        s.device_key.parent.mkdir(parents=True, exist_ok=True)
        public = public_key_text(create_private_key(s.device_key))
    except FileExistsError:
        raise CliError(f"sync.device_key: {s.device_key} exists; init-key never overwrites a"
                       " key", 73) from None
    device = ctx.config.device.id
    ctx.out({"device_id": device, "key": str(s.device_key), "public_key": public}, public)
    ctx.note(f'register it in the cloud\'s keyring ([signing] device_keys): "{device}" = '
             f'["{public}"]')
    return 0
