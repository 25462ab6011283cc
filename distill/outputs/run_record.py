"""The signed run record: what a gated distillation actually did.

At the end of a run (or at a budget stop) ``flopgate distill`` writes, next to its outputs:

* ``run-record.intoto.json``: an in-toto Statement v1 in a DSSE envelope, predicate type
  ``https://flopgate.dev/attestations/run-record/v1``, signed with Ed25519;
* ``run-record.json``: the same statement, indented, for people (not what was signed).

Subjects: every file of the final checkpoint (role ``checkpoint``), the audit envelope (role
``audit_envelope``), the approval when there was one, the plan, and any extra files such as
the model card. Names are relative to the output folder when the file lies under it, so
``flopgate verify run-record.intoto.json --pubkey KEY`` re-hashes them in place.

The predicate::

    {"tool", "created",
     "plan": {"name", "sha256"},
     "audit": {"envelope", "sha256", "outcome", "created", "approval_sha256"},
     "compute": {"flops", "flops_per_token", "budget_flops", "tolerance", "limit_flops",
                 "audited_total_flops", "lost_flops", "lost_tokens", "convention"},
     "tokens", "steps", "final_loss", "wall_time_s", "accelerator_hours",
     "device": {"type", "name", "processes"},
     "stopped_by_budget", "stopped_early", "message",
     "eval": null or {"step", "tokens", "ce", "kl", "top1_agreement", "split"} (the last held-out
             evaluation; ``split``: how the held-out rows were chosen, e.g. {"by": "document",
             "seed", "rows", "rows_total", "fraction", "documents", "documents_total"}; and its
             compute, ``flops``, when metered),
     "energy": {"joules", "status", "method", "pue", "device_joules", "board_power_w",
                "accelerator_hours", "devices"} (audit/energy.py: measured by the GPUs' counters,
               estimated from accelerator-hours x board power, or unavailable; joules include the PUE),
     "checkpoint": {"name", "step", "root_sha256", "files"},
     "ledger": {"seq", "row_hash"} or null (the run's last ledger row: the head it charged
               against; ``flopgate ledger verify --record`` proves the ledger still reaches it),
     "obligations": [the audit decision's obligations, carried to the student],
     "inputs": [{"role", "name", "sha256", "path"}]}

Units: FLOP with 1 multiply-add = 2 FLOP; tokens are every position fed to the models (all
processes); ``wall_time_s`` is wall-clock seconds summed over the run's sessions (resumes
included); ``accelerator_hours`` = wall time x processes / 3600. ``checkpoint.root_sha256`` is
:func:`distill.runtime.checkpoint.checkpoint_digest` of the final checkpoint folder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest import PREDICATE_RUN_RECORD
from audit.predicate import AuditPredicate
from audit.attest.dsse import write_envelope
from audit.attest.statement import InputFile, build_subjects, make_statement, sign_statement, utc_timestamp
from audit.compute.types import CONVENTION
from audit.fsutil import write_atomic

RECORD_ENVELOPE = "run-record.intoto.json"
RECORD_JSON = "run-record.json"
_OBLIGATION_FIELDS = ("id", "rule_id", "text", "deadline", "checkable", "status", "authorized")


@dataclass(frozen=True)
class WrittenRecord:
    envelope_path: Path
    json_path: Path
    statement: dict


def finite_or_none(value: Any) -> Optional[float]:
    """A float for signing; NaN and infinity cannot be signed (RFC 8785) and become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def carried_obligations(audit: AuditPredicate) -> list[dict]:
    """The audit decision's obligations, as the student inherits them."""
    return [o.model_dump(mode="json", include=set(_OBLIGATION_FIELDS)) for o in audit.decision.obligations]


