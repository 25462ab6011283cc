"""Where a run's numbers go, step by step: ``metrics.jsonl`` (the record of truth), TensorBoard
event files (``OUT/tensorboard``) and, when asked for and installed, Weights & Biases in offline
mode (``OUT/wandb``, synced later with ``wandb sync``). Rank 0 writes; other ranks write nothing.

Series (TensorBoard tag = W&B key): ``train/loss``, ``train/lr``, ``train/grad_norm``,
``train/tokens_per_s``, ``compute/flops`` (spent, FLOP, 1 multiply-add = 2), ``compute/budget_left``
(FLOP the meter still allows), ``compute/tokens``, ``energy/joules`` (the GPUs' energy counters
summed over ranks, ``energy_j`` in ``metrics.jsonl``; absent when not measured), and at each evaluation ``eval/<metric>``
(:mod:`distill.train.loop`). A step whose loss was not read back (``log_every``) has no loss point.
On resume, TensorBoard drops the points of steps after the checkpoint (``purge_step``), as
``metrics.jsonl`` drops their lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from audit.errors import InputError

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


def read_metrics_text(path: Path) -> str:
    """The text of the metrics log ``path`` (read by ``audit.fsutil.read_input``, at most
    ``MAX_DATA_BYTES``); ``InputError`` naming it when it cannot be read or is not UTF-8."""
    from audit.fsutil import decode_utf8, read_input
    from audit.limits import MAX_DATA_BYTES

    return decode_utf8(read_input(path, "the metrics log", max_bytes=MAX_DATA_BYTES), path, "the metrics log")


class MetricsLog:
    """JSONL, one object per optimizer step, written by rank 0 and flushed per line."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.handle = path, enabled, None

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = []
        for line in read_metrics_text(self.path).splitlines():
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                break  # a line cut short by a crash ends the log
        return records

    def open(self, keep_through_step: int) -> None:
        """Keep the records up to ``keep_through_step`` (0: none) and append after them."""
        if not self.enabled:
            return
        from audit.fsutil import write_atomic

        kept = [r for r in self.records() if r.get("step", 0) <= keep_through_step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.handle:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()
            self.handle = None


def scalars(record: dict, budget_limit: Optional[float]) -> dict[str, float]:
    """The series of one metrics record (absent values left out)."""
    named = {"train/loss": record.get("loss"), "train/lr": record.get("lr"), "train/grad_norm": record.get("grad_norm"),
             "train/tokens_per_s": record.get("tokens_per_s"), "compute/flops": record.get("flops"),
             "compute/tokens": record.get("tokens"), "energy/joules": record.get("energy_j")}
    if budget_limit is not None and record.get("flops") is not None:
        named["compute/budget_left"] = budget_limit - record["flops"]
    for key, value in (record.get("eval") or {}).items():
        named[f"eval/{key}"] = value
    return {k: float(v) for k, v in named.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RunLog:
    """``metrics.jsonl`` plus the optional writers; ``write`` takes the loop's step record."""

    def __init__(self, out_dir: Path, log_path: Optional[Path], *, enabled: bool, tensorboard: bool,
                 wandb: bool, budget_limit: Optional[float], run_name: str):
        self.metrics = MetricsLog(log_path or out_dir / "metrics.jsonl", enabled=enabled)
        self.out_dir, self.enabled, self.budget_limit = out_dir, enabled, budget_limit
        self.want_tensorboard, self.want_wandb, self.run_name = tensorboard, wandb, run_name
        self._tb = self._wandb = None
        if enabled and wandb:
            _require_wandb()

    def records(self) -> list[dict]:
        return self.metrics.records()

    def open(self, keep_through_step: int) -> None:
        self.metrics.open(keep_through_step)
        if not self.enabled:
            return
        if self.want_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=keep_through_step + 1)
        if self.want_wandb:
            import wandb

            (self.out_dir / WANDB_DIR).mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(mode="offline", dir=str(self.out_dir / WANDB_DIR), name=self.run_name,
                                     resume="allow", id=self.run_name)

    def write(self, record: dict) -> None:
        self.metrics.write(record)
        values = scalars(record, self.budget_limit) if (self._tb or self._wandb) else {}
        if self._tb is not None:
            for tag, value in values.items():
                self._tb.add_scalar(tag, value, global_step=record["step"])
        if self._wandb is not None and values:
            self._wandb.log(values, step=record["step"])

    def close(self) -> None:
        self.metrics.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _require_wandb() -> None:
    try:
        import wandb  # noqa: F401 - only whether it imports
    except ImportError:
        raise InputError("Weights & Biases logging was asked for but the wandb package is not installed "
                         "(pip install wandb)", field="--wandb") from None
