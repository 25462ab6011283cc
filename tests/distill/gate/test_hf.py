"""``distill.gate.hf.FlopgateCallback`` in front of a real ``transformers.Trainer`` on the CPU: the
audited student trains and each step is charged in the ledger; the budget stop fires before the
step that would pass it; a model that is not the audited student is refused before any step;
the run record verifies. Importing distill.gate.hf does not import TRL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from audit.attest import PREDICATE_RUN_RECORD
from audit.attest.verify import verify_envelope_file
from audit.errors import InputError
from audit.ledger.store import Ledger
from distill.gate import open_gate
from distill.gate.refusal import GateRefused
from distill.outputs.run_record import RECORD_ENVELOPE
from gate_fixtures import FPT, PACK_ID, PACK_VERSION, SEQ_LEN, compute_block, make_audit

BATCH = 2
TOKENS_PER_STEP = BATCH * SEQ_LEN  # fixed-length rows: every position is computed


pytestmark = pytest.mark.usefixtures("test_pack_installed")


def student(project, **change):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads(project.student_config.read_text())
    config.update(change)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))


def trainer_for(project, model, run, tmp_path, steps=6, row_len=SEQ_LEN):
    from transformers import Trainer, TrainingArguments

    from distill.gate.hf import FlopgateCallback

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, vocab, (64, row_len), generator=g)]
    args = TrainingArguments(str(tmp_path / "hf"), per_device_train_batch_size=BATCH, max_steps=steps,
                             include_num_input_tokens_seen="all", logging_steps=1, save_strategy="no",
                             report_to=[], use_cpu=True, learning_rate=1e-3, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=rows, callbacks=[FlopgateCallback(run)])


def test_a_trainer_behind_the_gate_is_metered_stopped_and_recorded(project, signer, tmp_path):
    envelope = make_audit(project, signer, compute=compute_block(tokens=3.5 * TOKENS_PER_STEP))
    run = open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=project.root / "out",
                    key=str(signer.private_path))
    trainer = trainer_for(project, student(project), run, tmp_path)
    trainer.train()
    assert trainer.state.global_step == 3  # the 4th step would pass 3.5 steps' budget
    assert run.meter.flops == 3 * TOKENS_PER_STEP * FPT
    logged = [entry for entry in trainer.state.log_history if "flopgate/flops" in entry]
    assert logged and logged[-1]["flopgate/budget_left_flops"] == pytest.approx(0.5 * TOKENS_PER_STEP * FPT)
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        kinds = [r["kind"] for r in ledger.rows(audit=digest)]
        assert kinds == ["gate_open", "charge", "charge", "charge"]
        assert ledger.verify([signer.trusted]) == []
    record = verify_envelope_file(project.root / "out" / RECORD_ENVELOPE, [signer.trusted],
                                  predicate_types=(PREDICATE_RUN_RECORD,)).predicate
    assert record["steps"] == 3 and record["stopped_by_budget"] is True
    assert (project.root / "out" / "final" / "config.json").is_file()


def test_rows_longer_than_the_audited_seq_len_are_refused_before_any_charge(project, signer, tmp_path):
    """The attack: rows of 4 x seq_len were charged the audited per-token rate, which counts
    attention over seq_len positions only (a longer row costs more per token)."""
    envelope = make_audit(project, signer)
    run = open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=project.root / "out",
                    key=str(signer.private_path))
    trainer = trainer_for(project, student(project), run, tmp_path, row_len=4 * SEQ_LEN)
    with pytest.raises(InputError, match=f"{4 * SEQ_LEN} positions is longer than the audited data.seq_len {SEQ_LEN}"):
        trainer.train()
    assert trainer.state.global_step == 0 and run.meter.tokens == 0
    with Ledger() as ledger:
        assert [r["kind"] for r in ledger.rows(audit=hashlib.sha256(envelope.read_bytes()).hexdigest())] == ["gate_open"]
    model = trainer.model.eval()   # an evaluation forward of such rows too
    with torch.no_grad(), pytest.raises(InputError, match="longer than the audited data.seq_len"):
        model(input_ids=torch.zeros(1, 4 * SEQ_LEN, dtype=torch.long))


EVAL_ROWS = 4
EVAL_RATE = FPT / 3   # FLOP per evaluated position: a forward


def audit_with_evaluation(project, signer, *, eval_tokens: float, steps_budget: float = 100.0):
    """An audit whose plan has an evaluation block (evaluation.tokens) and whose compute counts it."""
    project.plan.write_text(project.plan.read_text() + f"evaluation: {{tokens: {eval_tokens}}}\n")
    compute = compute_block(tokens=steps_budget * TOKENS_PER_STEP)
    compute["components"].append({"id": "evaluation", "label": "evaluation forwards", "flops": EVAL_RATE * eval_tokens,
                                  "method": "counted", "counts_toward": ["cumulative"]})
    return make_audit(project, signer, compute=compute)


def evaluating_trainer(project, run, tmp_path, steps=4):
    """A Trainer that evaluates EVAL_ROWS rows every 2 steps."""
    trainer = trainer_for(project, student(project), run, tmp_path, steps=steps)
    g = torch.Generator().manual_seed(2)
    vocab = trainer.model.config.vocab_size
    trainer.eval_dataset = [{"input_ids": ids, "labels": ids}
                            for ids in torch.randint(0, vocab, (EVAL_ROWS, SEQ_LEN), generator=g)]
    trainer.args.eval_strategy, trainer.args.eval_steps = "steps", 2
    trainer.args.per_device_eval_batch_size = BATCH
    return trainer


def test_an_unaudited_evaluation_is_refused(project, signer, tmp_path):
    """The attack: evaluation forwards (the student's, and a distillation trainer's teacher) ran
    uncharged behind the gate, however many; a plan without an evaluation block may not evaluate."""
    run = open_gate(project.plan, make_audit(project, signer), pubkey=str(signer.public_path),
                    out_dir=project.root / "out", key=str(signer.private_path))
    trainer = evaluating_trainer(project, run, tmp_path)
    with pytest.raises(GateRefused, match="evaluation.tokens"):
        trainer.train()
    assert run.meter.flops == 2 * TOKENS_PER_STEP * FPT   # the two steps before the evaluation, nothing else


def test_an_audited_evaluation_is_charged_in_the_ledger(project, signer, tmp_path):
    envelope = audit_with_evaluation(project, signer, eval_tokens=4 * EVAL_ROWS * SEQ_LEN)
    run = open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=project.root / "out",
                    key=str(signer.private_path))
    trainer = evaluating_trainer(project, run, tmp_path)
    trainer.train()
    evaluated = 2 * EVAL_ROWS * SEQ_LEN   # after steps 2 and 4
    assert run.meter.flops == pytest.approx(4 * TOKENS_PER_STEP * FPT + evaluated * EVAL_RATE)
    with Ledger() as ledger:
        charges = [r["body"] for r in ledger.rows(audit=hashlib.sha256(envelope.read_bytes()).hexdigest())
                   if r["kind"] == "charge"]
        assert ledger.verify([signer.trusted]) == []
    assert [c.get("eval_flops") for c in charges] == [None, None, EVAL_ROWS * SEQ_LEN * EVAL_RATE,
                                                      None, None, EVAL_ROWS * SEQ_LEN * EVAL_RATE]
    assert sum(c["flops"] for c in charges) == pytest.approx(run.meter.flops)
    record = verify_envelope_file(project.root / "out" / RECORD_ENVELOPE, [signer.trusted],
                                  predicate_types=(PREDICATE_RUN_RECORD,)).predicate
    assert record["compute"]["flops"] == pytest.approx(run.meter.flops)


def test_an_evaluation_past_the_audited_cap_is_refused_before_it_runs(project, signer, tmp_path):
    envelope = audit_with_evaluation(project, signer, eval_tokens=EVAL_ROWS * SEQ_LEN)   # one evaluation
    run = open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=project.root / "out",
                    key=str(signer.private_path))
    trainer = evaluating_trainer(project, run, tmp_path)
    with pytest.raises(GateRefused, match="would pass the audited evaluation.tokens"):
        trainer.train()
    assert run.meter.flops == pytest.approx(4 * TOKENS_PER_STEP * FPT + EVAL_ROWS * SEQ_LEN * EVAL_RATE)


def test_a_model_that_is_not_the_audited_student_is_refused_before_any_step(project, signer, tmp_path):
    envelope = make_audit(project, signer)
    run = open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=project.root / "out",
                    key=str(signer.private_path))
    bigger = student(project, intermediate_size=2 * json.loads(project.student_config.read_text())["intermediate_size"])
    with pytest.raises(InputError, match="not the audited model"):
        trainer_for(project, bigger, run, tmp_path)


def test_padding_must_be_counted(project, signer, tmp_path):
    from transformers import Trainer, TrainingArguments

    from distill.gate.hf import FlopgateCallback

    run = open_gate(project.plan, make_audit(project, signer), pubkey=str(signer.public_path),
                    out_dir=project.root / "out", key=str(signer.private_path))
    args = TrainingArguments(str(tmp_path / "hf"), include_num_input_tokens_seen="non_padding", report_to=[],
                             use_cpu=True)
    with pytest.raises(InputError, match="include_num_input_tokens_seen='all'"):
        Trainer(model=student(project), args=args, train_dataset=[], callbacks=[FlopgateCallback(run)])


def test_importing_the_callback_does_not_import_trl():
    code = "import sys, distill.gate.hf; print('trl' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.slow
def test_two_processes_under_accelerate_charge_once_per_step(project, signer, tmp_path):
    """accelerate launch, 2 CPU processes: the Trainer gathers the token count, the callback
    books each step once (rank 0), both ranks see the same global count."""
    import os
    from pathlib import Path

    envelope = make_audit(project, signer, compute=compute_block(tokens=1e6))
    runner = Path(__file__).resolve().parents[1] / "run_hf_trainer.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(runner), str(project.plan), str(envelope), str(signer.public_path),
                           str(signer.private_path), str(project.root / "out"), "3",
                           json.dumps({PACK_ID: PACK_VERSION})],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(p.read_text() for p in (project.root / "out").glob("rank-*.txt"))
    per_step = 2 * 2 * SEQ_LEN  # 2 processes x batch 2 x seq_len
    assert lines == [f"RANK 0 STEPS 3 TOKENS {3 * per_step}", f"RANK 1 STEPS 3 TOKENS {3 * per_step}"]
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        charges = [r for r in ledger.rows(audit=digest) if r["kind"] == "charge"]
        assert len(charges) == 3 and all(c["body"]["tokens"] == per_step for c in charges)


class FakeOnPolicyTrainer:
    """The two methods ``metered_on_policy`` wraps, as TRL's GKDTrainer has them: sampling
    appends 5 tokens to the prompts; the loss is not computed."""

    def __init__(self, *, callbacks=None, seq_kd=False):
        self.seq_kd = seq_kd

    @staticmethod
    def generate_on_policy_outputs(model, inputs, generation_config):
        rows, prompt = inputs["prompts"].shape
        sequences = torch.zeros(rows, prompt + 5, dtype=torch.long)
        return sequences, torch.ones_like(sequences), sequences.clone()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return torch.tensor(0.0)


def on_policy_run(project, signer):
    from test_gated import on_policy_project

    envelope = make_audit(project, signer, compute=on_policy_project(project))
    return open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=project.root / "out",
                     key=str(signer.private_path), meters_sampling=True)


def test_an_on_policy_trainer_counts_what_it_samples_and_trains_on(project, signer):
    from types import SimpleNamespace

    from distill.gate.hf import FlopgateCallback, metered_on_policy

    run = on_policy_run(project, signer)
    trainer = metered_on_policy(FakeOnPolicyTrainer)(callbacks=[FlopgateCallback(run)])
    prompts = {"prompts": torch.zeros(2, 7, dtype=torch.long)}
    trainer.generate_on_policy_outputs(None, prompts, SimpleNamespace(use_cache=True))
    assert trainer.take_counts() == (0, 2 * (7 + 5))  # prefill + sampled tokens, per row
    trainer.generate_on_policy_outputs(None, prompts, SimpleNamespace(use_cache=False))
    assert trainer.take_counts() == (0, 2 * (5 * 7 + (0 + 1 + 2 + 3 + 4)))  # each token re-runs its prefix
    training, evaluating = torch.nn.Linear(1, 1).train(), torch.nn.Linear(1, 1).eval()
    trainer.compute_loss(training, {"input_ids": torch.zeros(2, 12, dtype=torch.long)})
    with pytest.raises(GateRefused, match="evaluation.tokens"):   # the audit counted no evaluation
        trainer.compute_loss(evaluating, {"input_ids": torch.zeros(2, 12, dtype=torch.long)})
    assert trainer.take_counts() == (24, 0) and trainer.take_counts() == (0, 0)
    with pytest.raises(InputError, match="longer than the audited data.seq_len"):
        trainer.compute_loss(training, {"input_ids": torch.zeros(1, SEQ_LEN + 1, dtype=torch.long)})


def test_an_on_policy_trainer_is_refused_what_it_cannot_meter(project, signer):
    from distill.gate.hf import FlopgateCallback, metered_on_policy

    metered = metered_on_policy(FakeOnPolicyTrainer)
    logits_run = open_gate(project.plan, make_audit(project, signer, name="logits.intoto.json"),
                           pubkey=str(signer.public_path), out_dir=project.root / "o2", key=str(signer.private_path))
    with pytest.raises(InputError, match="samples nothing"):  # its sampling would not be audited
        metered(callbacks=[FlopgateCallback(logits_run)])
    with pytest.raises(InputError, match="seq_kd"):  # the teacher would generate: not in an on-policy audit
        metered(callbacks=[FlopgateCallback(on_policy_run(project, signer))], seq_kd=True)
    with pytest.raises(InputError, match="one FlopgateCallback"):
        metered(callbacks=[])
    with pytest.raises(TypeError):
        metered_on_policy(object)


def test_a_plain_trainer_is_refused_an_on_policy_audit(project, signer, tmp_path):
    run = on_policy_run(project, signer)
    with pytest.raises(InputError, match="metered_on_policy"):
        trainer_for(project, student(project), run, tmp_path)


def test_a_row_length_is_checked_or_the_forward_refused():
    """input_ids [B, T] or inputs_embeds [B, T, H]; a training forward with neither cannot be
    measured against data.seq_len and is refused (fail closed)."""
    import torch

    from audit.errors import InputError
    from distill.gate.hf import check_row_length

    check_row_length(torch.zeros(2, 32, dtype=torch.long), None, 32)
    check_row_length(None, torch.zeros(2, 32, 8), 32)
    with pytest.raises(InputError, match="longer than the audited data.seq_len 32"):
        check_row_length(None, torch.zeros(2, 33, 8), 32)
    with pytest.raises(InputError, match="without input_ids or inputs_embeds"):
        check_row_length(None, None, 32)
