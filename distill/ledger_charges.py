"""The audit's budget is spent once, across runs: what ``flopgate distill`` books in the ledger.

Before training, the FLOP already charged to the audit by other runs (other ``--out`` folders)
comes off the budget this run may spend; an audit with nothing left is refused by the gate.
While training, rank 0 charges each step's compute to the audit in the ledger
(:meth:`audit.ledger.store.Ledger.charge`, one ``BEGIN IMMEDIATE`` transaction), so two runs
sharing an audit at once can never together pass it: the second is stopped with
``BudgetExceeded`` (exit 6). A run is identified by its output folder, so a resume continues its
own charges. FLOP use 1 multiply-add = 2 FLOP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from audit.errors import InputError
from audit.numbers import quantity


@dataclass(frozen=True)
class RunCharges:
    """What the ledger holds for this audit: this run's charges and everyone else's (FLOP)."""

    audit_sha256: str
    run_id: str
    this_run: float
    other_runs: float


def read_charges(audit_sha256: str, out_dir: Path, ledger_path: str | None = None) -> RunCharges:
    """The audit's charges in the ledger, split by run (read only: a missing ledger is empty)."""
    from audit.ledger.store import Ledger, ledger_exists

    run_id = str(Path(out_dir).resolve())
    if not ledger_exists(ledger_path):
        return RunCharges(audit_sha256, run_id, 0.0, 0.0)
    with Ledger(ledger_path, create=False) as ledger:
        charges = [r["body"] for r in ledger.rows(audit=audit_sha256) if r["kind"] == "charge"]
    this_run = sum(float(c["flops"]) for c in charges if c["run_id"] == run_id)
    return RunCharges(audit_sha256, run_id, this_run, sum(float(c["flops"]) for c in charges) - this_run)


class StepCharges:
    """Rank 0's bookkeeping for the trainer's hooks: ``after_resume(flops)`` checks a resumed
    meter against the ledger before any step (a meter below what the ledger already charged
    this run means an edited ``trainer_state.json``: refused); ``on_step(record)`` charges the
    compute the meter counted since the last charge, with its parameter-update part (the
    step's tokens x ``update_flops_per_token``, the student's training FLOP per token)."""

    def __init__(self, charges: RunCharges, audit_budget: float, private_key, ledger_path: str | None = None,
                 *, update_flops_per_token: float):
        from audit.ledger.store import Ledger

        self.charges, self.audit_budget, self.private_key = charges, audit_budget, private_key
        self.update_flops_per_token = float(update_flops_per_token)
        self.ledger = Ledger(ledger_path)
        self.charged = charges.this_run

    def opened(self, *, outcome: str, resume: bool) -> None:
        """Record that the gate opened for this run (``resume`` for a continued one)."""
        self.ledger.append("resume" if resume else "gate_open", self.charges.audit_sha256,
                           {"run_id": self.charges.run_id, "outcome": outcome,
                            "charged_before_flops": self.charges.this_run}, self.private_key)

    def after_resume(self, meter_flops: float) -> None:
        if meter_flops < self.charged:
            raise InputError(f"the checkpoint's compute meter ({quantity(meter_flops, 'FLOP')}) is below what the "
                             f"ledger already charged this run ({quantity(self.charged, 'FLOP')}): its "
                             "trainer_state.json was edited", source=self.charges.run_id)

    def on_step(self, record: dict) -> None:
        flops: Optional[float] = record.get("flops")
        if flops is None:
            return
        self.after_resume(flops)
        self.ledger.charge(self.charges.audit_sha256, self.audit_budget, self.charges.run_id, record["step"],
                           record["step"], record["step_tokens"], flops - self.charged, self.private_key,
                           update_flops=record["step_tokens"] * self.update_flops_per_token)
        self.charged = flops
