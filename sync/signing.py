"""Sealed downlink: every ack, command and document update the cloud sends a device is signed
with the cloud's Ed25519 key over the device id, message id, type, body, issued-at and
expires-at. A device opens it with the public keys it pins (two during a rollover) and
rejects what is unsigned, mis-signed, for another device, expired or replayed.

The format is specified to the byte in sync/SIGNING.md; its test vectors are checked by the
tests. Keys are files: the cloud's private key is PKCS#8 PEM (mode 0600), a public key is
written as the base64 of its 32 raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sync.envelope import EnvelopeError

SEAL_VERSION = 1
DOMAIN = "edge-agent/downlink/1"  # cloud -> device
UPLINK_DOMAIN = "edge-agent/uplink/1"  # device -> cloud, with optional device keys
DEFAULT_TTL_S = 24 * 3600
MAX_TTL_S = 30 * 24 * 3600
# how far ahead of the opener's clock an issued-at may be; the device sets its own
# ([sync] max_clock_skew_s); unbounded by default, where the clock guards nothing (uplink)
DEFAULT_MAX_SKEW_S = float("inf")
UPLINK_TTL_S = 7 * 24 * 3600  # a batch may wait in a session for days; resends are re-sealed
MAX_SEALED_BYTES = 80 << 10  # a command's limit (64 KiB) and room for the seal
KEY_ID_BYTES = 8
Clock = Callable[[], float]


class SealError(EnvelopeError):
    """A downlink message a device must not act on. `reason` is one of: unsigned, bad_seal,
    unknown_key, bad_signature, wrong_device, expired, future (issued too far ahead of the
    clock), replayed, mismatch."""


@dataclass(frozen=True)
class Sealed:
    """An opened (verified) downlink message."""

    device: str
    id: str
    type: str
    issued_at_ms: int
    expires_at_ms: int
    body: bytes
    key_id: bytes

    def expired(self, now: float) -> bool:
        return int(now * 1000) > self.expires_at_ms

    def ahead_s(self, now: float) -> float:
        """How far its issued-at is ahead of the clock `now` (negative: behind)."""
        return self.issued_at_ms / 1000 - now


def key_id(public: Ed25519PublicKey) -> bytes:
    """The first 8 bytes of SHA-256 over the raw public key: names the key in a seal."""
    return hashlib.sha256(raw_public(public)).digest()[:KEY_ID_BYTES]


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The base64 a device pins in `[sync] cloud_keys`."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(raw_public(public)).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A pinned key: base64 of 32 raw bytes. ValueError names what is wrong."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes (got {len(raw)})")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The cloud's signing key (PKCS#8 PEM). OSError if unreadable, ValueError if not one."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def create_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Make a signing key in a new file, readable by its owner only; never overwrites."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return key


def signed_bytes(device: str, msg_id: str, mtype: str, issued_at_ms: int,
                 expires_at_ms: int, body: bytes, domain: str = DOMAIN) -> bytes:
    """The bytes the signature covers (SIGNING.md, "Signed part")."""
    out: bytes = msgpack.packb([domain, device, msg_id, mtype, issued_at_ms, expires_at_ms,
                                body], use_bin_type=True)
    return out


class Sealer:
    """The cloud's side: seals a downlink body for one device."""

    def __init__(self, key: Ed25519PrivateKey, *, ttl_s: float = DEFAULT_TTL_S,
                 clock: Clock = time.time, domain: str = DOMAIN) -> None:
        self.key = key
        self.domain = domain
        self.key_id = key_id(key.public_key())
        self.ttl_s = ttl_s
        self.clock = clock

    def seal(self, device: str, mtype: str, body: bytes, *, msg_id: str | None = None,
             ttl_s: float | None = None) -> bytes:
        ttl = self.ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= MAX_TTL_S:
            raise ValueError(f"a downlink message lives 0 < ttl <= {MAX_TTL_S}s (got {ttl})")
        issued = int(self.clock() * 1000)
        signed = signed_bytes(device, msg_id or uuid.uuid4().hex, mtype, issued,
                              issued + int(ttl * 1000), body, self.domain)
        out: bytes = msgpack.packb([SEAL_VERSION, self.key_id, signed, self.key.sign(signed)],
                                   use_bin_type=True)
        return out


class ReplayGuard:
    """Ids of messages already opened, each kept until it expires (then its expiry rejects
    it). In memory: after a restart, the device's inbox still refuses a command twice and an
    ack is a fact that stays true."""

    def __init__(self, max_ids: int = 100_000) -> None:
        self.max_ids = max_ids
        self._seen: dict[str, int] = {}

    def seen(self, msg_id: str, expires_at_ms: int, now_ms: int) -> bool:
        if msg_id in self._seen:
            return True
        if len(self._seen) >= self.max_ids:
            self._seen = {k: v for k, v in self._seen.items() if v >= now_ms}
            while len(self._seen) >= self.max_ids:  # a flood of live ids: forget the oldest
                self._seen.pop(next(iter(self._seen)))
        self._seen[msg_id] = expires_at_ms
        return False


