"""What the plan says about the data's shape beyond ``seq_len``: an encoder-decoder's source length
(``data.source_len``) and packed documents under document masking (``data.mean_document_tokens``),
each against a hand formula (1 multiply-add = 2 FLOP)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import audit.compute.estimate as estimate_mod
from audit.errors import InputError
from audit.flops.attention_op import attention
from audit.flops.configs import resolve_config
from audit.flops.hf_config import build_config
from audit.flops.model_step import count_step
from audit.flops.registry import kept_pairs
from audit.flops.summary import cache_key, summarize_model
from audit.plan import Data, LoadedPlan, Plan
from test_breadth import bart

BART = (64, 4, 128, 2, 300)   # d, heads, ffn, layers per stack, vocab
LLAMA1 = dict(model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=1,
              num_attention_heads=8, num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False)


def per_token(data, seq, **kwargs):
    s = count_step(build_config(data, source="test"), seq, **kwargs)
    return s.forward.headline / s.tokens, s


@pytest.fixture
def bart_file(tmp_path):
    path = tmp_path / "bart" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(bart(*BART)))
    return str(path)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(cache))
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "home"))
    return cache


# --------------------------------------------------------------------------- data.source_len


def encoder_share(d, heads, ff, layers, vocab, seq, source):
    """Forward FLOP per target token that depend on the source length ``source`` (``seq`` target
    tokens per sequence). Encoder layer, per source token: q, k, v, o (4 d^2) and the FFN
    (2 d ff) as linear layers, 2 x 2 x d per (query, key) pair over all heads for attention over
    all ``source`` keys. Decoder layer: cross-attention's k and v projections (2 d^2) run on every
    source token, and each target token's cross-attention reads ``source`` keys."""
    ratio = source / seq
    encoder_linear = layers * ratio * 2 * (4 * d * d + 2 * d * ff)
    encoder_attention = layers * ratio * 4 * d * source
    cross = layers * (2 * 2 * d * d * ratio + 4 * d * source)
    return encoder_linear + encoder_attention + cross


def test_source_len_twice_as_long_adds_the_encoders_share():
    seq = 32
    once, s1 = per_token(bart(*BART), seq, source_len=seq)
    twice, s2 = per_token(bart(*BART), seq, source_len=2 * seq)
    assert twice - once == pytest.approx(encoder_share(*BART, seq, 2 * seq) - encoder_share(*BART, seq, seq),
                                         rel=1e-12)
    # the encoder's linear layers alone: 2 layers x 2 x (4 d^2 + 2 d ff) per source token, one more
    # source token per target token
    d, _, ff, layers, _ = BART
    linear = layers * 2 * (4 * d * d + 2 * d * ff) + layers * 2 * 2 * d * d
    assert s2.forward.matmul / seq - s1.forward.matmul / seq == pytest.approx(linear, rel=1e-12)
    assert s2.backward.headline == 2 * s2.forward.headline


def test_an_encoder_decoder_without_source_len_assumes_seq_len_and_says_so(bart_file):
    plain = summarize_model(bart_file, 32, use_cache=False)
    assert plain.source_len == 32
    (warning,) = plain.warnings
    assert "source_len = seq_len (32" in warning and "data.source_len" in warning
    given = summarize_model(bart_file, 32, source_len=32, use_cache=False)
    assert given.warnings == [] and given.source_len == 32
    assert given.train_flops_per_token == plain.train_flops_per_token
    longer = summarize_model(bart_file, 32, source_len=64, use_cache=False)
    assert longer.source_len == 64 and longer.train_flops_per_token > plain.train_flops_per_token
    assert any("64 encoder tokens per 32 target tokens" in n for n in longer.notes)


def test_source_len_is_ignored_for_a_decoder_only_model():
    plain = summarize_model("llama-3.2-1b", 64, use_cache=False)
    given = summarize_model("llama-3.2-1b", 64, source_len=128, use_cache=False)
    assert given.source_len is None and given.warnings == []
    assert given.train_flops_per_token == plain.train_flops_per_token


def test_the_cache_keeps_source_lengths_and_document_lengths_apart(bart_file, isolated):
    config = resolve_config(bart_file)
    keys = {cache_key(config, 32), cache_key(config, 32, 64), cache_key(config, 32, None, 16),
            cache_key(config, 32, 64, 16)}
    assert len(keys) == 4
    first = summarize_model(bart_file, 32, source_len=64)
    again = summarize_model(bart_file, 32, source_len=64)
    other = summarize_model(bart_file, 32)
    assert (first.count_source, again.count_source, other.count_source) == ("counted", "cache", "counted")
    assert again.train_flops_per_token == first.train_flops_per_token != other.train_flops_per_token
    assert len(list(isolated.glob("*.json"))) == 2


@pytest.mark.parametrize("field", ["source_len", "mean_document_tokens"])
@pytest.mark.parametrize("value", [0, -4, 1.5, True])
def test_the_plan_fields_are_whole_positive_numbers(field, value):
    with pytest.raises(ValueError, match=field):
        Data.model_validate({"tokens": 1e9, field: value})
    assert getattr(Data.model_validate({"tokens": 1e9, field: 512.0}), field) == 512


@pytest.mark.parametrize("value", [0, True, 2.5])
def test_summarize_model_refuses_a_bad_length_naming_the_field(value):
    with pytest.raises(InputError, match="data.source_len: expected a whole number"):
        summarize_model("llama-3.2-1b", 64, source_len=value, use_cache=False)


