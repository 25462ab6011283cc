"""``flopgate distill PLAN --attestation audit.intoto.json``: the distillation, behind the gate.

Order: (1) the gate (distill/gate/checks.py): signature by a trusted key, file digests, plan,
outcome (and approval for REVIEW), age, policy-pack versions; (2) preflight: the teacher
folder matches the audited teacher config, the data files match the audited manifest, the
compute meter gets a per-token figure and a budget from the audit; (3) a CUDA device, unless
--allow-cpu; --dry-run stops here, having loaded no model; (4) training; (5) the signed run
record, the model card (README.md, NOTICE) and run-report.html in --out.

Budget: the smaller of the plan's budget.max_flops and the audited compute of what the run
spends (student training and teacher forward); the run stops before it would pass the budget,
and a run whose first step cannot fit in what is left is refused (exit 6) before any model
loads. FLOP per token: the audited student training FLOP per token
plus the teacher's forward FLOP per token (1 multiply-add = 2 FLOP).

A sequence plan (method.kind: sequence) trains on the answers flopgate generate wrote:
--generated DIR, accepted only when DIR's signed generation record is for this audit and its
kept samples; no teacher model is loaded and the meter charges student training only
(docs/distillation.md).

Exit codes: 0 done (also after a clean stop at the budget), 6 refused by the gate (each reason
on its own line), 2 invalid input (including: no CUDA and no --allow-cpu), 1 unexpected error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.cli.args import add_ledger_option, help_text, positive
from audit.compute.run_budget import positive_number
from audit.numbers import short_sci
from distill.gate import preflight
from distill.gate.gated_run import refuse
from distill.train.session import dry_run_done, loop_overrides, finish_run


def register(subparsers) -> None:
    p = subparsers.add_parser("distill", help="run the planned distillation behind a verified audit",
                              description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gate_options(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./distill-out/PLAN-NAME)")
    p.add_argument("--key", metavar="FILE", help="Ed25519 key that signs the run record "
                                                 "(default: the local key, created on first use)")
    p.add_argument("--data", nargs="+", action="extend", metavar="FILE", help="the data files, "
                   "when not at the manifest's paths; they must match the audited manifest byte for byte")
    p.add_argument("--steps", type=positive(int), metavar="N", help="stop after N optimizer steps "
                   "(default: the plan's tokens); the compute budget still applies")
    p.add_argument("--micro-batch", type=positive(int), metavar="N", help="sequences per process per micro-step")
    p.add_argument("--grad-accum", type=positive(int), metavar="N", help="micro-steps per optimizer step")
    p.add_argument("--lr", type=positive(float), metavar="X", help="peak learning rate")
    p.add_argument("--checkpoint-every", type=positive(int), metavar="N", help="steps between checkpoints")
    p.add_argument("--teacher-cache", metavar="DIR", help="cached teacher logits for a cached_logits plan "
                   "(built there on first use; default OUT/teacher-cache)")
    p.add_argument("--generated", metavar="DIR", help="a sequence plan: the folder flopgate generate wrote; "
                   "trained on only when its signed generation record names this audit and its kept samples")
    p.add_argument("--tokenizer", metavar="DIR", help="a sequence plan: the tokenizer folder (default: the "
                   "teacher's local folder)")
    p.add_argument("--also-logits", action="store_true", help="a sequence plan with method.also_logits: the local "
                   "teacher also runs over the answers and its logits join the loss")
    p.add_argument("--no-compile", action="store_true", help="no torch.compile on CUDA")
    p.add_argument("--shard-teacher", action="store_true", help="under torchrun: shard the teacher's layers "
                   "over the processes (FSDP2) instead of a whole copy on each; for teachers too large for one GPU")
    p.add_argument("--shard-student", choices=("auto", "fsdp", "ddp"), help="under torchrun: shard the student "
                   "over the processes (fsdp, FSDP2) or replicate it (ddp); default auto: FSDP2 from 1e9 parameters")
    p.add_argument("--activation-checkpointing", choices=("on", "off"), help="recompute each student layer in the "
                   "backward (default: on from 1e9 parameters)")
    p.add_argument("--offload", action="store_true", help="with FSDP2: keep the student's shards, gradients and "
                   "optimizer step in host memory")
    p.add_argument("--reduce-every-micro-step", action="store_true", help="with FSDP2 and --grad-accum > 1: "
                   "reduce-scatter the gradients after every micro-step (less memory, more communication) instead "
                   "of once per optimizer step, which keeps the student's whole gradients on every GPU in between")
    p.add_argument("--eval-sequences", type=positive(int), metavar="N", help="hold N packed sequences out of "
                   "training and evaluate on them (KL to the teacher, cross-entropy, top-1 agreement)")
    p.add_argument("--eval-every", type=positive(int), metavar="N", help="evaluate every N steps (default: at the "
                   "end only)")
    p.add_argument("--early-stop-patience", type=positive(int), metavar="N", help="stop after N evaluations "
                   "without improvement (KL, else cross-entropy)")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files in OUT/tensorboard")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases, offline, in OUT/wandb "
                   "(needs the wandb package)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out (a sharded "
                   "checkpoint also at another process count with the same global batch)")
    p.add_argument("--allow-cpu", action="store_true", help="train without CUDA (tests and tiny demos)")
    p.add_argument("--dry-run", action="store_true", help="run every check, load no model, train nothing")
    add_ledger_option(p)
    p.set_defaults(func=run)


def add_gate_options(p) -> None:
    """The plan, the signed audit and whom to trust: the same flags for every gated command
    (distill, generate), with the meanings of :func:`distill.gate.gated_run.verify_audit`."""
    p.add_argument("plan", help="the plan file (YAML) the audit was made for")
    p.add_argument("--attestation", required=True, metavar="FILE", help="the signed audit (audit.intoto.json)")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--pubkey", metavar="FILE", help="trust this auditor public key")
    trust.add_argument("--trust", metavar="DIR", help="trust every *.pub auditor key in this folder")
    p.add_argument("--approval", metavar="FILE", help="a reviewer's approval (needed for a REVIEW audit)")
    p.add_argument("--approver-pubkey", metavar="FILE", help="trust this reviewer public key")
    p.add_argument("--approver-trust", metavar="DIR", help="trust every *.pub reviewer key in this folder")
    runners = p.add_mutually_exclusive_group()
    runners.add_argument("--runner-pubkey", metavar="FILE", help="trust this key's charges and generation rows in "
                         "the ledger besides your own (another machine's runs under the same audit)")
    runners.add_argument("--runner-trust", metavar="DIR", help="trust the ledger rows of every *.pub runner key in "
                         "this folder besides your own")
    p.add_argument("--max-age-days", type=positive(float, maximum=36500), default=30.0, metavar="N",
                   help="refuse an audit older than N days (default 30)")


def run(args) -> int:
    from distill.gate.gated_run import GateRefused, open_gate

    try:
        opened = open_gate(args.plan, args.attestation, pubkey=args.pubkey, trust=args.trust,
                           approval=args.approval, approver_pubkey=args.approver_pubkey,
                           approver_trust=args.approver_trust, max_age_days=args.max_age_days,
                           out_dir=args.out, key=args.key, ledger=args.ledger, resume=args.resume,
                           runner_pubkey=args.runner_pubkey, runner_trust=args.runner_trust)
    except GateRefused as refused:
        return refuse("distill", refused.reasons)
    gate = opened.gate
    print(f"gate open: audit {args.attestation} (outcome {gate.outcome}, sha256 {gate.envelope_sha256[:12]}...)")
    for note in gate.notes:
        print(f"  {note}")

    loaded = gate.loaded_plan  # parsed from the very bytes the gate verified; never read again
    if loaded.plan.method.kind == "sequence" or args.generated:
        from distill.train.sequence import run as run_sequence

        return run_sequence(args, opened)  # sequence-level: the teacher's answers, no teacher model
    flops_per_token, budget, teacher_fpt = opened.flops_per_token, opened.budget_flops, None
    if loaded.plan.method.kind == "cached_logits":
        # The teacher runs once, when the cache is built; the meter charges that once, so the
        # per-training-token figure is the student's alone.
        teacher_fpt = ((gate.predicate.get("compute") or {}).get("teacher") or {}).get("forward_flops_per_token")
        if not positive_number(teacher_fpt):
            return refuse("distill", ["compute: the audit has no teacher forward FLOP per token for the logit cache"])
        flops_per_token -= teacher_fpt
    cfg = train_config(loaded, args, out_dir=opened.out_dir, flops_per_token=flops_per_token, budget=budget,
                       teacher_flops_per_token=teacher_fpt,
                       manifest_sha256=next((e.sha256 for e in gate.audit.inputs_of("dataset_manifest")), None),
                       inputs=gate.inputs, eval_figures=opened.eval_figures())
    tokens = preflight.step_tokens(cfg)
    # a fresh cache costs at least the teacher's forward over one step's rows before the first step
    one_off = teacher_fpt * tokens if teacher_fpt is not None and not args.resume else 0.0
    try:
        preflight.check_first_step_fits(opened, step_tokens=tokens, flops_per_token=flops_per_token,
                                        tolerance=cfg.tolerance, one_off_flops=one_off)
    except GateRefused as refused:
        return refuse("distill", refused.reasons)
    device_name = preflight.device_name(args)
    print(f"compute: {short_sci(flops_per_token, 4)} FLOP per token, budget {short_sci(budget, 4)} FLOP "
          f"(stop before {short_sci(budget * (1 + cfg.tolerance), 4)}); device {device_name}")
    if args.dry_run:
        return dry_run_done(args)

    from distill.train.trainer import train

    # Under torchrun every process runs the checks; only the first signs (and may create a key)
    # and books the gate opening and each step's charge in the ledger.
    booked = opened.step_charges()
    result = train(cfg, resume=args.resume, after_load=preflight.audited_model_checks(loaded, gate),
                   on_step=booked.on_step if booked else None, after_resume=booked.after_resume if booked else None,
                   tokenizer=gate.inputs.tokenizer(role="teacher_weights").tokenizer,
                   manifest=gate.inputs.manifest()[0] if loaded.plan.data.manifest else None,
                   student_tokenizer=(gate.inputs.tokenizer(role="student_tokenizer").tokenizer
                                      if loaded.plan.student.tokenizer else None))
    if result.rank != 0:
        return 0
    return finish_run(args, loaded, gate, cfg, result, opened.signing_key(), device_name,
                      ledger_head=opened.ledger_anchor())


def train_config(loaded, args, *, out_dir: Path, flops_per_token: float, budget: float,
                 teacher_flops_per_token: float | None = None, manifest_sha256: str | None = None,
                 inputs=None, eval_figures: dict | None = None):
    """The trainer's config from the plan, the audit's figures and the flags; checks the
    teacher folder and the data files first (no model is loaded). ``manifest_sha256`` is the
    audited manifest's digest: the manifest read here and by the trainer must have it;
    ``inputs``: the open gate's attested layer (:mod:`distill.gate.attested`), which reads the
    manifest and the teacher's config.json."""
    from distill.train.trainer import TrainConfig

    plan, source = loaded.plan, str(loaded.path)
    preflight.check_out_dir(out_dir, args.resume)
    teacher_dir = preflight.teacher_dir(loaded, inputs)
    preflight.refuse_document_counting_without_masking(plan, source)
    manifest = inputs.manifest() if inputs is not None and plan.data.manifest else None
    data_files = preflight.training_data_files(loaded, args.data, manifest_sha256, read=manifest)

    local_teacher = plan.teacher.model_copy(update={"model": str(teacher_dir)})
    with_teacher = loaded.model_copy(update={"plan": plan.model_copy(update={
        "teacher": local_teacher, "teachers": [local_teacher, *plan.teachers[1:]]})})
    overrides = {**loop_overrides(args), **(eval_figures or {})}  # the audited evaluation figures, if any
    if teacher_flops_per_token is not None:
        overrides["teacher_flops_per_token"] = teacher_flops_per_token
    if getattr(args, "teacher_cache", None):
        overrides["teacher_cache_dir"] = Path(args.teacher_cache)
    if getattr(args, "no_compile", False):
        overrides["compile"] = False
    if getattr(args, "shard_teacher", False):
        overrides["shard_teacher"] = True
    if manifest_sha256 is not None:
        overrides["manifest_sha256"] = manifest_sha256
    return TrainConfig.from_plan(with_teacher, out_dir=out_dir, flops_per_token=flops_per_token,
                                 budget_flops=budget, data_files=data_files, **overrides)
