"""What a generation job leaves in ``--out`` besides its journal, and the signed record.

* ``kept-samples.jsonl``    the kept samples (one line each, in prompt-file order): the
                            training data the student may see;
* ``data-manifest.json``    the manifest of the kept samples: file, sha256, bytes, samples and
                            completion tokens, the teacher and the audit they came from;
* ``generation-record.intoto.json``  an in-toto Statement v1 in a DSSE envelope, predicate type
                            ``https://flopgate.dev/attestations/generation-record/v1``, signed
                            with Ed25519 like distill's run record (same statement and envelope
                            helpers); ``generation-record.json`` is the same statement, indented.

Subjects: ``samples.jsonl`` (role ``samples``, every answer, discarded ones included),
``kept-samples.jsonl``, ``data-manifest.json``, the audit envelope, the approval when there was
one, the plan (by its audited digest) and the prompts (by the digest read and checked).

The predicate::

    {"tool", "created",
     "plan": {"name", "sha256"},
     "audit": {"envelope", "sha256", "outcome", "created", "approval_sha256"},
     "job": {"id", "sessions", "attempts"},
     "teacher": {"model", "endpoint_host", "models_reported"},
     "sampling": {"model", "max_tokens", "temperature", "top_p", "seed"},
     "filter": "module:function" or null, "filter_sha256": its module source's sha256 or null,
     "prompts": {"sha256", "count"},
     "outputs": {"samples_sha256", "kept_sha256", "manifest_sha256", "answered", "kept",
                 "discarded", "unanswered"},
     "tokens": {"prompt", "completion", "lost_prompt", "lost_completion",
                "allowed_prompt", "allowed_completion", "audited_prompt", "audited_completion"},
     "flops": {"per_token", "used", "audited"} (the teacher's, at the audit's FLOP per token),
     "stopped_by_budget", "message", "wall_time_s",
     "energy": {"joules", "status", "method", "pue", ...} (audit/energy.py; the teacher's, this job's),
     "ledger": {"seq", "row_hash"} (the job's last ledger row: the head it charged against),
     "obligations": [the audit decision's obligations, carried to the data],
     "inputs": [{"role", "name", "sha256", "path"}]}

Tokens are as the teacher reported them (``usage``), summed over every attempt of the job,
discarded samples included; ``lost_*`` is the part with no sample to show for it (timeouts,
requests in flight when a session died, each charged at its reserved bound); ``allowed_*`` is
what this job could spend when it started (the audited figure less what other jobs held in the
ledger then; the ledger decides each reservation under its lock).
``wall_time_s`` sums the job's sessions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from audit.attest import PREDICATE_GENERATION_RECORD
from audit.attest.statement import InputFile, build_subjects, make_statement, sign_statement, utc_timestamp
from audit.fsutil import sha256_bytes, write_atomic
from audit.predicate import AuditPredicate
from distill.outputs.run_record import WrittenRecord, carried_obligations, finite_or_none
from audit.errors import InputError
from dataclasses import dataclass

RECORD_ENVELOPE = "generation-record.intoto.json"
RECORD_JSON = "generation-record.json"
KEPT_FILE = "kept-samples.jsonl"
MANIFEST_FILE = "data-manifest.json"
MANIFEST_KIND = "flopgate-generated-samples/v1"


def write_kept(out_dir: Path, prompt_order: list[str], samples: dict[str, dict], *, teacher: dict,
               audit_sha256: str, prompts_sha256: str) -> tuple[Path, Path]:
    """``kept-samples.jsonl`` (in prompt-file order) and its manifest, each written atomically."""
    kept = [samples[i] for i in prompt_order if i in samples and samples[i].get("status") == "kept"]
    data = "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in kept).encode("utf-8")
    kept_path = write_atomic(out_dir / KEPT_FILE, data)
    manifest = {"kind": MANIFEST_KIND,
                "files": [{"path": KEPT_FILE, "sha256": sha256_bytes(data), "bytes": len(data),
                           "samples": len(kept),
                           "completion_tokens": sum(int(r["usage"]["completion_tokens"]) for r in kept)}],
                "teacher": teacher, "audit_sha256": audit_sha256, "prompts_sha256": prompts_sha256}
    manifest_path = write_atomic(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return kept_path, manifest_path


def write_generation_record(out_dir: str | os.PathLike, *, audit: AuditPredicate, audit_envelope: str | os.PathLike,
                            envelope_sha256: str, plan_path: str | os.PathLike, prompts_path: str | os.PathLike,
                            prompts_sha256: str, private_key, body: dict,
                            approval_path: str | os.PathLike | None = None,
                            approval_sha256: Optional[str] = None) -> WrittenRecord:
    """Hash the outputs, sign the record and write both files atomically; an existing record is
    never replaced (``FileExistsError``). ``body`` holds the job's figures (job, teacher,
    sampling, filter, prompts count, outputs counts, tokens, flops (the teacher's FLOP at the
    audit's per-token figure), stopped_by_budget, message, wall_time_s)."""
    from audit.versions import tool_versions

    out_dir = Path(out_dir).resolve()
    files = [InputFile("samples", out_dir / "samples.jsonl", out_dir),
             InputFile("kept_samples", out_dir / KEPT_FILE, out_dir),
             InputFile("data_manifest", out_dir / MANIFEST_FILE, out_dir),
             InputFile("audit_envelope", audit_envelope, out_dir, None, envelope_sha256)]
    if approval_path is not None:
        files.append(InputFile("approval", approval_path, out_dir, None, approval_sha256))
    # the plan and the prompts as the gate and the job verified them: their checked digests
    files.append(InputFile("plan", plan_path, out_dir, None, audit.plan.sha256))
    files.append(InputFile("prompts", prompts_path, out_dir, None, prompts_sha256))
    subjects, inputs = build_subjects(files)
    digest = {e["role"]: e["sha256"] for e in inputs}
    envelope_name = next(e["name"] for e in inputs if e["role"] == "audit_envelope")
    tokens = {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in body["tokens"].items()}
    predicate = {
        "tool": tool_versions(),
        "created": utc_timestamp(),
        "plan": {"name": audit.plan.name, "sha256": audit.plan.sha256},
        "audit": {"envelope": envelope_name, "sha256": envelope_sha256, "outcome": audit.outcome,
                  "created": audit.created, "approval_sha256": approval_sha256},
        "job": body["job"],
        "teacher": body["teacher"],
        "sampling": body["sampling"],
        "filter": body.get("filter"),
        "filter_sha256": body.get("filter_sha256"),
        "prompts": {"sha256": prompts_sha256, "count": body["prompts_count"]},
        "outputs": {"samples_sha256": digest["samples"], "kept_sha256": digest["kept_samples"],
                    "manifest_sha256": digest["data_manifest"], **body["outputs"]},
        "tokens": tokens,
        "flops": {k: finite_or_none(v) if isinstance(v, float) else v for k, v in body.get("flops", {}).items()},
        "stopped_by_budget": bool(body["stopped_by_budget"]),
        "message": body["message"],
        "wall_time_s": finite_or_none(body["wall_time_s"]),
        "energy": body.get("energy"),
        "ledger": body.get("ledger"),
        "obligations": carried_obligations(audit),
        "inputs": inputs,
    }
    statement = make_statement(subjects, PREDICATE_GENERATION_RECORD, predicate)
    envelope = sign_statement(statement, private_key)
    # never replaces a signed record: the link fails when one exists (FileExistsError)
    envelope_path = write_atomic(out_dir / RECORD_ENVELOPE, envelope.to_bytes(), overwrite=False)
    json_path = write_atomic(out_dir / RECORD_JSON, json.dumps(statement, indent=2) + "\n")
    return WrittenRecord(envelope_path, json_path, statement)


def _signer_hint(envelope: bytes) -> str:
    """Who the unverified record names as its signer, and the two ways to a record a run trusts
    (a hint for the person, never a decision)."""
    from audit.attest.dsse import parse_envelope
    from audit.attest.keys import short_fingerprint

    try:
        named = ", ".join(short_fingerprint(s.keyid) for s in parse_envelope(envelope).signatures)
    except Exception:  # noqa: BLE001 - an envelope that does not parse gets no hint
        return ""
    return (f"; it names its signer as {named}. Generated data is trusted only under a record signed by "
            "a key trusted for the audit (--pubkey/--trust): run flopgate generate with --key set to "
            "such a key (without --key it signs with this machine's local key), or trust the job's key too")


def verify_generated(folder: str | Path, trusted_keys, audit_sha256: str) -> GeneratedData:
    """Check ``folder`` per the module docstring (1); :class:`ProvenanceRefused` names every failure.

    The envelope's signature and statement are verified (``check_files=False``: the trainer
    reads exactly one subject, the samples, and compares the digest of the bytes it read)."""
    from audit.attest import PREDICATE_GENERATION_RECORD, VerificationFailed
    from audit.attest.verify import read_envelope_file, verify_envelope_bytes
    from audit.fsutil import read_input, sha256_bytes
    from audit.limits import MAX_DATA_BYTES

    folder = Path(folder)
    record_path, kept_path = folder / RECORD_ENVELOPE, folder / KEPT_FILE
    try:
        data = read_envelope_file(record_path)
    except InputError as exc:
        raise ProvenanceRefused([f"generated data: no generation record ({exc})"]) from None
    try:
        verified = verify_envelope_bytes(data, trusted_keys, predicate_types=(PREDICATE_GENERATION_RECORD,),
                                         check_files=False)
    except VerificationFailed as exc:
        hint = _signer_hint(data) if exc.reason == "signature" else ""
        raise ProvenanceRefused([f"generated data: {record_path} does not verify ({exc}){hint}"]) from None
    predicate = verified.predicate
    reasons = []
    record_audit = (predicate.get("audit") or {}).get("sha256")
    if record_audit != audit_sha256:
        reasons.append(f"generated data: the generation record is for audit {str(record_audit)[:12]}..., "
                       f"not the audit verified here ({audit_sha256[:12]}...)")
    expected = (predicate.get("outputs") or {}).get("kept_sha256")
    kept, kept_sha256 = b"", ""
    try:
        kept = read_input(kept_path, "kept samples", max_bytes=MAX_DATA_BYTES)
        kept_sha256 = sha256_bytes(kept)
        if kept_sha256 != expected:
            reasons.append(f"generated data: {kept_path} has sha256 {kept_sha256[:12]}..., the signed "
                           f"generation record says {str(expected)[:12]}... (the samples were changed)")
    except InputError as exc:
        reasons.append(f"generated data: {exc}")
    if reasons:
        raise ProvenanceRefused(reasons)
    return GeneratedData(folder, record_path, verified.envelope_sha256, kept_path, kept_sha256, kept, predicate)


class ProvenanceRefused(Exception):
    """The generated data is not the audited teacher's (one line per reason)."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons))


@dataclass(frozen=True)
class GeneratedData:
    """The verified output of ``flopgate generate``: ``kept`` are the bytes to train on."""

    folder: Path
    record_path: Path
    record_sha256: str       # of the envelope's bytes
    kept_path: Path
    kept_sha256: str
    kept: bytes
    predicate: dict
