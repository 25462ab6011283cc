"""Sharding the student over the ranks (FSDP2) for students too large to replicate.

Under DDP every rank holds the whole student: fp32 weights, gradients and two AdamW moments,
16 bytes per parameter (128 GB for an 8B student), which no single accelerator holds.
:func:`shard_student` instead applies FSDP2 (``torch.distributed.fsdp.fully_shard``) to each
decoder layer and then to the root module (the one whose forward the trainer calls,
``HiddenStates(student)``): every rank keeps 1/world_size of each weight, gradient and
optimizer moment; a layer's forward and backward all-gather its weights and free them right
after, and its gradients are reduce-scattered (averaged over ranks, like DDP).

What the caller must do differently from DDP (see ``docs/scale.md``):

* call :func:`shard_student` BEFORE creating the optimizer (``fully_shard`` replaces the
  parameters by sharded DTensors, which the optimizer must see). The student may come in on
  the CPU: ``fully_shard`` moves each rank's shards to the device, so no whole copy lands there;
* read the student's head weight (:func:`distill.runtime.models.head_weight`) AFTER each forward of the
  body: between the root's forward and backward it is the gathered full tensor the fused loss
  needs; outside that window it is a shard. The root is not resharded after its forward, so
  the embedding, final norm and lm_head stay gathered until the backward.
* keep ``(loss * world_size).backward()``: FSDP2 averages gradients over ranks like DDP;
* checkpoint with :func:`distill.runtime.checkpoint.save_sharded_checkpoint` /
  ``restore_sharded_checkpoint`` and write the final student with
  :func:`distill.runtime.checkpoint.export_student` (a sharded student has no whole weights anywhere).

Gradient accumulation (:func:`micro_step_sync`): on all but the last micro-step of an
optimizer step, ``set_requires_gradient_sync(False)`` keeps each layer's gradient unsharded
and accumulating, and the last micro-step's backward reduce-scatters the sum once, so a step
of ``grad_accum`` micro-steps runs one reduce-scatter per sharded module instead of
``grad_accum`` (DDP's ``no_sync`` likewise). The price is memory: between micro-steps every
rank holds the unsharded gradients of the whole student (4 bytes per parameter in fp32).
``defer_reduction=False`` (the loop's ``LoopConfig.defer_reduction``) reduce-scatters every
micro-step into the sharded ``.grad`` instead, summing there: the same sum, without that
memory. With ``offload`` the reduction is never deferred (the gradients live in host memory).
``body.no_sync()`` stays a no-op on a sharded body for code written against DDP.

Evaluation (:func:`reshard_after_eval`): the root is not resharded after its forward (the
loss reads the gathered head before the backward); a no-grad forward has no backward, so after
an evaluation the root's embedding, norm and head would stay gathered until the next training
backward. The loop reshards the root when an evaluation ends.

Precision: :func:`mixed_precision_policy` maps ``"auto"`` to bf16 parameters for compute with
fp32 gradient reduction and fp32 sharded master weights on CUDA, and to plain fp32 on the CPU
(the tests). With bf16 parameters the gathered head is bf16 too: pass
``matmul_dtype=torch.bfloat16`` to the fused loss (it forms fp32 logits from bf16 operands).

FSDP2 on the CPU with gloo (torch 2.13): training works. ``tests/distill/runtime/test_fsdp.py`` runs
sharded forward (all-gather), backward (reduce-scatter with ``ReduceOp.AVG``, which gloo's
``reduce_scatter_tensor`` accepts), ``clip_grad_norm_`` over DTensor gradients, AdamW on the
shards, fp32 parameters, ``CPUOffloadPolicy`` (on the CPU a no-op in effect: the shards
already live there), a tied embedding / head, and DCP save / load / resharding. bf16
parameters (``"bf16"``) and ``AdamW(fused=True)`` on the shards also ran on 2 gloo ranks in a
one-off check, not in the tests. What the CPU cannot show is
speed or memory: the CUDA streams that overlap communication with compute do not exist there.

Activation checkpointing (:func:`checkpoint_layers`): each decoder layer's forward runs under
``torch.utils.checkpoint`` (non-reentrant); only the layer inputs are kept and the layer is
recomputed in the backward, about one more forward of compute. It changes no parameter names
(checkpoints, ``save_pretrained`` and DCP see the same keys) and wraps the layer's own forward,
so FSDP2's all-gather hooks stay outside it and the recomputation reuses the weights the
backward gathered. Default: on at :data:`AC_MIN_PARAMS` parameters and above, see there.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Literal, Optional, Union

import torch
from torch import nn

from distill.runtime.distributed import DistContext, wrap_ddp

AC_MIN_PARAMS = 1_000_000_000
"""Activation checkpointing turns on by default from this many student parameters.

