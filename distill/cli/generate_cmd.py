"""``flopgate generate PLAN --attestation audit.intoto.json``: the teacher answers the audited
prompts, behind the same gate as ``flopgate distill``.

Order: (1) the gate (distill/gate/checks.py): signature by a trusted key, file digests (the prompts
file included), plan, outcome (and approval for REVIEW), age, policy-pack versions; a refusal
exits 6. (2) The plan must name a teacher that can answer: an API endpoint (teacher.endpoint;
--endpoint may change the path only, never the audited scheme, host or port, exit 6) or a local weights
folder (teacher.weights, hashed by check and re-hashed by the gate); a prompts file
(data.prompts) and method.kind sequence. (3) The allowance: the audited method.prompt_tokens and
method.teacher_generated_tokens for all jobs under this audit, held in the ledger: each time the
job needs more it reserves it under the ledger's lock (refused when all jobs would pass the audit),
from verified rows (--runner-pubkey/--runner-trust: other machines' jobs whose rows count).
(4) Generation: an API teacher through the official openai client, CONCURRENCY requests at once,
retries with exponential backoff and jitter on 429, 408, 5xx,
timeouts and dropped connections (Retry-After honoured), a one-line error on 401/403/404 (exit
2); a local teacher loaded from its audited folder (its shapes checked against the audited
config) answering in batches of up to CONCURRENCY prompts, through vLLM when it is installed and
a CUDA device is present, else transformers' generate (--backend chooses). Each answer is
appended to OUT/samples.jsonl (flush + fsync); --resume continues a killed or stopped job
without asking a prompt twice. --filter module:function is called on each sample and returns
True (keep) or False (discard); discarded samples stay in samples.jsonl, marked, and their
tokens count. The job stops before a request could pass the allowance (its prompt counted
conservatively, its answer bounded by --max-tokens). (5) kept-samples.jsonl, data-manifest.json
and the signed generation record in OUT (it signs the job's last ledger row); a generation row in
the ledger releasing what the job held beyond what it used.

The API key is read from the environment variable named by teacher.api_key_env, and never
written or printed. Exit codes: 0 done (also after a clean stop at the allowance), 6 refused by
the gate or no allowance left, 5 a ledger row that does not verify, 2 invalid input or a refused
key, 1 a prompt that kept failing (resume later) or an unexpected error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from pathlib import Path

from audit.cli.args import add_ledger_option, help_text, positive
from distill.cli.distill_cmd import add_gate_options
from distill.gate.gated_run import refuse

GENERATE_DEFAULT_OUT = "generate-out"
LEDGER_EVERY_S = 10.0
"""While a job runs, its tokens used so far go to the ledger this often (what it holds is booked
as it reserves)."""


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="have the teacher (an API or its local weights) answer the audited prompts, behind a verified audit",
                              description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gate_options(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./generate-out/PLAN-NAME)")
    p.add_argument("--key", metavar="FILE", help="Ed25519 key that signs the record and the ledger row "
                                                 "(default: the local key, created on first use)")
    p.add_argument("--endpoint", metavar="URL", help="another path on the audited endpoint's origin (the same "
                   "scheme, host and port); any other origin is refused")
    p.add_argument("--resume", action="store_true", help="continue the job in --out")
    p.add_argument("--filter", metavar="MODULE:FUNCTION", help="called on each sample (a dict); True keeps it, "
                   "False marks it discarded (its tokens still count)")
    p.add_argument("--max-tokens", type=positive(int, maximum=10_000_000), default=1024, metavar="N",
                   help="the most tokens one answer may have (default 1024)")
    p.add_argument("--temperature", type=_non_negative, default=1.0, metavar="T", help="sampling temperature (default 1)")
    p.add_argument("--top-p", type=positive(float, maximum=1), metavar="P", help="nucleus sampling")
    p.add_argument("--seed", type=int, metavar="N", help="sampling seed, where the endpoint supports one")
    p.add_argument("--concurrency", type=positive(int, maximum=1024), default=4, metavar="N",
                   help="requests in flight at once; for a local teacher, the most prompts in one batch (default 4)")
    p.add_argument("--backend", choices=("auto", "transformers", "vllm"), default="auto",
                   help="a local teacher's engine (default auto: vLLM when installed and a CUDA device is present, "
                        "else transformers generate)")
    p.add_argument("--timeout", type=positive(float), default=120.0, metavar="S",
                   help="seconds one request may take (default 120)")
    p.add_argument("--max-attempts", type=positive(int, maximum=100), default=6, metavar="N",
                   help="attempts per prompt, the first included (default 6)")
    p.add_argument("--backoff", type=_non_negative, default=0.5, metavar="S",
                   help="first retry delay; doubled each retry, with full jitter (default 0.5)")
    p.add_argument("--backoff-max", type=_non_negative, default=60.0, metavar="S",
                   help="the longest wait between attempts, Retry-After included (default 60)")
    add_ledger_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from audit.errors import InputError
    from distill.gate.gated_run import GateRefused, verify_audit

    try:
        gate = verify_audit(args.plan, args.attestation, pubkey=args.pubkey, trust=args.trust,
                            approval=args.approval, approver_pubkey=args.approver_pubkey,
                            approver_trust=args.approver_trust, max_age_days=args.max_age_days)
    except GateRefused as refused:
        return refuse("generate", refused.reasons)
    loaded = gate.loaded_plan  # parsed from the very bytes the gate verified
    _check_generation_plan(loaded)
    endpoint = None
    if loaded.plan.teacher.access == "api":
        endpoint, refusal = _endpoint(loaded, gate, args.endpoint)
        if refusal:
            return refuse("generate", [refusal])
    elif args.endpoint is not None:
        raise InputError("--endpoint is for an API teacher; this plan's teacher runs from its audited weights "
                         "folder", field="--endpoint")
    print(f"gate open: audit {args.attestation} (outcome {gate.outcome}, sha256 {gate.envelope_sha256[:12]}...)")
    for note in gate.notes:
        print(f"  {note}")
    return _generate(args, loaded, gate, endpoint)


def _check_generation_plan(loaded) -> None:
    """The plan names a teacher that can answer (an API endpoint or a local weights folder), a
    prompts file and method.kind sequence."""
    from audit.errors import InputError
    from audit.weights import teacher_folder

    plan, source = loaded.plan, str(loaded.path)
    if plan.teacher.access == "api" and not plan.teacher.endpoint:
        raise InputError("an API teacher needs teacher.endpoint (an OpenAI-compatible base URL); set it and re-run "
                         "flopgate check", source=source, field="teacher.endpoint")
    if plan.teacher.access != "api" and teacher_folder(plan) is None:
        raise InputError("the teacher answers from an API endpoint (teacher.access: api, teacher.endpoint) or from "
                         "a local weights folder (teacher.access: weights, teacher.weights); set one and re-run "
                         "flopgate check", source=source, field="teacher")
    if plan.method.kind != "sequence":
        raise InputError(f"flopgate generate writes sequence-level training data; the plan's method.kind is "
                         f"{plan.method.kind!r}, expected 'sequence'", source=source, field="method.kind")
    if not plan.data.prompts:
        raise InputError("the teacher answers an audited prompts file; set data.prompts (JSONL) and re-run "
                         "flopgate check", source=source, field="data.prompts")


def _endpoint(loaded, gate, override: str | None) -> tuple[str, str | None]:
    """(the base URL to use, a refusal or None) for an API teacher: its origin (scheme, host and
    port) is the audited one (the signed plan's content says so too) and an --endpoint may change
    the path only: on a loopback host another port is another server."""
    from audit.errors import InputError
    from audit.plan import endpoint_origin

    plan = loaded.plan
    audited_teacher = (gate.audit.plan.content or {}).get("teacher") or {}
    audited = audited_teacher.get("endpoint")
    origin = endpoint_origin(plan.teacher.endpoint)
    if not isinstance(audited, str):
        return "", "endpoint: the audit's plan names no teacher endpoint; re-run flopgate check"
    try:
        audited_origin = endpoint_origin(audited)
    except ValueError:
        return "", "endpoint: the audit's plan has an unusable teacher endpoint; re-run flopgate check"
    if origin != audited_origin:
        return "", f"endpoint: the plan's endpoint {origin} is not the audited origin {audited_origin}"
    if override is None:
        return plan.teacher.endpoint, None
    try:
        wanted = endpoint_origin(override)
    except ValueError as exc:
        raise InputError(str(exc).removeprefix("endpoint: "), field="--endpoint") from None
    if wanted != audited_origin:
        return "", f"endpoint: --endpoint names {wanted}, which is not the audited origin {audited_origin} " \
                   "(scheme, host and port); --endpoint may change the path only"
    return override, None


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "job"


def _generate(args, loaded, gate, endpoint: str) -> int:
    from audit.errors import InputError
    from distill.generation.backend import Sampling
    from distill.generation.journal import (ATTEMPTS_FILE, JOB_FILE, SAMPLES_FILE, Journal, job_seal, journal_key,
                                            load_state, read_job_file, write_job_file)
    from distill.generation.meter import TokenMeter
    from distill.gate.attested import filter_function
    from distill.outputs.generation_record import RECORD_ENVELOPE, RECORD_JSON
    from distill.generation.retry import RetryPolicy
    from distill.generation.runner import run_prompts

    plan = loaded.plan
    out_dir = Path(args.out) if args.out else Path(GENERATE_DEFAULT_OUT) / _safe_name(plan.name)
    prompts, prompts_sha256 = gate.inputs.prompts()  # the audited bytes, read once (distill/gate/attested.py)
    sampling = Sampling(model=plan.teacher.model, max_tokens=args.max_tokens, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed)
    keep, filter_sha256 = filter_function(args.filter) if args.filter else (None, None)
    job = {"audit_sha256": gate.envelope_sha256, "plan_sha256": gate.audit.plan.sha256,
           "prompts_sha256": prompts_sha256,
           "teacher": _teacher_identity(loaded, gate, endpoint, args.backend),
           "sampling": sampling.as_dict(), "filter": args.filter, "filter_sha256": filter_sha256}

    used = [n for n in (JOB_FILE, SAMPLES_FILE, ATTEMPTS_FILE) if (out_dir / n).exists()]
    if (out_dir / RECORD_ENVELOPE).exists() or (out_dir / RECORD_JSON).exists():
        raise InputError(f"holds a finished job with a signed record ({RECORD_ENVELOPE}); it is never overwritten: "
                         "choose another output folder (--out)", source=str(out_dir))
    if used and not args.resume:
        raise InputError(f"already holds a generation job ({', '.join(used)}); continue it (--resume) or choose "
                         "another output folder (--out)", source=str(out_dir))
    mac_key = journal_key()
    if args.resume:
        if JOB_FILE not in used:
            raise InputError(f"holds no generation job ({JOB_FILE}) to resume", source=str(out_dir))
        started = read_job_file(out_dir, mac_key)
        for key_name, value in job.items():
            if started.get(key_name) != value:
                raise InputError(f"the job was started with another {key_name} ({started.get(key_name)!r}); resume "
                                 f"it with the same audit, prompts, teacher, sampling flags and filter"[:400],
                                 source=str(out_dir / JOB_FILE), field=key_name)
        job_id = str(started.get("job_id"))
    else:
        job_id = str(uuid.uuid4())
    seal = job_seal(mac_key, job_id, gate.envelope_sha256, out_dir)
    state = load_state(out_dir, seal) if args.resume else None
    done = state.done if state else {}
    pending = [p for p in prompts if p.id not in done]
    _check_done_prompts(done, prompts, out_dir / SAMPLES_FILE)
    if state:
        _check_journal_against_ledger(state, gate.envelope_sha256, job_id, args.ledger, out_dir)

    # the allowance: held in the ledger, each reservation under its lock (never read once)
    private_key, key_path = _signing_key(args.key)
    allowance = _allowance(args, gate, plan, job_id, job["teacher"], out_dir, private_key)
    meter = TokenMeter(0, 0, used_prompt=max(state.prompt_tokens if state else 0, allowance.used[0]),
                       used_completion=max(state.completion_tokens if state else 0, allowance.used[1]),
                       allowance=allowance)
    allowed_prompt, allowed_completion = allowance.ceiling
    others = allowance.others
    if pending and not meter.fits_ever(pending[0].max_prompt_tokens(), sampling.max_tokens) and not (state and state.attempts):
        allowance.close()
        return refuse("generate", [f"budget: audit {gate.envelope_sha256[:12]}... allows {allowed_prompt:,.0f} more prompt and "
                        f"{allowed_completion:,.0f} more generated tokens (audited {plan.method.prompt_tokens:,.0f} and "
                        f"{plan.method.teacher_generated_tokens:,.0f}, other jobs spent or hold {others[0]:,} and "
                        f"{others[1]:,}); the first prompt could need {pending[0].max_prompt_tokens():,} + "
                        f"{sampling.max_tokens:,}"])

    teacher = job["teacher"]
    where = teacher.get("endpoint_host") or f"{teacher['engine']} on this machine"
    # a resumed job with no room for its next request signs what it has without opening (loading) the teacher
    first_fits = bool(pending) and meter.fits_ever(pending[0].max_prompt_tokens(), sampling.max_tokens)
    backend = _open_backend(args, loaded, gate, endpoint, teacher) if first_fits else None
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        write_job_file(out_dir, {"job_id": job_id, **job}, mac_key)
    journal = Journal(out_dir, session=(state.sessions if state else 0) + 1, seal=seal,
                      lines=state.lines if state else None)
    print(f"job {job_id}: {len(pending)} of {len(prompts)} prompt(s) to answer with {plan.teacher.model} at "
          f"{where} ({args.concurrency} at once)")
    summary, status = None, "failed"
    booked_at = [time.monotonic()]

    def book_running() -> None:  # spent so far, from memory (the journal is being written); held as it is
        if time.monotonic() - booked_at[0] >= LEDGER_EVERY_S:
            booked_at[0] = time.monotonic()
            allowance.book(None, (meter.used_prompt, meter.used_completion), status="running", force=True)

    energy = _local_energy_meter(teacher) if backend is not None else None   # a local teacher's GPU counter
    try:
        if state and state.attempts:  # a died session's spending reaches the ledger before any request
            allowance.book(None, (state.prompt_tokens, state.completion_tokens), status="running", force=True,
                           extra={"answered": len(state.done)})
        summary = run_prompts(pending, backend, sampling, meter, journal, concurrency=args.concurrency,
                              retry=RetryPolicy(args.max_attempts, args.backoff, args.backoff_max), keep=keep,
                              filter_name=args.filter, log=lambda line: print(line, flush=True),
                              progress=book_running)
        status = "stopped_by_budget" if summary.stopped_by_budget else "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        journal.close()
        if backend is not None:
            backend.close()
        _book(allowance, seal, out_dir, status, failing=summary is None)
        allowance.close()
    return _finish(args, loaded, gate, out_dir, prompts, prompts_sha256, job, seal, summary, private_key, key_path,
                   allowed=(allowed_prompt, allowed_completion), ledger_head=allowance.last_row, energy=energy)


def _local_energy_meter(teacher: dict):
    """A started :class:`distill.runtime.energy.EnergyMeter` on the local teacher's GPU (the
    current CUDA device; a CPU teacher is not measured); None for an API teacher."""
    if teacher.get("endpoint_host"):
        return None
    import torch

    from distill.runtime.energy import EnergyMeter

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    meter = EnergyMeter(None, device)
    meter.start()
    return meter


def _energy_block(energy, teacher: dict, plan, sessions: int, wall_time_s: float) -> dict:
    """The record's energy of this job (:func:`distill.generation.meter.job_energy`)."""
    from audit.compute.tables import load_reference_tables
    from distill.generation.meter import job_energy

    joules = None
    if energy is not None:
        energy.step()
        joules = energy.joules
        energy.close()
    device_name = (energy.name if energy is not None and energy.name else "cpu") if not teacher.get("endpoint_host") \
        else str(teacher.get("endpoint_host"))
    hardware = plan.hardware.model_dump() if plan.hardware is not None else None
    return job_energy(teacher=teacher, session_joules=joules, sessions=sessions,
                      reason=energy.reason if energy is not None else "", wall_time_s=wall_time_s,
                      device_name=device_name, device_type="cuda" if energy is not None and energy.name else "cpu",
                      plan_hardware=hardware, tables=load_reference_tables())


