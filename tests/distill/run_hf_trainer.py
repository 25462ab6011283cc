"""Run a transformers.Trainer behind the gate in its own process(es), for the multi-process test:

    accelerate launch --multi_gpu --num_processes 2 run_hf_trainer.py PLAN ENVELOPE PUBKEY KEY OUT STEPS [PACKS]

(--multi_gpu only selects the multi-process launcher: TrainingArguments(use_cpu=True) trains on
the CPU over gloo.)

The student is built from the audited config; each rank trains on random token rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    plan, envelope, pubkey, key, out, steps = sys.argv[1:7]
    import distill.gate.gated_run

    distill.gate.gated_run._installed_pack_versions = lambda: json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

    from distill.gate import open_gate
    from distill.gate.hf import FlopgateCallback

    run = open_gate(plan, envelope, pubkey=pubkey, key=key, out_dir=out)
    config = dict(run.gate.loaded_plan.student_config.data)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    seq_len = run.plan.data.seq_len
    g = torch.Generator().manual_seed(1)
    rows = [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(0, config["vocab_size"], (64, seq_len), generator=g)]
    args = TrainingArguments(f"{out}/hf", per_device_train_batch_size=2, max_steps=int(steps), save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, include_num_input_tokens_seen="all")
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[FlopgateCallback(run)])
    trainer.train()
    # one file per rank: the ranks' stdout may interleave
    Path(out, f"rank-{trainer.args.process_index}.txt").write_text(
        f"RANK {trainer.args.process_index} STEPS {trainer.state.global_step} TOKENS {run.meter.tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
