"""Held-out evaluation and the run's logs: rows held out are never trained on; the loop's
metrics equal a direct computation on the final weights; early stopping; TensorBoard events
mirror metrics.jsonl; W&B runs offline when asked for (a stand-in module records the calls)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from audit.errors import InputError
from distill.data.training_data import PackedData
from distill.train.evaluation import token_metric_sums
from distill.train.trainer import TrainConfig, train
from distill_testkit import tiny_run


def test_held_out_rows_are_never_read_for_training():
    data = PackedData(torch.arange(40 * 5).view(40, 5), seed=3, file_tokens=[200], file_sha256=["x"])
    held = data.hold_out(6)
    assert len(held) == 6 and len(data) == 34
    read = torch.cat([data.row_ids(start, 7) for start in range(0, 34 * 3, 7)])   # three epochs
    assert not set(read.tolist()) & set(held.tolist())
    assert sorted(set(read.tolist())) == sorted(set(range(40)) - set(held.tolist()))
    again = PackedData(torch.arange(40 * 5).view(40, 5), seed=3, file_tokens=[200], file_sha256=["x"])
    assert torch.equal(again.hold_out(6), held)                                     # deterministic
    with pytest.raises(InputError, match="eval_sequences"):
        again.hold_out(40)


def test_metric_sums_equal_the_definitions():
    torch.manual_seed(0)
    hs, ht = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    head_s, head_t = torch.randn(12, 8), torch.randn(12, 8)       # 2 padded rows past vocab 10
    labels = torch.randint(0, 10, (2, 5))
    labels[0, 1] = -100
    sums = token_metric_sums(hs, head_s, labels, 10, teacher_hidden=ht, teacher_head=head_t, chunk=3)
    keep = labels != -100
    log_s = F.log_softmax(hs[keep] @ head_s[:10].T, -1)
    log_t = F.log_softmax(ht[keep] @ head_t[:10].T, -1)
    assert sums["tokens"] == 9
    assert sums["ce"].item() == pytest.approx(F.nll_loss(log_s, labels[keep], reduction="sum").item(), rel=1e-6)
    assert sums["kl"].item() == pytest.approx(F.kl_div(log_s, log_t, log_target=True, reduction="sum").item(), rel=1e-5)
    assert sums["top1_agreement"].item() == (log_s.argmax(-1) == log_t.argmax(-1)).sum().item()
    alone = token_metric_sums(hs, head_s, labels, 10)
    assert "kl" not in alone and alone["top1_agreement"].item() == (log_s.argmax(-1) == labels[keep]).sum().item()


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_loop_evaluates_held_out_rows_and_logs_everywhere(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    from distill.data.training_data import load_training_data
    from distill.runtime.models import load_tokenizer

    cfg = TrainConfig.parse(tiny_run(tmp_path, max_steps=4, eval_sequences=4, eval_every=2, lr=3e-3))
    result = train(cfg)
    rows = records(cfg.out_dir)
    evals = [r["eval"] for r in rows if "eval" in r]
    assert [e["step"] for e in evals] == [2, 4] and result.eval == evals[-1]
    assert set(evals[-1]) == {"step", "tokens", "kl", "ce", "top1_agreement"}
    assert 0 < evals[-1]["tokens"] <= 4 * cfg.seq_len and 0 <= evals[-1]["top1_agreement"] <= 1
    assert result.eval_split["by"] == "document" and result.eval_split["rows"] <= 4
    assert evals[-1]["kl"] < evals[0]["kl"]                       # training on KL lowers held-out KL

    # the loop's figure is the KL of the final weights on exactly the held-out rows
    tokenizer = load_tokenizer(cfg.teacher_dir)
    data = load_training_data(cfg.data_files, tokenizer, cfg.seq_len, cfg.seed)
    held = data.hold_out(4)
    inputs, labels = data.eval_rows(held)            # only wholly held-out documents are scored
    student = AutoModelForCausalLM.from_pretrained(result.checkpoint_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(cfg.teacher_dir).eval()
    vocab = len(tokenizer)
    with torch.no_grad():
        keep = labels != -100
        log_s = F.log_softmax(student(inputs).logits[..., :vocab][keep], -1)
        log_t = F.log_softmax(teacher(inputs).logits[..., :vocab][keep], -1)
    assert evals[-1]["tokens"] == int(keep.sum())
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="sum").item() / int(keep.sum())
    assert evals[-1]["kl"] == pytest.approx(kl, rel=1e-4)

    events = EventAccumulator(str(cfg.out_dir / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows if r.get("loss") is not None]
    assert [e.step for e in events.Scalars("eval/kl")] == [2, 4]
    left = [e.value for e in events.Scalars("compute/budget_left")] if cfg.budget_flops else []
    assert left == sorted(left, reverse=True)


def test_early_stopping_ends_the_run_and_says_so(tmp_path):
    cfg = TrainConfig.parse(tiny_run(tmp_path, max_steps=12, eval_sequences=4, eval_every=1,
                                     early_stop_patience=1, lr=3.0, grad_clip=None))  # a rate that diverges
    result = train(cfg)
    assert result.stopped_early and result.steps < 12 and "stopped early" in result.message
    evals = [r["eval"]["kl"] for r in records(cfg.out_dir) if "eval" in r]
    assert evals[-1] >= min(evals[:-1])                           # the last evaluation did not improve


def test_wandb_runs_offline_when_asked_for(tmp_path, monkeypatch):
    calls = []
    run = types.SimpleNamespace(log=lambda values, step: calls.append(("log", step, sorted(values))),
                                finish=lambda: calls.append(("finish",)))
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = TrainConfig.parse(tiny_run(tmp_path, max_steps=2, wandb=True, tensorboard=False))
    train(cfg)
    assert calls[0][0] == "init" and calls[0][1]["mode"] == "offline"
    assert [c[1] for c in calls if c[0] == "log"] == [1, 2] and "train/loss" in calls[1][2]
    assert calls[-1] == ("finish",)
    assert not (cfg.out_dir / "tensorboard").exists()


def test_wandb_without_the_package_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)   # import wandb raises ImportError
    with pytest.raises(InputError, match="wandb package is not installed"):
        train(TrainConfig.parse(tiny_run(tmp_path, max_steps=2, wandb=True)))