class Opener:
    """The device's side: verifies a sealed message against its pinned keys."""

    def __init__(self, device: str, public_keys: Sequence[str | Ed25519PublicKey], *,
                 clock: Clock = time.time, guard: ReplayGuard | None = None,
                 domain: str = DOMAIN, replay: bool = True,
                 max_bytes: int = MAX_SEALED_BYTES,
                 max_skew_s: float = DEFAULT_MAX_SKEW_S) -> None:
        """`replay=False` where a repeat is harmless and expected (uplink batches: the
        cloud stores each record once whatever arrives twice). `max_skew_s`: a message
        issued further ahead of this clock is refused ("future")."""
        if not public_keys:
            raise ValueError("a device pins at least one cloud key")
        keys = [parse_public_key(k) if isinstance(k, str) else k for k in public_keys]
        self.device = device
        self.keys = {key_id(k): k for k in keys}
        self.clock = clock
        self.guard = guard or ReplayGuard()
        self.domain, self.replay, self.max_bytes = domain, replay, max_bytes
        self.max_skew_s = max_skew_s

    def open(self, payload: bytes, *, types: Collection[str] | None = None,
             allow_expired: bool = False) -> Sealed:
        """The verified message, or SealError. With `allow_expired` an expired message is
        returned (its `expired()` is true) so the caller can answer it without acting."""
        sealed = self._verify(payload)
        if sealed.device != self.device:
            raise SealError("wrong_device", f"sealed for {sealed.device[:64]!r}")
        if types is not None and sealed.type not in types:
            raise SealError("mismatch", f"a {sealed.type[:32]!r} message on this topic")
        now = self.clock()
        if self.too_early(sealed, now) and not allow_expired:
            raise SealError("future", f"message {sealed.id[:64]} issued"
                            f" {sealed.ahead_s(now):.0f}s ahead of this clock")
        if sealed.expired(now) and not allow_expired:
            raise SealError("expired", f"message {sealed.id[:64]} expired "
                            f"{now - sealed.expires_at_ms / 1000:.0f}s ago")
        if self.replay and self.guard.seen(sealed.id, sealed.expires_at_ms, int(now * 1000)):
            raise SealError("replayed", f"message {sealed.id[:64]} was already received")
        return sealed

    def too_early(self, sealed: Sealed, now: float | None = None) -> bool:
        """Issued more than `max_skew_s` ahead of this clock: a signing clock far off, or a
        message made to be replayed later."""
        return sealed.ahead_s(self.clock() if now is None else now) > self.max_skew_s

    def _verify(self, payload: bytes) -> Sealed:
        if len(payload) > self.max_bytes:
            raise SealError("bad_seal", f"{len(payload)} bytes (limit {self.max_bytes})")
        outer = _unpack(payload)
        if not (isinstance(outer, list) and len(outer) == 4 and outer[0] == SEAL_VERSION
                and not isinstance(outer[0], bool)):
            raise SealError("unsigned", "not a sealed message")
        _, kid, signed, sig = outer
        if not (isinstance(kid, bytes) and isinstance(signed, bytes)
                and isinstance(sig, bytes) and len(sig) == 64):
            raise SealError("bad_seal", "seal fields")
        key = self.keys.get(kid)
        if key is None:
            raise SealError("unknown_key", f"key id {kid.hex()[:16]} is not pinned")
        try:
            key.verify(sig, signed)
        except InvalidSignature:
            raise SealError("bad_signature", f"key id {kid.hex()}") from None
        inner = _unpack(signed)
        if not (isinstance(inner, list) and len(inner) == 7 and inner[0] == self.domain):
            raise SealError("bad_seal", "signed part")
        _, device, msg_id, mtype, issued, expires, body = inner
        if not (isinstance(device, str) and isinstance(msg_id, str) and msg_id
                and isinstance(mtype, str) and _ms(issued) and _ms(expires)
                and isinstance(body, bytes)):
            raise SealError("bad_seal", "signed fields")
        if not issued <= expires <= issued + MAX_TTL_S * 1000:
            raise SealError("bad_seal", "validity must be 0..30 days")
        return Sealed(device, msg_id, mtype, issued, expires, body, kid)


def _ms(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _unpack(data: bytes) -> object:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=len(data),
                               max_str_len=4096, max_array_len=16, max_map_len=64,
                               max_ext_len=0)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError,
            TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise SealError("unsigned", f"not msgpack ({str(exc)[:80]})") from exc


def check_bound(sealed: Sealed, msg_id: str, mtype: str) -> None:
    """The body's own id and type must be the ones the seal signs."""
    if (msg_id, mtype) != (sealed.id, sealed.type):
        raise SealError("mismatch", f"body {msg_id[:64]}/{mtype[:32]} in a seal for "
                        f"{sealed.id[:64]}/{sealed.type[:32]}")
