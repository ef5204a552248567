"""SIGKILL at random moments, and power cuts (a SIGKILL that also loses what no fsync had
covered yet): nothing finished is redone, no non-idempotent action runs twice. The same
loop on PostgreSQL is part of the store conformance suite (test_store_conformance.py)."""

from __future__ import annotations

import os
from pathlib import Path

from support.crash_loop import kill_at_random_moments


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    kill_at_random_moments(tmp_path, int(os.environ.get("CRASH_KILLS", "45")))


def test_power_cut_at_random_moments(tmp_path: Path) -> None:
    """As above, but each kill also loses what no fsync had covered yet (the writer's pure
    steps commit before their fsync): every effect on the device must still be fenced by a
    durable intent, and no finished step may be lost that anything was told of."""
    kill_at_random_moments(tmp_path, int(os.environ.get("CRASH_POWER_CUTS", "20")),
                           power_cut=tmp_path / "disk")
