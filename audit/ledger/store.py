"""The ledger in SQLite: one file, many writers (processes on one machine), one chain.

Settings (see ``docs/ledger.md`` for why): WAL journal, ``synchronous=FULL`` (a committed row
survives power loss), a 30 s busy timeout, and every write inside ``BEGIN IMMEDIATE`` so that
reading the last row (and, for a charge, the spent total) and inserting the next one is one
serialised step: two writers never chain onto the same row and never both spend the last of a
budget.

Table: ``rows(seq INTEGER PRIMARY KEY, row_json TEXT NOT NULL)``, ``row_json`` the RFC 8785
canonical JSON of the row (:mod:`audit.ledger.chain`); an index on the rows' audit digest.
"""

from __future__ import annotations

import math
import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.canonical import StrictJSONError, canonical_json, strict_json_loads
from audit.attest.keys import TrustedKey, flopgate_home
from audit.errors import FlopgateError, InputError
from audit.numbers import quantity
from audit.ledger import chain

LEDGER_ENV = "FLOPGATE_LEDGER"
DEFAULT_LEDGER_NAME = "ledger.sqlite"
BUSY_TIMEOUT_S = 30.0
BUDGET_EXCEEDED_EXIT = 6

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rows (seq INTEGER PRIMARY KEY, row_json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rows_by_audit ON rows (json_extract(row_json, '$.audit_sha256'))",
)


class BudgetExceeded(InputError):
    """A charge that would take an audit past its FLOP budget; nothing was written."""

    exit_code = BUDGET_EXCEEDED_EXIT


class LedgerCorrupt(FlopgateError):
    """The ledger's last row cannot be chained onto (unreadable, or its hash does not match):
    nothing is appended until ``flopgate ledger verify`` says what happened."""

    exit_code = 5


def json_number(text: str) -> int | float:
    """A JSON integer as the canonical form wrote it: RFC 8785 writes a float such as 7.04e20 as
    704166666666666800000, which is back to the same float only if read as one (an int beyond
    2**53 cannot be canonicalised again)."""
    value = int(text)
    return value if abs(value) <= 2**53 - 1 else float(text)


def _load_row(text: str) -> Any:
    return strict_json_loads(text, parse_int=json_number)


def record_event(kind: str, audit_sha256: str, body: Mapping[str, Any],
                 private_key: Ed25519PrivateKey, path: str | os.PathLike | None = None) -> str | None:
    """Append one row to the default ledger for ``check`` or ``approve``; a ledger that cannot
    be written (a read-only home, a locked file) gives a warning line instead, so that it never
    stops an audit: the signed files are the record, the ledger their index."""
    try:
        with Ledger(path) as ledger:
            ledger.append(kind, audit_sha256, body, private_key)
    except (OSError, sqlite3.Error, FlopgateError) as exc:
        return f"warning: not recorded in the ledger ({exc.__class__.__name__}: {exc})"
    return None


def default_ledger_path() -> Path:
    """``$FLOPGATE_LEDGER`` when set, else ``$FLOPGATE_HOME/ledger.sqlite``."""
    named = os.environ.get(LEDGER_ENV)
    return Path(named).expanduser() if named else flopgate_home() / DEFAULT_LEDGER_NAME


