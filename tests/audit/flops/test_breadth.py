"""Breadth: architectures beyond the Llama family, each against a hand formula written here from
its hyperparameters (1 multiply-add = 2 FLOP), and the counter's refusals.

Each architecture is checked twice: a small config with the architecture's structure (fast), and
the published model's hyperparameters (slow; on meta the widths cost nothing, only depth and
sequence length do). Published values: Falcon-40B (tiiuae/falcon-40b config.json), mamba-130m
(state-spaces/mamba-130m-hf), BART-large (facebook/bart-large), Llama 4 Scout
(meta-llama/Llama-4-Scout-17B-16E), Qwen1.5-MoE-A2.7B (Qwen/Qwen1.5-MoE-A2.7B).
"""

import json

import pytest

from audit.errors import InputError
from audit.flops import closed_form
from audit.flops.depth import DepthError, with_depth
from audit.flops.hf_config import build_config
from audit.flops.model_step import count_step, count_step_full
from audit.flops.registry import kept_pairs
from audit.flops.summary import summarize_model


def step(data, seq_len, **kwargs):
    return count_step(build_config(data, source="test"), seq_len, **kwargs)


def per_token(s):
    return s.forward.headline / s.tokens


# --------------------------------------------------------------------------- Falcon


def falcon(d, heads, kv, layers, vocab):
    return dict(model_type="falcon", hidden_size=d, num_attention_heads=heads, num_kv_heads=kv,
                num_hidden_layers=layers, new_decoder_architecture=True, multi_query=False, vocab_size=vocab,
                parallel_attn=True, bias=False, alibi=False)


def falcon_hand(d, heads, kv, layers, vocab, seq):
    """Fused QKV (d -> (heads + 2 kv) x hd), dense (d -> d), MLP d -> 4d -> d (GELU), lm_head,
    attention 2 x 2 x hd per kept pair per query head."""
    hd = d // heads
    per_layer = d * (heads + 2 * kv) * hd + d * d + 2 * d * 4 * d
    matmul = 2 * (layers * per_layer + vocab * d)
    return matmul + 4 * hd * heads * layers * kept_pairs(seq, seq, True) / seq, per_layer


@pytest.mark.parametrize("shape", [
    (64, 8, 2, 3, 300),
    pytest.param((8192, 128, 8, 60, 65024), marks=pytest.mark.slow, id="falcon-40b"),
])
def test_falcon_counts_attention_with_grouped_kv_heads(shape):
    d, heads, kv, layers, vocab = shape
    seq = 64
    s = step(falcon(*shape), seq)
    hand, per_layer = falcon_hand(*shape, seq)
    assert per_token(s) == pytest.approx(hand, rel=1e-12)
    assert s.backward.headline == 2 * s.forward.headline
    assert not (s.forward.unknown_calls + s.backward.unknown_calls)
    # parameters: the matmul weights above, tied embeddings, and per layer two LayerNorms (w + b)
    # plus the final one
    assert s.params.total == layers * (per_layer + 2 * 2 * d) + vocab * d + 2 * d


def test_falcon_closed_form_reads_num_kv_heads():
    data = falcon(8192, 128, 8, 60, 65024)
    cf = closed_form.estimate(data, 2048)
    hand, per_layer = falcon_hand(8192, 128, 8, 60, 65024, 2048)
    assert cf.forward_per_token == pytest.approx(hand, rel=1e-9)
    assert cf.params_total == pytest.approx(60 * per_layer + 65024 * 8192, rel=1e-9)
    # Falcon-7B: multi-query (one KV head) whatever num_kv_heads says
    seven = dict(model_type="falcon", hidden_size=4544, num_attention_heads=71, num_kv_heads=71,
                 num_hidden_layers=32, multi_query=True, new_decoder_architecture=False, vocab_size=65024)
    hd = 64
    est = closed_form.estimate(seven, 2048)
    assert est.params_total == pytest.approx(32 * (4544 * (71 + 2) * hd + 4544 * 4544 + 8 * 4544 ** 2)
                                             + 65024 * 4544, rel=1e-9)


# --------------------------------------------------------------------------- Mamba


