"""Training compute of a student that trains adapters (LoRA) on its frozen weights, counted op by
op like any training step. FLOP throughout, 1 multiply-add = 2 FLOP.

The student is built on the meta device, every weight is frozen (``requires_grad=False``) and a
LoRA pair is put beside each targeted linear layer, as PEFT does (``y = W x + B A x * alpha/r``,
``A``: r x in, ``B``: out x r, no bias). One forward (with the language-modelling loss) and one
backward then run under the counter (:func:`audit.flops.model_step.count_step_full`), so
autograd itself decides what the backward computes:

* the frozen model: its forward, and in the backward only the input gradients that some
  adapter's gradient needs (no weight gradients; nothing below the first adapter);
* the adapters: forward, input gradients and weight gradients (a full training step).

Every layer is counted (no depth extension). ``summarize_adapter`` turns the count into the
audit's :class:`audit.compute.types.AdapterSummary`; :func:`lora_targets` is the module
matching that the training side (the Hugging Face callback) checks a PEFT model against.
"""

from __future__ import annotations

from typing import Any, Optional


class AdapterError(ValueError):
    """The adapter cannot be put on this model (a target matches nothing, or a module that is
    not a linear layer)."""


def targeted(name: str, targets) -> bool:
    """PEFT's matching of a list of target modules: the module's full name, or its name ending
    in ``.TARGET``."""
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_targets(model, targets) -> list[tuple[str, Any]]:
    """``(name, module)`` of every module of ``model`` a LoRA adapter with ``targets`` goes on;
    ``AdapterError`` when one is not a linear layer or a target matches nothing."""
    import torch

    found, matched = [], set()
    for name, module in model.named_modules():
        if not name or not targeted(name, targets):
            continue
        if not isinstance(module, torch.nn.Linear):
            raise AdapterError(f"target module {name!r} is a {type(module).__name__}, not a linear layer: "
                               "only LoRA on linear layers is counted")
        found.append((name, module))
        matched.update(t for t in targets if name == t or name.endswith("." + t))
    missing = [t for t in targets if t not in matched]
    if missing:
        raise AdapterError(f"target_modules {missing} match no module of the student")
    return found


def _lora_linear_class():
    import torch

    class LoraLinear(torch.nn.Module):
        """A frozen linear layer with a LoRA pair beside it (PEFT's computation, no dropout)."""

        def __init__(self, base: torch.nn.Linear, rank: int, scaling: float):
            super().__init__()
            self.base_layer = base
            kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
            self.lora_A = torch.nn.Linear(base.in_features, rank, **kw)
            self.lora_B = torch.nn.Linear(rank, base.out_features, **kw)
            self.scaling = scaling

        def forward(self, x):
            return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling

    return LoraLinear


def add_lora(model, rank: int, targets, alpha: Optional[float] = None):
    """Freeze every weight of ``model`` and put LoRA pairs of ``rank`` on the targeted linear
    layers (in place); returns ``model``."""
    for param in model.parameters():
        param.requires_grad_(False)
    lora = _lora_linear_class()
    scaling = (alpha or rank) / rank
    for name, module in lora_targets(model, targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, lora(module, rank, scaling))
    return model


def adapter_parameter_counts(model, rank: int, targets) -> tuple[int, int]:
    """``(trainable, frozen)`` parameters of ``model`` with LoRA pairs of ``rank`` on
    ``targets``: r x (in + out) per targeted linear layer; frozen = the model's own parameters
    (a tied weight once)."""
    trainable = sum(rank * (m.in_features + m.out_features) for _, m in lora_targets(model, targets))
    frozen = sum(p.numel() for p in model.parameters())  # parameters() skips a tied weight's second name
    return int(trainable), int(frozen)


def count_adapter_step(hf_config, seq_len: int, rank: int, targets, *, alpha: Optional[float] = None,
                       batch: int = 1, source_len: int | None = None, document_tokens: int | None = None):
    """``(StepCount, trainable, frozen)``: one training step of ``batch x seq_len`` tokens of the
    frozen model with LoRA adapters, every layer counted."""
    from audit.flops.model_step import build_meta_model, count_step_full

    built = build_meta_model(hf_config)
    trainable, frozen = adapter_parameter_counts(built.model, rank, targets)
    step = count_step_full(hf_config, seq_len, batch, source_len, built=built, document_tokens=document_tokens,
                           prepare=lambda model: add_lora(model, rank, targets, alpha))
    return step, trainable, frozen


def summarize_adapter(config, seq_len: int, adapter, *, source_len: int | None = None,
                      document_tokens: int | None = None, source: str = "config"):
    """The audit's :class:`audit.compute.types.AdapterSummary` of the student ``config`` (a
    :class:`audit.flops.configs.ResolvedConfig`) with the plan's ``student.adapter``; its
    figures are None, with the reason, when the step cannot be counted (the audit then lacks
    the student's training compute: REVIEW, never a guess)."""
    from audit.compute.types import AdapterSummary

    declared = dict(kind=adapter.kind, rank=adapter.rank, alpha=adapter.alpha,
                    target_modules=list(adapter.target_modules))
    try:
        from audit.flops.hf_config import build_config, is_encoder_decoder

        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_config = build_config(config.data, source=config.ref if config.bundled else str(config.path))
        if is_encoder_decoder(hf_config):
            source_len = source_len or seq_len
        else:
            source_len = None
        step, trainable, frozen = count_adapter_step(hf_config, seq_len, adapter.rank, adapter.target_modules,
                                                     alpha=adapter.alpha, source_len=source_len,
                                                     document_tokens=document_tokens)
    except Exception as exc:  # noqa: BLE001 - an uncountable adapter leaves the figure unknown
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return AdapterSummary(**declared, failure=f"{exc.__class__.__name__}: {text}")
    fwd, bwd, tokens = step.forward, step.backward, step.tokens
    return AdapterSummary(
        **declared, trainable_params=float(trainable), frozen_params=float(frozen),
        train_flops_per_token=(fwd.headline + bwd.headline) / tokens,
        train_flops_per_token_noncausal=(fwd.headline_full_attention + bwd.headline_full_attention) / tokens,
        forward_flops_per_token=fwd.headline / tokens,
        coverage=min(fwd.coverage, bwd.coverage),
        unknown_ops=dict(sorted((fwd.unknown_calls + bwd.unknown_calls).items())))
