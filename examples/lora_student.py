"""A LoRA student behind flopgate's gate: sequence-level distillation with Hugging Face's Trainer
(as examples/hf_trainer_sft.py, whose pieces it uses) where the student's weights stay frozen
and only the adapters the plan declares train.

The plan declares the adapter (``student.adapter: {kind: lora, rank: 8, alpha: 16,
target_modules: [q_proj, v_proj]}``) and the audit counts its training step: the frozen
student's forward and input-gradient backward, the adapters' forward and backward
(``audit.flops.adapter``), less than full training. The gate opens with
``trains_adapter=True``; ``FlopgateCallback`` then refuses, before any step, a model that is not
that adapter on the audited student (another rank or target, anything else trainable: the
trainable and frozen parameter counts must be the audit's), and charges every step at the
adapter's rate. A DENY, edited or expired audit, or an audit of another plan, stops the script
(exit 6) before any model is built.

    python examples/lora_student.py PLAN --attestation audit.intoto.json --pubkey auditor.pub \\
        --samples generate-out/kept-samples.jsonl --out lora-out

Runs on a CPU for tiny models (tests); use a GPU for real ones. ``OUT/final`` holds the adapter
(PEFT's ``save_pretrained``), and the run record is signed over it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_trainer_sft import audited_student, load_rows_or_refuse, open_run, parse_args, train_behind_gate  # noqa: E402

BAD_PLAN_EXIT = 2


def lora_student(model, adapter):
    """``model`` with the plan's LoRA adapter (PEFT); PEFT freezes every other weight."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha or adapter.rank,
                                            lora_dropout=adapter.dropout, target_modules=list(adapter.target_modules)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.lora:
        print("--lora: the adapter comes from the plan (student.adapter)", file=sys.stderr)
        return BAD_PLAN_EXIT
    run = open_run(args, trains_adapter=True)
    if isinstance(run, int):
        return run
    adapter = run.plan.student.adapter
    if adapter is None:
        print("student.adapter: the plan declares no adapter; train the whole student with "
              "examples/hf_trainer_sft.py", file=sys.stderr)
        return BAD_PLAN_EXIT
    loaded = load_rows_or_refuse(run, args)
    if isinstance(loaded, int):
        return loaded
    tokenizer, rows = loaded
    model = lora_student(audited_student(run), adapter)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA rank {adapter.rank} on {', '.join(adapter.target_modules)}: {trainable} trainable, "
          f"{total - trainable} frozen parameters; {run.flops_per_token:.6g} FLOP per token")
    return train_behind_gate(run, model, rows, tokenizer, args)


if __name__ == "__main__":
    sys.exit(main())