def _check_journal_against_ledger(state, audit_sha256: str, job_id: str, ledger_path, out_dir: Path) -> None:
    """The journal only grows: it must hold at least the samples and tokens the ledger booked
    for this job from it (rows with ``answered``, written from the journal itself; a running
    row's in-flight reservations are not compared). A journal with its last lines cut (spending
    hidden) is refused."""
    from audit.errors import InputError
    from audit.ledger.store import Ledger, ledger_exists

    if not ledger_exists(ledger_path):
        return
    with Ledger(ledger_path, create=False) as ledger:
        booked = [r.get("body") or {} for r in ledger.rows(audit=audit_sha256)
                  if r.get("kind") == "generation" and (r.get("body") or {}).get("job_id") == job_id]
    have = {"answered": len(state.done), "prompt_tokens": state.prompt_tokens,
            "completion_tokens": state.completion_tokens}
    for body in booked:
        if body.get("answered") is None:
            continue
        short = [f"{name} {int(body.get(name, 0)):,} (the journal has {have[name]:,})" for name in have
                 if int(body.get(name, 0)) > have[name]]
        if short:
            raise InputError(f"the ledger booked more for job {job_id} than its journal holds: {', '.join(short)}; "
                             "the journal was cut, nothing was resumed", source=str(out_dir))


