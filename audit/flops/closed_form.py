"""Closed-form FLOP per token from a config's hyperparameters, for when the meta-device run
cannot be made (a model type the installed transformers does not know, or code that needs
real data). Decoder-only transformers with optional GQA, gated MLPs and top-k MoE.

Convention: 1 multiply-add = 2 FLOP; training = 3 x forward; attention over causal pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audit.flops.registry import kept_pairs

GATED_ACTIVATIONS = ("silu", "swiglu", "gelu_pytorch_tanh", "geglu", "gelu_tanh")


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


def estimate(data: dict[str, Any], seq_len: int) -> ClosedForm:
    """Per-token forward FLOP and parameter counts from a config.json dict."""
    d = int(_get(data, "hidden_size", "n_embd", "d_model"))
    layers = int(_get(data, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_get(data, "num_attention_heads", "n_head"))
    kv_heads = int(_get(data, "num_key_value_heads", default=heads))
    head_dim = int(_get(data, "head_dim", default=d // heads))
    ff = int(_get(data, "intermediate_size", "n_inner", "ffn_dim", default=4 * d))
    vocab = int(data["vocab_size"])
    experts = int(_get(data, "num_local_experts", "num_experts", "n_routed_experts", default=0))
    top_k = int(_get(data, "num_experts_per_tok", default=experts or 1))
    act = str(_get(data, "hidden_act", "hidden_activation", "activation_function", default="gelu"))
    tied = bool(_get(data, "tie_word_embeddings", default=True))

    attn_params = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2
    mlp_params = (3 if act in GATED_ACTIVATIONS else 2) * d * ff
    if experts:
        layer_total = attn_params + experts * mlp_params + d * experts
        layer_active = attn_params + top_k * mlp_params + d * experts
    else:
        layer_total = layer_active = attn_params + mlp_params
    embedding = vocab * d * (1 if tied else 2)
    positions = int(_get(data, "n_positions", default=0)) * d if data.get("model_type") == "gpt2" else 0
    total = layers * layer_total + embedding + positions
    active = layers * layer_active + embedding + positions

    matmul = 2.0 * (layers * layer_active + vocab * d)  # lm_head always multiplies, tied or not
    attn_per_pair = 2.0 * 2 * head_dim * heads * layers
    window = _get(data, "sliding_window", default=None)
    pairs_causal = kept_pairs(seq_len, seq_len, True, window if data.get("use_sliding_window", True) else None)
    attention = attn_per_pair * pairs_causal / seq_len
    return ClosedForm(
        params_total=float(total), params_active=float(active), params_embedding=float(embedding + positions),
        forward_per_token=matmul + attention, forward_per_token_full=matmul + attn_per_pair * seq_len,
        attention_per_token=attention,
    )