def mamba(d, layers, vocab, state, rank):
    return dict(model_type="mamba", hidden_size=d, num_hidden_layers=layers, vocab_size=vocab, state_size=state,
                expand=2, conv_kernel=4, time_step_rank=rank, use_bias=False, use_conv_bias=True)


def mamba_hand(d, layers, vocab, state, rank, seq):
    """in_proj d -> 2 x 2d, x_proj 2d -> rank + 2N, dt_proj rank -> 2d, out_proj 2d -> d; the
    depthwise causal conv (kernel 4, padded by 3 and cut back) 2 x 4 per channel and output
    position; the scan's output y_t = h_t . C_t, 2 N per channel and token; the lm_head."""
    inner = 2 * d
    per_layer = d * 2 * inner + inner * (rank + 2 * state) + rank * inner + inner * d
    conv = 2 * 4 * inner * (seq + 3) / seq
    scan = 2 * inner * state
    return 2 * (layers * per_layer + vocab * d) + layers * (conv + scan)


@pytest.mark.parametrize("shape", [
    (96, 3, 300, 8, 6),
    pytest.param((768, 24, 50280, 16, 48), marks=pytest.mark.slow, id="mamba-130m"),
])
def test_mamba_matches_hand_formula(shape):
    seq = 64
    s = step(mamba(*shape), seq)
    assert per_token(s) == pytest.approx(mamba_hand(*shape, seq), rel=1e-12)
    # backward: 2x forward for every matmul but the scan's y = h . C, whose gradient for h is an
    # outer product (contraction 1: elementwise by convention), so 1x for that one
    d, layers, vocab, state, rank = shape
    scan = layers * 2 * 2 * d * state * seq
    assert s.backward.headline == 2 * s.forward.headline - scan
    assert not (s.forward.unknown_calls + s.backward.unknown_calls)


def test_scan_formula_counts_what_the_loop_counts(monkeypatch):
    """The loop-free scan dispatches the same matmul FLOP as transformers' per-token loop."""
    import audit.flops.meta_patches as meta_patches

    config = build_config(mamba(48, 2, 100, 4, 3), source="test")
    fast = count_step_full(config, 24)
    monkeypatch.setattr(meta_patches, "_scan_modules", lambda: [])
    loop = count_step_full(config, 24)
    assert fast.forward.headline == loop.forward.headline
    assert fast.backward.headline == loop.backward.headline
    assert fast.forward.non_matmul == loop.forward.non_matmul


def test_state_space_closed_form_refuses():
    with pytest.raises(closed_form.OutsideBand, match="state-space"):
        closed_form.estimate(mamba(768, 24, 50280, 16, 48), 2048)


# --------------------------------------------------------------------------- encoder-decoder


def bart(d, heads, ff, layers, vocab):
    return dict(model_type="bart", d_model=d, encoder_attention_heads=heads, decoder_attention_heads=heads,
                encoder_ffn_dim=ff, decoder_ffn_dim=ff, encoder_layers=layers, decoder_layers=layers,
                vocab_size=vocab, max_position_embeddings=1024, is_encoder_decoder=True)


def bart_hand(d, heads, ff, layers, vocab, seq, source):
    """Per target token, with ``source`` encoder tokens per ``seq`` target tokens. Encoder layer
    (per source token): q, k, v, o (4 d^2), FFN 2 d ff, attention over all source tokens.
    Decoder layer (per target token): self q, k, v, o (4 d^2), cross q, o (2 d^2) and cross k, v
    on every source token (2 d^2 x source/seq), FFN, causal self-attention, full cross-attention.
    lm_head d x vocab. Attention: 2 x 2 x d per (query, key) pair over all heads."""
    ratio = source / seq
    encoder = layers * ratio * (2 * (4 * d * d + 2 * d * ff) + 4 * d * source)
    decoder = layers * (2 * (4 * d * d + 2 * d * d + 2 * d * ff) + 2 * 2 * d * d * ratio
                        + 4 * d * kept_pairs(seq, seq, True) / seq + 4 * d * source)
    return encoder + decoder + 2 * d * vocab


