"""``distill.gate.gated_run``: the gate for a loop of your own. A refusing gate raises ``GateRefused``
and hands out nothing; an open one meters each step against the audit's budget, charges it in
the ledger (one row per step) and signs a run record that verifies."""

from __future__ import annotations

import hashlib

import pytest
import torch

from audit.attest import PREDICATE_RUN_RECORD
from audit.attest.verify import verify_envelope_file
from audit.ledger.store import Ledger
from distill.gate import GateRefused, open_gate
from distill_testkit import fake_gpu_counter
from gate_fixtures import FPT, STUDENT_TRAIN_FPT, compute_block, make_audit

TOKENS = 64  # per step


pytestmark = pytest.mark.usefixtures("test_pack_installed")


def gate(project, envelope, signer, out="out", **kwargs):
    return open_gate(project.plan, envelope, pubkey=str(signer.public_path), out_dir=project.root / out,
                     key=str(signer.private_path), **kwargs)


def loop(run, steps: int) -> int:
    """A minimal training loop of one's own: a linear model, the meter around each step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    done = 0
    for _ in range(steps):
        if run.meter.would_exceed(TOKENS):
            break
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run.meter.step(TOKENS)
        done += 1
    return done


def test_a_refusing_gate_gives_no_handle(project, signer):
    envelope = make_audit(project, signer, outcome="DENY")
    with pytest.raises(GateRefused) as refused:
        gate(project, envelope, signer)
    assert refused.value.exit_code == 6
    assert any("outcome" in reason for reason in refused.value.reasons)
    envelope = make_audit(project, signer)
    project.plan.write_text(project.plan.read_text() + "\n# edited\n")
    with pytest.raises(GateRefused) as refused:
        gate(project, envelope, signer)
    assert any(reason.startswith("plan") for reason in refused.value.reasons), refused.value.reasons


def test_a_loop_is_metered_charged_and_recorded(project, signer, tmp_path):
    envelope = make_audit(project, signer, compute=compute_block(tokens=3.5 * TOKENS))
    run = gate(project, envelope, signer)
    assert run.budget_flops == 3.5 * TOKENS * FPT and run.flops_per_token == FPT
    assert loop(run, 10) == 3  # the fourth step would pass the budget: it never runs
    assert run.meter.flops == 3 * TOKENS * FPT and run.meter.stopped_by_budget
    checkpoint = project.root / "out" / "final"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights.bin").write_bytes(b"w" * 10)
    written = run.finish(checkpoint, final_loss=0.5)
    verified = verify_envelope_file(written.envelope_path, [signer.trusted],
                                    predicate_types=(PREDICATE_RUN_RECORD,))
    record = verified.predicate
    assert record["steps"] == 3 and record["compute"]["flops"] == 3 * TOKENS * FPT
    assert record["stopped_by_budget"] is True
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        rows = ledger.rows(audit=digest)
        assert [r["kind"] for r in rows] == ["gate_open", "charge", "charge", "charge"]
        assert [r["body"]["update_flops"] for r in rows[1:]] == [TOKENS * STUDENT_TRAIN_FPT] * 3
        assert ledger.spent(digest) == 3 * TOKENS * FPT


def test_the_budget_is_shared_across_runs_and_a_resume_continues(project, signer):
    envelope = make_audit(project, signer, compute=compute_block(tokens=5 * TOKENS))
    assert loop(gate(project, envelope, signer, out="a"), 2) == 2
    second = gate(project, envelope, signer, out="b")
    assert second.budget_flops == 3 * TOKENS * FPT  # what run a left
    assert loop(second, 10) == 3
    with pytest.raises(GateRefused, match="is spent"):
        gate(project, envelope, signer, out="c")
    resumed = gate(project, envelope, signer, out="a", resume=True)  # its own 2 steps count as spent
    assert resumed.meter.flops == 2 * TOKENS * FPT and loop(resumed, 10) == 0


SAMPLED = 40  # positions the student runs while sampling, per step


def on_policy_project(project, max_flops: float | None = None):
    """The template plan made on-policy; its audit's compute (made-up, consistent figures)."""
    from gate_fixtures import TEACHER_FORWARD_FPT

    text = project.plan.read_text().replace(
        "method: {kind: logits, loss: forward_kl, temperature: 1.0}",
        "method: {kind: on_policy, student_generated_tokens: 3000, prompt_tokens: 1000, loss: jsd}")
    project.plan.write_text(text + (f"budget: {{max_flops: {max_flops!r}}}\n" if max_flops else ""))
    compute = compute_block()
    rolled = 4000.0
    compute["components"] = [compute["components"][0],
                             {"id": "student_generation", "label": "sampling", "method": "counted",
                              "flops": STUDENT_TRAIN_FPT / 3 * rolled, "counts_toward": ["cumulative"]},
                             {"id": "teacher_scoring", "label": "scoring", "method": "counted",
                              "flops": TEACHER_FORWARD_FPT * rolled, "counts_toward": ["cumulative"]}]
    return compute


