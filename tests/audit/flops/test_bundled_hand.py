"""Every bundled config (audit/model_configs) counted against a hand formula written here from the
model's published hyperparameters (its config.json or paper), forward FLOP per token and
parameters (1 multiply-add = 2 FLOP). The table below is typed from the publications, not read
from the bundled files, so a wrong bundled value fails too."""

import pytest

from audit.flops.configs import bundled_names
from audit.flops.registry import kept_pairs
from audit.flops.summary import summarize_model

SEQ = 256

# name: (kind, d, layers, heads, kv heads, head dim, ffn, vocab, tied, experts, top-k)
PUBLISHED = {
    "gpt2": ("gpt2", 768, 12, 12, 12, 64, 3072, 50257, True, 0, 0),            # openai-community/gpt2
    "gpt3-175b": ("gpt2", 12288, 96, 96, 96, 128, 49152, 50257, True, 0, 0),   # Brown et al. 2020, Table 2.1
    "palm-540b": ("llama", 18432, 118, 48, 1, 256, 73728, 256000, True, 0, 0),  # Chowdhery et al. 2022, Table 1
    "llama-2-70b": ("llama", 8192, 80, 64, 8, 128, 28672, 32000, False, 0, 0),
    "llama-3.2-1b": ("llama", 2048, 16, 32, 8, 64, 8192, 128256, True, 0, 0),
    "llama-3.2-3b": ("llama", 3072, 28, 24, 8, 128, 8192, 128256, True, 0, 0),
    "llama-3.1-8b": ("llama", 4096, 32, 32, 8, 128, 14336, 128256, False, 0, 0),
    "llama-3.1-70b": ("llama", 8192, 80, 64, 8, 128, 28672, 128256, False, 0, 0),
    "llama-3.1-405b": ("llama", 16384, 126, 128, 8, 128, 53248, 128256, False, 0, 0),
    "qwen2.5-0.5b": ("qwen2", 896, 24, 14, 2, 64, 4864, 151936, True, 0, 0),
    "qwen2.5-7b": ("qwen2", 3584, 28, 28, 4, 128, 18944, 152064, False, 0, 0),
    "qwen2.5-72b": ("qwen2", 8192, 80, 64, 8, 128, 29568, 152064, False, 0, 0),
    "mistral-7b": ("llama", 4096, 32, 32, 8, 128, 14336, 32000, False, 0, 0),
    "phi-3-mini": ("llama", 3072, 32, 32, 32, 96, 8192, 32064, False, 0, 0),
    "gemma-2-2b": ("gemma2", 2304, 26, 8, 4, 256, 9216, 256000, True, 0, 0),
    "mixtral-8x7b": ("llama", 4096, 32, 32, 8, 128, 14336, 32000, False, 8, 2),
}


def hand(kind, d, layers, heads, kv, hd, ffn, vocab, tied, experts, top_k, seq=SEQ):
    """(forward FLOP per token, parameters). GPT-2: fused QKV d -> 3d, projection d -> d, MLP
    d -> ffn -> d, all with biases, learned positions (1024 or 2048), two LayerNorms a layer.
    Llama-shaped: q, o (d x heads x hd), k, v (d x kv x hd), a gated MLP (3 d ffn; top-k of
    ``experts`` plus a router d -> experts for Mixtral), RMSNorms (Gemma 2: four a layer), Qwen2:
    QKV biases. Attention: 2 matmuls x 2 FLOP x hd per kept causal pair per query head (the
    windows of Mistral, Phi-3 and Gemma 2 are longer than SEQ). The lm_head always multiplies."""
    attention = 4 * hd * heads * layers * kept_pairs(seq, seq, True) / seq
    if kind == "gpt2":
        positions = 2048 if d == 12288 else 1024
        per_layer = 4 * d * d + 2 * d * ffn
        params = layers * (per_layer + 3 * d + d + ffn + d + 4 * d) + vocab * d + positions * d + 2 * d
        return 2 * (layers * per_layer + vocab * d) + attention, params
    attn = 2 * d * heads * hd + 2 * d * kv * hd
    mlp = (top_k if experts else 1) * 3 * d * ffn + (d * experts if experts else 0)
    weights = attn + (experts * 3 * d * ffn + d * experts if experts else 3 * d * ffn)
    norms = {"gemma2": 4}.get(kind, 2) * d
    bias = (heads + 2 * kv) * hd if kind == "qwen2" else 0
    params = layers * (weights + norms + bias) + vocab * d * (1 if tied else 2) + d
    return 2 * (layers * (attn + mlp) + vocab * d) + attention, params


def test_the_table_covers_every_bundled_config():
    assert set(PUBLISHED) == set(bundled_names())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_bundled_config_matches_the_hand_formula(name):
    summary = summarize_model(name, SEQ, use_cache=False)
    forward, params = hand(*PUBLISHED[name])
    assert summary.forward_flops_per_token == pytest.approx(forward, rel=1e-12)
    assert summary.params_total == params