@pytest.mark.parametrize("shape", [
    (64, 4, 128, 2, 300),
    pytest.param((1024, 16, 4096, 12, 50265), marks=pytest.mark.slow, id="bart-large"),
])
@pytest.mark.parametrize("source", [None, 48])
def test_encoder_decoder_counts_both_stacks(shape, source):
    seq = 32
    s = step(bart(*shape), seq, source_len=source)
    assert "ConditionalGeneration" in s.architecture  # both stacks, never BartForCausalLM alone
    assert per_token(s) == pytest.approx(bart_hand(*shape, seq, source or seq), rel=1e-12)
    assert not (s.forward.unknown_calls + s.backward.unknown_calls)


def test_t5_is_counted_not_refused():
    data = dict(model_type="t5", d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, vocab_size=300,
                feed_forward_proj="relu", tie_word_embeddings=False, decoder_start_token_id=0)
    s = step(data, 16)
    d, ff, inner, layers, vocab = 64, 128, 64, 2, 300
    # T5: no biases, attention inner dim = heads x d_kv; relative position bias is an embedding
    encoder = layers * (2 * (4 * d * inner + 2 * d * ff) + 4 * inner * 16)
    decoder = layers * (2 * (4 * d * inner + 2 * d * inner + 2 * d * ff) + 2 * 2 * d * inner
                        + 4 * inner * kept_pairs(16, 16, True) / 16 + 4 * inner * 16)
    assert per_token(s) == pytest.approx(encoder + decoder + 2 * d * vocab, rel=1e-12)


# --------------------------------------------------------------------------- routed MoE + shared expert


def llama4(d, heads, kv, hd, f, f_mlp, experts, vocab, layers, chunk):
    return dict(model_type="llama4_text", hidden_size=d, num_attention_heads=heads, num_key_value_heads=kv,
                head_dim=hd, intermediate_size=f, intermediate_size_mlp=f_mlp, num_local_experts=experts,
                num_experts_per_tok=1, vocab_size=vocab, num_hidden_layers=layers, interleave_moe_layer_step=1,
                attention_chunk_size=chunk, no_rope_layer_interval=4, tie_word_embeddings=False)


@pytest.mark.parametrize("shape", [
    (64, 4, 2, 16, 96, 192, 8, 300, 4, 16),
    pytest.param((5120, 40, 8, 128, 8192, 16384, 16, 202048, 4, 64), marks=pytest.mark.slow, id="llama-4-scout"),
])
def test_llama4_top1_expert_plus_shared_expert_and_chunked_attention(shape):
    """Llama 4's experts run every token through every expert (batched bmm); counted at top-1.
    Per layer: q, k, v, o; router d x E; one routed and one shared SwiGLU expert of width f.
    Layers 1-3 of every 4 use RoPE and chunked attention, the 4th is NoPE with full causal."""
    d, heads, kv, hd, f, f_mlp, experts, vocab, layers, chunk = shape
    seq = 5 * chunk // 2  # two full chunks and a half
    s = step(llama4(*shape), seq)
    per_layer = 2 * d * heads * hd + 2 * d * kv * hd + d * experts + 2 * 3 * d * f
    chunked = kept_pairs(seq, seq, True, None, chunk)
    attention = 4 * hd * heads * (3 * chunked + kept_pairs(seq, seq, True)) / seq
    assert chunked < kept_pairs(seq, seq, True)
    assert per_token(s) == pytest.approx(2 * (layers * per_layer + vocab * d) + attention, rel=1e-12)
    assert s.backward.headline == 2 * s.forward.headline
    assert any("top-1" in note for note in s.notes)
    expert_params = layers * experts * 3 * d * f
    assert s.params.total - s.params.active == expert_params * (1 - 1 / experts)


def qwen2_moe(d, heads, layers, experts, top_k, f_expert, f_shared, vocab):
    return dict(model_type="qwen2_moe", hidden_size=d, num_attention_heads=heads, num_key_value_heads=heads,
                num_hidden_layers=layers, num_experts=experts, num_experts_per_tok=top_k,
                moe_intermediate_size=f_expert, shared_expert_intermediate_size=f_shared, vocab_size=vocab,
                intermediate_size=f_shared, tie_word_embeddings=False, decoder_sparse_step=1, mlp_only_layers=[])


