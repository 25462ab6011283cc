"""Run ``distill.train.trainer.train`` in its own process, for the resume and distributed tests.

    python run_train.py CONFIG.json [--resume] [--hang-after-step N] [--result FILE]
    python -m torch.distributed.run --standalone --nproc_per_node 2 run_train.py CONFIG.json

``--hang-after-step N`` prints ``HANGING <N>`` after step N and sleeps, so a test can SIGKILL the
process at a known point mid-training. ``--result`` writes rank 0's ``TrainResult`` as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from distill.train.trainer import TrainConfig, train


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang-after-step", type=int)
    parser.add_argument("--result")
    args = parser.parse_args()
    cfg = TrainConfig.parse(json.loads(Path(args.config).read_text()), args.config)

    def on_step(record: dict) -> None:
        if record["step"] == args.hang_after_step:
            print(f"HANGING {record['step']}", flush=True)
            time.sleep(600)

    result = train(cfg, resume=args.resume, on_step=on_step)
    if args.result and result.rank == 0:
        Path(args.result).write_text(json.dumps(dataclasses.asdict(result), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