def build_predicate(result, *, audit: AuditPredicate, envelope_name: str, envelope_sha256: str,
                    flops_per_token: Optional[float], tolerance: float, device_name: str,
                    checkpoint_name: str, checkpoint_root: str, checkpoint_files: int,
                    approval_sha256: Optional[str], inputs: list[dict], approval: Optional[dict] = None) -> dict:
    """The run-record predicate (see the module docstring). ``result`` is a
    :class:`distill.outputs.run_record.TrainResult`."""
    from audit.versions import tool_versions

    budget = finite_or_none(result.budget_flops)
    return {
        "tool": tool_versions(),
        "created": utc_timestamp(),
        "plan": {"name": audit.plan.name, "sha256": audit.plan.sha256},
        "audit": {"envelope": envelope_name, "sha256": envelope_sha256,
                  "outcome": audit.outcome, "created": audit.created,
                  "approval_sha256": approval_sha256,
                  "approval": approval},   # who approved a REVIEW, when, and their note (as verified)
        "compute": {"flops": finite_or_none(result.flops_used), "flops_per_token": finite_or_none(flops_per_token),
                    "budget_flops": budget, "tolerance": tolerance,
                    "limit_flops": None if budget is None else budget * (1 + tolerance),
                    "audited_total_flops": finite_or_none(audit.compute.total_flops),
                    "lost_flops": finite_or_none(result.lost_flops),
                    "lost_tokens": int(result.lost_tokens),
                    "convention": CONVENTION},
        "tokens": int(result.tokens),
        "steps": int(result.steps),
        "final_loss": finite_or_none(result.final_loss),
        "wall_time_s": finite_or_none(result.wall_time_s),
        "accelerator_hours": finite_or_none(result.device_hours),
        "device": {"type": str(result.device).split(":")[0], "name": device_name,
                   "processes": int(result.world_size)},
        "stopped_by_budget": bool(result.stopped_by_budget),
        "stopped_early": bool(getattr(result, "stopped_early", False)),
        "eval": _eval_block(getattr(result, "eval", None), getattr(result, "eval_split", None),
                            getattr(result, "eval_flops", None)),
        "energy": run_energy_block(result, audit, device_name),
        "message": result.message,
        "checkpoint": {"name": checkpoint_name, "step": int(result.steps),
                       "root_sha256": checkpoint_root, "files": checkpoint_files},
        "obligations": carried_obligations(audit),
        "inputs": inputs,
    }


def run_energy_block(result, audit: AuditPredicate, device_name: str) -> dict:
    """The record's ``energy`` (:class:`audit.energy.Energy` as a dict): the GPUs' counters when
    every process read one, else accelerator-hours x board power, x PUE, from the audited plan's
    ``hardware`` block and ``policies/hardware.yaml``; unavailable when neither is known."""
    from audit.compute.tables import load_reference_tables
    from audit.energy import run_energy

    return run_energy(finite_or_none(getattr(result, "energy_joules", None)), finite_or_none(result.device_hours),
                      devices=list(getattr(result, "energy_devices", ())), device_name=device_name,
                      device_type=str(result.device).split(":")[0],
                      plan_hardware=(audit.plan.content or {}).get("hardware"), tables=load_reference_tables(),
                      reason=getattr(result, "energy_reason", "")).to_dict()


def _eval_block(metrics: Optional[dict], split: Optional[dict] = None, flops: Optional[float] = None) -> Optional[dict]:
    """The last held-out evaluation: metrics per position (finite floats), its step and tokens,
    how the held-out rows were chosen (``split``) and the evaluations' metered FLOP (``flops``)."""
    if not metrics:
        return None
    block = {k: (int(v) if k in ("step", "tokens") else finite_or_none(float(v))) for k, v in sorted(metrics.items())}
    if split:
        block["split"] = {k: (finite_or_none(float(v)) if isinstance(v, float) else v)
                          for k, v in sorted(split.items())}
    if flops:
        block["flops"] = finite_or_none(float(flops))
    return block


