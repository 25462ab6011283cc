"""examples/trl_gkd.py end to end on the CPU: on-policy distillation with TRL's GKD trainer
(``trl.experimental.gkd``) behind the gate. A tiny on-policy plan (teacher folder with the
student's vocabulary, chat tokenizer), its compute counted by the real estimate and signed by
hand. It trains and charges each step for the student's sampling, the teacher's scoring and the
student's training; the budget stop fires before the step that would pass it; a DENY, edited or
foreign audit stops it (exit 6) before any model is loaded."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from audit.ledger.store import Ledger
from distill_testkit import CHAT_TOKENIZER, STUDENT_SHAPE, TEACHER_SHAPE, make_model_dir, write_config
from gate_fixtures import SEQ_LEN, copy_project, make_audit

ROOT = Path(__file__).resolve().parents[3]
BATCH, NEW_TOKENS, PROMPT_WORDS = 2, 8, 6
STEPS = 3

pytestmark = pytest.mark.usefixtures("test_pack_installed")


def example():
    spec = importlib.util.spec_from_file_location("trl_gkd", ROOT / "examples" / "trl_gkd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan_yaml(max_flops: float | None = None, name: str = "tiny-gate-test", adapter: str = "") -> str:
    budget = f"budget: {{max_flops: {max_flops!r}}}\n" if max_flops else ""
    adapter = f", adapter: {adapter}" if adapter else ""
    return f"""\
plan_version: 1
name: {name}
organization: {{name: Test Org, jurisdictions: [EU]}}
teacher: {{model: ./teacher, access: weights, config: ./teacher, weights: ./teacher}}
student: {{name: Tiny-Student, config: ./student.json, init: scratch{adapter}}}
data: {{tokens: 4096, seq_len: {SEQ_LEN}, manifest: ./shards/manifest.json}}
method: {{kind: on_policy, student_generated_tokens: 2.0e4, prompt_tokens: 2.0e4, loss: jsd}}
use: {{purpose: gate test, scope: narrow, distribution: internal}}
schedule: {{start: 2026-12-01}}
{budget}"""


def audited_compute(plan: Path) -> dict:
    """The compute block ``flopgate check`` would sign: the real estimate of the plan."""
    from audit.compute.estimate import estimate_plan
    from audit.compute.tables import load_reference_tables
    from audit.plan import load_plan

    return estimate_plan(load_plan(plan), load_reference_tables(), use_cache=False).model_dump(mode="json")


@pytest.fixture(scope="module")
def gkd_template(template, tmp_path_factory):
    """The gate template made on-policy: a teacher with the student's vocabulary and the chat
    tokenizer, a student that never stops sampling early (no EOS: every step samples exactly
    NEW_TOKENS), prompts of PROMPT_WORDS words each, the plan and its counted compute."""
    root = copy_project(template, tmp_path_factory.mktemp("gkd") / "project").root
    shutil.rmtree(root / "teacher")
    make_model_dir(root / "teacher", {**TEACHER_SHAPE, "vocab_size": STUDENT_SHAPE["vocab_size"]},
                   initializer_range=0.2)
    for file in CHAT_TOKENIZER.iterdir():
        shutil.copy(file, root / "teacher" / file.name)
    write_config(root / "student.json")
    student = json.loads((root / "student.json").read_text())
    (root / "student.json").write_text(json.dumps({**student, "eos_token_id": None}), encoding="utf-8")
    words = "some cats see one fox . one teacher quickly helps the teacher".split()
    with (root / "chat.jsonl").open("w", encoding="utf-8") as out:
        for i in range(16):
            prompt = " ".join(words[(i + k) % len(words)] for k in range(PROMPT_WORDS))
            out.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                               {"role": "assistant", "content": "the farmer feeds a bird ."}]}) + "\n")
    (root / "plan.yaml").write_text(plan_yaml(), encoding="utf-8")
    compute = audited_compute(root / "plan.yaml")
    (root / "compute.json").write_text(json.dumps(compute), encoding="utf-8")
    return root


@pytest.fixture
def gkd(gkd_template, tmp_path):
    project = copy_project(gkd_template, tmp_path / "project")
    return project, json.loads((project.root / "compute.json").read_text())


def positions_per_step(project) -> int:
    """batch x (prompt + sampled tokens): every row is padded to the same prompt, and sampling
    never stops early (the student has no EOS)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(project.root / "teacher"))
    first = json.loads((project.root / "chat.jsonl").read_text().splitlines()[0])["messages"][:-1]
    prompt = tokenizer.apply_chat_template(first, add_generation_prompt=True, tokenize=True)
    prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
    return BATCH * (len(prompt) + NEW_TOKENS)


def rates(compute: dict) -> tuple[float, float]:
    """(per trained position: student training + teacher forward, per sampled position: student
    forward), read from the audited compute."""
    return (compute["student"]["train_flops_per_token"] + compute["teacher"]["forward_flops_per_token"],
            compute["student"]["forward_flops_per_token"])


def run_example(project, envelope, signer, *extra, plan=None) -> int:
    return example().main([str(plan or project.plan), "--attestation", str(envelope), "--pubkey",
                           str(signer.public_path), "--key", str(signer.private_path), "--data",
                           str(project.root / "chat.jsonl"), "--tokenizer", str(project.root / "teacher"),
                           "--out", str(project.root / "gkd-out"), "--steps", str(STEPS), "--batch", str(BATCH),
                           "--max-new-tokens", str(NEW_TOKENS), "--cpu", *extra])


def charges(envelope: Path, signer) -> list[dict]:
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        rows = ledger.rows(audit=digest)
        assert ledger.verify([signer.trusted]) == []
    assert rows[0]["kind"] == "gate_open"
    return [r["body"] for r in rows if r["kind"] == "charge"]


