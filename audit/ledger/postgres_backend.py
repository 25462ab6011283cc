"""The ledger's storage in PostgreSQL (SQLAlchemy 2, psycopg 3): one chain shared by machines.

Same table as SQLite (``rows(seq BIGINT PRIMARY KEY, row_json TEXT NOT NULL)``, the row's RFC
8785 JSON kept as text so the signed bytes are stored exactly), plus ``ledger_head``, a table of
one row. Every write transaction first takes ``SELECT ... FROM ledger_head FOR UPDATE``: the
chain is one sequence, so appends are serialised across the whole ledger, not per audit, and
reading the last row (and the audit's spent total) and inserting the next one is one step, as
``BEGIN IMMEDIATE`` makes it in SQLite. Under READ COMMITTED, statements after the lock see
every row committed before it was granted. ``lock_timeout`` is 30 s, like SQLite's busy
timeout. The primary key on ``seq`` would refuse a fork even if the lock were bypassed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from audit.errors import InputError, error_line

LOCK_TIMEOUT = "30s"
_SCHEMA_LOCK = 0x666C6F70  # "flop": serialises concurrent CREATE TABLE IF NOT EXISTS
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rows (seq BIGINT PRIMARY KEY, row_json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rows_by_audit_kind ON rows "
    "(((row_json::jsonb) ->> 'audit_sha256'), ((row_json::jsonb) ->> 'kind'), seq)",
    "CREATE TABLE IF NOT EXISTS ledger_head (id INTEGER PRIMARY KEY CHECK (id = 1))",
    "INSERT INTO ledger_head (id) VALUES (1) ON CONFLICT DO NOTHING",
)
_LAST_CHARGE = ("SELECT seq, row_json FROM rows "
                "WHERE (row_json::jsonb) ->> 'audit_sha256' = :audit "
                "AND (row_json::jsonb) ->> 'kind' = 'charge' ORDER BY seq DESC LIMIT 1")


def _errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    return (sqlalchemy.exc.SQLAlchemyError,)


class PostgresTxn:
    def __init__(self, conn):
        from sqlalchemy import text

        self._conn, self._text = conn, text

    def last(self) -> Optional[tuple[int, str]]:
        found = self._conn.execute(self._text(
            "SELECT seq, row_json FROM rows ORDER BY seq DESC LIMIT 1")).first()
        return None if found is None else (int(found[0]), found[1])

    def insert(self, seq: int, row_json: str) -> None:
        self._conn.execute(self._text("INSERT INTO rows (seq, row_json) VALUES (:seq, :row)"),
                           {"seq": seq, "row": row_json})

    def last_charge(self, audit_sha256: str) -> Optional[tuple[int, str]]:
        """The audit's latest charge row ``(seq, row_json)``, or None (an index lookup)."""
        found = self._conn.execute(self._text(_LAST_CHARGE), {"audit": audit_sha256}).first()
        return None if found is None else (int(found[0]), found[1])

    def rows_after(self, seq: int) -> list[tuple[int, str]]:
        """Every row after ``seq``, in seq order (what a verifier has not seen yet)."""
        return [(int(s), t) for s, t in self._conn.execute(self._text(
            "SELECT seq, row_json FROM rows WHERE seq > :seq ORDER BY seq"), {"seq": seq}).all()]


class PostgresBackend:
    """The ledger in the PostgreSQL database at ``url``. The password, if the URL has one, is
    never shown (``location`` hides it); prefer ``PGPASSWORD`` or ``~/.pgpass``, which libpq
    reads itself. ``create`` is accepted for symmetry: a database is never created here, only
    the tables in it."""

    engine = "postgresql"

    def __init__(self, url: str, *, create: bool = True):
        try:
            import sqlalchemy
            from sqlalchemy.engine import make_url
        except ImportError:
            raise InputError("a PostgreSQL ledger needs SQLAlchemy and psycopg: "
                             "pip install 'flopgate[postgres]'") from None
        try:
            parsed = make_url(url)
        except sqlalchemy.exc.ArgumentError as exc:
            raise InputError(f"--ledger: not a database URL ({exc})") from None
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.location = parsed.render_as_string(hide_password=True)
        self.path = self.location
        self.errors = _errors()
        try:
            self._engine = sqlalchemy.create_engine(parsed, pool_size=1, max_overflow=0,
                                                    pool_pre_ping=True)
            with self._engine.begin() as conn:
                # a role with only the documented grants (no CREATE) uses existing tables
                ready = conn.execute(sqlalchemy.text(
                    "SELECT to_regclass('rows') IS NOT NULL AND to_regclass('ledger_head') IS NOT "
                    "NULL AND to_regclass('rows_by_audit_kind') IS NOT NULL")).scalar()
                if not ready:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"),
                                 {"k": _SCHEMA_LOCK})
                    for statement in _SCHEMA:
                        conn.execute(sqlalchemy.text(statement))
        except ImportError as exc:
            raise InputError(f"a PostgreSQL ledger needs a driver ({exc}): "
                             "pip install 'flopgate[postgres]'") from None
        except self.errors as exc:
            raise InputError(f"cannot open the ledger ({error_line(exc)})",
                             source=self.location) from None

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[PostgresTxn]:
        """One transaction holding the ledger's head row lock (committed, or rolled back on
        any error)."""
        from sqlalchemy import text

        with self._engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            conn.execute(text("SELECT id FROM ledger_head WHERE id = 1 FOR UPDATE")).one()
            yield PostgresTxn(conn)

    def _read(self, statement: str, params: dict | None = None) -> list:
        from sqlalchemy import text

        with self._engine.connect() as conn:
            result = conn.execute(text(statement), params or {}).all()
            conn.rollback()
        return result

    def last_charge(self, audit_sha256: str) -> Optional[tuple[int, str]]:
        found = self._read(_LAST_CHARGE, {"audit": audit_sha256})
        return (int(found[0][0]), found[0][1]) if found else None

    def rows_after(self, seq: int) -> list[tuple[int, str]]:
        return [(int(s), t) for s, t in self._read(
            "SELECT seq, row_json FROM rows WHERE seq > :seq ORDER BY seq", {"seq": seq})]

    def all_rows(self) -> list[tuple[int, str]]:
        return [(int(s), t) for s, t in self._read("SELECT seq, row_json FROM rows ORDER BY seq")]

    def get(self, seq: int) -> Optional[tuple[int, str]]:
        found = self._read("SELECT seq, row_json FROM rows WHERE seq = :seq", {"seq": seq})
        return (int(found[0][0]), found[0][1]) if found else None