def write_run_record(out_dir: str | os.PathLike, result, *, audit_envelope: str | os.PathLike,
                     audit: AuditPredicate, envelope_sha256: str, plan_path: str | os.PathLike,
                     private_key: Ed25519PrivateKey, device_name: str,
                     flops_per_token: Optional[float], tolerance: float,
                     approval_path: str | os.PathLike | None = None,
                     approval_sha256: Optional[str] = None,
                     approval: Optional[dict] = None,
                     extra_files: Sequence[tuple[str, str | os.PathLike]] = (),
                     ledger_head: Optional[dict] = None) -> WrittenRecord:
    """Hash the outputs, sign the run record and write both files atomically.

    ``extra_files`` are more ``(role, path)`` subjects, e.g. ``("model_card", README.md)``."""
    from distill.runtime.checkpoint import checkpoint_digest

    out_dir = Path(out_dir).resolve()
    checkpoint = Path(result.checkpoint_dir).resolve()
    files = [InputFile("checkpoint", p, out_dir) for p in sorted(checkpoint.rglob("*")) if p.is_file()]
    files.append(InputFile("audit_envelope", audit_envelope, out_dir))
    if approval_path is not None:
        files.append(InputFile("approval", approval_path, out_dir))
    # the plan as the gate verified it (its bytes are not read again): the audited digest
    files.append(InputFile("plan", plan_path, out_dir, None, audit.plan.sha256))
    files += [InputFile(role, path, out_dir) for role, path in extra_files]
    subjects, inputs = build_subjects(files)
    envelope_name = next(e["name"] for e in inputs if e["role"] == "audit_envelope")
    checkpoint_name = (checkpoint.relative_to(out_dir).as_posix()
                       if checkpoint.is_relative_to(out_dir) else str(checkpoint))
    predicate = build_predicate(
        result, audit=audit, envelope_name=envelope_name,
        envelope_sha256=envelope_sha256, flops_per_token=flops_per_token, tolerance=tolerance,
        device_name=device_name, checkpoint_name=checkpoint_name,
        checkpoint_root=checkpoint_digest(checkpoint),
        checkpoint_files=sum(1 for f in files if f.role == "checkpoint"),
        approval_sha256=approval_sha256, inputs=inputs, approval=approval)
    predicate["ledger"] = ledger_head
    statement = make_statement(subjects, PREDICATE_RUN_RECORD, predicate)
    envelope = sign_statement(statement, private_key)
    envelope_path = write_envelope(out_dir / RECORD_ENVELOPE, envelope)
    json_path = write_atomic(out_dir / RECORD_JSON, json.dumps(statement, indent=2) + "\n")
    return WrittenRecord(envelope_path, json_path, statement)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens: int                      # tokens processed, all ranks (sequences x seq_len)
    final_loss: Optional[float]      # mean loss per valid token in the last step
    flops_used: Optional[float]      # tokens x flops_per_token; None without a per-token figure
    budget_flops: Optional[float]
    wall_time_s: float               # summed over this run's sessions (resumes included)
    device_hours: float              # wall time x number of processes (accelerator-hours on GPU)
    stopped_by_budget: bool
    checkpoint_dir: Path
    world_size: int
    device: str
    rank: int
    message: str
    teacher_sharded: bool = False    # the teacher's layers were sharded over the ranks (FSDP2)
    lost_tokens: int = 0             # of steps lost to crashes; counted in tokens and flops_used
    lost_flops: float = 0.0
    eval: Optional[dict] = None      # the last evaluation's metrics (per held-out token), with its step
    stopped_early: bool = False      # the early-stopping rule ended the run
    energy_joules: Optional[float] = None   # the GPUs' energy counters, all ranks; None: not measured
    energy_devices: tuple = ()       # the devices whose counters were read
    energy_reason: str = ""          # why the energy was not measured (the record estimates it then)
    eval_split: Optional[dict] = None  # how the held-out rows were chosen (EpochOrder.eval_split)
    eval_flops: float = 0.0          # the evaluations' forward passes, metered (in flops_used)
