"""The tamper-evident ledger: one signed hash chain of audits, approvals, gate openings, runs
and the compute charged to each audit's budget. See ``docs/ledger.md``.

Modules: ``chain`` (the row format, hashing, signing and verifying; pure) and ``store`` (the
SQLite file, appends and budget charges under ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from audit.ledger.chain import GENESIS_PREV, KINDS, RowError, make_row, verify_chain
from audit.ledger.store import (BUDGET_EXCEEDED_EXIT, LEDGER_ENV, BudgetExceeded, Ledger,
                                LedgerCorrupt, default_ledger_path)

__all__ = ["GENESIS_PREV", "KINDS", "RowError", "make_row", "verify_chain", "BUDGET_EXCEEDED_EXIT",
           "LEDGER_ENV", "BudgetExceeded", "Ledger", "LedgerCorrupt", "default_ledger_path"]