def test_the_estimate_passes_both_fields_to_the_count(monkeypatch):
    seen = []

    def spy(config, seq_len, **kwargs):
        seen.append((config, seq_len, kwargs["source_len"], kwargs["document_tokens"]))
        raise RuntimeError("stop")

    monkeypatch.setattr(estimate_mod, "summarize_model", spy)
    plan = Plan.model_validate({
        "plan_version": 1, "name": "p", "organization": {"name": "o", "jurisdictions": ["EU"]},
        "teacher": {"model": "t", "access": "weights"}, "student": {"name": "s", "config": "x"},
        "data": {"tokens": 1e9, "seq_len": 512, "source_len": 1024, "mean_document_tokens": 300},
        "use": {"purpose": "p", "scope": "narrow", "distribution": "internal"},
        "schedule": {"start": "2026-12-01"}})
    loaded = LoadedPlan(plan=plan, path="/p.yaml", sha256="0" * 64, student_config="S")
    with pytest.raises(RuntimeError, match="stop"):
        estimate_mod.estimate_plan(loaded, tables=None)
    assert seen == [("S", 512, 1024, 300)]


# --------------------------------------------------------------------------- packed documents


def document_pairs(seq, doc):
    """Kept (query, key) pairs of a causal mask over ``seq`` positions split into documents of
    ``doc`` tokens: each full document keeps doc (doc + 1) / 2 pairs, the last partial one
    r (r + 1) / 2."""
    full, rest = divmod(seq, doc)
    return full * doc * (doc + 1) // 2 + rest * (rest + 1) // 2


@pytest.mark.parametrize("seq, doc", [(40, 16), (64, 16), (64, 1), (37, 5)])
def test_kept_pairs_per_document(seq, doc):
    assert kept_pairs(seq, seq, True, document=doc) == document_pairs(seq, doc)


def test_documents_as_long_as_the_window_change_nothing():
    assert kept_pairs(64, 64, True, document=64) == kept_pairs(64, 64, True, document=1000) == kept_pairs(64, 64, True)
    assert kept_pairs(64, 64, False, document=16) == 64 * 64  # bidirectional attention: every key


def test_documents_with_a_window_or_chunks():
    # window 4 inside documents of 16: each document keeps 1 + 2 + 3 + 4 x 13 pairs
    assert kept_pairs(64, 64, True, window=4, document=16) == 4 * (1 + 2 + 3 + 4 * 13)
    # chunks of 32 refined by documents of 16 (and the other way round): the documents' count
    assert kept_pairs(64, 64, True, chunk=32, document=16) == document_pairs(64, 16)
    assert kept_pairs(64, 64, True, chunk=16, document=32) == document_pairs(64, 16)
    # neither divides the other: the smaller count, never below what the mask keeps
    brute = sum(1 for q in range(64) for k in range(q + 1) if q // 24 == k // 24 and q // 10 == k // 10)
    bound = kept_pairs(64, 64, True, chunk=24, document=10)
    assert bound == min(document_pairs(64, 24), document_pairs(64, 10)) >= brute


def test_one_attention_layer_is_counted_per_document():
    """One Llama layer, 8 query heads of dim 8: forward attention = 2 x (8 + 8) x 8 heads per
    kept pair; backward twice that. Everything else does not depend on documents."""
    seq, doc = 40, 16
    _, whole = per_token(LLAMA1, seq)
    _, packed = per_token(LLAMA1, seq, document_tokens=doc)
    per_pair = 2 * (8 + 8) * 8
    assert packed.forward.attention_masked == per_pair * document_pairs(seq, doc) == per_pair * 308
    assert whole.forward.attention_masked == per_pair * seq * (seq + 1) // 2
    assert packed.backward.attention_masked == 2 * packed.forward.attention_masked
    assert packed.forward.matmul == whole.forward.matmul
    assert packed.forward.attention_full == whole.forward.attention_full


def test_document_masking_reaches_only_the_decoders_causal_self_attention():
    """BART packed: the decoder's causal self-attention is counted per document; the encoder's
    bidirectional attention and the cross-attention still read every key."""
    d, _, _, layers, _ = BART
    seq, doc = 32, 8
    _, whole = per_token(bart(*BART), seq, source_len=seq)
    _, packed = per_token(bart(*BART), seq, source_len=seq, document_tokens=doc)
    saved = layers * 4 * d * (seq * (seq + 1) // 2 - document_pairs(seq, doc))
    assert whole.forward.attention_masked - packed.forward.attention_masked == saved


def test_the_reference_attention_masks_by_document():
    """The op's real implementation (what a model calling it computes) is block-diagonal attention."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 4) for _ in range(3))
    out = attention(q, k, v, True, 0, 0.5, 0, 4)
    parts = [F.scaled_dot_product_attention(q[..., i:i + 4, :], k[..., i:i + 4, :], v[..., i:i + 4, :],
                                            is_causal=True, scale=0.5) for i in range(0, 12, 4)]
    assert torch.allclose(out, torch.cat(parts, dim=-2), atol=1e-6)


def test_the_summary_records_the_document_length(isolated):
    plain = summarize_model("llama-3.2-1b", 256)
    packed = summarize_model("llama-3.2-1b", 256, document_tokens=64)
    assert packed.document_tokens == 64 and plain.document_tokens is None
    assert packed.train_flops_per_token < plain.train_flops_per_token
    assert packed.train_flops_per_token_noncausal == plain.train_flops_per_token_noncausal
    assert any("per document of 64 tokens" in n for n in packed.notes)
    assert summarize_model("llama-3.2-1b", 256, document_tokens=64).count_source == "cache"
