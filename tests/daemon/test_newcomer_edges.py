"""Small edges a newcomer hit: each message says what is accepted, or the right thing."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.cli.status import render_status


@pytest.mark.parametrize("since", ["yesterday", "1 hour", "h"])
def test_metrics_since_says_which_forms_are_accepted(
        config: Path, capsys: pytest.CaptureFixture[str], since: str) -> None:
    assert main(["metrics", "--config", str(config), "--since", since]) == 64
    err = capsys.readouterr().err
    assert "could not convert" not in err
    assert "90s, 15m, 1h, 7d or 2w" in err and repr(since.lower()) in err, err


def _status(connected: bool, last_sync: str | None, pending: int) -> dict:
    stream = {"pending": pending, "pending_bytes": 0, "oldest_pending_age_s": None,
              "acked_seq": 0, "dropped": 0}
    return {"daemon": {"answering": False, "running": False, "config": "c.toml"},
            "device_id": "d1", "runs": {}, "approvals_pending": 0, "conflicts": 0,
            "models": [], "sync": {"configured": True, "connected": connected,
                                   "broker": "broker:8883", "last_sync": last_sync,
                                   "streams": {"control": stream}}}


def test_status_says_disconnected_from_and_never_in_sync_before_a_sync() -> None:
    text = render_status(_status(False, None, 0))
    assert "disconnected from broker:8883, last sync never" in text
    assert "[in sync]" not in text and "disconnected to" not in text
    assert "connected to broker:8883" in render_status(_status(True, None, 0))
    assert "[in sync]" not in render_status(_status(True, None, 0))
    assert "[in sync]" in render_status(_status(True, "2026-12-06T05:00:00Z", 0))
    assert "[in sync]" not in render_status(_status(True, "2026-12-06T05:00:00Z", 3))
