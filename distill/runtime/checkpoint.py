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

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file
from torch import nn

from audit.errors import InputError
from audit.fsutil import files_under, fsync_dir, read_json, sha256_file, write_atomic
from distill.runtime.distributed import DistContext, barrier

_STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"


def checkpoint_digest(folder: str | Path) -> str:
    """Root sha256 over the sorted per-file sha256 of a folder (see the module docstring)."""
    folder = Path(folder)
    files = sorted(files_under(folder), key=lambda p: p.relative_to(folder).as_posix())
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
    temp, final = _begin_checkpoint(out_dir, step, ctx)
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
        _commit_folder(temp, final)  # a re-save of the same step (e.g. resumed at the budget) replaces it
        _keep_newest(out_dir, keep_last)
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


# --- Sharded checkpoints (FSDP2 students) ---------------------------------------------------
#
# Layout of a sharded checkpoint folder (same ``step-XXXXXXXX`` name and atomic rename):
# * ``dcp/``: torch.distributed.checkpoint files (``.metadata`` and one ``__<rank>_0.distcp``
#   per rank) holding {"model": ..., "optim": ...} from ``get_state_dict``;
# * ``scheduler.pt``, ``rng-rank<r>.pt``, ``trainer_state.json`` as above; the state gets
#   ``"sharded": true`` and ``"saved_world_size"``.
# It holds no ``model.safetensors``: :func:`export_student` writes a loadable folder.

SHARDED_DIR = "dcp"


def is_sharded_checkpoint(checkpoint: Checkpoint) -> bool:
    """Whether ``checkpoint`` was written by :func:`save_sharded_checkpoint`."""
    return (checkpoint.path / SHARDED_DIR).is_dir()


@contextlib.contextmanager
def _single_process_dcp(ctx: DistContext):
    """Silence DCP's warning that it runs without a process group, when that is the intent."""
    with warnings.catch_warnings():
        if not ctx.enabled:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _begin_checkpoint(out_dir: str | Path, step: int, ctx: DistContext) -> tuple[Path, Path]:
    """(temp, final) folders of checkpoint ``step``; rank 0 clears stale temps and makes temp."""
    root = checkpoints_dir(out_dir)
    final, temp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        temp.mkdir()
    barrier(ctx)
    return temp, final


def _commit_folder(temp: Path, final: Path) -> None:
    """fsync ``temp``'s tree, rename it to ``final`` (replacing one there), fsync again."""
    _fsync_tree(temp)
    for path in temp.rglob("*"):
        if path.is_dir():
            fsync_dir(path)
    if final.exists():
        shutil.rmtree(final)
    os.rename(temp, final)
    _fsync_tree(final)


