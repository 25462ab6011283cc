"""``distill.gated``: the gate for a loop of your own. A refusing gate raises ``GateRefused``
and hands out nothing; an open one meters each step against the audit's budget, charges it in
the ledger (one row per step) and signs a run record that verifies."""

from __future__ import annotations

import hashlib

import pytest
import torch

from audit.attest import PREDICATE_RUN_RECORD
from audit.attest.verify import verify_envelope_file
from audit.ledger.store import Ledger
from distill.gated import GateRefused, open_gate
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
