"""Recurrences that transformers' reference code loops over the sequence in Python (RWKV's WKV)
are counted by a loop-free replacement (``meta_patches.SCAN_PATCHES``) with the same FLOP: the
two are compared here at a short length, where the loop is cheap."""

import pytest

from audit.flops import meta_patches
from audit.flops.hf_config import build_config
from audit.flops.model_step import count_step_full

RWKV = dict(model_type="rwkv", hidden_size=64, num_hidden_layers=2, attention_hidden_size=64,
            intermediate_size=128, vocab_size=300, context_length=128)


def test_rwkv_loop_free_wkv_counts_what_the_loop_counts(monkeypatch):
    config = build_config(RWKV, source="test")
    fast = count_step_full(config, 24)
    monkeypatch.setattr(meta_patches, "SCAN_PATCHES", [])
    loop = count_step_full(config, 24)
    assert fast.forward.headline == loop.forward.headline > 0
    assert fast.backward.headline == loop.backward.headline
    assert fast.forward.non_matmul == loop.forward.non_matmul > 0
    assert not (fast.forward.unknown_calls + fast.backward.unknown_calls)
    # the replacement ran: one call per op, not one per op and token
    assert sum(fast.forward.counted_calls.values()) < sum(loop.forward.counted_calls.values()) / 4


def test_rwkv_matches_hand_formula():
    """Per layer: time mixing k, v, r, output (d -> a, a -> d), channel mixing key d -> ffn,
    value ffn -> d, receptance d -> d; the lm_head. WKV itself is elementwise (no matmul)."""
    d, a, ffn, layers, vocab, seq = 64, 64, 128, 2, 300, 24
    s = count_step_full(build_config(RWKV, source="test"), seq)
    hand = 2 * (layers * (3 * d * a + a * d + d * ffn + ffn * d + d * d) + vocab * d)
    assert s.forward.headline / seq == pytest.approx(hand, rel=1e-12)


def test_the_loop_is_restored_after_counting():
    import transformers.models.rwkv.modeling_rwkv as rwkv

    original = rwkv.rwkv_linear_attention_cpu
    count_step_full(build_config(RWKV, source="test"), 8)
    assert rwkv.rwkv_linear_attention_cpu is original
