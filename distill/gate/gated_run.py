"""The gate for any training loop: ``open_gate`` runs the same checks as ``flopgate distill``
and hands back what the audit allows; a refusing gate raises :class:`GateRefused` and gives no
handle. FLOP throughout, 1 multiply-add = 2 FLOP.

    run = open_gate("plan.yaml", "audit.intoto.json", pubkey="auditor.pub", out_dir="out")
    for batch in loader:
        tokens = int(batch["attention_mask"].sum())
        if run.meter.would_exceed(tokens):
            break
        ...forward, backward, optimizer step...
        run.meter.step(tokens)          # one ledger charge per optimizer step (rank 0)
    run.finish(checkpoint_dir="out/final", final_loss=loss)

Read the run's inputs through ``run.inputs`` (:mod:`distill.gate.attested`), never by path: the
audited tokenizer (``run.inputs.tokenizer()``, a ``--tokenizer`` copy must have its bytes), the
dataset manifest (``run.inputs.manifest()``), the prompts (``run.inputs.prompts()``) and what
``flopgate generate`` wrote (``run.inputs.generated(DIR)``), each checked against the audit.

Two kinds of plan need the caller to say it meters them right, else the gate refuses them:
a ``student.adapter`` plan (``trains_adapter=True``: the run trains only the declared adapters
on the frozen student, charged at the adapter's rate) and an ``on_policy`` plan
(``meters_sampling=True``: each step also passes the positions the student ran while sampling,
``run.meter.step(tokens, generated=...)``). ``flopgate distill`` trains whole models on logits
and passes neither.

``flopgate distill`` opens its gate here too, so the two cannot drift apart. Under several
processes (torchrun, ``accelerate launch``), every rank calls ``would_exceed`` and ``step``
with its own token count: they sum the counts over ranks (an all-reduce), so every rank takes
the same decision; only rank 0 writes the ledger and signs the record.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from audit.clock import utc_now
from audit.compute.run_budget import evaluation_figures, meter_figures
from audit.numbers import short_sci
from distill.gate.refusal import GateRefused  # noqa: F401 - public here: what open_gate raises


def _installed_pack_versions() -> dict[str, str]:
    """Bundled policy pack id -> installed version (what the audit's pack versions must match)."""
    from audit.policy.packs import installed_versions

    return installed_versions()


def process_rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return int(os.environ.get("RANK", "0"))


def process_count() -> int:
    """Processes in the initialised process group (1 without one)."""
    ctx = _dist_context()
    return ctx.world_size if ctx else 1


def summed_over_processes(count: int) -> int:
    """``count`` summed over the process group's ranks (every rank must call it); itself
    without a group."""
    ctx = _dist_context()
    if ctx is None:
        return int(count)
    from distill.runtime.distributed import all_reduce_sum

    return int(all_reduce_sum(int(count), ctx))


@dataclass
class GatedRun:
    """An open gate: the verified plan and audit, the meter's figures and the budget left.

    ``budget_flops`` is what this run may still spend: the audit's run budget less what other
    runs (other ``out_dir``) were charged in the ledger. ``flops_per_token`` is per training
    token (student training - the adapter's for a ``student.adapter`` plan - plus teacher
    forward for logit methods and the teacher's scoring for on-policy ones);
    ``student_flops_per_token`` its parameter-update part; ``generation_flops_per_token`` per
    position the student runs while sampling (on-policy runs; 0 otherwise)."""

    gate: Any                      # distill.gate.checks.GateResult (ok)
    attestation: Path
    out_dir: Path
    audit_budget_flops: float
    budget_flops: float
    flops_per_token: float
    student_flops_per_token: float
    charges: Any                   # distill.gate.ledger_charges.RunCharges
    ledger: Optional[str] = None
    key_path: Optional[str] = None
    resume: bool = False
    generation_flops_per_token: float = 0.0
    ledger_trust: Any = None       # audit.ledger.chain.LedgerTrust: whose ledger rows count
    eval_flops_per_token: Optional[float] = None  # per evaluated position; None: the audit counted no evaluation
    eval_tokens: Optional[float] = None           # the audited evaluation.tokens (the cap)
    _meter: Any = field(default=None, repr=False)
    _signing: Any = field(default=None, repr=False)
    _hook: Any = field(default=None, repr=False)
    started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def plan(self):
        return self.gate.loaded_plan.plan

    def eval_figures(self) -> dict:
        """The training loop's evaluation figures (``LoopConfig.eval_flops_per_token`` and
        ``eval_tokens_limit``) from the audit; empty when it counted no evaluation."""
        if self.eval_flops_per_token is None:
            return {}
        return {"eval_flops_per_token": self.eval_flops_per_token, "eval_tokens_limit": self.eval_tokens}

    @property
    def audit(self):
        return self.gate.audit

    @property
    def inputs(self):
        """The attested-input layer (:class:`distill.gate.attested.AttestedInputs`): every file the
        run reads besides the plan, checked against this audit."""
        return self.gate.inputs

    @property
    def envelope_sha256(self) -> str:
        return self.gate.envelope_sha256

    def signing_key(self):
        """``(private key, where it lives)``: ``key_path``, else the local key (made on first
        use). Rank 0 only signs."""
        if self._signing is None:
            from audit.attest.keys import ensure_default_key, load_private_key

            if self.key_path:
                self._signing = load_private_key(self.key_path), Path(self.key_path)
            else:
                key, where, created = ensure_default_key()
                if created:
                    from audit.attest.keys import key_id, short_fingerprint

                    print(f"created a local signing key: {where} ({short_fingerprint(key_id(key.public_key()))})",
                          file=sys.stderr)
                self._signing = key, where
        return self._signing

    def step_charges(self):
        """Rank 0's ledger bookkeeping (:class:`distill.gate.ledger_charges.StepCharges`), made once:
        making it records the gate opening (``gate_open``, or ``resume``) in the ledger. None
        on other ranks."""
        if process_rank() != 0:
            return None
        if self._hook is None:
            from distill.gate.ledger_charges import StepCharges

            self._hook = StepCharges(self.charges, self.audit_budget_flops, self.signing_key()[0], self.ledger,
                                     update_flops_per_token=self.student_flops_per_token, trust=self.ledger_trust)
            self._hook.opened(outcome=self.gate.outcome, resume=self.resume)
        return self._hook

    def ledger_anchor(self) -> dict | None:
        """The ledger head this run charged against, for its record (None on other ranks)."""
        return self._hook.anchor() if self._hook is not None else None

    @property
    def meter(self) -> "LoopMeter":
        """The meter for a loop of your own (made on first use)."""
        if self._meter is None:
            self._meter = LoopMeter(self)
        return self._meter

    def finish(self, checkpoint_dir: str | os.PathLike, *, final_loss: Optional[float] = None,
               message: Optional[str] = None, device_name: str = "cpu"):
        """Sign the run record (over the files of ``checkpoint_dir``, the audit and the plan)
        and write the model card and run report into ``out_dir``; rank 0 only (other ranks get
        None). Returns the :class:`distill.outputs.run_record.WrittenRecord`."""
        if process_rank() != 0:
            return None
        from distill.outputs.model_card import installed_clause_types, write_model_card
        from distill.outputs.run_record import write_run_record
        from distill.outputs.run_report import write_run_report

        meter = self.meter
        if meter.steps == 0 and meter.stopped_by_budget:  # an untrained model gets no card and no signed record
            raise GateRefused([f"budget: audit {self.envelope_sha256[:12]}... has {short_sci(max(meter.left_flops, 0.0), 4)} "
                               "FLOP left for this run and its first step did not fit: nothing was trained, so no run "
                               "record is signed (check distill.gate.preflight.check_first_step_fits before loading a model)"])
        result = meter.result(Path(checkpoint_dir), final_loss=final_loss, message=message,
                              wall_time_s=time.monotonic() - self.started)
        written = write_run_record(
            self.out_dir, result, audit_envelope=self.attestation, audit=self.audit,
            envelope_sha256=self.envelope_sha256, plan_path=self.gate.loaded_plan.path,
            private_key=self.signing_key()[0], device_name=device_name,
            flops_per_token=self.flops_per_token, tolerance=0.0,
            approval_sha256=self.gate.approval_sha256, approval=self.gate.approval, ledger_head=self.ledger_anchor())
        record = written.statement["predicate"]
        card = write_model_card(self.out_dir, plan=self.plan, audit=self.audit, record=record,
                                clause_types=installed_clause_types())
        write_run_report(self.out_dir, plan=self.plan, audit=self.audit, record=record, card=card,
                         metrics_path=None)
        return written


class LoopMeter:
    """Counts the tokens of each optimizer step against the budget and charges them to the
    audit in the ledger (rank 0, one charge per step). Token counts are this rank's; they are
    summed over ranks when a process group is initialised. What the ledger already charged this
    run (an earlier session with the same ``out_dir``) counts as spent from the start."""

    def __init__(self, run: GatedRun):
        from distill.gate.meter import ComputeMeter

        self.run = run
        self._meter = ComputeMeter(run.flops_per_token, run.budget_flops, 0.0, ctx=_dist_context(),
                                   generation_flops_per_token=run.generation_flops_per_token,
                                   eval_flops_per_token=run.eval_flops_per_token or 0.0,
                                   eval_tokens_limit=run.eval_tokens)
        self._meter.charge(run.charges.this_run)
        self._hook = run.step_charges()
        self.steps = 0
        self.stopped_by_budget = False
        self._energy = _energy_meter()   # this process's GPU energy counter (NVML), when it has one
        if run.charges.this_run:   # an earlier session of this run spent energy no reading here holds
            self._energy.load_state_dict(None)

    @property
    def tokens(self) -> int:
        return self._meter.tokens

    @property
    def generated(self) -> int:
        """Positions the student ran while sampling (on-policy runs), all ranks."""
        return self._meter.generated

    @property
    def flops(self) -> float:
        return self._meter.flops

    @property
    def left_flops(self) -> float:
        return self.run.budget_flops - self._meter.flops

    def would_exceed(self, tokens: int, *, generated: int = 0, summed: bool = False) -> bool:
        """True when a step of ``tokens`` (and, on-policy, ``generated`` sampled positions; this
        rank's; all ranks' when ``summed``) would take the run past its budget: the step must not
        run. Unless ``summed``, every rank must call it (it sums over ranks)."""
        exceed = self._meter.would_exceed(int(tokens), generated=int(generated), summed=summed)
        self.stopped_by_budget = self.stopped_by_budget or exceed
        return exceed

    def step(self, tokens: int, *, generated: int = 0, summed: bool = False) -> dict:
        """Book one optimizer step of ``tokens`` training positions and, on-policy, the
        ``generated`` positions the student ran while sampling them (prompt prefill and sampled
        tokens; this rank's share, or all ranks' when ``summed``, e.g. a Trainer's gathered
        count) and charge it; returns the step's record (global ``tokens``, ``generated``,
        ``flops``)."""
        before, sampled_before = self._meter.tokens, self._meter.generated
        self._meter.add(int(tokens), generated=int(generated), summed=summed)
        self.steps += 1
        record = {"step": self.steps, "tokens": self._meter.tokens,
                  "step_tokens": self._meter.tokens - before, "flops": self._meter.flops,
                  "energy_j": self._energy_step(summed)}
        if self._meter.generation_flops_per_token:
            record.update(generated=self._meter.generated, step_generated=self._meter.generated - sampled_before)
        if self._hook is not None:
            self._hook.on_step(record)
        return record

    def eval_refusal(self, tokens: int) -> Optional[str]:
        """Why an evaluation of ``tokens`` more positions (all ranks') may not run: the audit
        counted no evaluation (the plan has no ``evaluation`` block), or it would pass the audited
        ``evaluation.tokens`` or the budget; None when it fits."""
        if self.run.eval_flops_per_token is None:
            return ("evaluation: the audit counted no evaluation forwards (give the plan an evaluation block with "
                    "the positions to evaluate, evaluation.tokens, and audit it again): an unaudited forward may "
                    "not run")
        return self._meter.eval_refusal(int(tokens))

    def evaluate(self, tokens: int) -> dict:
        """Book an evaluation of ``tokens`` forward positions (all ranks', padding included) at the
        audited evaluation rate and charge it in the ledger now, in a charge row of its own (no
        training tokens; ``eval_flops``); ``GateRefused`` (nothing booked) when
        :meth:`eval_refusal` says it may not. Returns the charge's record."""
        from distill.gate.refusal import GateRefused

        refusal = self.eval_refusal(tokens)
        if refusal:
            self.stopped_by_budget = True
            raise GateRefused([refusal])
        self._meter.add_eval(int(tokens))
        record = {"step": self.steps, "tokens": self._meter.tokens, "step_tokens": 0, "flops": self._meter.flops,
                  "eval_flops": self._meter.eval_flops, "energy_j": None}
        if self._hook is not None:
            self._hook.on_step(record)
        return record

    def _energy_step(self, summed: bool):
        """The run's measured joules so far (all ranks), or None. Counts the caller summed itself
        may come from rank 0 alone, so no collective is run then: with several processes the
        other ranks' counters are unknown and the energy is not measured."""
        energy = self._energy
        if summed and energy.ctx is not None:
            energy.read_local()
            energy.joules = None
            energy.reason = ("the step counts were summed by the caller, so the other processes' energy "
                             "counters were not gathered")
            return None
        return energy.step()

    def result(self, checkpoint_dir: Path, *, final_loss, message, wall_time_s: float):
        from distill.outputs.run_record import TrainResult

        ctx = _dist_context()
        stop = "stopped before the compute budget" if self.stopped_by_budget else "finished"
        if message is None and self._meter.generation_flops_per_token:
            # the record's compute.flops holds the sampling too: say how much, since flops_per_token is per trained token
            message = (f"{stop} after {self.steps} steps; compute.flops includes {self._meter.generated} sampled "
                       f"positions x {self._meter.generation_flops_per_token:.6g} FLOP (the student's forward)")
        return TrainResult(
            steps=self.steps, tokens=self._meter.tokens, final_loss=final_loss,
            flops_used=self._meter.flops, budget_flops=self.run.budget_flops, wall_time_s=wall_time_s,
            device_hours=wall_time_s / 3600 * (ctx.world_size if ctx else 1),
            stopped_by_budget=self.stopped_by_budget, checkpoint_dir=checkpoint_dir,
            world_size=ctx.world_size if ctx else 1, device=str(ctx.device) if ctx else "cpu",
            rank=process_rank(), message=message or f"{stop} after {self.steps} steps",
            eval_flops=self._meter.eval_flops,
            energy_joules=self._energy.joules, energy_reason=self._energy.reason,
            # the device each process read, as this process names its own (no collective here)
            energy_devices=(self._energy.name,) * (ctx.world_size if ctx else 1)
            if self._energy.joules is not None and self._energy.name else ())


def _energy_meter():
    """An :class:`distill.runtime.energy.EnergyMeter` on this process's device (its CUDA device
    when torch has one in use, else the CPU: not measured), started."""
    import torch

    from distill.runtime.energy import EnergyMeter

    ctx = _dist_context()
    device = (ctx.device if ctx is not None else torch.device("cuda", torch.cuda.current_device())
              if torch.cuda.is_available() and torch.cuda.is_initialized() else torch.device("cpu"))
    meter = EnergyMeter(ctx, device)
    meter.start()
    return meter


def _dist_context():
    """A :class:`distill.runtime.distributed.DistContext` for an initialised process group, else None."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    from distill.runtime.distributed import DistContext

    backend = dist.get_backend()
    device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu"))
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), device,
                       owns_group=False)


def verify_audit(plan: str | os.PathLike, attestation: str | os.PathLike, *, pubkey: str | None = None,
                 trust: str | None = None, approval: str | None = None, approver_pubkey: str | None = None,
                 approver_trust: str | None = None, max_age_days: float = 30, now: dt.datetime | None = None):
    """The gate's checks alone (:func:`distill.gate.checks.run_gate_checks`) with the keys named by paths, as
    the commands' flags name them: the open :class:`distill.gate.checks.GateResult`, or
    :class:`GateRefused` with every reason. ``flopgate generate`` stops here; training goes on
    to :func:`open_gate`, which adds the compute budget."""
    from audit.attest.keys import load_trusted_keys
    from distill.gate.checks import run_gate_checks

    trusted = load_trusted_keys(pubkey, trust)
    approvers = load_trusted_keys(approver_pubkey, approver_trust) if approver_pubkey or approver_trust else None
    gate = run_gate_checks(attestation, plan, trusted_keys=trusted, approval_path=approval, trusted_approvers=approvers,
                           max_age_days=max_age_days, now=now or utc_now(),
                           installed_pack_versions=_installed_pack_versions())
    if not gate.ok:
        raise GateRefused(gate.reasons)
    return gate


def open_gate(plan: str | os.PathLike, attestation: str | os.PathLike, *, pubkey: str | None = None,
              trust: str | None = None, approval: str | None = None, approver_pubkey: str | None = None,
              approver_trust: str | None = None, max_age_days: float = 30,
              out_dir: str | os.PathLike | None = None,
              key: str | None = None, ledger: str | None = None, resume: bool = False,
              now: dt.datetime | None = None, trains_adapter: bool = False,
              meters_sampling: bool = False, runner_pubkey: str | None = None,
              runner_trust: str | None = None) -> GatedRun:
    """Verify the audit for ``plan`` (same checks and meanings as ``flopgate distill``'s flags)
    and return the open gate, or raise :class:`GateRefused` with every reason. Loads no model.
    ``trains_adapter``: the caller trains only the plan's ``student.adapter`` (a plan with one
    is refused without it: its compute is charged at the adapter's rate).
    ``meters_sampling``: the caller passes each step's sampled positions to the meter (an
    ``on_policy`` plan is refused without it: its sampling would go uncharged).
    ``out_dir`` names the run in the ledger: a later call with the same folder continues its
    charges (``resume``), another folder shares what is left of the audit's budget; None means
    :func:`default_out_dir`. ``runner_pubkey``/``runner_trust``: other runners' keys whose
    charges in the ledger count (the run's own key always does); every charge of the audit
    is verified before its budget is read."""
    from distill.gate.ledger_charges import ledger_trust, own_runner_key, read_charges, with_runner

    gate = verify_audit(plan, attestation, pubkey=pubkey, trust=trust, approval=approval,
                        approver_pubkey=approver_pubkey, approver_trust=approver_trust,
                        max_age_days=max_age_days, now=now)
    plan_ = gate.loaded_plan.plan
    unmetered = []
    if plan_.student.adapter is not None and not trains_adapter:
        unmetered.append("student.adapter: the audit charges the adapter's training only (frozen student); open the "
                         "gate with trains_adapter=True from code that trains just the declared adapter "
                         "(flopgate distill trains the whole model)")
    if plan_.method.kind == "on_policy" and not meters_sampling:
        unmetered.append("method: 'on_policy' runs are charged per position the student samples; open the gate with "
                         "meters_sampling=True from code that passes them to meter.step(tokens, generated=...) "
                         "(distill.gate.hf.metered_on_policy for TRL's GKD trainer)")
    if unmetered:
        raise GateRefused(unmetered)
    figures = meter_figures(plan_, gate.predicate)
    if figures.refusal:
        raise GateRefused([figures.refusal])
    out_dir = Path(out_dir) if out_dir else default_out_dir(gate.loaded_plan.plan.name)
    trust = with_runner(ledger_trust(pubkey=pubkey, trust=trust, approver_pubkey=approver_pubkey,
                                     approver_trust=approver_trust, runner_pubkey=runner_pubkey,
                                     runner_trust=runner_trust), own_runner_key(key))
    charges = read_charges(gate.envelope_sha256, out_dir, ledger, trust)
    budget = figures.budget - charges.other_runs  # the audit's budget is spent once, across runs
    if budget <= 0:
        raise GateRefused([f"budget: audit {gate.envelope_sha256[:12]}... is spent: other runs were charged "
                           f"{short_sci(charges.other_runs, 4)} of its {short_sci(figures.budget, 4)} FLOP "
                           "(flopgate ledger list --audit ...)"])
    eval_rate, eval_cap = evaluation_figures(plan_, gate.predicate)  # (None, None): no audited evaluation
    return GatedRun(gate, Path(attestation), out_dir, figures.budget, budget, figures.flops_per_token,
                    figures.student_flops_per_token, charges, ledger=ledger, key_path=key, resume=resume,
                    generation_flops_per_token=figures.generation_flops_per_token, ledger_trust=trust,
                    eval_flops_per_token=eval_rate, eval_tokens=eval_cap)


def default_out_dir(plan_name: str) -> Path:
    """``./distill-out/PLAN-NAME`` (the name made safe for a folder)."""
    return Path("distill-out") / (re.sub(r"[^A-Za-z0-9._-]+", "-", plan_name).strip(".-") or "run")


def refuse(command: str, reasons: list[str]) -> int:
    """Print every reason the gate gave (stderr) and return its exit code (6)."""
    from distill.gate.refusal import GATE_REFUSED_EXIT

    print(f"flopgate: {command} refused ({len(reasons)} reason(s)):", file=sys.stderr)
    for reason in reasons:
        print(f"  {reason}", file=sys.stderr)
    return GATE_REFUSED_EXIT
