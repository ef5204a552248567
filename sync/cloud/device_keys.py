"""Device keys: the cloud verifies uplink batches that devices seal with their own Ed25519
keys, so a broker (or anyone who can publish on a device's topic) cannot inject records in a
device's name. Format: sync/SIGNING.md, "Uplink". The keyring is a TOML file of
`<device id> = ["<base64 public key>", ...]` named by `[signing] device_keys`."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from sync.envelope import MAX_BATCH_BYTES
from sync.signing import UPLINK_DOMAIN, Clock, Opener, SealError, parse_public_key


def load_device_keys(path: str | Path) -> dict[str, tuple[str, ...]]:
    """The keyring file. ValueError names the device and the problem."""
    data = tomllib.loads(Path(path).read_text())
    out: dict[str, tuple[str, ...]] = {}
    for device, keys in data.items():
        keys = [keys] if isinstance(keys, str) else keys
        if not isinstance(keys, list) or not keys or len(keys) > 2:
            raise ValueError(f"{device}: one or two base64 public keys (got {keys!r})")
        for k in keys:
            try:
                parse_public_key(str(k))
            except ValueError as exc:
                raise ValueError(f"{device}: {exc} (got {k!r})") from exc
        out[device] = tuple(str(k) for k in keys)
    return out


class DeviceKeys:
    """Opens sealed batches by the topic's device. A device without a key passes unsealed
    batches through, unless `required` (then it is refused as `unknown_device`)."""

    def __init__(self, keys: Mapping[str, Sequence[str]], *, required: bool = False,
                 clock: Clock = time.time) -> None:
        self.required = required
        self._openers = {d: Opener(d, list(ks), clock=clock, domain=UPLINK_DOMAIN,
                                   replay=False, max_bytes=MAX_BATCH_BYTES + 4096)
                         for d, ks in keys.items()}

    def open(self, device: str, payload: bytes) -> bytes:
        """The batch inside, or SealError (an EnvelopeError: the ingest quarantines it)."""
        opener = self._openers.get(device)
        if opener is None:
            if self.required:
                raise SealError("unknown_device", f"no key registered for {device[:64]!r}")
            return payload
        return opener.open(payload, types=("batch",)).body
