"""Issue 17, observation 7: every payload is stored or quarantined with a reason, and the
same way on SQLite and PostgreSQL (NaN and infinite times, NUL in strings, huge seqs...)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.cloud.ingest import IngestWorker
from sync.cloud.store import SqlCloudStore
from sync.envelope import WireRecord, encode_batch

EP = "00000000000000aa"
INTS = st.one_of(st.sampled_from([0, 1, 2, 3, 10, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -1,
                                  2**64 - 1]), st.integers(0, 40))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([float("nan"), float("inf"), -float("inf"), 1.7e9, 0.0,
                                    -1.0, 1e300]), st.integers(-2, 2**64 - 1))
TEXT = st.one_of(st.sampled_from(["k", "run.finished", "cmd.result", "a\x00b", "", " ",
                                  "x" * 65, "é", "\ud7ff", "tool.request"]),
                 st.text(max_size=8))
ROW = st.lists(st.one_of(INTS, TEXT, st.binary(max_size=8), FLOATS), min_size=4, max_size=4)
GOOD_ROW = st.tuples(INTS, TEXT, st.binary(max_size=16), FLOATS).map(list)
ROWS = st.lists(st.one_of(GOOD_ROW, GOOD_ROW, ROW), min_size=0, max_size=4)


GOOD_TEXT = st.sampled_from(["k", "run.finished", "cmd.result", "doc.version", "a:b-c_d"])
GOOD_FLOAT = st.floats(0, 1e11, allow_nan=False)


@st.composite
def envelopes(draw: Any) -> tuple[dict[str, Any], list[Any]]:
    """A valid batch with, most of the time, one field or one record's field made odd."""
    odd = draw(st.sampled_from(["none", "none", "none", "v", "ep", "s", "first", "last", "z",
                                "floor", "ch", "row", "seq", "kind", "payload", "time"]))
    start = draw(st.integers(1, 30))
    rows: list[Any] = [[start + i, draw(GOOD_TEXT), draw(st.binary(max_size=16)),
                        draw(GOOD_FLOAT)] for i in range(draw(st.integers(1, 4)))]
    at = draw(st.integers(0, len(rows) - 1))
    if odd == "row":
        rows[at] = draw(ROW)
    elif odd in ("seq", "kind", "payload", "time"):
        col = ["seq", "kind", "payload", "time"].index(odd)
        rows[at][col] = draw([INTS, TEXT, st.one_of(st.binary(), TEXT), FLOATS][col])
    v = draw(st.sampled_from([1, 3, True, "2"])) if odd == "v" else \
        draw(st.sampled_from([2, 2, 2, 1]))
    env: dict[str, Any] = {
        "v": v, "dev": "DEV",
        "ep": draw(st.sampled_from(["", "AB" * 8, "0" * 15, 5])) if odd == "ep" else EP,
        "s": draw(st.sampled_from(["logs", "a\x00", "", 7])) if odd == "s" else
        draw(st.sampled_from(["checkpoints", "control", "traces", "metrics"])),
        "first": draw(INTS) if odd == "first" else rows[0][0],
        "last": draw(INTS) if odd == "last" else rows[-1][0],
        "z": draw(st.sampled_from([0, None, "yes", True])) if odd == "z" else False,
    }
    env["after" if v == 1 else "floor"] = draw(INTS) if odd == "floor" else \
        draw(st.integers(0, max(0, start - 1)))
    if odd == "ch":
        env["ch"] = draw(st.lists(st.one_of(INTS, st.just("ab" * 32)), max_size=5))
    return env, rows


def pack(env: dict[str, Any], rows: list[Any], device: str) -> bytes:
    body = msgpack.packb(rows)
    if env["z"] is True:
        import zstandard
        body = zstandard.ZstdCompressor().compress(body)
    out: bytes = msgpack.packb({**env, "dev": device, "r": body})
    return out


class Backend:
    def __init__(self, url: str) -> None:
        self.store = SqlCloudStore(url)
        self.worker = IngestWorker(self.store, host="127.0.0.1", port=1)
        self.worker.client.publish = lambda *a, **k: None  # type: ignore[method-assign]

    def outcome(self, device: str, payload: bytes) -> tuple[Any, ...]:
        before = len(self.store.quarantined())
        self.worker.handle(f"edge/{device}/up", payload)  # must not raise
        reasons = [q["reason"] for q in self.store.quarantined()[before:]]
        if reasons and reasons[0] != "seq_conflict":
            return ("quarantined", reasons[0])
        held = {(e["epoch"], s): v["received_seq"] for d in self.store.devices()
                if d["device_id"] == device for e in [d] for s, v in d["streams"].items()}
        stored = sorted((s, k, p) for stream in ("checkpoints", "control", "traces",
                                                 "metrics")
                        for s, k, p in self.store.records(device, stream))
        assert stored or held, "neither stored nor quarantined"
        return ("stored", sorted(held.items()), stored)


def test_every_payload_is_stored_or_quarantined_alike_on_both_backends(
        tmp_path: Path, new_pg_url: Callable[[], str]) -> None:
    backends = [Backend(f"sqlite:///{tmp_path / 'cloud.db'}"), Backend(new_pg_url())]
    devices = itertools.count()
    seen: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(envelopes())
    def check(case: tuple[dict[str, Any], list[Any]]) -> None:
        env, rows = case
        device = f"dev-{next(devices)}"
        try:
            payload = pack(env, rows, device)
        except (OverflowError, ValueError, TypeError):
            return  # msgpack cannot even write it (an integer of more than 64 bits)
        sqlite, pg = (b.outcome(device, payload) for b in backends)
        assert sqlite == pg
        seen[sqlite[0] if sqlite[0] == "stored" else sqlite[1]] += 1

    try:
        check()
        # both paths well exercised (an effect kind off the control stream is stored and
        # also quarantined `wrong_stream`: it counts as stored)
        assert seen["stored"] + seen["wrong_stream"] > 100 and len(seen) > 8, seen
        # the named cases of the issue, explicitly
        for i, (row, reason) in enumerate([
                ([1, "k", b"x", float("nan")], "bad_created_at"),
                ([1, "k", b"x", float("inf")], "bad_created_at"),
                ([1, "k", b"x", -float("inf")], "bad_created_at"),
                ([1, "a\x00b", b"x", 1.0], "bad_kind"),
                ([2**63 - 1, "k", b"x", 1.0], None)]):
            env = {"v": 2, "ep": EP, "s": "checkpoints", "floor": 0, "first": row[0],
                   "last": row[0], "z": False}
            outcomes = [b.outcome(f"named-{i}", pack(env, [row], f"named-{i}"))
                        for b in backends]
            assert outcomes[0] == outcomes[1]
            assert outcomes[0][0] == ("stored" if reason is None else "quarantined")
            if reason:
                assert outcomes[0][1] == reason
        # a NUL in a stream name or device still quarantines (PostgreSQL text holds no NUL)
        bad = msgpack.packb({"v": 2, "dev": "x\x00", "ep": EP, "s": "control", "floor": 0,
                             "first": 1, "last": 1, "z": False, "r": msgpack.packb([])})
        for b in backends:
            assert b.outcome("x", bad) == ("quarantined", "forged_device")
        good = encode_batch("ok", "control", 0, [WireRecord(1, "k", b"\x00", 1.0)], epoch=EP)
        assert backends[0].outcome("ok", good) == backends[1].outcome("ok", good)
    finally:
        for b in backends:
            b.store.close()
