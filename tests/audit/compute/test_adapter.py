"""The training step of a LoRA student (``audit.flops.adapter``): frozen weights, trained
adapters, counted op by op on meta. Checked against a formula written from the layer shapes
and against torch's own FlopCounterMode on a real tiny model wrapped by PEFT; and the estimate
charges it (not full training) as the student's training compute."""

from __future__ import annotations

import json

import pytest
import torch

from audit.flops.adapter import AdapterError, count_adapter_step, summarize_adapter

D, KV, F, V, HEADS = 32, 16, 64, 68, 2   # hidden, k/v width (1 kv head of 16), MLP, vocab, heads
T, R = 16, 4
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {"q_proj": (D, D), "k_proj": (D, KV), "v_proj": (D, KV), "o_proj": (D, D), "gate_proj": (D, F),
          "up_proj": (D, F), "down_proj": (F, D)}  # (in, out)


def config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=D, intermediate_size=F, num_hidden_layers=layers, num_attention_heads=HEADS,
                       num_key_value_heads=1, vocab_size=V, max_position_embeddings=256, tie_word_embeddings=False)


def hand_matmul(layers: int, targets: list[str]) -> tuple[float, float]:
    """(forward, backward) matmul FLOP of one step of T tokens, 2 FLOP per multiply-add.

    Forward: every linear layer, the LM head and each adapter (A: in -> r, B: r -> out).
    Backward: no weight gradient for a frozen weight; each adapter's two weight gradients;
    input gradients wherever the input needs one: the LM head's, every layer's o/gate/up/down
    (downstream of the first adapter), q/k/v and the adapters' A from the second layer on (the
    first layer's input is the frozen embedding's output), and every adapter's B (its input, A's
    output, needs a gradient for A's weight)."""
    per_layer = sum(i * o for i, o in SHAPES.values())
    lora = sum(R * (SHAPES[t][0] + SHAPES[t][1]) for t in targets)
    forward = 2 * T * (layers * per_layer + D * V + layers * lora)
    backward = 2 * T * D * V
    for layer in range(layers):
        for name, (i, o) in SHAPES.items():
            if layer > 0 or name not in ("q_proj", "k_proj", "v_proj"):
                backward += 2 * T * i * o
        for name in targets:
            i, o = SHAPES[name]
            backward += 2 * T * R * (i + o)      # the weight gradients of A and B
            backward += 2 * T * R * o            # B's input gradient
            if layer > 0 or name not in ("q_proj", "k_proj", "v_proj"):
                backward += 2 * T * i * R        # A's input gradient
    return forward, backward


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ALL], ids=["q,v", "all linear"])
def test_the_count_is_the_formula_from_the_shapes(targets):
    step, trainable, frozen = count_adapter_step(config(3), T, R, targets)
    forward, backward = hand_matmul(3, targets)
    assert (step.forward.matmul, step.backward.matmul) == (forward, backward)
    assert trainable == 3 * sum(R * sum(SHAPES[t]) for t in targets)
    assert frozen == 3 * (sum(i * o for i, o in SHAPES.values()) + 2 * D) + 2 * D * V + D  # + norms, embed, head


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ALL, ["down_proj"]], ids=["q,v", "all linear", "down"])
def test_the_count_is_what_torch_counts_on_a_real_peft_model(targets):
    """torch's FlopCounterMode over a real forward and backward of a PEFT LoRA model (eager
    attention: its score matmuls are bmm): linear layers equal, attention equal - except that
    our attention op charges the gradients of q, k and v together, so where autograd needs only
    some of them (LoRA on q and v in the first layer: k gets none) it counts more, never less."""
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaForCausalLM

    step, trainable, frozen = count_adapter_step(config(2), T, R, targets)
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM._from_config(config(2), attn_implementation="eager"),
                           LoraConfig(r=R, lora_alpha=2 * R, target_modules=targets, lora_dropout=0.0))
    assert model.get_nb_trainable_parameters() == (trainable, trainable + frozen)
    model.train()
    ids = torch.randint(0, V, (1, T))
    with FlopCounterMode(display=False) as forward:
        loss = model(input_ids=ids, labels=ids).loss
    with FlopCounterMode(display=False) as backward:
        loss.backward()

    def by_op(counter):
        counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        return counts.get("aten.mm", 0) + counts.get("aten.addmm", 0), counts.get("aten.bmm", 0)

    assert by_op(forward) == (step.forward.matmul, step.forward.attention_full)
    linear, attention = by_op(backward)
    assert linear == step.backward.matmul
    skipped_k_gradient = 2 * T * T * (D // HEADS) * HEADS if targets == ["q_proj", "v_proj"] else 0
    assert step.backward.attention_full - attention == skipped_k_gradient


def test_adapters_cost_less_than_full_training_and_more_than_a_forward():
    from audit.flops.model_step import count_step_full

    full = count_step_full(config(2), T)
    step, _, _ = count_adapter_step(config(2), T, R, ["q_proj", "v_proj"])
    assert full.forward.headline < (step.forward.headline + step.backward.headline) \
        < full.forward.headline + full.backward.headline


def test_a_target_that_matches_nothing_or_no_linear_layer_is_an_error():
    with pytest.raises(AdapterError, match="match no module"):
        count_adapter_step(config(1), T, R, ["q_proj", "qkv"])
    with pytest.raises(AdapterError, match="not a linear layer"):
        count_adapter_step(config(1), T, R, ["embed_tokens"])


def test_an_uncountable_adapter_leaves_the_training_compute_unknown(tmp_path):
    """The estimate never falls back to a guess: the figure is None and a missing fact says why."""
    from audit.compute.estimate import estimate_plan
    from audit.compute.tables import load_reference_tables
    from audit.plan import load_plan

    (tmp_path / "student.json").write_text(json.dumps(config(1).to_dict()))
    plan = tmp_path / "plan.yaml"
    plan.write_text("""\
plan_version: 1
name: lora-test
organization: {name: Test Org, jurisdictions: [EU]}
teacher: {model: teacher-model, access: api, parameters: 1.0e9}
student: {name: S, config: ./student.json, adapter: {kind: lora, rank: 4, target_modules: [nope_proj]}}
data: {tokens: 4096, seq_len: 16}
method: {kind: sequence, teacher_generated_tokens: 1.0e6, prompt_tokens: 1.0e6}
use: {purpose: test, scope: narrow, distribution: internal}
schedule: {start: 2026-12-01}
""")
    estimate = estimate_plan(load_plan(plan), load_reference_tables(), use_cache=False)
    assert "match no module" in estimate.adapter.failure and estimate.adapter.train_flops_per_token is None
    training = next(c for c in estimate.components if c.id == "student_training")
    assert training.flops is None and estimate.total_flops is None
    assert any(fact.startswith("student.adapter") for fact in estimate.missing_facts)

    from audit.compute.run_budget import meter_figures

    figures = meter_figures(load_plan(plan).plan, {"compute": estimate.model_dump(mode="json")})
    assert figures.refusal and "adapter training" in figures.refusal


def test_summarize_adapter_reports_the_declared_adapter_and_its_rates(tmp_path):
    from audit.flops.configs import resolve_config
    from audit.plan import Adapter

    (tmp_path / "student.json").write_text(json.dumps(config(2).to_dict()))
    adapter = Adapter(kind="lora", rank=R, alpha=8, target_modules=["q_proj", "v_proj"])
    summary = summarize_adapter(resolve_config(str(tmp_path / "student.json"), source="t", field="f"), T, adapter)
    step, trainable, frozen = count_adapter_step(config(2), T, R, ["q_proj", "v_proj"])
    assert summary.failure is None and summary.trainable_params == trainable and summary.frozen_params == frozen
    assert summary.train_flops_per_token == (step.forward.headline + step.backward.headline) / T
    assert summary.forward_flops_per_token == step.forward.headline / T
    assert summary.train_flops_per_token_noncausal > summary.train_flops_per_token  # causal pairs only