def _keep_newest(out_dir: str | Path, keep_last: Optional[int]) -> None:
    """Remove all but the ``keep_last`` newest checkpoints (None: keep every one)."""
    if keep_last:
        for old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def save_sharded_checkpoint(out_dir: str | Path, step: int, *, model: nn.Module, optimizer, scheduler,
                            state: dict, ctx: DistContext, keep_last: Optional[int] = None,
                            full_weights: bool = False, tokenizer=None,
                            dtype: Optional[torch.dtype] = None) -> Path:
    """Write checkpoint ``step`` of a sharded (FSDP2) student atomically; all ranks call it.

    ``model``: the student, the Hugging Face model (load with the same). Every rank writes its
    own shards of the weights and AdamW moments through ``torch.distributed.checkpoint`` (DCP,
    files fsynced) into the temp folder; rank 0 adds the scheduler and trainer state; then rank
    0 fsyncs and renames the folder as :func:`save_checkpoint` does. The folder must be on a
    file system every rank sees. Also works for a DDP or unsharded model (DCP writes each
    replicated tensor once).

    ``full_weights``: also gather the whole student into the same folder as a Hugging Face
    model (``config.json``, ``model.safetensors``, the tokenizer when given; weights cast to
    ``dtype`` when set), as :func:`save_checkpoint` has it, so ``distill.outputs.export`` and the run
    record find the model where they look. Costs a gather and a full write (16 GB for an 8B
    student in bf16): meant for the final checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    temp, final = _begin_checkpoint(out_dir, step, ctx)
    _torch_save_synced(_rng_state(), temp / f"rng-rank{ctx.rank}.pt")
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_dcp(ctx):
        dcp.save({"model": model_state, "optim": optim_state},
                 storage_writer=dcp.FileSystemWriter(str(temp / SHARDED_DIR), sync_files=True),
                 no_dist=not ctx.enabled)
    if full_weights:
        _write_full_student(temp, model, ctx, tokenizer, dtype)
    if ctx.is_main:
        _torch_save_synced(scheduler.state_dict(), temp / "scheduler.pt")
        write_atomic(temp / STATE_FILE, json.dumps(
            {**state, "step": step, "sharded": True, "saved_world_size": ctx.world_size},
            indent=2, sort_keys=True) + "\n")
    barrier(ctx)
    if ctx.is_main:
        _commit_folder(temp, final)
        _keep_newest(out_dir, keep_last)
    barrier(ctx)
    return final


def restore_sharded_checkpoint(checkpoint: Checkpoint, *, model: nn.Module, optimizer, scheduler,
                               ctx: DistContext) -> dict:
    """Load a :func:`save_sharded_checkpoint` folder into a sharded ``model`` and its optimizer;
    all ranks call it. Returns the trainer state.

    Any world size: DCP reads each rank's new shards from whichever files hold them (4 ranks
    saved, 2 load: each reads two ranks' pieces). The weights, AdamW moments and scheduler come
    back exactly; so does each rank's RNG state at the same world size. At another world size
    rank r takes ``rng-rank<r>`` when it exists, else rank 0's (the ranks are seeded alike; only
    a student with dropout would see the difference)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not is_sharded_checkpoint(checkpoint):
        raise InputError("not a sharded checkpoint (no dcp/ folder); use restore_checkpoint",
                         source=str(checkpoint.path))
    model_state, optim_state = get_state_dict(model, optimizer)  # the shapes to load into
    loaded = {"model": model_state, "optim": optim_state}
    with _single_process_dcp(ctx):
        dcp.load(loaded, storage_reader=dcp.FileSystemReader(str(checkpoint.path / SHARDED_DIR)),
                 no_dist=not ctx.enabled)
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    scheduler.load_state_dict(torch.load(checkpoint.path / "scheduler.pt", weights_only=True))
    rng_file = checkpoint.path / f"rng-rank{ctx.rank}.pt"
    if not rng_file.exists():
        rng_file = checkpoint.path / "rng-rank0.pt"
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return checkpoint.state


def export_student(folder: str | Path, *, student: nn.Module, ctx: DistContext, tokenizer=None,
                   dtype: Optional[torch.dtype] = None) -> Path:
    """Write the whole student as one Hugging Face folder (``config.json``, ``model.safetensors``,
    tokenizer files when given), atomically; all ranks call it. Returns the folder.

    ``student``: the Hugging Face model (sharded by FSDP2 or not). The full weights are gathered
    to rank 0's CPU memory (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``:
    one layer at a time on the device, the whole model once in host memory), optionally cast to
    ``dtype``, and rank 0 writes them with ``save_pretrained`` into a temp folder beside
    ``folder``, fsyncs it and renames it (an existing ``folder`` is replaced).
    ``AutoModelForCausalLM.from_pretrained(folder)`` loads the result."""
    folder = Path(folder)
    temp = folder.parent / f".tmp-{folder.name}"
    if ctx.is_main:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    _write_full_student(temp, student, ctx, tokenizer, dtype)
    if ctx.is_main:
        _commit_folder(temp, folder)
    barrier(ctx)
    return folder


def _write_full_student(folder: Path, student: nn.Module, ctx: DistContext, tokenizer, dtype) -> None:
    """Gather the whole student to rank 0's CPU and ``save_pretrained`` it into ``folder``
    (which exists on rank 0); all ranks call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.is_main:
        if dtype is not None:
            full = {name: value.to(dtype) if value.is_floating_point() else value for name, value in full.items()}
        student.save_pretrained(str(folder), state_dict=full)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