def _check_done_prompts(done: dict, prompts, samples_path: Path) -> None:
    """Every sample answers an audited prompt, with that prompt's messages exactly."""
    from audit.errors import InputError

    audited = {p.id: p for p in prompts}
    for prompt_id, row in done.items():
        prompt = audited.get(prompt_id)
        if prompt is None:
            raise InputError(f"holds a sample for prompt id {prompt_id!r}, not in the audited prompts",
                             source=str(samples_path))
        if row.get("messages") != prompt.as_messages():
            raise InputError(f"the sample for prompt {prompt_id!r} is not the audited prompt with that id "
                             "(its messages differ); nothing was resumed", source=str(samples_path))


def _teacher_identity(loaded, gate, endpoint: str | None, backend: str) -> dict:
    """What answers, as recorded in the job, the ledger and the generation record: the model and
    the endpoint's host, or for a local teacher the audited weights' root digest and the engine."""
    from audit.plan import endpoint_host
    from distill.generation.local import choose_engine

    model = loaded.plan.teacher.model
    if endpoint is not None:
        return {"model": model, "endpoint_host": endpoint_host(endpoint)}
    weights = gate.model_folders["teacher_weights"]  # the gate hashed it against the audit
    return {"model": model, "weights_sha256": weights.root_sha256, "engine": choose_engine(backend)}