def test_an_on_policy_loop_is_charged_for_what_it_samples(project, signer):
    step_flops = TOKENS * FPT + SAMPLED * STUDENT_TRAIN_FPT / 3  # student forward = train / 3 in the fixture
    compute = on_policy_project(project, max_flops=3.5 * step_flops)
    envelope = make_audit(project, signer, compute=compute)
    with pytest.raises(GateRefused, match="meters_sampling=True"):
        gate(project, envelope, signer)  # a loop that does not pass its sampling would under-count
    run = gate(project, envelope, signer, meters_sampling=True)
    assert run.flops_per_token == FPT and run.generation_flops_per_token == STUDENT_TRAIN_FPT / 3
    done = 0
    while not run.meter.would_exceed(TOKENS, generated=SAMPLED):
        run.meter.step(TOKENS, generated=SAMPLED)
        done += 1
    assert done == 3 and run.meter.generated == 3 * SAMPLED
    assert run.meter.flops == pytest.approx(3 * step_flops)
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        rows = ledger.rows(audit=digest)
        assert [r["kind"] for r in rows] == ["gate_open", "charge", "charge", "charge"]
        for row in rows[1:]:
            assert row["body"]["flops"] == pytest.approx(step_flops)
            assert row["body"]["update_flops"] == TOKENS * STUDENT_TRAIN_FPT  # sampling updates no parameter


def test_sampling_cannot_be_booked_on_a_run_audited_without_it(project, signer):
    run = gate(project, make_audit(project, signer), signer)
    with pytest.raises(ValueError, match="not on_policy"):
        run.meter.step(TOKENS, generated=SAMPLED)


def test_an_adapter_plan_needs_a_caller_that_trains_only_the_adapter(project, signer):
    project.plan.write_text(project.plan.read_text().replace(
        "init: scratch}", "init: scratch, adapter: {kind: lora, rank: 4, target_modules: [q_proj]}}"))
    compute = compute_block()
    compute["adapter"] = {"kind": "lora", "rank": 4, "target_modules": ["q_proj"],
                          "train_flops_per_token": STUDENT_TRAIN_FPT / 2}
    compute["components"][0]["flops"] = STUDENT_TRAIN_FPT / 2 * compute["tokens"]
    envelope = make_audit(project, signer, compute=compute)
    with pytest.raises(GateRefused, match="trains_adapter=True"):
        gate(project, envelope, signer)
    run = gate(project, envelope, signer, trains_adapter=True)
    assert run.student_flops_per_token == STUDENT_TRAIN_FPT / 2  # the adapter's rate, not the summary's full one


