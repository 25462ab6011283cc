"""Count one training step of a Hugging Face causal LM on the meta device.

The model is built from its config with no weights and no memory, then one forward pass (with
the language-modelling loss) and one backward pass run under ``FlopCounter``. Two Hugging Face
paths are routed around so nothing data-dependent runs on meta:

* attention goes through our registered ``"flopgate"`` implementation (``flopgate::attention``),
  which also means HF builds no mask (its mask code calls ``.item()``);
* MoE experts use HF's ``grouped_mm`` implementation in bf16 (FLOP do not depend on the routing:
  every token meets exactly top-k experts).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import torch

from audit.errors import InputError
from audit.flops.counter import FlopCounter, Tally

ATTENTION_NAME = "flopgate"


def _counting_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                        sliding_window=None, **kwargs):
    """HF attention function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    from audit.flops import attention_op

    window = sliding_window or getattr(module, "sliding_window", None) or 0
    causal = bool(getattr(module, "is_causal", True))
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    out = attention_op.attention(query, key, value, causal, int(window), scale)
    return out.transpose(1, 2), None


def register_counting_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _counting_attention)


def build_config(data: dict[str, Any], *, source: str):
    """A transformers config from a config.json dict; checks it is a causal LM."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = data["model_type"]
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        known = "known" if model_type in transformers.CONFIG_MAPPING else "unknown"
        raise InputError(f"expected a causal language model config; model_type {model_type!r} "
                         f"({known} to transformers {transformers.__version__}) has no causal-LM class",
                         source=source, field="model_type")
    fields = {k: v for k, v in data.items() if k not in ("model_type", "architectures", "auto_map")}
    try:
        return AutoConfig.for_model(model_type, **fields)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds on bad configs
        raise InputError(f"transformers rejected the config: {str(exc).splitlines()[0]}",
                         source=source, field="model_type") from None


def is_moe(config) -> bool:
    return any(getattr(config, key, None) for key in ("num_local_experts", "num_experts", "n_routed_experts"))


def build_meta_model(config):
    """The model on the meta device, bf16 (grouped MoE kernels require it), counting attention."""
    from transformers import AutoModelForCausalLM

    register_counting_attention()
    kwargs: dict[str, Any] = {"attn_implementation": ATTENTION_NAME}
    if is_moe(config):
        kwargs["experts_implementation"] = "grouped_mm"
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, **kwargs)
        except TypeError:  # older transformers: torch_dtype, no experts_implementation
            kwargs.pop("experts_implementation", None)
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16, **kwargs)
    model.train()
    return model


@dataclass
class ParamCounts:
    total: float
    active: float
    embedding: float


def count_parameters(model, config) -> ParamCounts:
    """Unique parameters (a tied lm_head counts once). Active = total minus the experts a token
    does not use; expert weights are the parameters under an ``experts`` module."""
    total, embedding, expert = 0, 0, 0
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0
    for name, param in model.named_parameters(remove_duplicate=True):
        n = param.numel()
        total += n
        if "embed" in name or name.endswith(("wte.weight", "wpe.weight")) or "lm_head" in name:
            embedding += n
        if experts and ".experts." in name + ".":
            expert += n
    top_k = getattr(config, "num_experts_per_tok", None) or 0
    active = total - expert * (1 - top_k / experts) if experts and top_k else total
    return ParamCounts(total=float(total), active=float(active), embedding=float(embedding))


@dataclass
class StepCount:
    """FLOP of one training step of ``batch x seq_len`` tokens."""

    tokens: int
    forward: Tally
    backward: Tally
    params: ParamCounts
    architecture: str


# Config keys that make decoder layers differ from one another (dense-then-MoE stacks,
# interleaved attention kinds, ...). Any of them set means: count every layer.
_HETEROGENEOUS_KEYS = ("first_k_dense_replace", "mlp_only_layers", "moe_layer_freq", "no_rope_layers",
                       "interleave_moe_layer_step", "sliding_window_pattern", "global_attn_every_n_layers",
                       "cross_attention_layers", "max_window_layers", "full_attn_idxs")


def layers_identical(config) -> bool:
    """True when every decoder layer has the same shape and kind, so FLOP grow linearly in depth."""
    for key in _HETEROGENEOUS_KEYS:
        value = getattr(config, key, None)
        if key == "max_window_layers" and not getattr(config, "use_sliding_window", False):
            continue  # Qwen2 keeps this key even when sliding windows are off
        if value not in (None, 0, 1, [], ()) or (key == "max_window_layers" and value is not None
                                                and value < config.num_hidden_layers):
            return False
    if getattr(config, "decoder_sparse_step", 1) not in (None, 1):
        return False
    layer_types = getattr(config, "layer_types", None)
    return not layer_types or len(set(layer_types)) == 1


def with_depth(config, layers: int):
    """A copy of ``config`` with ``layers`` decoder layers."""
    import copy

    shallow = copy.deepcopy(config)
    shallow.num_hidden_layers = layers
    if getattr(shallow, "layer_types", None):
        shallow.layer_types = list(shallow.layer_types)[:layers]
    return shallow


def count_step(config, seq_len: int, batch: int = 1) -> StepCount:
    """One training step of ``batch x seq_len`` tokens.

    When all layers are identical the step is counted at depth 1 and 2 and extended linearly
    to the full depth (exact: f(L) = f(1) + (L - 1) * (f(2) - f(1))); otherwise every layer runs.
    """
    depth = config.num_hidden_layers
    if depth <= 2 or not layers_identical(config):
        return count_step_full(config, seq_len, batch)
    one = count_step_full(with_depth(config, 1), seq_len, batch)
    two = count_step_full(with_depth(config, 2), seq_len, batch)
    extend = lambda a, b: a.extrapolate(b, depth)  # noqa: E731
    return StepCount(tokens=one.tokens, forward=extend(one.forward, two.forward),
                     backward=extend(one.backward, two.backward),
                     params=ParamCounts(*(x + (depth - 1) * (y - x) for x, y in (
                         (one.params.total, two.params.total), (one.params.active, two.params.active),
                         (one.params.embedding, two.params.embedding)))),
                     architecture=one.architecture)


def count_step_full(config, seq_len: int, batch: int = 1) -> StepCount:
    """Run forward (with loss) and backward on meta under the counter, every layer."""
    model = build_meta_model(config)
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    with FlopCounter() as forward:
        out = model(input_ids=ids, labels=ids, use_cache=False)
    with FlopCounter() as backward:
        out.loss.backward()
    return StepCount(tokens=batch * seq_len, forward=forward.tally, backward=backward.tally,
                     params=count_parameters(model, config),
                     architecture=type(model).__name__)
