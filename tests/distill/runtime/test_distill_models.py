"""Teacher loading, the three student sources, vocabulary reconciliation, head checks."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from torch import nn

from audit.errors import InputError
from distill.runtime.models import (HiddenStates, build_student, check_head, check_vocab, final_hidden_states,
                                    head_weight, load_config, load_teacher, load_tokenizer)
from distill_testkit import (STUDENT_SHAPE, TEACHER_SHAPE, TOKENIZER_DIR, TOKENIZER_SIZE, make_model_dir,
                             write_config)

THREE_LAYERS = {**TEACHER_SHAPE, "num_hidden_layers": 3}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("teacher"), THREE_LAYERS, seed=11)


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_teacher(teacher_dir)


def test_teacher_is_frozen_in_eval_mode(teacher):
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_missing_teacher_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="local Hugging Face model folder"):
        load_teacher(tmp_path / "absent")


def test_hidden_states_times_head_are_the_models_logits(teacher):
    ids = torch.randint(0, TOKENIZER_SIZE, (2, 9))
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits
        rebuilt = final_hidden_states(teacher, ids) @ head_weight(teacher).T
        wrapped = HiddenStates(teacher)(ids) @ head_weight(teacher).T
    torch.testing.assert_close(rebuilt, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wrapped, rebuilt, rtol=0, atol=0)


def test_scratch_student_is_seeded(tmp_path):
    config = write_config(tmp_path / "student.json")
    a = build_student("scratch", config=config, seed=3)
    b = build_student("scratch", config=config, seed=3)
    c = build_student("scratch", config=config, seed=4)
    assert a.training and a.config.hidden_size == STUDENT_SHAPE["hidden_size"]
    assert all(p.dtype == torch.float32 for p in a.parameters())
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_base_student_starts_from_its_weights(tmp_path):
    base = make_model_dir(tmp_path / "base", STUDENT_SHAPE, seed=9)
    student = build_student("base", base_dir=base)
    reference = load_teacher(base)
    for (name, got), want in zip(student.named_parameters(), reference.parameters()):
        assert torch.equal(got, want), name
    assert student.training


def test_pruned_student_is_the_teacher_without_the_dropped_layers(teacher):
    student = build_student("pruned_teacher", teacher=teacher, layers=[0, 2])
    assert student.config.num_hidden_layers == 2
    # Independent construction: the teacher with its middle layer removed from the layer list.
    manual = copy.deepcopy(teacher)
    manual.model.layers = nn.ModuleList([manual.model.layers[0], manual.model.layers[2]])
    manual.config.num_hidden_layers = 2
    ids = torch.randint(0, TOKENIZER_SIZE, (2, 12))
    with torch.no_grad():
        pruned = student(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(pruned, manual(input_ids=ids, use_cache=False).logits, rtol=1e-6, atol=1e-6)
        full = teacher(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(pruned, full, atol=1e-3)
    assert student.model.layers[1].self_attn.q_proj.weight.data_ptr() != \
        teacher.model.layers[2].self_attn.q_proj.weight.data_ptr()  # a copy, not shared


def test_pruned_default_keeps_the_first_k_layers_of_the_config(tmp_path, teacher):
    config = write_config(tmp_path / "pruned.json", {**THREE_LAYERS, "num_hidden_layers": 1})
    student = build_student("pruned_teacher", teacher=teacher, config=config)
    assert student.config.num_hidden_layers == 1
    for got, want in zip(student.model.layers[0].parameters(), teacher.model.layers[0].parameters()):
        assert torch.equal(got, want)
    wider = write_config(tmp_path / "wider.json", {**THREE_LAYERS, "num_hidden_layers": 1, "hidden_size": 96})
    with pytest.raises(InputError, match="hidden_size"):
        build_student("pruned_teacher", teacher=teacher, config=wider)
    with pytest.raises(InputError, match="distinct layer indices"):
        build_student("pruned_teacher", teacher=teacher, layers=[0, 3])


def test_padded_vocabularies_are_reconciled_to_the_tokenizer(tmp_path, teacher):
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    student = build_student("scratch", config=write_config(tmp_path / "s.json"))
    assert head_weight(teacher).shape[0] == 72 and head_weight(student).shape[0] == 68
    assert check_vocab(tokenizer, teacher, student) == TOKENIZER_SIZE == len(tokenizer)


def test_a_real_vocabulary_mismatch_is_refused(tmp_path, teacher):
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    small = build_student("scratch", config=write_config(tmp_path / "s.json", {**STUDENT_SHAPE, "vocab_size": 60}))
    with pytest.raises(InputError) as err:
        check_vocab(tokenizer, teacher, small)
    assert "student" in str(err.value) and "60 rows" in str(err.value) and "64 tokens" in str(err.value)

    # A student folder whose own tokenizer numbers the words differently.
    other_dir = tmp_path / "other-tokenizer"
    shutil.copytree(TOKENIZER_DIR, other_dir)
    data = json.loads((other_dir / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    (other_dir / "tokenizer.json").write_text(json.dumps(data))
    student = build_student("scratch", config=write_config(tmp_path / "s2.json"))
    with pytest.raises(InputError, match="tokenizer differs"):
        check_vocab(tokenizer, teacher, student, load_tokenizer(other_dir))
    check_vocab(tokenizer, teacher, student, load_tokenizer(TOKENIZER_DIR))  # the same one passes


def test_heads_the_fused_loss_cannot_reproduce_are_refused(tmp_path):
    model = build_student("scratch", config=write_config(tmp_path / "s.json"))
    check_head(model, "ok")
    capped = copy.deepcopy(model)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(InputError, match="final_logit_softcapping"):
        check_head(capped, "capped")
    biased = copy.deepcopy(model)
    biased.lm_head = nn.Linear(STUDENT_SHAPE["hidden_size"], STUDENT_SHAPE["vocab_size"], bias=True)
    with pytest.raises(InputError, match="bias"):
        check_head(biased, "biased")


@pytest.mark.parametrize("content, match", [("{", "cannot read"), ('{"hidden_size": 8}', "model_type"),
                                            ('{"model_type": "no-such-model"}', "unusable config")])
def test_bad_student_config_is_an_input_error(tmp_path, content, match):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        load_config(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "absent.json")


@pytest.mark.parametrize("template, special, ends_with", [
    ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}", ["<|end|>"], "<|end|>"),
    ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
     ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    ("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}",
     ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
    (None, [], None),
])
def test_end_of_turn_is_the_special_token_after_an_answer(tmp_path, template, special, ends_with):
    """The first special token the template writes after an assistant's text ends the turn, then
    the eos; without a template, the eos alone."""
    from transformers import AutoTokenizer

    from distill.runtime.models import end_of_turn_ids, stop_at_end_of_turn

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.chat_template = template
    want = ([tokenizer.convert_tokens_to_ids(ends_with)] if ends_with else []) + [tokenizer.eos_token_id]
    assert end_of_turn_ids(tokenizer) == want
    model = build_student("scratch", config=write_config(tmp_path / "config.json"))
    stop_at_end_of_turn(model, tokenizer)
    assert model.generation_config.eos_token_id == (want if len(want) > 1 else want[0])


@pytest.mark.parametrize("field, value", [("num_hidden_layers", -1), ("num_hidden_layers", 0),
                                          ("hidden_size", -32), ("vocab_size", 0)])
def test_a_student_config_of_impossible_size_is_refused_before_building(tmp_path, field, value):
    # -1 layers used to build a model with no layers at all
    config = write_config(tmp_path / "student.json")
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, field: value}))
    with pytest.raises(InputError, match=f"{field}: expected a whole number from 1 to "):
        build_student("scratch", config=config)


def test_a_billion_layer_student_is_refused_at_once(tmp_path):
    # it used to hang building the layers, then take gigabytes: run where it can do neither
    import os
    import resource
    import subprocess
    import sys
    from pathlib import Path

    config = write_config(tmp_path / "student.json")
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_hidden_layers": 10**9}))
    code = ("from distill.runtime.models import build_student\n"
            "from audit.errors import InputError\n"
            "try:\n"
            f"    build_student('scratch', config={str(config)!r})\n"
            "except InputError as exc:\n"
            "    print(exc)\n")
    root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    limit = 8 << 30
    try:
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    except subprocess.TimeoutExpired:
        pytest.fail("building a billion-layer student did not stop in 120 s")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "num_hidden_layers: expected a whole number from 1 to 10,000" in result.stdout


def test_a_teacher_folder_config_of_impossible_size_is_refused_before_loading(tmp_path):
    folder = make_model_dir(tmp_path / "teacher", STUDENT_SHAPE)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "num_attention_heads": -2}))
    with pytest.raises(InputError, match="num_attention_heads: expected a whole number"):
        load_teacher(folder)
