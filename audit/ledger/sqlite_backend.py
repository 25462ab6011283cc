"""The ledger's storage in one SQLite file: many writers (processes on one machine), one chain.

Settings (see ``docs/ledger.md`` for why): WAL journal, ``synchronous=FULL`` (a committed row
survives power loss), a 30 s busy timeout, and every write inside ``BEGIN IMMEDIATE`` so that
reading the last row (and, for a charge, the spent total) and inserting the next one is one
serialised step: two writers never chain onto the same row and never both spend the last of a
budget.

Table: ``rows(seq INTEGER PRIMARY KEY, row_json TEXT NOT NULL)``, ``row_json`` the RFC 8785
canonical JSON of the row (:mod:`audit.ledger.chain`); an index on the rows' audit digest and
kind (an audit's latest charge, which carries its running total, is one lookup).
Every query reads figures from ``row_json`` itself, the signed text, never from a side column.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from audit.errors import InputError

BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rows (seq INTEGER PRIMARY KEY, row_json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rows_by_audit_kind ON rows "
    "(json_extract(row_json, '$.audit_sha256'), json_extract(row_json, '$.kind'))",
)
_LAST_CHARGE = ("SELECT seq, row_json FROM rows "
                "WHERE json_extract(row_json, '$.audit_sha256') = ? "
                "AND json_extract(row_json, '$.kind') = 'charge' ORDER BY seq DESC LIMIT 1")

# What a broken file or a failed statement raises; the ledger turns them into one-line errors.
ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error,)


class SqliteTxn:
    """The statements one write transaction needs (the write lock is held throughout)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def last(self) -> Optional[tuple[int, str]]:
        return self._conn.execute(
            "SELECT seq, row_json FROM rows ORDER BY seq DESC LIMIT 1").fetchone()

    def insert(self, seq: int, row_json: str) -> None:
        self._conn.execute("INSERT INTO rows (seq, row_json) VALUES (?, ?)", (seq, row_json))

    def last_charge(self, audit_sha256: str) -> Optional[tuple[int, str]]:
        """The audit's latest charge row ``(seq, row_json)``, or None (an index lookup)."""
        return self._conn.execute(_LAST_CHARGE, (audit_sha256,)).fetchone()

    def rows_after(self, seq: int) -> list[tuple[int, str]]:
        """Every row after ``seq``, in seq order (what a verifier has not seen yet)."""
        return self._conn.execute("SELECT seq, row_json FROM rows WHERE seq > ? ORDER BY seq",
                                  (seq,)).fetchall()


class SqliteBackend:
    """The ledger file at ``path``; ``create=False`` refuses a missing file (``InputError``)."""

    engine = "sqlite"

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        if not self.path.exists():
            if not create:
                raise InputError("ledger not found", source=self.location)
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # one thread at a time, but maybe not the one that opened it (a generation job's
            # workers reserve tokens under the meter's lock)
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise InputError(f"cannot put the ledger in WAL mode (got {mode})",
                                 source=self.location)
            self._conn.execute("PRAGMA synchronous = FULL")
            with self.transaction() as txn:
                for statement in _SCHEMA:
                    txn._conn.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"cannot open the ledger ({exc})", source=self.location) from None

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[SqliteTxn]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield SqliteTxn(self._conn)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def last_charge(self, audit_sha256: str) -> Optional[tuple[int, str]]:
        return SqliteTxn(self._conn).last_charge(audit_sha256)

    def rows_after(self, seq: int) -> list[tuple[int, str]]:
        return SqliteTxn(self._conn).rows_after(seq)

    def all_rows(self) -> list[tuple[int, str]]:
        return self._conn.execute("SELECT seq, row_json FROM rows ORDER BY seq").fetchall()

    def get(self, seq: int) -> Optional[tuple[int, str]]:
        return self._conn.execute("SELECT seq, row_json FROM rows WHERE seq = ?",
                                  (seq,)).fetchone()
