"""Atomic checkpoints and exact resume.

Layout: ``OUT/checkpoints/step-00000120/`` holds
* ``config.json``, ``model.safetensors`` (+ ``generation_config.json``): the student, loadable
  with ``AutoModelForCausalLM.from_pretrained``; tokenizer files beside them;
* ``optimizer.pt``, ``scheduler.pt``: their ``state_dict()``;
* ``rng-rank<r>.pt``: each rank's python and torch CPU RNG states (and CUDA when present);
* ``trainer_state.json``: step, data cursor, meter totals and the config fingerprint.

Atomicity: a checkpoint is written into a hidden temp folder (``.tmp-step-...``) in the same
parent, every file fsynced, then the folder is renamed to its final name and the parent is
fsynced. A crash leaves either the complete checkpoint or a temp folder that is never read and
is removed by the next save. :func:`load_latest` picks the highest complete step.

Digest: :func:`checkpoint_digest` is sha256 over the lines ``"<sha256>  <relative path>\\n"``
(the ``sha256sum`` format) of every file under the folder, sorted by POSIX relative path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file
from torch import nn

from audit.errors import InputError
from audit.fsutil import fsync_dir, read_json, sha256_file, write_atomic
from distill.distributed import DistContext, barrier

_STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"


def checkpoint_digest(folder: str | Path) -> str:
    """Root sha256 over the sorted per-file sha256 of a folder (see the module docstring)."""
    folder = Path(folder)
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    lines = "".join(f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    state: dict


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = checkpoints_dir(out_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def load_latest(out_dir: str | Path) -> Optional[Checkpoint]:
    """The newest complete checkpoint under ``out_dir``, or None."""
    found = list_checkpoints(out_dir)
    if not found:
        return None
    path = found[-1]
    state = read_json(path / STATE_FILE, "the checkpoint state")
    return Checkpoint(path=path, step=int(state["step"]), state=state)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_save_synced(obj, path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (save_pretrained does not), the folder and its parent."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)
    fsync_dir(folder.parent)


def save_checkpoint(out_dir: str | Path, step: int, *, model: nn.Module, optimizer, scheduler,
                    state: dict, ctx: DistContext, tokenizer=None, keep_last: Optional[int] = None) -> Path:
    """Write checkpoint ``step`` atomically; all ranks call it together. Returns its folder.

    Rank 0 writes the model, optimizer, scheduler and state (identical on every rank under
    DDP); each rank writes its own RNG state. ``keep_last`` prunes older checkpoints."""
    root = checkpoints_dir(out_dir)
    final = root / f"step-{step:08d}"
    temp = root / f".tmp-step-{step:08d}"
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        temp.mkdir()
    barrier(ctx)
    _torch_save_synced(_rng_state(), temp / f"rng-rank{ctx.rank}.pt")
    if ctx.is_main:
        model.save_pretrained(str(temp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(temp))
        _torch_save_synced(optimizer.state_dict(), temp / "optimizer.pt")
        _torch_save_synced(scheduler.state_dict(), temp / "scheduler.pt")
        write_atomic(temp / STATE_FILE, json.dumps({**state, "step": step}, indent=2, sort_keys=True) + "\n")
    barrier(ctx)
    if ctx.is_main:
        _fsync_tree(temp)
        if final.exists():  # a re-save of the same step (e.g. resumed at the budget): replace it
            shutil.rmtree(final)
        os.rename(temp, final)
        _fsync_tree(final)
        if keep_last:
            for old in list_checkpoints(out_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    barrier(ctx)
    return final


def restore_checkpoint(checkpoint: Checkpoint, *, model: nn.Module, optimizer, scheduler,
                       ctx: DistContext) -> dict:
    """Load weights, optimizer, scheduler and this rank's RNG state; returns the trainer state."""
    weights = load_file(str(checkpoint.path / WEIGHTS_FILE), device=str(next(model.parameters()).device))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {t.data_ptr() for name, t in model.state_dict().items() if name in weights}
    untied = [name for name in missing if name not in params or params[name].data_ptr() not in loaded_ptrs]
    if unexpected or untied:
        raise InputError(f"checkpoint weights do not fit the student (missing {untied[:3]}, "
                         f"unexpected {list(unexpected)[:3]})", source=str(checkpoint.path))
    device = next(model.parameters()).device
    optimizer.load_state_dict(torch.load(checkpoint.path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(checkpoint.path / "scheduler.pt", weights_only=True))
    rng_file = checkpoint.path / f"rng-rank{ctx.rank}.pt"
    if not rng_file.exists():
        raise InputError(f"no RNG state for rank {ctx.rank}: the checkpoint was made with another "
                         "number of processes", source=str(checkpoint.path))
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return checkpoint.state
