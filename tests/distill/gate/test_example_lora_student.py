"""examples/lora_student.py end to end on the CPU: a plan that declares a LoRA adapter
(``student.adapter``), its compute counted by the real estimate (frozen student, trained
adapters) and signed by hand; the student's LoRA adapters train with transformers' Trainer
behind the gate and every step is charged at the adapter's rate, not full training's. The
budget stop fires before the step that would pass it; a DENY, edited or foreign audit stops it
(exit 6) before any model is built; a model that is not the declared adapter is refused
before any step."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

import generate_kit
from audit.errors import InputError
from audit.ledger.store import Ledger
from generate_kit import make_project, sign_audit

ROOT = Path(__file__).resolve().parents[3]
TOKENIZER = ROOT / "tests" / "distill" / "data" / "tokenizer"
SEQ_LEN, BATCH = 32, 2
TOKENS_PER_STEP = BATCH * SEQ_LEN  # rows are padded to seq_len: every position is computed
ADAPTER = "{kind: lora, rank: 4, alpha: 8, target_modules: [q_proj, v_proj]}"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def audited_compute(plan: Path) -> dict:
    from audit.compute.estimate import estimate_plan
    from audit.compute.tables import load_reference_tables
    from audit.plan import load_plan

    return estimate_plan(load_plan(plan), load_reference_tables(), use_cache=False).model_dump(mode="json")


def lora_project(root: Path, *, tokens: int = 4096, adapter: str | None = ADAPTER, name: str = "api-generate-test"):
    """generate_kit's sequence plan (API teacher), with the student's adapter and ``tokens``
    training tokens; teacher answers written as ``flopgate generate`` keeps them."""
    project = make_project(root, "https://api.example.com/v1", tokenizer=TOKENIZER)
    text = project.plan.read_text().replace("tokens: 4096", f"tokens: {tokens}")
    text = text.replace("name: api-generate-test", f"name: {name}")
    if adapter:
        text = text.replace("init: scratch}", f"init: scratch, adapter: {adapter}}}")
    project.plan.write_text(text, encoding="utf-8")
    words = "the farmer feeds a bird . some cats see one fox .".split()
    with (root / "kept-samples.jsonl").open("w", encoding="utf-8") as out:
        for i in range(16):
            answer = " ".join(words[(i + k) % len(words)] for k in range(8))
            out.write(json.dumps({"messages": [{"role": "user", "content": f"question {i} please"}],
                                  "completion": {"content": answer}}) + "\n")
    return project


def sign(project, signer, monkeypatch, **options) -> tuple[Path, dict]:
    """The audit of the project as it is, with the compute ``flopgate check`` would count."""
    compute = audited_compute(project.plan)
    monkeypatch.setattr(generate_kit, "compute_block", lambda: compute)
    return sign_audit(project, signer, **options), compute


def run_example(project, envelope, signer, *extra, script: str = "lora_student", plan=None) -> int:
    return load(script).main([str(plan or project.plan), "--attestation", str(envelope), "--pubkey",
                              str(signer.public_path), "--key", str(signer.private_path), "--samples",
                              str(project.root / "kept-samples.jsonl"), "--tokenizer", str(TOKENIZER),
                              "--out", str(project.root / "out"), "--steps", "3", "--batch", str(BATCH),
                              "--cpu", *extra])


def ledger_rows(envelope: Path, signer) -> list[dict]:
    with Ledger() as ledger:
        assert ledger.verify([signer.trusted]) == []
        return ledger.rows(audit=hashlib.sha256(envelope.read_bytes()).hexdigest())


def test_the_audit_counts_the_adapter_not_full_training(tmp_path):
    project = lora_project(tmp_path / "p")
    compute = audited_compute(project.plan)
    adapter, student = compute["adapter"], compute["student"]
    assert adapter["trainable_params"] == 2 * 4 * 32 + 4 * (32 + 16) == 448  # q: 32->32, v: 32->16 (1 kv head)
    assert adapter["frozen_params"] == student["params_total"]
    assert 0 < adapter["train_flops_per_token"] < student["train_flops_per_token"]
    training = next(c for c in compute["components"] if c["id"] == "student_training")
    assert training["flops"] == adapter["train_flops_per_token"] * 4096
    assert compute["update_flops"] == training["flops"] and compute["missing_facts"] == []


def test_a_lora_student_trains_behind_the_gate_at_the_adapters_rate(tmp_path, signer, monkeypatch, capsys):
    project = lora_project(tmp_path / "p")
    envelope, compute = sign(project, signer, monkeypatch)
    assert run_example(project, envelope, signer) == 0
    out = capsys.readouterr().out
    assert "448 trainable, 13664 frozen parameters" in out and "steps 3, 192 tokens" in out
    rows = ledger_rows(envelope, signer)
    assert [r["kind"] for r in rows] == ["gate_open", "charge", "charge", "charge"]
    rate = compute["adapter"]["train_flops_per_token"]
    for row in rows[1:]:
        assert row["body"]["tokens"] == TOKENS_PER_STEP
        assert row["body"]["flops"] == TOKENS_PER_STEP * rate  # not the full model's rate
        assert row["body"]["update_flops"] == TOKENS_PER_STEP * rate
    assert (project.root / "out" / "run-record.intoto.json").is_file()
    assert (project.root / "out" / "final" / "adapter_config.json").is_file()


def test_the_budget_stops_the_lora_run_before_the_step_that_would_pass_it(tmp_path, signer, monkeypatch, capsys):
    project = lora_project(tmp_path / "p", tokens=int(3.5 * TOKENS_PER_STEP))  # the budget: 3.5 steps at its rate
    envelope, _ = sign(project, signer, monkeypatch)
    assert run_example(project, envelope, signer, "--steps", "10") == 0
    assert "steps 3," in capsys.readouterr().out
    assert [r["kind"] for r in ledger_rows(envelope, signer)].count("charge") == 3


@pytest.mark.parametrize("case", ["deny", "edited", "another plan"])
def test_a_refused_audit_stops_before_any_model_is_built(tmp_path, signer, monkeypatch, case, capsys):
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was built behind a refusing gate")

    project = lora_project(tmp_path / "p")
    envelope, _ = sign(project, signer, monkeypatch, outcome="DENY" if case == "deny" else "ALLOW")
    plan = None
    if case == "edited":
        project.plan.write_text(project.plan.read_text().replace("rank: 4", "rank: 64"), encoding="utf-8")
    elif case == "another plan":
        plan = lora_project(tmp_path / "other", name="another-plan").plan
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", forbidden)
    assert run_example(project, envelope, signer, plan=plan) == 6
    assert "refused" in capsys.readouterr().err
    assert ledger_rows(envelope, signer) == []


def test_the_full_model_script_is_refused_an_adapter_plan(tmp_path, signer, monkeypatch, capsys):
    """hf_trainer_sft.py trains the whole model: charged at the adapter's rate, it would under-count."""
    project = lora_project(tmp_path / "p")
    envelope, _ = sign(project, signer, monkeypatch)
    assert run_example(project, envelope, signer, script="hf_trainer_sft") == 6
    assert "trains_adapter=True" in capsys.readouterr().err


