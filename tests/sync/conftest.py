"""Fleet stores for the sync tests: a SQLite file, or a fresh database in one PostgreSQL
cluster started for the session (stopped at its end, also on failure)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.postgres import Postgres, bindir

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Postgres]:
    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (make test installs it)")
    pg = Postgres().start()
    try:
        yield pg
    finally:
        pg.stop()


def fresh_pg_url(pg: Postgres) -> str:
    import psycopg
    name = f"t{next(_names)}"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of each backend, empty."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.db'}"
    return fresh_pg_url(request.getfixturevalue("pg_cluster"))


@pytest.fixture
def new_pg_url(pg_cluster: Postgres) -> Callable[[], str]:
    return lambda: fresh_pg_url(pg_cluster)
