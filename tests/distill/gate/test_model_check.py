"""A loaded model must have the audited parameter shapes (distill.gate.model_check)."""

from __future__ import annotations

import json

import pytest
import torch

from audit.errors import InputError
from distill.gate.model_check import check_loaded_model, expected_shapes, parameter_shapes
from distill_testkit import make_model_dir

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=68)


def load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)


def make_tied_dir(folder):
    """A tiny Llama folder whose lm_head is tied to the input embedding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=True)).save_pretrained(str(folder))
    return folder


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny Llama folder, the model loaded from it, and its config.json as a dict."""
    folder = make_model_dir(tmp_path_factory.mktemp("tiny") / "model", TINY)
    return folder, load(folder), config_of(folder)


def audited(config: dict, **changes) -> dict:
    return {**config, **changes}


def test_expected_shapes_match_the_model_built_from_the_config(tiny):
    _, model, config = tiny
    shapes = expected_shapes(config)
    assert shapes == parameter_shapes(model)
    assert shapes["model.embed_tokens.weight"] == (68, 32)
    assert shapes["lm_head.weight"] == (68, 32)
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (16, 32)  # 1 kv head of dim 16
    assert not any(name.startswith("model.layers.2.") for name in shapes)


def test_expected_shapes_list_a_tied_head_once(tiny):
    _, _, config = tiny
    shapes = expected_shapes(audited(config, tie_word_embeddings=True))
    assert "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes


def test_the_loaded_model_passes_against_its_own_config(tiny):
    folder, model, config = tiny
    check_loaded_model(model, config, role="teacher", source=str(folder))


def test_a_tied_model_passes_against_its_own_config(tmp_path):
    folder = make_tied_dir(tmp_path / "tied")
    check_loaded_model(load(folder), config_of(folder), role="student", source=str(folder))


def refusal(model, config, role="teacher", source="/models/teacher") -> str:
    with pytest.raises(InputError) as err:
        check_loaded_model(model, config, role=role, source=source)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{source}: the loaded {role} is not the audited model")
    return message


def test_more_audited_layers_are_refused(tiny):
    _, model, config = tiny
    message = refusal(model, audited(config, num_hidden_layers=3))
    assert "model.layers.2.self_attn.q_proj.weight: loaded absent vs audited (32, 32)" in message
    assert "more)" in message and "parameters loaded vs" in message


def test_a_bigger_audited_hidden_size_is_refused(tiny):
    _, model, config = tiny
    message = refusal(model, audited(config, hidden_size=64), role="student")
    assert message.startswith("/models/teacher: the loaded student")
    assert "model.embed_tokens.weight: loaded (68, 32) vs audited (68, 64)" in message


def test_a_different_vocabulary_is_refused(tiny):
    _, model, config = tiny
    message = refusal(model, audited(config, vocab_size=72))
    assert "model.embed_tokens.weight: loaded (68, 32) vs audited (72, 32)" in message
    n_loaded = sum(p.numel() for p in model.parameters())
    assert f"{n_loaded:,} parameters loaded vs {n_loaded + 2 * 4 * 32:,} audited" in message


def test_an_untied_audit_refuses_a_tied_model(tmp_path, tiny):
    _, _, config = tiny
    folder = make_tied_dir(tmp_path / "tied")
    message = refusal(load(folder), config)
    assert "lm_head.weight: loaded absent vs audited (68, 32)" in message


def test_a_sparse_config_json_filled_with_defaults_is_refused(tmp_path, tiny):
    """The attack: the folder's config.json omits num_hidden_layers, so transformers builds its
    default depth (32 for Llama) while the audit counted the explicit 2 layers."""
    from transformers import LlamaConfig

    _, _, config = tiny
    folder = make_model_dir(tmp_path / "sparse", TINY)
    sparse = config_of(folder)
    del sparse["num_hidden_layers"]
    (folder / "config.json").write_text(json.dumps(sparse))
    model = load(folder)
    assert model.config.num_hidden_layers == LlamaConfig().num_hidden_layers == 32
    message = refusal(model, config)
    assert "model.layers.2.self_attn.q_proj.weight: loaded (32, 32) vs audited absent" in message
    per_layer = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.layers.0."))
    n_loaded = sum(p.numel() for p in model.parameters())
    assert f"{n_loaded:,} parameters loaded vs {n_loaded - 30 * per_layer:,} audited" in message


def test_a_config_without_model_type_is_refused(tiny):
    _, model, config = tiny
    bad = {k: v for k, v in config.items() if k != "model_type"}
    with pytest.raises(InputError, match="model_type"):
        check_loaded_model(model, bad, role="teacher", source="t")
