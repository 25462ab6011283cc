"""Every forward pass metered (issue 29): held-out evaluations are charged like training steps,
their FLOP is in the run's total and in the ledger rows (``eval_flops``, in the same locked
charge), a metered run may not evaluate without an audited rate, and an evaluation that would
pass the audited cap stops the run."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.keys import TrustedKey, key_id
from audit.errors import InputError
from audit.ledger.store import Ledger
from distill.gate.ledger_charges import RunCharges, StepCharges
from distill.train.loop import evaluation_rows
from distill.train.trainer import TrainConfig, train
from distill_testkit import tiny_run

AUDIT = "ab" * 32
STEP_RATE, EVAL_RATE = 1.0e6, 3.0e5   # FLOP per training token, per evaluated position


def test_evaluation_rows_count_every_forward_each_rank_runs():
    assert evaluation_rows(5, 1, 2) == 5
    assert evaluation_rows(5, 2, 2) == 6      # rank 0 scores 3 rows, rank 1 two and one at weight 0
    assert evaluation_rows(1, 4, 8) == 4      # every rank runs one forward


def metered(tmp_path, **overrides):
    fields = dict(max_steps=4, eval_sequences=4, eval_every=2, flops_per_token=STEP_RATE, budget_flops=1e12,
                  eval_flops_per_token=EVAL_RATE, eval_tokens_limit=1e6, tensorboard=False)
    return TrainConfig.parse(tiny_run(tmp_path, **{**fields, **overrides}))


def test_a_metered_run_may_not_evaluate_without_an_audited_rate(tmp_path):
    with pytest.raises(InputError, match="evaluation.tokens"):
        metered(tmp_path, eval_flops_per_token=None)


@pytest.mark.slow
def test_evaluations_are_charged_to_the_meter_and_the_ledger(tmp_path):
    key = Ed25519PrivateKey.generate()
    ledger_path = str(tmp_path / "ledger.db")
    with Ledger(ledger_path) as ledger:
        ledger.append("audit", AUDIT, {"plan_name": "p", "outcome": "ALLOW", "total_flops": 1e12,
                                       "update_flops": 1e12, "budget_flops": 1e12, "signer": "t"}, key)
    cfg = metered(tmp_path)
    booked = StepCharges(RunCharges(AUDIT, str(cfg.out_dir), 0.0, 0.0), 1e12, key, ledger_path,
                         update_flops_per_token=STEP_RATE)
    result = train(cfg, on_step=booked.on_step)
    per_eval = result.eval_split["rows"] * cfg.seq_len           # one process: every held row once
    assert result.eval_flops == 2 * per_eval * EVAL_RATE          # steps 2 and 4
    assert result.flops_used == pytest.approx(result.tokens * STEP_RATE + result.eval_flops)
    with Ledger(ledger_path) as ledger:
        charges = [r["body"] for r in ledger.rows() if r["kind"] == "charge"]
        assert ledger.verify([TrustedKey(key_id(key.public_key()), key.public_key(), "k")]) == []
    assert [c.get("eval_flops") for c in charges] == [None, per_eval * EVAL_RATE, None, per_eval * EVAL_RATE]
    assert sum(c["flops"] for c in charges) == pytest.approx(result.flops_used)   # the ledger holds it all
    record = json.loads((cfg.out_dir / "metrics.jsonl").read_text().splitlines()[1])
    assert record["eval_tokens"] == per_eval and record["flops"] == pytest.approx(
        2 * cfg.micro_batch * cfg.seq_len * STEP_RATE + per_eval * EVAL_RATE)


@pytest.mark.slow
def test_an_evaluation_past_the_audited_cap_stops_the_run(tmp_path):
    probe = train(metered(tmp_path, out_dir=str(tmp_path / "probe"), max_steps=2, eval_every=None))
    per_eval = probe.eval_split["rows"] * 16
    cfg = metered(tmp_path, eval_tokens_limit=per_eval * 1.5)     # room for one evaluation, not two
    result = train(cfg)
    assert result.steps == 4 and result.stopped_by_budget           # step 4's evaluation was refused
    assert "evaluation.tokens" in result.message and result.eval["step"] == 2
    assert result.eval_flops == per_eval * EVAL_RATE
    records = [json.loads(line) for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert "eval_refused" in records[-1] and "eval" not in records[-1]


@pytest.mark.slow
def test_evaluations_lost_to_a_crash_stay_charged_on_resume(tmp_path):
    """Steps 3 and 4 (and their evaluations) ran after the checkpoint at step 2 and were lost:
    the resumed meter counts their evaluations too, so it never falls below what was charged."""
    import shutil

    from distill.runtime.checkpoint import list_checkpoints

    cfg = metered(tmp_path, eval_every=1, checkpoint_every=2, keep_last=None)
    first = train(cfg)
    per_eval = first.eval_split["rows"] * cfg.seq_len
    assert first.eval_flops == 4 * per_eval * EVAL_RATE
    for folder in list_checkpoints(cfg.out_dir):
        if not folder.name.endswith("02"):
            shutil.rmtree(folder)                                  # a crash after step 2's checkpoint
    resumed = train(cfg, resume=True)
    assert resumed.eval_flops == 6 * per_eval * EVAL_RATE           # 4 before the crash, steps 3 and 4 again
    assert resumed.flops_used == pytest.approx(resumed.tokens * STEP_RATE + resumed.eval_flops)
