"""A training step with LayerDrop skips layers at random; the count is of every layer, the same
on every run (M2M-100 and SeamlessM4T ship LayerDrop 0.05 in their defaults)."""

from types import SimpleNamespace

import torch

from audit.flops.hf_config import build_config
from audit.flops.model_step import audio_codebooks, count_step, without_layerdrop
from test_breadth import bart


def test_layerdrop_is_off_while_counting_and_said_so():
    data = dict(bart(64, 4, 128, 2, 300), model_type="m2m_100", encoder_layerdrop=0.5, decoder_layerdrop=0.5)
    plain = count_step(build_config(dict(data, encoder_layerdrop=0.0, decoder_layerdrop=0.0), source="t"), 32)
    runs = {count_step(build_config(data, source="t"), 32).forward.headline for _ in range(4)}
    assert runs == {plain.forward.headline}
    noted = count_step(build_config(data, source="t"), 32).notes
    assert any("LayerDrop" in note and "encoder_layerdrop=0.5" in note for note in noted)


def test_without_layerdrop_reaches_sub_configs():
    from transformers import PretrainedConfig

    config = PretrainedConfig(encoder_layerdrop=0.1, dropout=0.3)
    config.text_config = PretrainedConfig(speech_encoder_layerdrop=0.2)
    assert sorted(without_layerdrop(config)) == ["encoder_layerdrop=0.1", "speech_encoder_layerdrop=0.2"]
    assert config.encoder_layerdrop == 0.0 and config.text_config.speech_encoder_layerdrop == 0.0
    assert config.dropout == 0.3 and without_layerdrop(config) == []


def test_codebooks_need_one_lm_head_per_codebook():
    config = SimpleNamespace(num_codebooks=8, is_encoder_decoder=False)
    assert audio_codebooks(SimpleNamespace(), config) == 0   # Moshi's text LM: one head
    heads = SimpleNamespace(lm_heads=torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(8)))
    assert audio_codebooks(heads, config) == 8
