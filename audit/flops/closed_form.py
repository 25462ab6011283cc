"""Closed-form FLOP per token from a config's hyperparameters, for when the meta-device run
cannot be made (a model type the installed transformers does not know, or code that needs
real data). Its band: decoder-only transformers with multi-head, grouped-query or multi-query
attention, plain or gated MLPs, top-k MoE with optional shared experts and leading dense
layers. Anything else (state-space or hybrid layers, encoder-decoders, latent attention, a
config without the shape fields) raises ``OutsideBand`` with the reason: no guessing.

Fields are read under their usual names and transformers' aliases (``n_embd``, ``n_head``,
``num_kv_heads``, Falcon's ``multi_query``, the config class's ``attribute_map``).

Convention: 1 multiply-add = 2 FLOP; training = 3 x forward; attention over causal pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audit.flops.registry import kept_pairs

GATED_ACTIVATIONS = ("silu", "swiglu", "gelu_pytorch_tanh", "geglu", "gelu_tanh")

# Keys that put a config outside the band, and why.
_OUTSIDE = {
    "state_size": "state-space layers", "ssm_state_size": "state-space layers", "mamba_d_state": "state-space layers",
    "d_state": "state-space layers", "layers_block_type": "hybrid layers", "attn_layer_period": "hybrid layers",
    "hybrid_override_pattern": "hybrid layers", "kv_lora_rank": "latent (MLA) attention",
    "linear_attn_config": "linear attention", "is_encoder_decoder": "an encoder-decoder",
    "encoder_layers": "an encoder-decoder", "num_decoder_layers": "an encoder-decoder",
    "attention_chunk_size": "chunked attention", "num_nextn_predict_layers": "multi-token-prediction layers",
    "ffn_config": "a nested FFN/expert config (DBRX)", "attn_config": "a nested attention config",
}


class OutsideBand(ValueError):
    """The config is not one the closed form covers; the message says why."""


def _aliases(model_type: str | None) -> dict[str, str]:
    """transformers' ``attribute_map`` of the type's config class (canonical -> stored name)."""
    if not model_type:
        return {}
    try:
        from transformers import CONFIG_MAPPING

        return dict(getattr(CONFIG_MAPPING[model_type], "attribute_map", {}) or {})
    except Exception:  # noqa: BLE001 - transformers missing or type unknown: plain names only
        return {}


def _get(data: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if data.get(key) is not None:
            return data[key]
    return default


@dataclass(frozen=True)
class ClosedForm:
    params_total: float
    params_active: float
    params_embedding: float
    forward_per_token: float          # causal attention
    forward_per_token_full: float     # attention over the full score matrix
    attention_per_token: float        # the attention part of forward_per_token
    notes: tuple = field(default=())


# Non-shape keys whose absence means the config class's default (not ours).
_CLASS_DEFAULTS = ("hidden_act", "hidden_activation", "activation_function", "activation", "tie_word_embeddings",
                   "use_sliding_window", "multi_query", "new_decoder_architecture")


def _class_defaults(model_type: str | None) -> dict[str, Any]:
    if not model_type:
        return {}
    try:
        from transformers import CONFIG_MAPPING

        defaults = CONFIG_MAPPING[model_type]().to_dict()
    except Exception:  # noqa: BLE001 - transformers missing, type unknown or default unbuildable
        return {}
    return {k: defaults[k] for k in _CLASS_DEFAULTS if defaults.get(k) is not None}


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    text = data.get("text_config")
    if isinstance(text, dict) and not any(k in data for k in ("hidden_size", "n_embd", "d_model")):
        data = {**text, "model_type": text.get("model_type", data.get("model_type"))}
    out = {**_class_defaults(data.get("model_type")), **data}
    for canonical, stored in _aliases(data.get("model_type")).items():
        if out.get(canonical) is None and data.get(stored) is not None:
            out[canonical] = data[stored]
    return out


def estimate(data: dict[str, Any], seq_len: int) -> ClosedForm:
    """Per-token forward FLOP and parameter counts from a config.json dict; ``OutsideBand``
    when the config is not a decoder-only transformer this formula covers."""
    data = _normalise(data)
    for key, why in _OUTSIDE.items():
        if data.get(key) not in (None, False, 0, [], {}):
            raise OutsideBand(f"{why} ({key!r} is set)")
    d = _get(data, "hidden_size", "n_embd", "d_model")
    layers = _get(data, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _get(data, "num_attention_heads", "n_head", "n_heads")
    vocab = data.get("vocab_size")
    missing = [name for name, value in (("hidden_size", d), ("num_hidden_layers", layers),
                                        ("num_attention_heads", heads), ("vocab_size", vocab)) if value is None]
    if missing:
        raise OutsideBand(f"the config lacks {', '.join(missing)}")
    d, layers, heads, vocab = int(d), int(layers), int(heads), int(vocab)
    if data.get("multi_query") and not data.get("new_decoder_architecture"):
        kv_heads = 1  # Falcon-7B style multi-query
    else:
        kv_heads = int(_get(data, "num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num",
                            default=heads))
    head_dim = int(_get(data, "head_dim", default=d // heads))
    ff = int(_get(data, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", default=4 * d))
    experts = int(_get(data, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", default=0) or 0)
    top_k = int(_get(data, "num_experts_per_tok", "moe_top_k", default=experts or 1))
    expert_ff = int(_get(data, "moe_intermediate_size", "expert_intermediate_size", default=ff))
    shared = int(_get(data, "n_shared_experts", "num_shared_experts", default=0) or 0)
    shared_ff = int(_get(data, "shared_expert_intermediate_size", default=shared * expert_ff) or 0)
    dense_layers = int(_get(data, "first_k_dense_replace", default=0) or 0) if experts else 0
    act = str(_get(data, "hidden_act", "hidden_activation", "activation_function", "activation", default="gelu"))
    tied = bool(_get(data, "tie_word_embeddings", default=True))
    gated = 3 if act in GATED_ACTIVATIONS else 2

    attn_params = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2
    notes = []
    if experts:
        moe_total = attn_params + experts * gated * d * expert_ff + gated * d * shared_ff + d * experts
        moe_active = attn_params + top_k * gated * d * expert_ff + gated * d * shared_ff + d * experts
        dense = attn_params + gated * d * ff
        layers_total = dense_layers * dense + (layers - dense_layers) * moe_total
        layers_active = dense_layers * dense + (layers - dense_layers) * moe_active
        notes.append(f"MoE: top-{top_k} of {experts} experts" + (f" + shared ({shared_ff} wide)" if shared_ff else "")
                     + (f", {dense_layers} dense layers first" if dense_layers else ""))
    else:
        layers_total = layers_active = layers * (attn_params + gated * d * ff)
    embedding = vocab * d * (1 if tied else 2)
    positions = int(_get(data, "n_positions", default=0)) * d if data.get("model_type") == "gpt2" else 0
    total = layers_total + embedding + positions
    active = layers_active + embedding + positions

    matmul = 2.0 * (layers_active + vocab * d)  # lm_head always multiplies, tied or not
    attn_per_pair = 2.0 * 2 * head_dim * heads * layers
    window = _get(data, "sliding_window", default=None) if data.get("use_sliding_window", True) else None
    windowed = _windowed_layers(data.get("layer_types"), layers) if window else 0
    pairs_causal = (windowed * kept_pairs(seq_len, seq_len, True, window)
                    + (layers - windowed) * kept_pairs(seq_len, seq_len, True)) / layers
    attention = attn_per_pair * pairs_causal / seq_len
    return ClosedForm(
        params_total=float(total), params_active=float(active), params_embedding=float(embedding + positions),
        forward_per_token=matmul + attention, forward_per_token_full=matmul + attn_per_pair * seq_len,
        attention_per_token=attention, notes=tuple(notes),
    )


def _windowed_layers(layer_types: Any, layers: int) -> int:
    """Layers that attend within the sliding window: those ``layer_types`` names
    ``sliding_attention`` (the others - global, or anything else - attend over every causal key),
    or every layer when the config has no per-layer list (Mistral)."""
    if isinstance(layer_types, list) and len(layer_types) == layers:
        return sum(1 for kind in layer_types if kind == "sliding_attention")
    return layers