Measured with ``OMP_NUM_THREADS=1 python -m distill.runtime.fsdp`` (:func:`_measure`: one Llama
decoder layer, CPU, fp32, sdpa attention, intermediate = 3.5 x hidden, 256 tokens, tensors
saved for the backward counted with ``saved_tensors_hooks``): a layer keeps 22.0, 21.8 and
21.6 x hidden_size values per token at hidden 256, 512 and 1024, and 0 with checkpointing
(only its input, which the previous layer's output keeps anyway: 1 x hidden). In bf16 that
is about 43 bytes per token per hidden unit per layer. Arithmetic from there, per rank, for one
micro-batch of 8 x 4096 = 32768 tokens: Llama-3.2-1B shape (16 layers, hidden 2048) about
46 GB of activations, 2.2 GB checkpointed; 3B (28 x 3072) about 122 GB; 8B (32 x 4096) about
186 GB, 8.6 GB checkpointed. From about 1B parameters a typical micro-batch's activations
take half an 80 GB device or more on top of the sharded weights, so checkpointing (about a
third more compute per step: one more forward of every layer) is on by default from 1e9
parameters. Below that it is off; pass ``activation_checkpointing`` explicitly to decide
otherwise (long sequences on a small student, or small micro-batches on a large one)."""

FSDP_MIN_PARAMS = 1_000_000_000
"""``strategy="auto"`` shards the student (FSDP2) from this many parameters and keeps DDP below.
Arithmetic, not a measurement: a DDP replica costs 16 bytes per parameter (fp32 weights,
gradients, two AdamW moments), 16 GB at 1B, a fifth of an 80 GB device; below that DDP's one
all-reduce per step is cheaper than FSDP's per-layer all-gathers and reduce-scatters."""

MixedPrecision = Union[Literal["auto", "bf16", "fp32"], None, "torch.distributed.fsdp.MixedPrecisionPolicy"]


def count_parameters(module: nn.Module) -> int:
    """Parameters of ``module``, counted once each (tied weights once), global sizes for DTensors."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def mixed_precision_policy(mixed_precision: MixedPrecision, device: torch.device):
    """The FSDP2 ``MixedPrecisionPolicy`` for a setting, or None for plain fp32.

    ``"auto"``: bf16 parameters (compute) with fp32 gradient reduction on CUDA, fp32 on the
    CPU; ``"bf16"``: the same on any device; ``"fp32"`` / None: no casting. A
    ``MixedPrecisionPolicy`` passes through. The sharded master weights and the optimizer
    state stay fp32 in every case."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if isinstance(mixed_precision, MixedPrecisionPolicy):
        return mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if device.type == "cuda" else "fp32"
    if mixed_precision in ("fp32", None):
        return None
    if mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    raise ValueError(f"mixed_precision: expected 'auto', 'bf16', 'fp32', None or a MixedPrecisionPolicy, "
                     f"got {mixed_precision!r}")


def checkpoint_layers(layers: nn.ModuleList) -> int:
    """Activation checkpointing for each layer, in place (see the module docstring). Returns the
    number of layers newly wrapped; a layer already wrapped is left alone."""
    from torch.utils.checkpoint import checkpoint

    wrapped = 0
    for layer in layers:
        if getattr(layer, "_flopgate_checkpointed", False):
            continue
        inner = layer.forward  # the bound forward of the layer's class

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():  # inference / teacher: nothing to save, nothing to redo
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
        layer._flopgate_checkpointed = True
        wrapped += 1
    return wrapped


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (sharded by FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def shard_student(body: nn.Module, layers: nn.ModuleList, ctx: DistContext, *,
                  strategy: Literal["auto", "fsdp", "ddp"] = "auto",
                  mixed_precision: MixedPrecision = "auto", offload: bool = False,
                  activation_checkpointing: Optional[bool] = None,
                  reshard_after_forward: bool = True) -> nn.Module:
    """Prepare the student body for training on ``ctx``: returns the module to call.

    ``body``: the module whose forward the trainer calls (``HiddenStates(student)``; it holds the
    lm_head the fused loss reads), on the CPU or already on the device; ``layers``: the
    student's decoder layers (:func:`distill.runtime.models.decoder_layers`).

    * ``strategy``: ``"fsdp"`` shards each layer, then the root, with ``fully_shard``;
      ``"ddp"`` replicates (:func:`distill.runtime.distributed.wrap_ddp`); ``"auto"``: FSDP from
      :data:`FSDP_MIN_PARAMS` parameters. One process: neither, the body moves to the device.
    * ``mixed_precision``: see :func:`mixed_precision_policy` (FSDP only; DDP keeps the
      trainer's autocast).
    * ``offload``: FSDP's ``CPUOffloadPolicy``: shards, gradients and the optimizer step live in
      host memory and each layer's weights are copied to the device for its forward/backward
      (FSDP only; ignored under DDP and in one process).
    * ``activation_checkpointing``: per decoder layer; None: on from :data:`AC_MIN_PARAMS`.
    * ``reshard_after_forward``: free each layer's gathered weights after its forward (ZeRO-3;
      gathered again for the backward). False keeps them until the backward (ZeRO-2-like:
      more memory, one all-gather fewer per layer).

    Call it before building the optimizer. With several processes the returned module has
    ``no_sync()`` (DDP's, or a no-op for FSDP); gradient accumulation goes through
    :func:`micro_step_sync`. In one process it is ``body`` itself. All ranks call it together."""
    if strategy not in ("auto", "fsdp", "ddp"):
        raise ValueError(f"strategy: expected 'auto', 'fsdp' or 'ddp', got {strategy!r}")
    params = count_parameters(body)
    if activation_checkpointing is None:
        activation_checkpointing = params >= AC_MIN_PARAMS
    if activation_checkpointing:
        checkpoint_layers(layers)
    if strategy == "auto":
        strategy = "fsdp" if params >= FSDP_MIN_PARAMS else "ddp"
    if not ctx.enabled:
        return body.to(ctx.device)
    if strategy == "ddp":
        return wrap_ddp(body.to(ctx.device), ctx)

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    options = {"mesh": mesh}
    policy = mixed_precision_policy(mixed_precision, ctx.device)
    if policy is not None:
        options["mp_policy"] = policy
    if offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=ctx.device.type == "cuda")
        body._flopgate_never_defer = True  # micro_step_sync reduces every micro-step (module docstring)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **options)
    # The root holds the rest (embedding, final norm, lm_head). Not resharded after its forward:
    # the fused loss reads the gathered head between the forward and the backward.
    fully_shard(body, reshard_after_forward=False, **options)
    body.no_sync = contextlib.nullcontext  # for code written against DDP; see micro_step_sync
    return body


@contextlib.contextmanager
def micro_step_sync(body: nn.Module, last: bool, *, defer: bool = True):
    """The context of one micro-step's forward and backward: gradients are reduced over the
    ranks on the ``last`` micro-step only (FSDP2: ``set_requires_gradient_sync``; DDP:
    ``no_sync``), or on every one with ``defer=False`` (module docstring). One process, or a
    body with neither: nothing to defer."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(body, FSDPModule):
        body.set_requires_gradient_sync(last or not defer or getattr(body, "_flopgate_never_defer", False))
        yield
    elif not last and hasattr(body, "no_sync"):
        with body.no_sync():
            yield
    else:
        yield


def reshard_after_eval(body: nn.Module) -> None:
    """Free the root's gathered parameters after a no-grad forward (module docstring); the
    layers reshard after their own forwards. Nothing to do for a body that is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(body, FSDPModule):
        body.reshard()


def saved_activation_bytes(layer: nn.Module, hidden: torch.Tensor, **kwargs) -> int:
    """Bytes that one forward of ``layer`` on ``hidden`` keeps for its backward (tensors saved by
    autograd, each storage counted once; parameters and the input excluded)."""
    keep: dict[int, int] = {}
    skip = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    skip.add(hidden.untyped_storage().data_ptr())

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            keep[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = layer(hidden, **kwargs)
    del out
    return sum(keep.values())


def _measure(hidden_sizes=(256, 512, 1024), seq_len: int = 256) -> list[dict]:
    """Saved activations per token per hidden unit of one Llama decoder layer, with and without
    checkpointing (the figures behind :data:`AC_MIN_PARAMS`)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    rows = []
    for hidden in hidden_sizes:
        config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 7 // 2,
                             num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 256),
                             num_hidden_layers=1, vocab_size=128, attn_implementation="sdpa")
        layer = LlamaDecoderLayer(config, layer_idx=0)
        rotary = LlamaRotaryEmbedding(config)
        x = torch.randn(1, seq_len, hidden, requires_grad=True)
        positions = torch.arange(seq_len)[None]
        kwargs = dict(position_embeddings=rotary(x, positions), position_ids=positions, attention_mask=None)
        plain = saved_activation_bytes(layer, x, **kwargs)
        checkpoint_layers(nn.ModuleList([layer]))
        checkpointed = saved_activation_bytes(layer, x, **kwargs)
        per = seq_len * hidden * x.element_size()
        rows.append({"hidden": hidden, "seq_len": seq_len, "values_per_token_per_hidden": plain / per,
                     "with_checkpointing": checkpointed / per})
    return rows


if __name__ == "__main__":
    for row in _measure():
        print(row)