@pytest.mark.parametrize("shape", [
    (64, 4, 3, 8, 2, 32, 128, 300),
    pytest.param((2048, 16, 24, 60, 4, 1408, 5632, 151936), marks=pytest.mark.slow, id="qwen1.5-moe-a2.7b"),
])
def test_grouped_moe_top_k_plus_gated_shared_expert(shape):
    """Per layer: q, k, v, o (with q/k/v biases: elementwise), router d x E, top-k SwiGLU experts
    of width f_expert, the shared SwiGLU expert of width f_shared and its gate d x 1 (a
    contraction of length d, so matmul FLOP)."""
    d, heads, layers, experts, top_k, f_expert, f_shared, vocab = shape
    seq = 32
    s = step(qwen2_moe(*shape), seq)
    per_layer = 4 * d * d + d * experts + top_k * 3 * d * f_expert + 3 * d * f_shared + d
    attention = layers * 4 * d * kept_pairs(seq, seq, True) / seq
    assert per_token(s) == pytest.approx(2 * (layers * per_layer + vocab * d) + attention, rel=1e-12)
    cf = closed_form.estimate(qwen2_moe(*shape), seq)  # the closed form sees the shared expert too
    assert cf.forward_per_token == pytest.approx(per_token(s), rel=5e-3)


# --------------------------------------------------------------------------- depth extension


def test_a_config_that_cannot_be_shortened_is_counted_layer_by_layer(monkeypatch):
    import audit.flops.model_step as model_step

    data = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, vocab_size=300)
    config = build_config(data, source="test")

    def refuse(config, layers):
        raise DepthError("cannot shorten the config: layer_types is read-only")

    monkeypatch.setattr(model_step, "with_depth", refuse)
    s = count_step(config, 32)
    assert s.depth_method.startswith("every layer") and "read-only" in s.depth_method
    assert s.forward.headline == count_step_full(config, 32).forward.headline


def test_with_depth_refuses_a_read_only_per_layer_list():
    class Frozen:
        num_hidden_layers = 6

        @property
        def layer_types(self):
            return ["mamba"] * 6  # does not follow num_hidden_layers

    with pytest.raises(DepthError, match="layer_types"):
        with_depth(Frozen(), 1)


def test_layers_that_differ_in_the_built_model_are_not_extended():
    """Llama 4 interleaves chunked and NoPE layers: counted every layer, and the extension would
    have been wrong."""
    s = step(llama4(64, 4, 2, 16, 96, 192, 8, 300, 6, 8), 40)
    assert s.depth_method.startswith("every layer")


# --------------------------------------------------------------------------- refusals and warnings


def test_a_config_without_shape_fields_is_refused():
    with pytest.raises(InputError, match="no shape fields"):
        build_config({"model_type": "llama"}, source="llama.json")


def test_sequence_longer_than_positions_warns(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, vocab_size=300, max_position_embeddings=128)))
    long = summarize_model(str(path), 256, use_cache=False)
    assert long.method == "counted" and any("max_position_embeddings 128" in w for w in long.warnings)
    assert summarize_model(str(path), 128, use_cache=False).warnings == []


def test_closed_form_refusal_keeps_the_meta_failure(monkeypatch, tmp_path):
    import audit.flops.model_step as model_step

    path = tmp_path / "config.json"
    path.write_text(json.dumps(mamba(96, 3, 300, 8, 6)))

    def boom(*args, **kwargs):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(model_step, "count_step", boom)
    with pytest.raises(InputError) as err:
        summarize_model(str(path), 64, use_cache=False)
    assert "item()" in str(err.value) and "state-space" in str(err.value)
    assert err.value.exit_code == 2


def test_closed_form_refuses_without_attention_heads():
    with pytest.raises(closed_form.OutsideBand, match="num_attention_heads"):
        closed_form.estimate(dict(model_type="x", hidden_size=64, num_hidden_layers=2, vocab_size=10), 16)


# --------------------------------------------------------------------------- multi-token prediction


DEEPSEEK_V3_SMALL = dict(model_type="deepseek_v3", hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                         num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
                         num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32,
                         kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, vocab_size=300,
                         n_group=1, topk_group=1)


