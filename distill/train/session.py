"""The steps of a gated training run that both recipes (logit KD, sequence KD) share: the
loop settings from the flags, the end of a dry run, and the signed record, model card,
report and exported student at the end."""

from __future__ import annotations

from audit.numbers import short_sci


def dry_run_done(args) -> int:
    """The end of a --dry-run: the signing key (when named) must load too; nothing was trained."""
    if args.key:
        from audit.attest.keys import load_private_key
        load_private_key(args.key)
    print("dry run: every check passed; no model was loaded")
    return 0


def loop_overrides(args) -> dict:
    """The command-line settings of the training loop every recipe shares (distill.train.loop.LoopConfig)."""
    checkpointing = {"on": True, "off": False}.get(getattr(args, "activation_checkpointing", None))
    values = {"max_steps": args.steps, "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
              "lr": args.lr, "checkpoint_every": args.checkpoint_every,
              "student_sharding": getattr(args, "shard_student", None), "activation_checkpointing": checkpointing,
              "offload": True if getattr(args, "offload", False) else None,
              "defer_reduction": False if getattr(args, "reduce_every_micro_step", False) else None,
              "eval_sequences": getattr(args, "eval_sequences", None), "eval_every": getattr(args, "eval_every", None),
              "early_stop_patience": getattr(args, "early_stop_patience", None),
              "tensorboard": False if getattr(args, "no_tensorboard", False) else None,
              "wandb": True if getattr(args, "wandb", False) else None}
    return {k: v for k, v in values.items() if v is not None}


def manifest_datasets(gate, loaded) -> list[str]:
    """The names of the data sources the audited manifest lists (a prepared-shards manifest's
    ``inputs``, a raw one's ``files``; the last part of each path), for the model card's
    ``datasets``; none without a manifest (a sequence run trains on the teacher's answers)."""
    from pathlib import PurePosixPath

    if not loaded.plan.data.manifest or getattr(gate, "inputs", None) is None:
        return []
    manifest, _ = gate.inputs.manifest()   # read once and cached by the attested layer
    entries = manifest.get("inputs") or manifest.get("files") or []
    return list(dict.fromkeys(PurePosixPath(str(e["path"])).name for e in entries if isinstance(e, dict) and e.get("path")))


def finish_run(args, loaded, gate, cfg, result, signing_key, device_name: str, extra_files=(),
               ledger_head: dict | None = None) -> int:
    from audit.attest.keys import key_id, short_fingerprint
    from distill.outputs.export import export_model
    from distill.outputs.model_card import installed_clause_types, write_model_card
    from distill.outputs.run_record import write_run_record
    from distill.outputs.run_report import write_run_report

    private_key, key_path = signing_key

    written = write_run_record(
        cfg.out_dir, result, audit_envelope=args.attestation, audit=gate.audit,
        envelope_sha256=gate.envelope_sha256, plan_path=loaded.path, private_key=private_key,
        device_name=device_name, flops_per_token=cfg.flops_per_token, tolerance=cfg.tolerance,
        approval_path=args.approval if gate.approval_sha256 else None, approval_sha256=gate.approval_sha256,
        approval=gate.approval, extra_files=extra_files, ledger_head=ledger_head)
    record = written.statement["predicate"]
    card = write_model_card(cfg.out_dir, plan=loaded.plan, audit=gate.audit, record=record,
                            clause_types=installed_clause_types(), datasets=manifest_datasets(gate, loaded))
    report = write_run_report(cfg.out_dir, plan=loaded.plan, audit=gate.audit, record=record,
                              card=card, metrics_path=cfg.log_path)
    model_dir = export_model(cfg.out_dir, result.checkpoint_dir, [f for f in (card.readme, card.notice) if f])
    print(result.message)
    print(f"compute used: {short_sci(result.flops_used, 4)} FLOP of {short_sci(cfg.budget_flops, 4)}; "
          f"{result.tokens:,} tokens in {result.steps} steps, {result.wall_time_s:.1f} s")
    if result.lost_tokens:
        print(f"lost to crashes and charged: {short_sci(result.lost_flops, 4)} FLOP ({result.lost_tokens:,} tokens)")
    print(f"run record:   {written.envelope_path}")
    print(f"signed by:    {short_fingerprint(key_id(private_key.public_key()))} ({key_path}; verify with its .pub)")
    print(f"model card:   {card.readme}" + (f" (+ {card.notice.name})" if card.notice else ""))
    print(f"run report:   {report}")
    print(f"student:      {model_dir} (AutoModelForCausalLM/AutoTokenizer.from_pretrained; model card inside)")
    if card.todos:
        print(f"{len(card.todos)} obligation(s) to do before release; see {card.readme.name}")
    return 0
