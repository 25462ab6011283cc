"""Whole-model counts on the meta device against formulas derived by hand from the configs."""

import pytest

from audit.errors import InputError
from audit.flops import closed_form
from audit.flops.summary import summarize_model
from audit.flops.configs import bundled_names, resolve_config
from audit.flops.hf_config import build_config
from audit.flops.model_step import count_step
from audit.flops.registry import kept_pairs

LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=3,
             num_attention_heads=8, num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False)


def step(data, seq_len):
    return count_step(build_config(data, source="test"), seq_len)


def per_token_forward(d, layers, heads, kv_heads, head_dim, ff_params_per_layer, vocab, seq_len, window=None):
    """Hand derivation: projections q,o (d x heads*hd), k,v (d x kv*hd), the MLP, the lm_head,
    and attention 2*(hd+hd) per kept pair per head."""
    proj = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim
    matmul = 2 * (layers * (proj + ff_params_per_layer) + vocab * d)
    attention = 2 * 2 * head_dim * heads * layers * kept_pairs(seq_len, seq_len, True, window) / seq_len
    return matmul + attention


def test_llama_gqa_matches_hand_formula_and_backward_is_twice_forward():
    seq = 32
    s = step(LLAMA, seq)
    hand = per_token_forward(64, 3, 8, 2, 8, 3 * 64 * 176, 300, seq)
    assert s.forward.headline / seq == pytest.approx(hand, rel=1e-12)
    assert s.backward.headline == 2 * s.forward.headline
    assert not (s.forward.unknown_calls + s.backward.unknown_calls)


def test_full_attention_is_reported_beside_causal():
    seq = 32
    s = step(LLAMA, seq)
    causal, full = s.forward.attention_masked, s.forward.attention_full
    assert causal / full == pytest.approx((seq + 1) / (2 * seq))


def test_sliding_window_layers_count_only_window_pairs():
    data = dict(LLAMA, model_type="mistral", sliding_window=8)
    seq = 64
    s = step(data, seq)
    hand = per_token_forward(64, 3, 8, 2, 8, 3 * 64 * 176, 300, seq, window=8)
    assert s.forward.headline / seq == pytest.approx(hand, rel=1e-12)


def test_moe_counts_router_and_top_k_experts():
    data = dict(LLAMA, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2)
    seq = 32
    s = step(data, seq)
    experts_per_token = 2 * 3 * 64 * 176  # top-2 gated MLPs
    router = 64 * 4
    hand = per_token_forward(64, 3, 8, 2, 8, experts_per_token + router, 300, seq)
    assert s.forward.headline / seq == pytest.approx(hand, rel=1e-12)
    assert s.params.active == pytest.approx(s.params.total - 3 * 2 * 3 * 64 * 176)


def test_tied_lm_head_is_counted_once_in_params_but_always_multiplied():
    data = dict(LLAMA, tie_word_embeddings=True)
    seq = 16
    s = step(data, seq)
    untied = step(LLAMA, seq)
    assert s.params.total == untied.params.total - 300 * 64
    assert s.forward.headline == untied.forward.headline


@pytest.mark.parametrize("name", bundled_names())
def test_every_bundled_config_counts_fully(name):
    summary = summarize_model(name, 256, use_cache=False)
    assert summary.method == "counted"
    assert summary.coverage == 1.0 and not summary.unknown_ops
    cf = closed_form.estimate(resolve_config(name).data, 256)
    # the closed form ignores norms and biases: parameters agree to 0.1%, FLOP to 0.5%
    assert summary.params_total == pytest.approx(cf.params_total, rel=1e-3)
    assert summary.forward_flops_per_token == pytest.approx(cf.forward_per_token, rel=5e-3)
    assert summary.train_flops_per_token == pytest.approx(3 * summary.forward_flops_per_token, rel=1e-9)


SMALL_BUNDLED = ["gpt2", "llama-3.2-1b", "llama-3.1-8b", "mistral-7b", "mixtral-8x7b", "phi-3-mini",
                 "qwen2.5-0.5b", "gemma-2-2b"]
# One of each architecture in the fast loop (GPT-2, Llama, MoE, sliding/global Gemma); the other
# Llama-shaped configs in the full suite.
_SAME_SHAPE_AS_LLAMA = {"llama-3.1-8b", "mistral-7b", "phi-3-mini", "qwen2.5-0.5b"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SAME_SHAPE_AS_LLAMA else n
                                  for n in SMALL_BUNDLED])
def test_depth_extrapolation_equals_counting_every_layer(name):
    """count_step counts 1 and 2 layers and extends linearly when layers are identical;
    the result must equal running every layer."""
    from audit.flops.model_step import count_step_full

    config = build_config(resolve_config(name).data, source=name)
    fast, full = count_step(config, 64), count_step_full(config, 64)
    assert fast.forward.headline == full.forward.headline
    assert fast.backward.headline == full.backward.headline
    assert fast.forward.attention_full == full.forward.attention_full
    assert fast.params.total == full.params.total and fast.params.active == full.params.active


def test_interleaved_layers_are_counted_one_by_one():
    from audit.flops.depth import layers_identical

    gemma = build_config(resolve_config("gemma-2-2b").data, source="gemma")
    assert not layers_identical(gemma)  # sliding and global attention alternate
    assert layers_identical(build_config(resolve_config("qwen2.5-7b").data, source="qwen"))


def test_not_a_causal_lm_is_a_clear_error():
    with pytest.raises(InputError, match="causal language model"):
        build_config({"model_type": "vit", "hidden_size": 8}, source="vit.json")


def test_meta_failure_falls_back_to_closed_form_and_says_so(monkeypatch, tmp_path):
    import audit.flops.model_step as model_step

    counted = summarize_model("llama-3.2-1b", 512, use_cache=False)

    def boom(*args, **kwargs):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(model_step, "count_step", boom)
    summary = summarize_model("llama-3.2-1b", 512, use_cache=False)
    assert summary.method == "closed_form"
    assert "item()" in summary.fallback_reason
    assert summary.coverage == 0.0
    assert summary.attention_share == pytest.approx(counted.attention_share, rel=1e-2)
