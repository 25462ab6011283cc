"""A generation job's share of its audit's token allowance, held in the ledger.

The audit signs ``method.prompt_tokens`` and ``method.teacher_generated_tokens`` for all the
generation jobs under it together. A job never reads what is left once and spends it: each
time its requests in flight need more than it holds, it asks the ledger to *hold* more
(:meth:`audit.ledger.store.Ledger.hold_tokens`, the same locked read-check-append as FLOP
charges), which refuses when all jobs together would hold more than the audit allows. Tokens a
request reserved but did not use stay held by the job for its next requests; when the job ends
it releases what it holds beyond what it used. A job that dies keeps holding its reservation
(fail closed) until it is resumed and ends. Each booking is a signed ``generation`` row with the
job's tokens used and held and the audit's total held by all jobs (see ``docs/ledger.md``).
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from audit.ledger.chain import JobTally, LedgerTrust


class LedgerAllowance:
    """The ledger side of a job's :class:`distill.generation.meter.TokenMeter`. Thread-safe
    (the meter calls it under its own lock, from the main thread or a worker)."""

    def __init__(self, where: str | None, audit_sha256: str, job_id: str, limits: tuple[float, float],
                 private_key, trust: LedgerTrust, fields: Mapping[str, Any]):
        from audit.attest.keys import TrustedKey, key_id
        from audit.ledger.store import Ledger

        own = TrustedKey(key_id(private_key.public_key()), private_key.public_key(), "the job's signing key")
        if own.keyid not in {k.keyid for k in trust.runners}:
            trust = LedgerTrust(trust.auditors, trust.approvers, trust.runners + (own,))
        self.audit_sha256, self.job_id, self.limits = audit_sha256, job_id, (float(limits[0]), float(limits[1]))
        self.private_key, self.trust, self.fields = private_key, trust, dict(fields)
        self._lock = threading.Lock()
        self.ledger = Ledger(where)
        self.last_row: dict | None = None
        self._refresh()

    def _refresh(self) -> None:
        """What the verified ledger says now: this job's tokens held and used, other jobs' held."""
        tally = self.ledger.verified(self.audit_sha256, self.trust, "generation").tally(self.audit_sha256)
        job = tally.jobs.get(self.job_id, JobTally())
        self.held = (job.held_prompt, job.held_completion)
        self.used = (job.used_prompt, job.used_completion)
        self.others = (tally.spent_prompt_tokens - job.held_prompt, tally.spent_completion_tokens - job.held_completion)

    @property
    def ceiling(self) -> tuple[float, float]:
        """The most this job could hold now: the audited figures less what other jobs hold (as
        last seen; the ledger decides each time under its lock)."""
        return self.limits[0] - self.others[0], self.limits[1] - self.others[1]

    def book(self, held: tuple[int, int] | None, used: tuple[int, int], *, status: str, force: bool = False,
             extra: Mapping[str, Any] | None = None) -> bool:
        """Hold ``held`` (None: what the job holds now, never less than ``used``) with ``used``
        of it spent (one ledger row); False when the audit's allowance cannot give that much
        (nothing written). ``force``: tokens already spent, booked whatever the allowance says."""
        from audit.ledger.store import BudgetExceeded

        with self._lock:
            held = self.held if held is None else held
            used = (max(int(used[0]), self.used[0]), max(int(used[1]), self.used[1]))  # never below what was booked
            held = (max(int(held[0]), used[0]), max(int(held[1]), used[1]))
            try:
                row = self.ledger.hold_tokens(self.audit_sha256, self.job_id, held=held, used=used, limits=self.limits,
                                              body={**self.fields, "status": status, **(extra or {})},
                                              private_key=self.private_key, trust=self.trust, force=force,
                                              expect_held=self.held)
            except BudgetExceeded:
                self._refresh()
                return False
            self.held, self.used, self.last_row = held, used, row
            body = row["body"]
            self.others = (body["spent_prompt_tokens"] - held[0], body["spent_completion_tokens"] - held[1])
            return True

    def close(self) -> None:
        self.ledger.close()
