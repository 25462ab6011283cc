"""Depth extension by layer kind: which layers are the same kind, and how few depths are counted."""

import time

import pytest

from audit.flops.hf_config import build_config
from audit.flops.model_step import count_step, count_step_full
from audit.flops.depth import plan_depths

# Llama 4 Scout's structure, small: an MoE in every layer (``moe_layers`` = [0 .. L-1], as long as
# the stack), chunked attention with RoPE in 3 layers of 4, the 4th NoPE with full attention.
LLAMA4 = dict(model_type="llama4_text", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              intermediate_size=96, intermediate_size_mlp=192, num_local_experts=8, num_experts_per_tok=1,
              vocab_size=300, num_hidden_layers=8, interleave_moe_layer_step=1, attention_chunk_size=16,
              no_rope_layer_interval=4, tie_word_embeddings=False)


def test_a_list_of_layer_numbers_naming_every_layer_does_not_make_each_layer_a_kind():
    """Before: moe_layers' entry (the layer's own number) was part of each layer's signature, so
    Llama 4 Scout had 48 layer kinds and every layer ran (3x the import time, cold)."""
    config = build_config(LLAMA4, source="test")
    assert list(config.moe_layers) == list(range(8))
    fast, full = count_step(config, 40), count_step_full(config, 40)
    assert fast.depth_method == "extended from 1, 2, 4 layers (2 layer kinds)"
    assert fast.forward.headline == pytest.approx(full.forward.headline, rel=1e-12)
    assert fast.backward.headline == pytest.approx(full.backward.headline, rel=1e-12)
    assert (fast.params.total, fast.params.active) == (full.params.total, full.params.active)


def test_moe_in_some_layers_only_keeps_its_kinds():
    """interleave_moe_layer_step=2: moe_layers = [1, 3, 5, 7] names half the layers, so its entries
    stay in the signature; with NoPE every 4th layer: dense + RoPE (0, 2, 4, 6), MoE + RoPE (1, 5),
    MoE + NoPE (3, 7) - three kinds, counted at 1, 2, 3 and 4 layers, equal to every layer."""
    config = build_config(dict(LLAMA4, interleave_moe_layer_step=2), source="test")
    assert list(config.moe_layers) == [1, 3, 5, 7]
    fast, full = count_step(config, 40), count_step_full(config, 40)
    assert fast.depth_method == "extended from 1, 2, 3, 4 layers (3 layer kinds)"
    assert fast.forward.headline == pytest.approx(full.forward.headline, rel=1e-12)


def test_plan_depths_stops_at_the_limit_before_any_arithmetic():
    assert plan_depths(["a", "b"] * 24, limit=24) == ([1, 2, 3], plan_depths(["a", "b"] * 24)[1])
    start = time.perf_counter()
    assert plan_depths(list(range(48)), limit=24) == ([], [])  # every layer a kind of its own
    assert time.perf_counter() - start < 0.5
    assert plan_depths(["a"] * 3 + ["b"] * 45, limit=3) == ([], [])  # b first met at depth 4
    depths, weights = plan_depths(["a"] * 3 + ["b"] * 45, limit=24)
    assert depths == [1, 2, 4] and sum(weights) == 1