def test_a_plan_without_an_adapter_is_not_trained_as_one(tmp_path, signer, monkeypatch, capsys):
    project = lora_project(tmp_path / "p", adapter=None)
    envelope, _ = sign(project, signer, monkeypatch)
    assert run_example(project, envelope, signer) == 2
    assert "declares no adapter" in capsys.readouterr().err
    assert ledger_rows(envelope, signer) == []


@pytest.mark.parametrize("model", ["rank 8", "other targets", "unfrozen weight", "no adapter"])
def test_a_model_that_is_not_the_declared_adapter_is_refused_before_any_step(tmp_path, signer, monkeypatch, model):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from distill.gate import open_gate
    from distill.gate.hf import FlopgateCallback

    project = lora_project(tmp_path / "p")
    envelope, _ = sign(project, signer, monkeypatch)
    run = open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=tmp_path / "out",
                    key=str(signer.private_path), trains_adapter=True)
    student = load("hf_trainer_sft").audited_student(run)
    rank, targets = (8, ["q_proj", "v_proj"]) if model == "rank 8" else (4, ["q_proj", "k_proj"]) \
        if model == "other targets" else (4, ["q_proj", "v_proj"])
    if model != "no adapter":
        student = get_peft_model(student, LoraConfig(r=rank, lora_alpha=8, target_modules=targets))
    if model == "unfrozen weight":
        student.get_base_model().lm_head.weight.requires_grad_(True)
    args = TrainingArguments(str(tmp_path / "hf"), include_num_input_tokens_seen="all", report_to=[], use_cpu=True)
    with pytest.raises(InputError, match="student.adapter"):
        Trainer(model=student, args=args, train_dataset=[], callbacks=[FlopgateCallback(run)])
