"""On-policy distillation with TRL's GKD trainer, behind flopgate's gate.

The student samples answers to the prompts of a chat dataset, the teacher scores every position
of what it sampled, and the student learns from the teacher's distributions (generalised JSD):
GKD (Agarwal et al., 2024) as TRL 1.16 ships it, ``trl.experimental.gkd.GKDTrainer`` (TRL moved
it out of ``trl`` into ``trl.experimental``; this script uses it from there, with ``lmbda=1``:
every step on-policy, and ``seq_kd`` off, since an on-policy audit counts no teacher
generation).

The plan says ``method: {kind: on_policy, student_generated_tokens: ..., prompt_tokens: ...}``;
the audit counts the student's sampling, the teacher's scoring and the student's training.
The gate opens first, with ``meters_sampling=True``: a DENY, edited or expired audit, or an
audit of another plan, stops the script (exit 6) before any model is loaded. The trainer class
is wrapped by ``distill.gate.hf.metered_on_policy``, which counts per step the positions the student
ran while sampling (prompt prefill and sampled tokens, padding included) and the positions it
trained on; ``FlopgateCallback`` charges each optimizer step in the ledger (rank 0): sampled
positions x the student's forward FLOP per token, trained positions x (the student's training +
the teacher's forward) FLOP per token, and stops the run before a step that would pass the
budget. The teacher is the audited folder (``teacher.weights``, re-hashed by the gate) and must
have the audited shapes; sequences are kept within the audited ``data.seq_len`` (prompts are cut
to ``seq_len - max_new_tokens``).

    python examples/trl_gkd.py PLAN --attestation audit.intoto.json --pubkey auditor.pub \\
        --data chat.jsonl --tokenizer TOKENIZER_DIR --out gkd-out

``--data``: JSONL, one ``{"messages": [...]}`` a line; the last message (the assistant's) is
dropped for sampling, the rest is the prompt (through the tokenizer's chat template). Runs on a
CPU for tiny models (tests); use a GPU for real ones. A plan with ``student.adapter`` trains that
LoRA adapter on the frozen student (as examples/lora_student.py), charged at the adapter's rates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BAD_INPUT_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan")
    p.add_argument("--attestation", required=True)
    p.add_argument("--pubkey", required=True, help="the auditor's public key")
    p.add_argument("--data", required=True, help="chat JSONL: one {\"messages\": [...]} a line")
    p.add_argument("--tokenizer", help="a copy of the audited tokenizer, with a chat template (default: the "
                   "audited folder itself: the plan's data.tokenizer, else the teacher's)")
    p.add_argument("--out", required=True)
    p.add_argument("--key", help="the key that signs the run record (default: the local key)")
    p.add_argument("--ledger", help="the ledger (default: as for every flopgate command)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens the student samples per prompt")
    p.add_argument("--temperature", type=float, default=0.9, help="sampling temperature")
    p.add_argument("--beta", type=float, default=0.5, help="GKD's generalised JSD interpolation (0: KL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="TRL's SFT default; it also turns the KV cache off while sampling, so every sampled token "
                   "re-runs its prefix (and is charged so)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU")
    return p.parse_args(argv)


def read_chats(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            messages = json.loads(line)["messages"]
            if len(messages) >= 2:
                rows.append({"messages": messages})
    return rows


def load_teacher(run):
    """The audited teacher folder (the gate re-hashed it), checked against the audited config."""
    from transformers import AutoModelForCausalLM

    from distill.gate.model_check import check_loaded_model

    from audit.weights import verify_unchanged

    loaded = run.gate.loaded_plan
    teacher = AutoModelForCausalLM.from_pretrained(loaded.plan.teacher.weights)
    check_loaded_model(teacher, loaded.teacher_config.data, role="teacher", source=str(loaded.teacher_config.path))
    verify_unchanged(run.gate.model_folders["teacher_weights"])  # what loaded is what the gate hashed
    return teacher.eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hf_trainer_sft import audited_student, open_run
    from lora_student import lora_student

    # the gate first: nothing is loaded for a refused audit. A plan with student.adapter trains
    # just that adapter here (FlopgateCallback checks it), so the gate may open for one.
    run = open_run(args, meters_sampling=True, trains_adapter=True)
    if isinstance(run, int):
        return run
    plan = run.plan
    if not plan.teacher.weights or run.gate.loaded_plan.teacher_config is None:
        print("teacher.weights/teacher.config: on-policy training needs the audited teacher folder", file=sys.stderr)
        return BAD_INPUT_EXIT
    prompt_room = plan.data.seq_len - args.max_new_tokens
    if prompt_room < 1:
        print(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt within the audited "
              f"seq_len {plan.data.seq_len}", file=sys.stderr)
        return BAD_INPUT_EXIT

    import torch
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distill.gate.hf import FlopgateCallback, metered_on_policy

    from distill.gate import GateRefused

    try:  # the audited tokenizer (the teacher folder's), built from the bytes the audit covers
        tokenizer = run.inputs.tokenizer(args.tokenizer).tokenizer
    except GateRefused as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return refused.exit_code
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # prompts are sampled from: pad on the left
    student = audited_student(run)
    if plan.student.adapter is not None:  # LoRA on the frozen student: sampling runs the adapters too
        student = lora_student(student, plan.student.adapter)
    teacher = load_teacher(run)
    torch.manual_seed(args.seed)
    config = GKDConfig(str(Path(args.out) / "hf"), per_device_train_batch_size=args.batch, max_steps=args.steps,
                       learning_rate=args.lr, logging_steps=1, save_strategy="no", report_to=[], use_cpu=args.cpu,
                       disable_tqdm=True, seed=args.seed, lmbda=1.0, seq_kd=False, beta=args.beta,
                       temperature=args.temperature, max_new_tokens=args.max_new_tokens, max_length=prompt_room,
                       gradient_checkpointing=args.gradient_checkpointing)
    trainer = metered_on_policy(GKDTrainer)(
        model=student, teacher_model=teacher, args=config, train_dataset=Dataset.from_list(read_chats(Path(args.data))),
        processing_class=tokenizer, callbacks=[FlopgateCallback(run)])
    trainer.train()
    meter = run.meter
    print(f"steps {meter.steps}, {meter.tokens} trained positions, {meter.generated} sampled positions, "
          f"{meter.flops:.4g} FLOP charged, {meter.left_flops:.4g} FLOP left of the budget; record in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