def test_on_policy_gkd_trains_and_charges_sampling_scoring_and_training(gkd, signer, capsys):
    project, compute = gkd
    envelope = make_audit(project, signer, compute=compute)
    assert run_example(project, envelope, signer) == 0
    per_step = positions_per_step(project)
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.startswith(f"steps {STEPS}, {STEPS * per_step} trained positions, {STEPS * per_step} sampled positions"), out
    trained_rate, sampling_rate = rates(compute)
    booked = charges(envelope, signer)
    assert len(booked) == STEPS
    for charge in booked:
        assert charge["tokens"] == per_step
        assert charge["flops"] == pytest.approx(per_step * trained_rate + per_step * sampling_rate, rel=1e-12)
        assert charge["update_flops"] == pytest.approx(per_step * compute["student"]["train_flops_per_token"])
    assert sampling_rate > 0 and compute["teacher"]["forward_flops_per_token"] > 0
    from audit.attest import PREDICATE_RUN_RECORD
    from audit.attest.verify import verify_envelope_file

    record = verify_envelope_file(project.root / "gkd-out" / "run-record.intoto.json", [signer.trusted],
                                  predicate_types=(PREDICATE_RUN_RECORD,)).predicate
    assert record["steps"] == STEPS and record["compute"]["flops"] == pytest.approx(sum(c["flops"] for c in booked))
    assert f"{STEPS * per_step} sampled positions" in record["message"]
    assert (project.root / "gkd-out" / "final" / "config.json").is_file()


def test_the_budget_stops_gkd_before_the_step_that_would_pass_it(gkd, signer, capsys):
    project, compute = gkd
    trained_rate, sampling_rate = rates(compute)
    per_step_flops = positions_per_step(project) * (trained_rate + sampling_rate)
    project.plan.write_text(plan_yaml(max_flops=2.5 * per_step_flops), encoding="utf-8")
    envelope = make_audit(project, signer, compute=audited_compute(project.plan))
    assert run_example(project, envelope, signer) == 0  # asked for 3 steps; the third would pass the budget
    assert "steps 2," in capsys.readouterr().out
    booked = charges(envelope, signer)
    assert len(booked) == 2 and sum(c["flops"] for c in booked) <= 2.5 * per_step_flops


@pytest.fixture
def no_model_loads(monkeypatch):
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded behind a refusing gate")

    for name in ("from_config", "from_pretrained"):
        monkeypatch.setattr(transformers.AutoModelForCausalLM, name, forbidden)


@pytest.mark.parametrize("case", ["deny", "edited", "another plan", "plain trainer gate"])
def test_a_refused_audit_stops_gkd_before_any_model_is_loaded(gkd, signer, tmp_path, no_model_loads, case, capsys):
    project, compute = gkd
    plan = None
    if case == "deny":
        envelope = make_audit(project, signer, outcome="DENY", compute=compute)
    elif case == "edited":
        envelope = make_audit(project, signer, compute=compute)
        project.plan.write_text(project.plan.read_text() + "# edited after the audit\n", encoding="utf-8")
    elif case == "another plan":
        envelope = make_audit(project, signer, compute=compute)
        other = tmp_path / "other.yaml"
        other.write_text(plan_yaml(name="another-plan"), encoding="utf-8")
        plan = other
    else:  # the audit is fine, but a gate opened without meters_sampling refuses an on-policy plan
        from distill.gate import GateRefused, open_gate

        envelope = make_audit(project, signer, compute=compute)
        with pytest.raises(GateRefused, match="meters_sampling=True"):
            open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=tmp_path / "o")
        return
    assert run_example(project, envelope, signer, plan=plan) == 6
    assert "refused" in capsys.readouterr().err
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        assert ledger.rows(audit=digest) == []  # nothing was charged, not even a gate opening


def test_a_trainer_that_samples_elsewhere_cannot_be_metered():
    """TRL's DistillationTrainer samples in ``_generate`` (vLLM or transformers), which
    ``metered_on_policy`` does not see: refused rather than run with its sampling uncharged."""
    from trl import DistillationTrainer
    from trl.experimental.gkd import GKDTrainer

    from distill.gate.hf import metered_on_policy

    with pytest.raises(TypeError, match="generate_on_policy_outputs"):
        metered_on_policy(DistillationTrainer)
    assert issubclass(metered_on_policy(GKDTrainer), GKDTrainer)


def test_a_lora_student_learns_on_policy_at_the_adapters_rates(gkd, signer, capsys):
    """The plan declares a LoRA adapter: the student samples and trains with it, each step is
    charged at the adapter's rates (audit's compute.adapter), below full training's."""
    project, _ = gkd
    project.plan.write_text(plan_yaml(adapter="{kind: lora, rank: 4, target_modules: [q_proj, v_proj]}"),
                            encoding="utf-8")
    compute = audited_compute(project.plan)
    envelope = make_audit(project, signer, compute=compute)
    assert run_example(project, envelope, signer) == 0
    per_step = positions_per_step(project)
    adapter = compute["adapter"]
    assert adapter["train_flops_per_token"] < compute["student"]["train_flops_per_token"]
    booked = charges(envelope, signer)
    assert len(booked) == STEPS
    for charge in booked:
        assert charge["flops"] == pytest.approx(per_step * (adapter["train_flops_per_token"] + adapter[
            "forward_flops_per_token"] + compute["teacher"]["forward_flops_per_token"]), rel=1e-12)
        assert charge["update_flops"] == pytest.approx(per_step * adapter["train_flops_per_token"])
    assert (project.root / "gkd-out" / "final" / "adapter_config.json").is_file()
