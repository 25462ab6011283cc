"""``flopgate flops --source-len / --mean-document-tokens``: the encoder's input length and the
packed documents' mean length reach the count, for a model and for a plan (where they override
``data.source_len`` and ``data.mean_document_tokens``), checked against hand formulas."""

import json

import pytest

from audit.cli.main import main
from audit.flops.registry import kept_pairs

# d, heads, ffn, layers per stack, vocab (bart) / a one-layer Llama with 8 heads of 8
BART = dict(model_type="bart", d_model=64, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_layers=2, decoder_layers=2, vocab_size=300,
            max_position_embeddings=256)
LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=1,
             num_attention_heads=8, num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "home"))
    return tmp_path


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def flops(capsys, *argv):
    assert main(["flops", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_source_len_reaches_an_encoder_decoder_count(isolated, capsys):
    """Doubling the source from 32 to 64 tokens adds, per target token (seq 32, train = 3 x
    forward): the encoder's linear layers (4 d^2 + 2 d ffn per source token) and attention
    (4 d per pair, every source key), and the decoder's cross-attention K/V (2 d^2 per source
    token) and reads (4 d per source key)."""
    config = write(isolated / "bart.json", BART)
    short = flops(capsys, config, "--seq-len", "32", "--source-len", "32")
    long = flops(capsys, config, "--seq-len", "32", "--source-len", "64")
    assert long["source_len"] == 64 and long["model"]["source_len"] == 64
    d, ffn, layers, seq = 64, 128, 2, 32

    def share(src):
        ratio = src / seq
        return layers * (ratio * 2 * (4 * d * d + 2 * d * ffn) + ratio * 4 * d * src + 2 * 2 * d * d * ratio
                         + 4 * d * src)

    added = long["model"]["train_flops_per_token"] - short["model"]["train_flops_per_token"]
    assert added == pytest.approx(3 * (share(64) - share(32)), rel=1e-12)
    assert not any("source_len" in w for w in long["model"]["warnings"])
    assert any("encoder tokens per sequence: 64" in a for a in long["components"][0]["assumptions"])


def test_without_source_len_an_encoder_decoder_warns(isolated, capsys):
    data = flops(capsys, write(isolated / "bart.json", BART), "--seq-len", "32")
    assert data["source_len"] is None
    assert any("source_len" in w for w in data["model"]["warnings"])


def test_mean_document_tokens_counts_attention_per_document(isolated, capsys):
    """Attention forward is 4 x hd x heads per kept pair: documents of 8 in a window of 64 keep
    8 x 36 pairs instead of 64 x 65 / 2; the rest of the count does not change."""
    config = write(isolated / "llama.json", LLAMA)
    whole = flops(capsys, config, "--seq-len", "64")
    packed = flops(capsys, config, "--seq-len", "64", "--mean-document-tokens", "8")
    assert packed["model"]["document_tokens"] == 8 and packed["mean_document_tokens"] == 8
    assert any("documents of 8 tokens" in a for a in packed["components"][0]["assumptions"])
    saved = 3 * 4 * 8 * 8 * (kept_pairs(64, 64, True) - kept_pairs(64, 64, True, document=8)) / 64
    drop = whole["model"]["train_flops_per_token"] - packed["model"]["train_flops_per_token"]
    assert drop == pytest.approx(saved, rel=1e-12) and saved > 0


def test_the_table_shows_both_lengths(isolated, capsys):
    assert main(["flops", write(isolated / "bart.json", BART), "--seq-len", "32", "--source-len", "48",
                 "--mean-document-tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert "encoder tokens per sequence: 48" in out
    assert "mean document tokens (attention per document): 16" in out


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "x"])
def test_the_lengths_must_be_whole_positive_numbers(value, isolated, capsys):
    for flag in ("--source-len", "--mean-document-tokens"):
        with pytest.raises(SystemExit) as exc:
            main(["flops", "gpt2", flag, value])
        assert exc.value.code == 2
        assert "whole number" in capsys.readouterr().err


def test_the_flags_override_the_plans_fields(isolated, capsys):
    write(isolated / "student.json", LLAMA)
    plan = isolated / "plan.yaml"
    plan.write_text(
        "plan_version: 1\nname: p\norganization: {name: o, jurisdictions: [EU]}\n"
        "teacher: {model: t, access: api, host: h, parameters: 1.0e9}\n"
        "student: {name: s, config: ./student.json}\n"
        "data: {tokens: 1.0e6, seq_len: 64, mean_document_tokens: 32}\n"
        "use: {purpose: p, scope: narrow, distribution: internal}\nschedule: {start: 2026-12-01}\n")
    from_plan = flops(capsys, str(plan), "--no-cache")
    overridden = flops(capsys, str(plan), "--no-cache", "--mean-document-tokens", "8")
    assert from_plan["student"]["document_tokens"] == 32
    assert overridden["student"]["document_tokens"] == 8
    saved = 3 * 4 * 8 * 8 * (kept_pairs(64, 64, True, document=32) - kept_pairs(64, 64, True, document=8)) / 64
    drop = from_plan["student"]["train_flops_per_token"] - overridden["student"]["train_flops_per_token"]
    assert drop == pytest.approx(saved, rel=1e-12)
