"""The compute meter and the trainer's budget stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.gate.meter import ComputeMeter
from distill.train.trainer import TrainConfig, train
from distill_testkit import tiny_run


def test_meter_counts_flops_and_stops_at_budget_times_one_plus_tolerance():
    meter = ComputeMeter(flops_per_token=10.0, budget_flops=1000.0, tolerance=0.05)
    assert meter.limit_flops == pytest.approx(1050.0)
    meter.add(60)
    meter.add(40)
    assert meter.tokens == 100 and meter.flops == 1000.0
    assert not meter.would_exceed(5)   # 1050 exactly: allowed
    assert meter.would_exceed(6)       # 1060 > 1050
    unlimited = ComputeMeter(flops_per_token=10.0)
    unlimited.add(10 ** 12)
    assert not unlimited.would_exceed(10 ** 12)
    restored = ComputeMeter(10.0, 1000.0)
    restored.load_state_dict(meter.state_dict())
    assert restored.flops == 1000.0


@pytest.mark.parametrize("bad", [dict(flops_per_token=-1.0), dict(flops_per_token=1.0, budget_flops=0.0),
                                 dict(flops_per_token=1.0, tolerance=-0.1)])
def test_meter_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        ComputeMeter(**bad)


# One step = micro_batch 4 x seq_len 16 = 64 tokens; at 1000 FLOP/token, 64,000 FLOP per step.
STEP_FLOPS = 4 * 16 * 1000.0


@pytest.mark.parametrize("budget, tolerance, steps", [
    (200_000.0, 0.05, 3),          # limit 210,000: 3 steps (192,000) fit, a 4th (256,000) would not
    (3 * STEP_FLOPS, 0.0, 3),      # landing exactly on the limit is allowed
    (3 * STEP_FLOPS - 1, 0.0, 2),
])
def test_training_stops_before_the_limit_with_a_checkpoint(tmp_path, budget, tolerance, steps):
    cfg = TrainConfig.parse(tiny_run(tmp_path, max_steps=20, budget_flops=budget, flops_per_token=1000.0,
                                     tolerance=tolerance))
    result = train(cfg)
    assert result.stopped_by_budget and result.steps == steps
    assert result.flops_used == steps * STEP_FLOPS <= budget * (1 + tolerance)
    assert (steps + 1) * STEP_FLOPS > budget * (1 + tolerance)
    assert result.checkpoint_dir == Path(cfg.out_dir) / "checkpoints" / f"step-{steps:08d}"
    state = json.loads((result.checkpoint_dir / "trainer_state.json").read_text())
    assert state["step"] == steps and state["meter"]["flops"] == steps * STEP_FLOPS
    assert "budget" in result.message


def test_resuming_at_the_budget_stops_again_without_training(tmp_path):
    cfg = TrainConfig.parse(tiny_run(tmp_path, max_steps=20, budget_flops=200_000.0, flops_per_token=1000.0))
    first = train(cfg)
    again = train(cfg, resume=True)
    assert again.stopped_by_budget and again.steps == first.steps == 3
    assert again.checkpoint_dir == first.checkpoint_dir
    # A larger budget (a new audit) lets the same run continue.
    more = train(cfg.model_copy(update={"budget_flops": 400_000.0}), resume=True)
    assert more.steps == 6 and more.stopped_by_budget
