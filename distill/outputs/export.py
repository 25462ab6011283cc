"""The student a user takes away: ``OUT/model/``, loadable with ``from_pretrained``.

After a run, ``OUT/model/`` holds the final checkpoint's model and tokenizer files (weights,
config, generation config, tokenizer, chat template) and the model card (``README.md``, and
``NOTICE`` when the teacher's terms require one), and nothing else: optimizer, scheduler, RNG
and trainer state stay under ``OUT/checkpoints/``. Each copied file must have the same sha256 as
in the checkpoint the run record signs. Written into a temp folder and renamed into place; a
previous ``model/`` (a resumed run re-exports) is replaced only after the new one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from audit.errors import FlopgateError
from audit.fsutil import fsync_dir, sha256_file

MODEL_DIR = "model"
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json")
"""Checkpoint files that are training state, not model (``rng-rank*.pt`` too)."""


def model_files(checkpoint_dir: Path) -> list[Path]:
    """The checkpoint's files that make up the model and its tokenizer."""
    return sorted(p for p in checkpoint_dir.iterdir()
                  if p.is_file() and p.name not in TRAINING_STATE and not p.name.startswith(("rng-", ".")))


def export_model(out_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, card_files: Iterable[Path]) -> Path:
    """Write ``out_dir/model`` from ``checkpoint_dir`` plus the model card files; returns it."""
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    final = out_dir / MODEL_DIR
    temp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}-", dir=out_dir))
    try:
        for source in [*model_files(checkpoint_dir), *card_files]:
            target = temp / source.name
            shutil.copyfile(source, target)
            if sha256_file(target) != sha256_file(source):
                raise FlopgateError(f"{source}: changed while it was copied to {final}")
            with open(target, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(temp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}-old-", dir=out_dir))
            os.replace(final, old / MODEL_DIR)
            os.replace(temp, final)
            shutil.rmtree(old)
        else:
            os.replace(temp, final)
        fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final