def test_declared_mtp_layers_are_counted():
    """DeepSeek-V3 declares multi-token-prediction layers that transformers does not build. One
    MTP depth = one more MoE decoder layer + a 2d -> d projection + the shared lm_head."""
    seq, d, vocab = 32, 64, 300
    plain = step(dict(DEEPSEEK_V3_SMALL, num_nextn_predict_layers=0), seq)
    mtp = step(dict(DEEPSEEK_V3_SMALL, num_nextn_predict_layers=1), seq)
    deeper = step(dict(DEEPSEEK_V3_SMALL, num_nextn_predict_layers=0, num_hidden_layers=7), seq)
    moe_layer = per_token(deeper) - per_token(plain)
    assert per_token(mtp) - per_token(plain) == pytest.approx(moe_layer + 2 * (2 * d * d + d * vocab), rel=1e-12)
    assert mtp.params.total - plain.params.total == (deeper.params.total - plain.params.total) + 2 * d * d + 2 * d
    assert any("multi-token-prediction" in note for note in mtp.notes)
    assert plain.depth_method.startswith("extended")  # 1 dense then MoE: depths 1 and 2


def test_extension_by_layer_kind_equals_every_layer_for_a_jamba_stack():
    """Jamba: attention every 8th layer (offset 4), experts every 2nd (offset 1): three layer
    kinds, counted at depths 1, 2, 3 and 5 and combined; equal to running all 16 layers."""
    data = dict(model_type="jamba", hidden_size=64, intermediate_size=128, num_hidden_layers=16,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=300, num_experts=4, num_experts_per_tok=2,
                mamba_d_state=8, mamba_dt_rank=8, mamba_expand=2)
    config = build_config(data, source="test")
    fast, full = count_step(config, 32), count_step_full(config, 32)
    assert fast.depth_method == "extended from 1, 2, 3, 5 layers (3 layer kinds)"
    assert fast.forward.headline == pytest.approx(full.forward.headline, rel=1e-12)
    assert fast.backward.headline == pytest.approx(full.backward.headline, rel=1e-12)
    assert fast.params.total == full.params.total and fast.params.active == full.params.active


@pytest.mark.slow
def test_jamba_default_at_4096_tokens_counts_in_under_10_seconds():
    import time

    from transformers import JambaConfig

    count_step(JambaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=300), 16)  # imports, first-call set-up
    start = time.perf_counter()
    s = count_step(JambaConfig(), 4096)
    assert time.perf_counter() - start < 10
    assert s.depth_method.startswith("extended")
    assert not (s.forward.unknown_calls + s.backward.unknown_calls)


def test_deepseek_sparse_attention_counts_top_k_keys_per_query():
    """DeepSeek sparse attention: each query attends to the index_topk keys its indexer picks,
    min(causal keys, k) of them; the indexer's own scores (every causal pair) are matmul."""
    from audit.flops.sweep import small_config

    config = small_config("deepseek_v32")
    config.index_topk = 16
    seq = 64
    s = count_step(config, seq)
    assert s.forward.attention_masked / s.forward.attention_full == pytest.approx(
        kept_pairs(seq, seq, True, 16) / (seq * seq), rel=1e-12)
    assert any("top-16" in note for note in s.notes)


@pytest.mark.slow
def test_deepseek_v3_full_size_extension_equals_every_layer():
    """DeepSeek-V3 (transformers' default config is the 671B model: 61 layers, the first 3 dense,
    256 routed experts, top-8, 1 shared): counted from depths 1, 2 and 4, equal to all 61 layers;
    parameters as published (671B total, 37B activated, MTP module excluded)."""
    from transformers import DeepseekV3Config

    config = DeepseekV3Config(num_nextn_predict_layers=0)
    fast, full = count_step(config, 1024), count_step_full(config, 1024)
    assert fast.depth_method == "extended from 1, 2, 4 layers (2 layer kinds)"
    assert fast.forward.headline == pytest.approx(full.forward.headline, rel=1e-12)
    assert fast.backward.headline == pytest.approx(full.backward.headline, rel=1e-12)
    assert fast.params.total == pytest.approx(671e9, rel=2e-3)
    assert 37e9 <= fast.params.active <= 38e9
