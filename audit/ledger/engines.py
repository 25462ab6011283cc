"""Which storage engine holds a ledger: a ``postgresql://`` URL is PostgreSQL
(:mod:`audit.ledger.postgres_backend`), anything else a SQLite file
(:mod:`audit.ledger.sqlite_backend`). Imports run one way: store -> engines -> the backends;
no backend imports the store or this module."""

from __future__ import annotations


def is_url(text: str) -> bool:
    """``postgresql://...`` (or ``postgres://``, ``postgresql+DRIVER://``)."""
    return text.split("://", 1)[0].split("+", 1)[0].lower() in ("postgresql", "postgres") \
        and "://" in text


def open_backend(where: str, *, create: bool = True):
    """``(backend, errors)`` for the ledger at ``where``: the engine's storage object and the
    exception types its failed statements raise (turned into one-line errors by the store)."""
    if is_url(where):
        from audit.ledger.postgres_backend import PostgresBackend

        backend = PostgresBackend(where, create=create)
        return backend, backend.errors
    from audit.ledger.sqlite_backend import ERRORS, SqliteBackend

    return SqliteBackend(where, create=create), ERRORS
