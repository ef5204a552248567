from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import Broker
from support.postgres import Postgres, bindir


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the session (stopped at its end, also on
    failure); each test takes a fresh database in it (`support.postgres.fresh_pg_url`)."""
    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (make test installs it)")
    pg = Postgres().start()
    try:
        yield pg
    finally:
        pg.stop()
