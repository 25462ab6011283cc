"""Models whose code reads tensor values, counted on meta all the same, each against a hand
formula written here (1 multiply-add = 2 FLOP): routed experts picked with ``nonzero`` or
``tolist`` (DBRX, JetMoE: ``meta_patches.ROUTING_PATCHES``, exactly top-k experts per token),
audio tokens in parallel codebooks (MusicGen) and lengths checked with ``.item()`` (XLM).
Published values: DBRX (databricks/dbrx-base config.json), JetMoE-8B (jetmoe/jetmoe-8b
config.json).
"""

import pytest

from audit.flops import meta_patches
from audit.flops.hf_config import build_config
from audit.flops.model_step import count_step
from audit.flops.registry import kept_pairs

SEQ = 64


def step(data):
    return count_step(build_config(data, source="test"), SEQ)


def attention(head_dim, heads, layers):
    """2 matmuls x 2 FLOP x head_dim per kept causal pair, per query head, per token."""
    return 4 * head_dim * heads * layers * kept_pairs(SEQ, SEQ, True) / SEQ


def dbrx(d, heads, kv, layers, ffn, experts, top_k, vocab):
    return dict(model_type="dbrx", d_model=d, n_heads=heads, n_layers=layers, vocab_size=vocab, max_seq_len=4096,
                attn_config={"kv_n_heads": kv, "rope_theta": 500000.0, "clip_qkv": 8.0},
                ffn_config={"ffn_hidden_size": ffn, "moe_num_experts": experts, "moe_top_k": top_k})


def dbrx_hand(d, heads, kv, layers, ffn, experts, top_k, vocab):
    """Fused QKV d -> (heads + 2 kv) x hd, out d -> d, router d -> experts, top-k GLU experts
    (w1, v1: d -> ffn; w2: ffn -> d), lm_head; returns (FLOP per token, expert weights per layer)."""
    hd = d // heads
    per_layer = d * (heads + 2 * kv) * hd + d * d + d * experts + top_k * 3 * d * ffn
    return 2 * (layers * per_layer + vocab * d) + attention(hd, heads, layers), experts * 3 * d * ffn


@pytest.mark.parametrize("shape", [
    (64, 8, 2, 3, 96, 4, 2, 300),
    pytest.param((6144, 48, 8, 40, 10752, 16, 4, 100352), id="dbrx-132b"),
])
def test_dbrx_counts_top_k_experts(shape):
    s = step(dbrx(*shape))
    hand, expert_weights = dbrx_hand(*shape)
    assert s.forward.headline / s.tokens == pytest.approx(hand, rel=1e-12)
    assert not (s.forward.unknown_calls + s.backward.unknown_calls)
    layers, experts, top_k = shape[3], shape[5], shape[6]
    assert s.params.active == s.params.total - layers * expert_weights * (1 - top_k / experts)


def jetmoe(d, layers, kv, kv_channels, ffn, experts, top_k, vocab):
    return dict(model_type="jetmoe", hidden_size=d, num_hidden_layers=layers, num_key_value_heads=kv,
                kv_channels=kv_channels, intermediate_size=ffn, num_local_experts=experts,
                num_experts_per_tok=top_k, num_attention_heads=kv * top_k, vocab_size=vocab)


def jetmoe_hand(d, layers, kv, kv_channels, ffn, experts, top_k, vocab):
    """Mixture of attention heads: top-k query experts d -> kv x kv_channels and output experts
    back, shared K/V projection d -> 2 x kv x kv_channels, top_k x kv query heads; top-k GLU
    MLP experts (d -> 2 ffn, ffn -> d); two routers d -> experts; lm_head."""
    inner = kv * kv_channels
    per_layer = top_k * 2 * d * inner + d * 2 * inner + top_k * 3 * d * ffn + 2 * d * experts
    return 2 * (layers * per_layer + vocab * d) + attention(kv_channels, top_k * kv, layers)


@pytest.mark.parametrize("shape", [
    (64, 3, 2, 16, 96, 4, 2, 300),
    pytest.param((2048, 24, 16, 128, 5632, 8, 2, 32000), id="jetmoe-8b"),
])
def test_jetmoe_counts_top_k_attention_and_mlp_experts(shape):
    s = step(jetmoe(*shape))
    assert s.forward.headline / s.tokens == pytest.approx(jetmoe_hand(*shape), rel=1e-12)
    assert not (s.forward.unknown_calls + s.backward.unknown_calls)
    d, layers, kv, kv_channels, ffn, experts, top_k, _ = shape
    experts_params = layers * experts * (2 * d * kv * kv_channels + 3 * d * ffn)
    assert s.params.active == s.params.total - experts_params * (1 - top_k / experts)


def test_even_split_keeps_every_pair():
    assert meta_patches.even_split(10, 4) == [3, 3, 2, 2]
    assert sum(meta_patches.even_split(7, 16)) == 7


def test_routing_patches_are_removed_after_counting():
    from transformers.models.dbrx.modeling_dbrx import DbrxExperts

    original = DbrxExperts.forward
    step(dbrx(64, 8, 2, 1, 96, 4, 2, 300))
    assert DbrxExperts.forward is original
    with meta_patches.counting_context():
        assert DbrxExperts.forward is meta_patches.dbrx_experts
    assert DbrxExperts.forward is original


# --------------------------------------------------------------------------- audio tokens


def musicgen_hand(d, layers, ffn, codebooks, vocab):
    """Per position (audio frame): q, k, v, o (d -> d), fc1 d -> ffn, fc2 ffn -> d, one lm_head
    d -> vocab per codebook, causal attention over d = heads x hd."""
    return 2 * (layers * (4 * d * d + 2 * d * ffn) + codebooks * d * vocab) + attention(d, 1, layers)


def test_musicgen_counts_one_position_per_frame_of_codebooks():
    data = dict(model_type="musicgen", decoder=dict(hidden_size=64, num_hidden_layers=3, ffn_dim=96,
                                                    num_attention_heads=4, num_codebooks=4, vocab_size=300),
                text_encoder=dict(model_type="t5"), audio_encoder=dict(model_type="encodec"))
    s = step(data)
    assert s.tokens == SEQ
    assert s.forward.headline / s.tokens == pytest.approx(musicgen_hand(64, 3, 96, 4, 300), rel=1e-12)
    assert any("codebooks" in note for note in s.notes)


# --------------------------------------------------------------------------- values known on the host


def xlm(d, heads, layers, vocab, causal):
    return dict(model_type="xlm", emb_dim=d, n_heads=heads, n_layers=layers, n_words=vocab, causal=causal,
                max_position_embeddings=512, use_lang_emb=False)


@pytest.mark.parametrize("causal", [True, False])
def test_xlm_counts_with_its_lengths_given(causal):
    """XLM checks each row's length with ``.item()``; the counting run gives the lengths (every
    row SEQ tokens). Per layer q, k, v, o (4 d^2) and the FFN d -> 4d -> d; the output
    projection d -> vocab; its attention is written as matmuls: 2 x 2 x d per (query, key) pair
    over the full matrix, causal or not."""
    d, heads, layers, vocab = 64, 4, 3, 300
    s = step(xlm(d, heads, layers, vocab, causal))
    hand = 2 * (layers * 12 * d * d + vocab * d) + layers * 4 * d * SEQ
    assert s.forward.headline / s.tokens == pytest.approx(hand, rel=1e-12)
    assert not (s.forward.unknown_calls + s.backward.unknown_calls)