def parse_since(value: str) -> str:
    """A date (``2025-01-31``) or an RFC 3339 time, as the ledger's UTC time string (rows whose
    ``time`` sorts at or after it are "since"). ``InputError`` otherwise."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
    except ValueError:
        raise InputError(f"--since {value!r}: expected a date (YYYY-MM-DD) or an RFC 3339 "
                         f"time") from None
    return chain.format_time(moment)


class Ledger:
    """The ledger at ``path`` (default :func:`default_ledger_path`).

    ``create=False`` refuses a missing file (``InputError``) instead of making an empty ledger:
    for commands that only read. Each method opens its own short transaction; one ``Ledger``
    keeps one connection and is for one thread.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True):
        self.path = Path(path).expanduser() if path is not None else default_ledger_path()
        if not self.path.exists():
            if not create:
                raise InputError("ledger not found", source=str(self.path))
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise InputError(f"cannot put the ledger in WAL mode (got {mode})",
                                 source=str(self.path))
            self._conn.execute("PRAGMA synchronous = FULL")
            with self._write():
                for statement in _SCHEMA:
                    self._conn.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"cannot open the ledger ({exc})", source=str(self.path)) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- writing ------------------------------------------------------------------------

    def _last_row(self) -> dict[str, Any] | None:
        found = self._conn.execute(
            "SELECT seq, row_json FROM rows ORDER BY seq DESC LIMIT 1").fetchone()
        if found is None:
            return None
        seq, text = found
        try:
            row = _load_row(text)
        except (StrictJSONError, ValueError) as exc:
            raise LedgerCorrupt(f"{self.path}: the last row (seq {seq}) is not JSON ({exc}); "
                                f"run flopgate ledger verify") from None
        if (not isinstance(row, dict) or row.get("seq") != seq
                or not isinstance(row.get("row_hash"), str)):
            raise LedgerCorrupt(f"{self.path}: the last row (seq {seq}) is not a ledger row; "
                                f"run flopgate ledger verify")
        try:
            intact = chain.compute_row_hash(row) == row["row_hash"]
        except (KeyError, TypeError, ValueError):
            intact = False
        if not intact:
            raise LedgerCorrupt(f"{self.path}: the last row (seq {seq}) does not match its "
                                f"row_hash; run flopgate ledger verify")
        return row

    def _insert_next(self, kind: str, audit_sha256: str, body: Mapping[str, Any],
                     private_key: Ed25519PrivateKey, time: datetime | str | None) -> dict:
        try:
            row = chain.make_row(self._last_row(), kind, audit_sha256, body, private_key, time)
        except ValueError as exc:  # RowError, or a body canonical JSON cannot hold
            raise InputError(f"ledger row: {exc}") from None
        self._conn.execute("INSERT INTO rows (seq, row_json) VALUES (?, ?)",
                           (row["seq"], canonical_json(row).decode("utf-8")))
        return row

    def append(self, kind: str, audit_sha256: str, body: Mapping[str, Any],
               private_key: Ed25519PrivateKey, *, time: datetime | str | None = None) -> dict:
        """Append one signed row (in one ``BEGIN IMMEDIATE`` transaction); return it."""
        with self._write():
            return self._insert_next(kind, audit_sha256, body, private_key, time)

    def _spent_in_txn(self, audit_sha256: str) -> float:
        values = self._conn.execute(
            "SELECT json_extract(row_json, '$.body.flops') FROM rows "
            "WHERE json_extract(row_json, '$.audit_sha256') = ? "
            "AND json_extract(row_json, '$.kind') = 'charge'", (audit_sha256,)).fetchall()
        return math.fsum(float(v) for (v,) in values if isinstance(v, (int, float)))

    def charge(self, audit_sha256: str, budget_flops: float, run_id: str, step_from: int,
               step_to: int, tokens: float, flops: float, private_key: Ed25519PrivateKey, *,
               time: datetime | str | None = None) -> dict:
        """Charge ``flops`` of training (steps ``step_from``..``step_to``) to the audit.

        In one ``BEGIN IMMEDIATE`` transaction: sum what is already charged to the audit and
        append the charge row, or raise :class:`BudgetExceeded` (exit 6, nothing written) when
        ``spent + flops > budget_flops``. Returns the row written.
        """
        flops = float(flops)
        budget = float(budget_flops)
        if not math.isfinite(flops) or flops < 0:
            raise InputError(f"charge: flops must be a finite number >= 0, got {flops}")
        if not math.isfinite(budget) or budget < 0:
            raise InputError(f"charge: budget_flops must be a finite number >= 0, got {budget}")
        body = {"run_id": run_id, "step_from": step_from, "step_to": step_to, "tokens": tokens,
                "flops": flops}
        with self._write():
            spent = self._spent_in_txn(audit_sha256)
            if spent + flops > budget:
                left = max(budget - spent, 0.0)
                raise BudgetExceeded(
                    f"audit {audit_sha256[:12]}: charge of {quantity(flops)} FLOP for "
                    f"{run_id} steps {step_from}-{step_to} refused: {quantity(spent)} of "
                    f"{quantity(budget)} FLOP spent, {quantity(left)} left")
            return self._insert_next("charge", audit_sha256, body, private_key, time)

    # -- reading ------------------------------------------------------------------------

    def spent(self, audit_sha256: str) -> float:
        """FLOP charged to the audit so far (0.0 when none)."""
        return self._spent_in_txn(audit_sha256)

    def raw_rows(self) -> list[tuple[int, str]]:
        """Every ``(seq, row_json)`` in seq order, as stored (one read transaction)."""
        return self._conn.execute("SELECT seq, row_json FROM rows ORDER BY seq").fetchall()

    def rows(self, since: str | None = None, audit: str | None = None) -> list[dict[str, Any]]:
        """The rows in seq order, parsed; only those at or after ``since`` (a date or RFC 3339
        time, see :func:`parse_since`) and/or about ``audit`` (a digest or a prefix of one).
        A row that is not JSON raises :class:`LedgerCorrupt`."""
        since_text = parse_since(since) if since else None
        result = []
        for seq, text in self.raw_rows():
            row = self._parse(seq, text)
            if since_text and str(row.get("time", "")) < since_text:
                continue
            if audit and not str(row.get("audit_sha256", "")).startswith(audit.lower()):
                continue
            result.append(row)
        return result

    def row(self, seq: int) -> dict[str, Any] | None:
        found = self._conn.execute("SELECT seq, row_json FROM rows WHERE seq = ?",
                                   (seq,)).fetchone()
        return None if found is None else self._parse(*found)

    def _parse(self, seq: int, text: str) -> dict[str, Any]:
        try:
            return _load_row(text)
        except (StrictJSONError, ValueError) as exc:
            raise LedgerCorrupt(f"{self.path}: row seq {seq} is not JSON ({exc}); "
                                f"run flopgate ledger verify") from None

    def verify(self, trusted_keys: list[TrustedKey]) -> list[str]:
        """:func:`audit.ledger.chain.verify_chain` over the whole ledger, after checking that
        each stored ``seq`` column matches the row's own ``seq`` and that each row is JSON.
        ``[]`` when it holds, else one line naming the first bad row."""
        rows = []
        for position, (seq, text) in enumerate(self.raw_rows()):
            try:
                row = _load_row(text)
            except (StrictJSONError, ValueError) as exc:
                return [f"row seq {seq}: not JSON ({exc})"]
            if isinstance(row, dict) and row.get("seq") != seq:
                return [f"row seq {seq}: the stored row says seq {row.get('seq')!r} "
                        f"(rows moved or reordered)"]
            rows.append(row)
        return chain.verify_chain(rows, trusted_keys)