def _open_backend(args, loaded, gate, endpoint: str | None, teacher: dict):
    """The API client, or the local teacher loaded from its audited folder and checked: shapes
    as the audited config, folder unchanged since the gate hashed it."""
    if endpoint is not None:
        from distill.generation.api import OpenAIBackend, api_key_for

        api_key, key_source = api_key_for(loaded.plan, os.environ)
        return OpenAIBackend(endpoint, api_key, key_source=key_source, timeout_s=args.timeout)
    from audit.weights import teacher_folder, verify_unchanged
    from distill.gate.preflight import audited_model_checks, check_teacher_matches_audit

    folder = teacher_folder(loaded.plan)
    describe = {"weights_sha256": teacher["weights_sha256"]}
    check_teacher_matches_audit(loaded, folder, config_raw=gate.inputs.folder_file("teacher_weights", "config.json"))
    if teacher["engine"] == "vllm":
        from distill.generation.local import VLLMBackend

        backend = VLLMBackend(folder, model_id=loaded.plan.teacher.model, batch_size=args.concurrency,
                              seed=args.seed, describe=describe)
        for digest in gate.model_folders.values():
            verify_unchanged(digest)
        return backend
    import torch

    from distill.generation.local import TransformersBackend
    from distill.runtime.models import library_progress_bars, load_teacher

    library_progress_bars(sys.stderr.isatty())

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_teacher(folder, device, torch.bfloat16 if device == "cuda" else torch.float32)
    audited_model_checks(loaded, gate)(model, None)
    print(f"teacher loaded from {folder} on {device} (transformers generate, batches of up to {args.concurrency})")
    tokenizer = gate.inputs.tokenizer(role="teacher_weights").tokenizer  # the audited teacher folder's bytes
    return TransformersBackend(model, tokenizer, model_id=loaded.plan.teacher.model,
                               batch_size=args.concurrency, seed=args.seed, describe=describe)


