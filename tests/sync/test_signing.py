"""The sealed downlink format: the document's vectors, the checks in their order, rollover,
replay, key files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.signing import (
    Opener,
    Sealer,
    SealError,
    create_private_key,
    load_private_key,
    parse_public_key,
    public_key_text,
    signed_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((Path(__file__).parent / "signing_vectors.json").read_text())
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["private_seed_hex"]))


def at(ms: int) -> float:
    return ms / 1000


@pytest.mark.parametrize("v", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_seal_and_open_to_the_byte(v: dict) -> None:
    assert public_key_text(KEY) == VECTORS["public_key"]
    body = bytes.fromhex(v["body_hex"])
    assert signed_bytes(v["device"], v["id"], v["type"], v["issued_at_ms"], v["expires_at_ms"],
                        body).hex() == v["signed_hex"]
    sealer = Sealer(KEY, clock=lambda: at(v["issued_at_ms"]))
    sealed = sealer.seal(v["device"], v["type"], body, msg_id=v["id"],
                         ttl_s=(v["expires_at_ms"] - v["issued_at_ms"]) / 1000)
    assert sealed.hex() == v["sealed_hex"]
    opened = Opener(v["device"], [VECTORS["public_key"]],
                    clock=lambda: at(v["issued_at_ms"] + 1)).open(sealed)
    assert (opened.id, opened.type, opened.body, opened.key_id.hex()) == \
        (v["id"], v["type"], body, VECTORS["key_id_hex"])


@pytest.mark.parametrize("v", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_are_rejected_for_their_reason(v: dict) -> None:
    opener = Opener(v["device"], [VECTORS["public_key"]], clock=lambda: at(v["now_ms"]))
    with pytest.raises(SealError) as exc:
        opener.open(bytes.fromhex(v["sealed_hex"]))
    assert exc.value.reason == v["reason"]


def test_the_document_shows_the_vector_the_tests_check() -> None:
    doc = "".join((ROOT / "sync" / "SIGNING.md").read_text().split())
    v = VECTORS["valid"][0]
    for value in (v["sealed_hex"], v["signed_hex"], VECTORS["public_key"],
                  VECTORS["key_id_hex"]):
        assert value in doc


def test_replay_wrong_topic_and_expiry_answer() -> None:
    now = [1000.0]
    sealer = Sealer(KEY, clock=lambda: now[0])
    opener = Opener("dev-a", [public_key_text(KEY)], clock=lambda: now[0])
    m = sealer.seal("dev-a", "approve", b"body", msg_id="c1", ttl_s=60)
    assert opener.open(m, types=("approve",)).body == b"body"
    with pytest.raises(SealError, match="replayed"):
        opener.open(m)
    with pytest.raises(SealError, match="mismatch"):
        opener.open(sealer.seal("dev-a", "approve", b"x"), types=("ack",))
    late = sealer.seal("dev-a", "cancel", b"x", msg_id="c2", ttl_s=60)
    now[0] += 61
    with pytest.raises(SealError, match="expired"):
        opener.open(late)
    assert opener.open(late, allow_expired=True).expired(now[0])  # answered, not applied
    with pytest.raises(ValueError):
        sealer.seal("dev-a", "start", b"x", ttl_s=31 * 24 * 3600)


def test_rollover_accepts_both_pinned_keys() -> None:
    new = Ed25519PrivateKey.generate()
    opener = Opener("dev-a", [public_key_text(KEY), public_key_text(new)])
    assert opener.open(Sealer(KEY).seal("dev-a", "ack", b"1")).body == b"1"
    assert opener.open(Sealer(new).seal("dev-a", "ack", b"2")).body == b"2"
    with pytest.raises(SealError, match="unknown_key"):
        Opener("dev-a", [public_key_text(new)]).open(Sealer(KEY).seal("dev-a", "ack", b"3"))


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    key = create_private_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert public_key_text(load_private_key(path)) == public_key_text(key)
    with pytest.raises(FileExistsError):
        create_private_key(path)
    with pytest.raises(ValueError):
        parse_public_key("c2hvcnQ=")
    with pytest.raises(ValueError):
        parse_public_key("not base64!")


@pytest.mark.parametrize("v", VECTORS["uplink"], ids=lambda v: v["name"])
def test_uplink_vector_uses_its_own_domain(v: dict) -> None:
    from sync.signing import UPLINK_DOMAIN
    body = bytes.fromhex(v["body_hex"])
    assert v["domain"] == UPLINK_DOMAIN
    assert signed_bytes(v["device"], v["id"], v["type"], v["issued_at_ms"], v["expires_at_ms"],
                        body, UPLINK_DOMAIN).hex() == v["signed_hex"]
    sealed = Sealer(KEY, clock=lambda: at(v["issued_at_ms"]), domain=UPLINK_DOMAIN).seal(
        v["device"], v["type"], body, msg_id=v["id"],
        ttl_s=(v["expires_at_ms"] - v["issued_at_ms"]) / 1000)
    assert sealed.hex() == v["sealed_hex"]
    with pytest.raises(SealError, match="bad_seal"):  # never valid as a downlink message
        Opener(v["device"], [VECTORS["public_key"]],
               clock=lambda: at(v["issued_at_ms"])).open(sealed)