RANKS_SCRIPT = '''
import json, os, sys
import torch.distributed as dist
import distill.gate.gated_run
distill.gate.gated_run._installed_pack_versions = lambda: json.loads(sys.argv[5])
from distill.gate import open_gate
plan, envelope, pubkey, key, _, out = sys.argv[1:7]
dist.init_process_group("gloo")
rank = dist.get_rank()
run = open_gate(plan, envelope, pubkey=pubkey, key=key, out_dir=out, meters_sampling=True)
steps = 0
while not run.meter.would_exceed(10 * (rank + 1), generated=3 * (rank + 1)):  # each rank its own counts
    run.meter.step(10 * (rank + 1), generated=3 * (rank + 1))
    steps += 1
with open(os.path.join(out, f"rank-{rank}.txt"), "w") as f:
    f.write(f"{steps} {run.meter.tokens} {run.meter.generated}")
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_two_ranks_sum_their_sampled_positions_and_charge_once_per_step(project, signer, tmp_path):
    """torchrun, 2 CPU processes (gloo): both ranks' trained and sampled positions are summed
    (all-reduce), both stop at the same step, rank 0 alone charges each step."""
    import json
    import os
    import subprocess
    import sys

    from gate_fixtures import PACK_ID, PACK_VERSION

    step_flops = 30 * FPT + 9 * STUDENT_TRAIN_FPT / 3  # ranks 10 + 20 trained, 3 + 6 sampled
    envelope = make_audit(project, signer, compute=on_policy_project(project, max_flops=4.5 * step_flops))
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    out = project.root / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(project.plan), str(envelope), str(signer.public_path),
                           str(signer.private_path), json.dumps({PACK_ID: PACK_VERSION}), str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.read_text() for p in out.glob("rank-*.txt")) == ["4 120 36", "4 120 36"]
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        charges = [r["body"] for r in ledger.rows(audit=digest) if r["kind"] == "charge"]
    assert len(charges) == 4 and all(c["tokens"] == 30 for c in charges)
    assert all(c["flops"] == pytest.approx(step_flops) for c in charges)


def test_a_loop_that_took_no_step_for_the_budget_signs_nothing(project, signer):
    envelope = make_audit(project, signer, compute=compute_block(tokens=0.5 * TOKENS))
    run = gate(project, envelope, signer)
    assert loop(run, 3) == 0 and run.meter.stopped_by_budget
    checkpoint = project.root / "out" / "final"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights.bin").write_bytes(b"w" * 10)
    with pytest.raises(GateRefused) as refused:
        run.finish(checkpoint, final_loss=None)
    assert refused.value.exit_code == 6
    assert "first step did not fit" in refused.value.reasons[0] and "FLOP left" in refused.value.reasons[0]
    assert not (project.root / "out" / "run-record.intoto.json").exists()
    assert not (project.root / "out" / "README.md").exists()


def charged_energy(envelope) -> list:
    with Ledger() as ledger:
        return [r["body"].get("run_energy_j") for r in ledger.rows(audit=hashlib.sha256(envelope.read_bytes()).hexdigest())
                if r["kind"] == "charge"]


def test_measured_energy_is_charged_with_each_step_and_signed_in_the_record(project, signer, monkeypatch):
    """Each charge row carries the run's energy so far, and the run record says it was measured."""
    fake_gpu_counter(monkeypatch)
    envelope = make_audit(project, signer, compute=compute_block(tokens=10 * TOKENS))
    run = gate(project, envelope, signer)
    assert loop(run, 3) == 3
    checkpoint = project.root / "out" / "final"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights.bin").write_bytes(b"w")
    energy = run.finish(checkpoint, final_loss=0.5).statement["predicate"]["energy"]
    assert energy["status"] == "measured" and energy["device_joules"] == pytest.approx(6.0)
    assert energy["devices"] == ["NVIDIA H100 80GB HBM3"]
    assert charged_energy(envelope) == pytest.approx([2.0, 4.0, 6.0])


def test_a_resumed_loop_of_ones_own_does_not_claim_a_measurement_it_lacks(project, signer, monkeypatch):
    """The first session's counter readings are not this session's: after a resume the charges
    carry no measured energy (the record then estimates it)."""
    fake_gpu_counter(monkeypatch)
    envelope = make_audit(project, signer, compute=compute_block(tokens=10 * TOKENS))
    assert loop(gate(project, envelope, signer), 2) == 2
    assert loop(gate(project, envelope, signer, resume=True), 1) == 1
    assert charged_energy(envelope)[:2] == pytest.approx([2.0, 4.0])
    assert charged_energy(envelope)[2:] == [None]