def _generation_flops(gate, plan, tokens: int) -> dict:
    """The teacher's FLOP for ``tokens`` (prompt + generated) at the audit's per-token figure
    (teacher_generation: a forward per token, prefill and KV-cache decode alike)."""
    component = next((c for c in gate.audit.compute.components if c.id == "teacher_generation"), None)
    audited_tokens = plan.method.prompt_tokens + plan.method.teacher_generated_tokens
    if component is None or component.flops is None or audited_tokens <= 0:
        return {"per_token": None, "used": None, "audited": None}
    per_token = component.flops / audited_tokens
    return {"per_token": per_token, "used": per_token * tokens, "audited": component.flops}


def _signing_key(path: str | None):
    from audit.attest.keys import ensure_default_key, key_id, load_private_key, short_fingerprint

    if path:
        return load_private_key(path), Path(path)
    key, where, created = ensure_default_key()
    if created:
        print(f"created a local signing key: {where} ({short_fingerprint(key_id(key.public_key()))})", file=sys.stderr)
    return key, where


def _allowance(args, gate, plan, job_id: str, teacher: dict, out_dir: Path, private_key):
    """The job's share of the audit's token allowance, held in the ledger (verified: rows of
    this audit signed by trusted keys, by role, with running totals that add up)."""
    from distill.generation.allowance import LedgerAllowance
    from distill.gate.ledger_charges import ledger_trust

    fields = {"out": str(out_dir.resolve()), "teacher_model": teacher["model"],
              **{k: v for k, v in teacher.items() if k != "model"}}
    return LedgerAllowance(args.ledger, gate.envelope_sha256, job_id,
                           (plan.method.prompt_tokens, plan.method.teacher_generated_tokens), private_key,
                           ledger_trust(args), fields)


