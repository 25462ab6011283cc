"""How much the old held-out split flattered logit KD's evaluation: the same tiny run (same seed,
steps, data, models) evaluated on held-out rows drawn as random rows of the packed stream (the
split before issue 29: documents span rows, so held-out rows share documents with trained rows)
and on held-out documents (no held-out document is trained on), on CPU.

    python bench/eval_leakage.py                   # 200 documents, 300 steps (about a minute a run)
    python bench/eval_leakage.py --documents 100 --steps 40   # a smoke run

Few documents and many epochs, so that the student can learn its training documents by heart,
which is what the old split rewarded. Prints one JSON line per split and the differences.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "distill")]


def run(split: str, root: Path, data_file: Path, steps: int, eval_rows: int, seed: int = 0) -> dict:
    from distill.data.training_data import EpochOrder
    from distill.train.trainer import TrainConfig, train
    from distill_testkit import tiny_run

    by_document = split == "document"
    original = EpochOrder.hold_out

    def hold_out(self, count, by_document=by_document):  # the split under test, nothing else changed
        return original(self, count, by_document=by_document)

    EpochOrder.hold_out = hold_out
    try:
        cfg = TrainConfig.parse(tiny_run(root, data_files=[str(data_file)], out_dir=str(root / f"out-{split}"),
                                         max_steps=steps, micro_batch=8, lr=3e-3, eval_sequences=eval_rows,
                                         tensorboard=False, seed=seed))
        result = train(cfg)
    finally:
        EpochOrder.hold_out = original
    return {"split": split, "seed": seed, **{k: result.eval[k] for k in ("kl", "ce", "top1_agreement", "tokens")},
            "rows": result.eval_split["rows"], "steps": result.steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200, help="documents of tests/distill/data/train.txt used")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-rows", type=int, default=24, help="held-out rows (eval_sequences)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (models, order, split)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    text = (ROOT / "tests" / "distill" / "data" / "train.txt").read_text(encoding="utf-8")
    documents = [d for d in text.split("\n\n") if d.strip()][:args.documents]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data_file = root / "train.txt"
        data_file.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
        results = [run(split, root, data_file, args.steps, args.eval_rows, args.seed) for split in ("row", "document")]
    for result in results:
        print(json.dumps(result))
    old, new = results
    print(json.dumps({"kl_new_minus_old": new["kl"] - old["kl"], "ce_new_minus_old": new["ce"] - old["ce"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
