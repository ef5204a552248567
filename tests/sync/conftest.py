"""Fleet stores for the sync tests: a SQLite file, or a fresh database in the session's
PostgreSQL cluster (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.postgres import Postgres, fresh_pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of each backend, empty."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.db'}"
    return fresh_pg_url(request.getfixturevalue("pg_cluster"))


@pytest.fixture
def new_pg_url(pg_cluster: Postgres) -> Callable[[], str]:
    return lambda: fresh_pg_url(pg_cluster)
