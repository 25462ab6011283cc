"""Sliding-window and global attention layers mixed in one stack, against a hand formula.

A layer's window is the one its attention call passes: EXAONE 4 (and EXAONE-MoE, Kolibri ...)
keep the config's window on every attention module and pass ``sliding_window=None`` for a
global layer, so reading the module attribute would count global layers as windowed. Qwen2-MoE
passes nothing and keeps the window on its sliding layers' modules. Sequences here are longer
than the window, so the two readings differ.
"""

import pytest

from audit.flops.hf_config import build_config
from audit.flops.model_step import count_step
from audit.flops.registry import kept_pairs

D, FF, HEADS, KV, HD, VOCAB, WINDOW, SEQ = 64, 176, 8, 2, 8, 300, 8, 32
SHAPE = dict(hidden_size=D, intermediate_size=FF, num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HD,
             vocab_size=VOCAB, tie_word_embeddings=False)
MIXED = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def attention_hand(layer_types, seq=SEQ, window=WINDOW) -> float:
    """2 x 2 x head_dim FLOP per kept (query, key) pair per query head (scores and values); a
    sliding layer keeps at most ``window`` keys per query, a global one every causal key."""
    return sum(4 * HD * HEADS * kept_pairs(seq, seq, True, window if kind == "sliding_attention" else None)
               for kind in layer_types)


def matmul_hand(layers) -> float:
    """q, o (d x heads*hd), k, v (d x kv*hd), the gated MLP (3 x d x ff) per layer, the lm_head."""
    per_layer = 2 * D * HEADS * HD + 2 * D * KV * HD + 3 * D * FF
    return 2 * SEQ * (layers * per_layer + VOCAB * D)


def step(data):
    return count_step(build_config(data, source="test"), SEQ)


def test_exaone4_global_layers_attend_over_every_causal_key():
    data = dict(SHAPE, model_type="exaone4", num_hidden_layers=4, sliding_window=WINDOW, layer_types=MIXED)
    s = step(data)
    assert s.forward.attention_masked == attention_hand(MIXED)
    assert s.forward.headline == pytest.approx(matmul_hand(4) + attention_hand(MIXED), rel=1e-12)
    # the windowed reading (every layer at the window) is the undercount this guards against
    assert s.forward.attention_masked > attention_hand(["sliding_attention"] * 4)


@pytest.mark.parametrize("model_type,extra", [
    ("exaone_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=FF, first_k_dense_replace=4)),
    ("kolibri1", {}),
    ("gemma2", {}),
    ("gemma3_text", {}),
    ("qwen2", dict(use_sliding_window=True, max_window_layers=4)),
    ("qwen2_moe", dict(use_sliding_window=True, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=FF,
                       shared_expert_intermediate_size=FF, max_window_layers=4)),
])
def test_mixed_layers_count_each_layer_at_its_own_window(model_type, extra):
    data = dict(SHAPE, model_type=model_type, num_hidden_layers=4, sliding_window=WINDOW, layer_types=MIXED, **extra)
    s = step(data)
    assert s.forward.attention_masked == attention_hand(MIXED)


def test_mistral_windows_every_layer():
    data = dict(SHAPE, model_type="mistral", num_hidden_layers=3, sliding_window=WINDOW)
    s = step(data)
    assert s.forward.attention_masked == attention_hand(["sliding_attention"] * 3)
    assert s.forward.headline == pytest.approx(matmul_hand(3) + attention_hand(["sliding_attention"] * 3), rel=1e-12)


def test_closed_form_windows_only_the_sliding_layers():
    from audit.flops import closed_form

    data = dict(SHAPE, model_type="exaone4", hidden_act="silu", num_hidden_layers=4, sliding_window=WINDOW,
                layer_types=MIXED)
    assert closed_form.estimate(data, SEQ).attention_per_token == pytest.approx(attention_hand(MIXED) / SEQ, rel=1e-12)
    mistral = dict(SHAPE, model_type="mistral", hidden_act="silu", num_hidden_layers=4, sliding_window=WINDOW)
    assert closed_form.estimate(mistral, SEQ).attention_per_token == pytest.approx(
        attention_hand(["sliding_attention"] * 4) / SEQ, rel=1e-12)
