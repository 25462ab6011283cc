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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from audit.errors import InputError
from audit.numbers import quantity


def ledger_trust(args=None, *, pubkey: str | None = None, trust: str | None = None,
                 approver_pubkey: str | None = None, approver_trust: str | None = None,
                 runner_pubkey: str | None = None, runner_trust: str | None = None):
    """Whose ledger rows count, by role (:class:`audit.ledger.chain.LedgerTrust`), from the gate's
    flags (``args``) or the same names: the auditor keys (``--pubkey``/``--trust``), reviewer
    keys (``--approver-*``) and runner keys (``--runner-*``; the run's own signing key is added
    by whoever signs)."""
    from audit.attest.keys import load_trusted_keys
    from audit.ledger.chain import LedgerTrust

    if args is not None:
        pubkey, trust = getattr(args, "pubkey", None), getattr(args, "trust", None)
        approver_pubkey, approver_trust = getattr(args, "approver_pubkey", None), getattr(args, "approver_trust", None)
        runner_pubkey, runner_trust = getattr(args, "runner_pubkey", None), getattr(args, "runner_trust", None)

    def keys(file, folder) -> tuple:
        return tuple(load_trusted_keys(file, folder)) if file or folder else ()

    return LedgerTrust(keys(pubkey, trust), keys(approver_pubkey, approver_trust), keys(runner_pubkey, runner_trust))


@dataclass(frozen=True)
class RunCharges:
    """What the ledger holds for this audit: this run's charges and everyone else's (FLOP);
    ``verifier``: the chain as far as it was verified to read them (the charges go on from it)."""

    audit_sha256: str
    run_id: str
    this_run: float
    other_runs: float
    verifier: Any = field(default=None, compare=False, repr=False)


def own_runner_key(key_path: str | None):
    """The public half of the key a run signs with (``key_path``, else the local default key),
    as a trusted runner key; None when that key does not exist yet (nothing was signed with it).
    Reads the ``.pub`` beside it when there is one, so that no passphrase is needed to read."""
    from audit.attest.keys import (TrustedKey, default_key_path, key_id, load_private_key, load_public_key,
                                   public_key_path)

    path = Path(key_path).expanduser() if key_path else default_key_path()
    if public_key_path(path).exists():
        public = load_public_key(public_key_path(path))
    elif path.exists():
        public = load_private_key(path).public_key()
    else:
        return None
    return TrustedKey(key_id(public), public, str(path))


def with_runner(trust, key):
    """``trust`` with ``key`` (a TrustedKey or None) added to its runner keys."""
    from audit.ledger.chain import LedgerTrust

    if key is None or key.keyid in {k.keyid for k in trust.runners}:
        return trust
    return LedgerTrust(trust.auditors, trust.approvers, trust.runners + (key,))


def read_charges(audit_sha256: str, out_dir: Path, ledger_path: str | None = None, trust=None) -> RunCharges:
    """The audit's charges in the ledger, split by run (read only: a missing ledger is empty),
    from verified rows: the chain holds, and the audit's charges are signed by trusted runner
    keys (``trust``, a :class:`audit.ledger.chain.LedgerTrust`; default: the local key) with
    running totals that add up (``LedgerCorrupt``, exit 5, otherwise)."""
    from audit.ledger.chain import LedgerTrust
    from audit.ledger.store import Ledger, ledger_exists

    run_id = str(Path(out_dir).resolve())
    if not ledger_exists(ledger_path):
        return RunCharges(audit_sha256, run_id, 0.0, 0.0)
    trust = trust if trust is not None else with_runner(LedgerTrust(), own_runner_key(None))
    with Ledger(ledger_path, create=False) as ledger:
        verifier = ledger.verified(audit_sha256, trust)
    tally = verifier.tally(audit_sha256)
    this_run = tally.runs.get(run_id, 0.0)
    return RunCharges(audit_sha256, run_id, this_run, tally.spent_flops - this_run, verifier)


class StepCharges:
    """Rank 0's bookkeeping for the trainer's hooks: ``after_resume(flops)`` checks a resumed
    meter against the ledger before any step (a meter below what the ledger already charged
    this run means an edited ``trainer_state.json``: refused); ``on_step(record)`` charges the
    compute the meter counted since the last charge, with its parameter-update part (the
    step's tokens x ``update_flops_per_token``, the student's training FLOP per token) and its
    held-out evaluation part (``eval_flops``, when the step evaluated: evaluations are charged
    like steps, in the same locked ledger transaction)."""

    def __init__(self, charges: RunCharges, audit_budget: float, private_key, ledger_path: str | None = None,
                 *, update_flops_per_token: float, trust=None):
        from audit.ledger.store import Ledger

        self.charges, self.audit_budget, self.private_key = charges, audit_budget, private_key
        self.trust = trust  # whose rows count when charging (the signing key is always added)
        self.last_row: dict | None = None  # the ledger head this run charged against
        self.update_flops_per_token = float(update_flops_per_token)
        self.ledger = Ledger(ledger_path)
        if charges.verifier is not None and trust is not None:
            self.ledger.adopt(charges.verifier)  # the gate verified the chain: go on from there
        self.charged = charges.this_run
        self.eval_charged = 0.0  # the meter's evaluation FLOP charged so far by this session

    def opened(self, *, outcome: str, resume: bool) -> None:
        """Record that the gate opened for this run (``resume`` for a continued one)."""
        self.last_row = self.ledger.append("resume" if resume else "gate_open", self.charges.audit_sha256,
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
        evaluated = record.get("eval_flops")  # the meter's evaluation FLOP so far, when this step evaluated
        self.last_row = self.ledger.charge(
            self.charges.audit_sha256, self.audit_budget, self.charges.run_id, record["step"], record["step"],
            record["step_tokens"], flops - self.charged, self.private_key,
            update_flops=record["step_tokens"] * self.update_flops_per_token, trust=self.trust,
            run_energy_j=record.get("energy_j"),   # the GPUs' counters so far; None when not measured
            eval_flops=max(0.0, evaluated - self.eval_charged) if evaluated is not None else None)
        self.charged = flops
        if evaluated is not None:
            self.eval_charged = evaluated

    def anchor(self) -> dict | None:
        """The ledger head this run charged against (its last row's seq and row_hash), for the
        run record: ``flopgate ledger verify --record`` proves the ledger still reaches it."""
        return None if self.last_row is None else {"seq": self.last_row["seq"],
                                                   "row_hash": self.last_row["row_hash"]}
