"""The JSON the store writes for contexts, outputs and arguments."""

from __future__ import annotations

import datetime
import json

from edge_agent.engine.records import dumps, loads


def test_compact_sorted_and_lossless_for_json_values() -> None:
    value = {"b": [1, 2.5, None, True, "é"], "a": {"z": 1, "y": {}}, "c": 1e16}
    text = dumps(value)
    assert text == json.dumps(value, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False)
    assert loads(text) == value


def test_what_json_cannot_hold_still_encodes() -> None:
    assert loads(dumps({"big": 2**70})) == {"big": 2**70}  # beyond 64 bits: standard library
    assert loads(dumps({"lone": "\ud800"})) == {"lone": "\ud800"}  # not UTF-8: same
    assert loads(dumps({1: "one", "2": "two"})) == {"1": "one", "2": "two"}
    assert loads(dumps({"nan": float("nan")})) == {"nan": None}  # JSON has no NaN
    assert loads(dumps({"raw": b"\x00\x01"})) == {"raw": "b'\\x00\\x01'"}  # str() of it
    when = datetime.datetime(2026, 11, 25, 8, 0, 0)
    assert loads(dumps({"at": when}))["at"].startswith("2026-11-25")
