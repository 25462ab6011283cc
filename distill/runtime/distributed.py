"""Multi-process training under ``torchrun``: process group, DDP, a sharded teacher, data
sharding, global counts.

``torchrun --nproc_per_node N ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`setup` then
joins the process group (NCCL on CUDA, gloo on CPU). Without those variables everything here
degrades to a single process and no collective is called.

Batch layout: an optimizer step consumes ``world_size x grad_accum x micro_batch`` packed
sequences, global positions [start, start + that). Micro-step a of rank r takes the
``micro_batch`` positions starting at start + (a x world_size + r) x micro_batch, so every
split of the same global batch (1 x 8, 2 x 4, ...) sees the same sequences in each step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Union

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank 0..world_size-1, its device, whether it made the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Under torchrun, CUDA means cuda:LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return resolved


def setup(device: str = "auto") -> DistContext:
    """Join the torchrun process group if there is one (reusing an existing group)."""
    resolved = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size <= 1 and not dist.is_initialized():
        return DistContext(0, 1, 0, resolved, owns_group=False)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", "0")), resolved, owns_group=owns)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``module`` when there are several processes.

    DDP averages gradients over ranks; the trainer's losses are already normalised by the
    global token count, so it multiplies each loss by world_size before backward."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def shard_teacher(teacher: nn.Module, layers: nn.ModuleList, ctx: DistContext) -> nn.Module:
    """Shard an inference-only teacher over the ranks with FSDP2, as one FSDP tree:
    ``fully_shard`` on each decoder layer, then on the teacher's base model (the module whose
    forward every caller runs: :func:`distill.runtime.models.final_hidden_states`), the root.

    The teacher comes in on the CPU. Each rank keeps 1/world_size of every layer's weights, and
    of the root's own (embedding, final norm), on its device; a forward all-gathers them module
    by module and frees the gathered copy right after, so a teacher too large for one device
    fits on several, at the price of moving its weights over the interconnect once per forward.
    Under one root FSDP runs the layers as one model's (one lazy initialisation, the next
    layer's all-gather prefetched), not as one independent root per layer. The lm_head, outside
    the base model, stays whole on every rank (the fused loss reads it directly; a head tied to
    the embedding keeps its own whole copy). Every rank must run the teacher's forward the same
    number of times. One process: the teacher just moves to the device."""
    if not ctx.enabled:
        return teacher.to(ctx.device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)  # moves its shards to the device
    root = getattr(teacher, teacher.base_model_prefix)
    fully_shard(root, mesh=mesh, reshard_after_forward=True)
    sharded = {id(t) for t in [*root.parameters(), *root.buffers()]}
    for module in teacher.modules():  # what lies outside the base model: the head
        for _, param in module.named_parameters(recurse=False):
            if id(param) not in sharded:
                param.data = param.data.to(ctx.device)
        for name, buffer in module.named_buffers(recurse=False):
            if id(buffer) not in sharded:
                module.register_buffer(name, buffer.to(ctx.device),
                                       persistent=name not in module._non_persistent_buffers_set)
    return teacher


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(value: Union[torch.Tensor, int, float], ctx: DistContext):
    """Sum over ranks. A tensor comes back as a tensor (reduced in place); a number as a number."""
    if not ctx.enabled:
        return value
    if isinstance(value, torch.Tensor):
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value
    dtype = torch.float64 if isinstance(value, float) else torch.int64
    tensor = torch.tensor(value, dtype=dtype, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item()


def gather_objects(value, ctx: DistContext) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank; [value] for one process."""
    if not ctx.enabled:
        return [value]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def micro_batch_start(step_start: int, micro_step: int, micro_batch: int, ctx: DistContext) -> int:
    """Global position of this rank's first sequence in a micro-step (see the module docstring)."""
    return step_start + (micro_step * ctx.world_size + ctx.rank) * micro_batch


def global_valid_tokens(labels: list[torch.Tensor], ctx: DistContext, ignore_index: int = -100) -> torch.Tensor:
    """Valid (not ignored) label count over this rank's micro-batches, summed over ranks."""
    count = sum((label != ignore_index).sum() for label in labels)
    count = torch.as_tensor(count, device=ctx.device, dtype=torch.int64)
    return all_reduce_sum(count, ctx)
