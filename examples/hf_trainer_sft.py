"""Sequence-level distillation with Hugging Face's Trainer, behind flopgate's gate.

The teacher's answers come from ``flopgate generate`` (``OUT/kept-samples.jsonl``); the student
learns them with cross-entropy on the answer tokens only (prompt tokens are masked). The gate
opens first: a DENY, edited or expired audit, or an audit of another plan, stops the script
(exit 6) before any model is built. Every optimizer step is metered against the audit's budget
and charged in the ledger; the run record is signed at the end.

    python examples/hf_trainer_sft.py PLAN --attestation audit.intoto.json --pubkey auditor.pub \\
        --samples generate-out/kept-samples.jsonl --out sft-out

``--lora R`` trains LoRA adapters of rank R (PEFT) on a frozen student for a plan that declares
no adapter: the audit counted full training, and that is what each step is charged (an
over-count). A plan with ``student.adapter`` is audited and charged at the adapter's rate: train
it with examples/lora_student.py (this script's gate refuses it). Runs on a CPU for tiny models
(tests); use a GPU for real ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan")
    p.add_argument("--attestation", required=True)
    p.add_argument("--pubkey", required=True, help="the auditor's public key")
    p.add_argument("--samples", required=True, help="kept-samples.jsonl written by flopgate generate")
    p.add_argument("--tokenizer", help="a copy of the audited tokenizer (default: the audited folder itself: the "
                   "plan's data.tokenizer, else the teacher's)")
    p.add_argument("--out", required=True)
    p.add_argument("--key", help="the key that signs the run record (default: the local key)")
    p.add_argument("--ledger", help="the ledger (default: as for every flopgate command)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora", type=int, default=0, metavar="R", help="train LoRA adapters of rank R")
    p.add_argument("--cpu", action="store_true", help="train on the CPU")
    return p.parse_args(argv)


def tokenize_samples(path: Path, tokenizer, seq_len: int) -> list[dict]:
    """One training row per kept sample: prompt then answer, padded to ``seq_len``; labels are
    the answer tokens (and EOS) only, -100 elsewhere."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        sample = json.loads(line)
        prompt = "\n".join(m["content"] for m in sample["messages"]) + "\n"
        answer = sample["completion"]["content"]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt_ids + answer_ids)[:seq_len]
        labels = ([-100] * len(prompt_ids) + answer_ids)[:seq_len]
        pad = seq_len - len(ids)
        rows.append({"input_ids": ids + [tokenizer.pad_token_id] * pad,
                     "attention_mask": [1] * len(ids) + [0] * pad,
                     "labels": labels + [-100] * pad})
    return rows


def open_run(args, **gate_options):
    """The gate first: nothing is loaded or built for a refused audit. The open run, or the
    exit code (6) after printing why it refused."""
    from distill.gate import GateRefused, open_gate

    try:
        return open_gate(args.plan, args.attestation, pubkey=args.pubkey, out_dir=args.out, key=args.key,
                         ledger=args.ledger, **gate_options)
    except GateRefused as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return refused.exit_code


def audited_student(run):
    """The student built from the config the audit counted (seeded random weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**dict(run.gate.loaded_plan.student_config.data)))


def load_rows(run, args):
    """The audited tokenizer (built from the bytes the audit covers: ``run.inputs``, flopgate's
    attested-input layer) and the training rows from the kept samples."""
    tokenizer = run.inputs.tokenizer(args.tokenizer).tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, tokenize_samples(Path(args.samples), tokenizer, run.plan.data.seq_len)


def load_rows_or_refuse(run, args):
    """:func:`load_rows`, or the exit code (6) after printing why an input was refused."""
    from distill.gate import GateRefused

    try:
        return load_rows(run, args)
    except GateRefused as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return refused.exit_code


def train_behind_gate(run, model, rows, tokenizer, args) -> int:
    """Train ``model`` with transformers' Trainer and the gate's callback; prints what was charged."""
    from transformers import Trainer, TrainingArguments

    from distill.gate.hf import FlopgateCallback

    training = TrainingArguments(str(Path(args.out) / "hf"), per_device_train_batch_size=args.batch,
                                 max_steps=args.steps, learning_rate=args.lr, logging_steps=1,
                                 save_strategy="no", report_to=[], use_cpu=args.cpu, disable_tqdm=True,
                                 include_num_input_tokens_seen="all")
    trainer = Trainer(model=model, args=training, train_dataset=rows, processing_class=tokenizer,
                      callbacks=[FlopgateCallback(run)])
    trainer.train()
    meter = run.meter
    print(f"steps {meter.steps}, {meter.tokens} tokens, {meter.flops:.4g} FLOP charged, "
          f"{meter.left_flops:.4g} FLOP left of the budget; record in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = open_run(args)  # a plan with student.adapter is refused here: see examples/lora_student.py
    if isinstance(run, int):
        return run
    loaded = load_rows_or_refuse(run, args)
    if isinstance(loaded, int):
        return loaded
    tokenizer, rows = loaded
    model = audited_student(run)
    if args.lora:  # charged as full training: the plan declares no adapter (an over-count)
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora, lora_alpha=2 * args.lora,
                                                 target_modules=["q_proj", "v_proj"]))
    return train_behind_gate(run, model, rows, tokenizer, args)


if __name__ == "__main__":
    sys.exit(main())