def _book(allowance, seal, out_dir: Path, status: str, *, failing: bool) -> None:
    """The job's tokens used (from its sealed journal) as a ``generation`` row, releasing what it
    held beyond them. When the job is already failing, a ledger that cannot be written is a
    warning, so the first error is the one shown."""
    from distill.generation.journal import load_state

    try:
        state = load_state(out_dir, seal)
        kept = sum(1 for r in state.done.values() if r.get("status") == "kept")
        used = (state.prompt_tokens, state.completion_tokens)
        allowance.book(used, used, status=status, force=True,
                       extra={"answered": len(state.done), "kept": kept, "discarded": len(state.done) - kept})
    except Exception as exc:  # noqa: BLE001
        if not failing:
            raise
        print(f"flopgate: warning: the job's tokens were not recorded in the ledger ({exc})", file=sys.stderr)


def _ledger_anchor(row: dict | None) -> dict | None:
    """The ledger head the job charged against (its last row): ``flopgate ledger verify --record``
    proves the ledger still reaches it."""
    return None if row is None else {"seq": row["seq"], "row_hash": row["row_hash"]}


def _finish(args, loaded, gate, out_dir: Path, prompts, prompts_sha256: str, job: dict, seal, summary,
            private_key, key_path, *, allowed: tuple[float, float], ledger_head: dict | None = None,
            energy=None) -> int:
    from audit.attest.keys import key_id, short_fingerprint
    from distill.generation.journal import load_state
    from distill.outputs.generation_record import write_generation_record, write_kept

    plan = loaded.plan
    state = load_state(out_dir, seal)
    answered = state.done
    kept = sum(1 for r in answered.values() if r.get("status") == "kept")
    used_prompt = sum(int(r["usage"]["prompt_tokens"]) for r in answered.values())
    used_completion = sum(int(r["usage"]["completion_tokens"]) for r in answered.values())
    write_kept(out_dir, [p.id for p in prompts], answered, teacher=job["teacher"], audit_sha256=gate.envelope_sha256,
               prompts_sha256=prompts_sha256)
    body = {"job": {"id": seal.job_id, "sessions": state.sessions, "attempts": state.attempts},
            "teacher": {**job["teacher"],
                        "models_reported": sorted({str(r.get("teacher_model")) for r in answered.values()})},
            "sampling": job["sampling"], "filter": job["filter"], "filter_sha256": job["filter_sha256"],
            "prompts_count": len(prompts),
            "outputs": {"answered": len(answered), "kept": kept, "discarded": len(answered) - kept,
                        "unanswered": len(prompts) - len(answered)},
            "tokens": {"prompt": state.prompt_tokens, "completion": state.completion_tokens,
                       "lost_prompt": state.prompt_tokens - used_prompt,
                       "lost_completion": state.completion_tokens - used_completion,
                       "allowed_prompt": float(allowed[0]), "allowed_completion": float(allowed[1]),
                       "audited_prompt": float(plan.method.prompt_tokens),
                       "audited_completion": float(plan.method.teacher_generated_tokens)},
            "flops": _generation_flops(gate, plan, state.prompt_tokens + state.completion_tokens),
            "stopped_by_budget": summary.stopped_by_budget, "message": summary.message,
            "wall_time_s": state.wall_time_s, "ledger": _ledger_anchor(ledger_head),
            "energy": _energy_block(energy, job["teacher"], plan, state.sessions, state.wall_time_s)}
    written = write_generation_record(
        out_dir, audit=gate.audit, audit_envelope=args.attestation, envelope_sha256=gate.envelope_sha256,
        plan_path=loaded.path, prompts_path=plan.data.prompts, prompts_sha256=prompts_sha256,
        private_key=private_key, body=body, approval_path=args.approval if gate.approval_sha256 else None,
        approval_sha256=gate.approval_sha256)
    print(summary.message)
    print(f"answered {len(answered)} of {len(prompts)} prompt(s): {kept} kept, {len(answered) - kept} discarded")
    print(f"tokens: {state.prompt_tokens:,} prompt of {allowed[0]:,.0f}, {state.completion_tokens:,} generated of "
          f"{allowed[1]:,.0f} (lost to failures and charged: {state.prompt_tokens - used_prompt:,} + "
          f"{state.completion_tokens - used_completion:,}); {state.wall_time_s:.1f} s")
    if body["flops"]["used"] is not None:
        from audit.numbers import short_sci

        print(f"teacher compute: {short_sci(body['flops']['used'], 4)} FLOP of {short_sci(body['flops']['audited'], 4)} "
              "audited (the audit's FLOP per token x tokens)")
    print(f"generation record: {written.envelope_path}")
    print(f"signed by:         {short_fingerprint(key_id(private_key.public_key()))} ({key_path}; verify with its .pub)")
    return 0
