"""Every ledger test runs against both engines: a SQLite file and a database on a throwaway
PostgreSQL server (the session fixture ``pg`` in ``tests/conftest.py``). Where PostgreSQL
cannot start, its cases skip with the reason printed; the SQLite cases still run."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path):
    """A fresh, empty ledger location: a file path or a database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    return request.getfixturevalue("pg").create_database()
