"""What FlopgateCallback costs per step: the same transformers.Trainer run on the CPU with and
without the callback (gate opened once, outside the timing), interleaved, median of N runs.

    python bench/hf_callback_overhead.py [--runs 3] [--steps 20] [--hidden 256]

Prints one table: seconds per run with and without, the ratio per step (the training loop, ledger
charge with fsync included) and the one-off end of the run (saving the model, signing the record,
writing the card and report), timed apart. The audit is a hand-signed one (as in the tests).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "distill")]


def _project(root: Path, hidden: int, seq_len: int):
    from generate_kit import make_project, plan_text

    project = make_project(root, "https://api.example.com/v1")
    student = json.loads((root / "student.json").read_text())
    student.update(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, vocab_size=512)
    (root / "student.json").write_text(json.dumps(student))
    text = plan_text("https://api.example.com/v1").replace("seq_len: 32", f"seq_len: {seq_len}")
    project.plan.write_text(text)
    return project


def _train(model_config: dict, rows, steps: int, callback, out: Path) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**model_config))
    args = TrainingArguments(str(out), per_device_train_batch_size=4, max_steps=steps, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=10,
                             include_num_input_tokens_seen="all")
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback] if callback else None)
    began = time.perf_counter()
    trainer.train()
    return time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    a = p.parse_args()

    import torch
    import transformers

    from distill.gate import open_gate
    from distill.gate.hf import FlopgateCallback
    from generate_kit import sign_audit
    from keypairs import write_keypair

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("FLOPGATE_HOME", str(tmp / "home"))
        import distill.gate.gated_run

        distill.gate.gated_run._installed_pack_versions = lambda: {}
        signer = write_keypair(tmp / "keys", "bench")
        project = _project(tmp / "project", a.hidden, a.seq_len)
        envelope = sign_audit(project, signer)
        config = json.loads((tmp / "project" / "student.json").read_text())
        g = torch.Generator().manual_seed(1)
        rows = [{"input_ids": ids, "labels": ids}
                for ids in torch.randint(0, config["vocab_size"], (4 * a.steps, a.seq_len), generator=g)]
        class Timed(FlopgateCallback):
            end_s = 0.0

            def on_train_end(self, *args, **kwargs):
                began = time.perf_counter()
                out = super().on_train_end(*args, **kwargs)
                self.end_s = time.perf_counter() - began
                return out

        with_cb, without, ends = [], [], []
        for i in range(a.runs):
            without.append(_train(config, rows, a.steps, None, tmp / f"plain{i}"))
            run = open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=tmp / f"out{i}",
                            key=str(signer.private_path), ledger=str(tmp / f"ledger{i}.sqlite"))
            run.budget_flops = run.audit_budget_flops = 1e30  # time the bookkeeping, not the budget stop
            callback = Timed(run)
            total = _train(config, rows, a.steps, callback, tmp / f"gated{i}")
            with_cb.append(total - callback.end_s)
            ends.append(callback.end_s)
        plain, gated, end = statistics.median(without), statistics.median(with_cb), statistics.median(ends)
        print(f"# {dt.date.today()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
              f"torch {torch.__version__} · transformers {transformers.__version__} · Python {platform.python_version()}")
        print(f"# student: hidden {a.hidden}, 4 layers, seq_len {a.seq_len}, batch 4, {a.steps} steps, "
              f"median of {a.runs} interleaved runs")
        print("| run | seconds | per step (ms) |")
        print("|---|---|---|")
        print(f"| Trainer | {plain:.3f} | {1000 * plain / a.steps:.1f} |")
        print(f"| Trainer + FlopgateCallback (steps) | {gated:.3f} | {1000 * gated / a.steps:.1f} |")
        print(f"| ratio per step | {gated / plain:.3f}x | {1000 * (gated - plain) / a.steps:+.2f} ms/step |")
        print(f"| end of run (save, sign, card, report), once | {end:.3f} | |")
        from audit.ledger.store import Ledger

        with Ledger(tmp / "charges.sqlite") as ledger:  # the per-step bookkeeping alone
            ledger.charge("ab" * 32, 1e30, "bench", 0, 1, 1, 1.0, signer.private_key)
            began = time.perf_counter()
            for step in range(100):
                ledger.charge("ab" * 32, 1e30, "bench", step, step + 1, 1, 1.0, signer.private_key, update_flops=0.5)
            per_charge = (time.perf_counter() - began) / 100
        print(f"| one ledger charge (SQLite, synchronous=FULL), per step | {per_charge:.4f} | "
              f"{100 * per_charge / (plain / a.steps):.2f}% of a step |")


if __name__ == "__main__":
    main()
