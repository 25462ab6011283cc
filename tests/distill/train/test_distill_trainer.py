"""The training recipe: config validation, plan mapping, logs, refusals, accumulation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from audit.errors import InputError
from audit.plan import load_plan
from distill.data.training_data import build_manifest, write_manifest
from distill.runtime.models import load_tokenizer
from distill.train.loop import warmup_cosine
from distill.train.trainer import TrainConfig, train
from distill_testkit import TOKENIZER_DIR, TRAIN_TEXT, fake_gpu_counter, tiny_run


def losses(path):
    return [json.loads(line)["loss"] for line in open(path, encoding="utf-8")]


@pytest.mark.parametrize("change, field", [
    (dict(max_steps=None), "set max_steps or max_tokens"),
    (dict(loss="jsd", beta=1.0), "beta"),
    (dict(budget_flops=1e9), "flops_per_token"),
    (dict(seq_len=0), "seq_len"),
    (dict(loss="tvd"), "loss"),
    (dict(unknown=1), "unknown"),
])
def test_bad_config_is_a_one_line_input_error(tmp_path, change, field):
    fields = tiny_run(tmp_path)
    fields.update(change)
    with pytest.raises(InputError) as err:
        TrainConfig.parse(fields, "run.json")
    assert str(err.value).startswith("run.json: ") and field in str(err.value)
    assert "\n" not in str(err.value)


def test_warmup_then_cosine():
    factor = warmup_cosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert factor(14) == pytest.approx(0.1) and factor(99) == pytest.approx(0.1)


def test_run_logs_every_step_and_refuses_to_overwrite(tmp_path):
    seen = []
    cfg = TrainConfig.parse(tiny_run(tmp_path, max_steps=3, flops_per_token=500.0))
    result = train(cfg, on_step=seen.append)
    log = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in log] == [1, 2, 3] == [r["step"] for r in seen]
    assert log[-1]["tokens"] == 3 * 64 == result.tokens and log[-1]["flops"] == 3 * 64 * 500.0
    assert all(r["valid_tokens"] == 64 and r["loss"] > 0 for r in log)
    assert result.final_loss == log[-1]["loss"] and result.steps == 3 and not result.stopped_by_budget
    assert result.checkpoint_dir.name == "step-00000003" and result.world_size == 1
    with pytest.raises(InputError, match="already holds checkpoints"):
        train(cfg)


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = TrainConfig.parse(tiny_run(tmp_path, max_steps=2))
    train(cfg)
    changed = TrainConfig.parse(tiny_run(tmp_path, max_steps=4, lr=5e-4))
    with pytest.raises(InputError, match="lr"):
        train(changed, resume=True)


def test_gradient_accumulation_matches_one_big_micro_batch(tmp_path):
    """4 sequences in one micro-step vs 2 x 2 micro-steps: the same global batch and the same
    global normalisation give the same losses up to float rounding."""
    one = train(TrainConfig.parse(tiny_run(tmp_path, max_steps=4, micro_batch=4, out_dir=str(tmp_path / "a"))))
    two = train(TrainConfig.parse(tiny_run(tmp_path, max_steps=4, micro_batch=2, grad_accum=2,
                                           out_dir=str(tmp_path / "b"))))
    a, b = losses(tmp_path / "a" / "metrics.jsonl"), losses(tmp_path / "b" / "metrics.jsonl")
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-5)
    assert one.tokens == two.tokens == 4 * 64


def test_pruned_teacher_student_and_progress_is_quiet_off_a_terminal(tmp_path, capfd):
    cfg = TrainConfig.parse(tiny_run(tmp_path, student_init="pruned_teacher", student_config=None,
                                     student_layers=[1], max_steps=2, progress=True))
    capfd.readouterr()
    result = train(cfg)
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(str(result.checkpoint_dir))
    assert student.config.num_hidden_layers == 1 and student.config.hidden_size == 64
    err = capfd.readouterr().err
    assert "tok/s" not in err and "compute" not in err
    # nor transformers' own bars for loading and writing weights
    assert "Loading weights" not in err and "Writing model shards" not in err and "it/s" not in err


def write_plan(root, **method):
    plan = {
        "plan_version": 1, "name": "tiny", "organization": {"name": "Test", "jurisdictions": ["EU"]},
        "teacher": {"model": "./teacher", "access": "weights", "config": "./teacher"},
        "student": {"name": "tiny-student", "config": "./student.json", "init": "scratch"},
        "data": {"tokens": 640, "seq_len": 16, "manifest": "./manifest.json"},
        "method": {"kind": "logits", "loss": "jsd", "temperature": 2.0, **method},
        "use": {"purpose": "tests", "scope": "narrow", "distribution": "internal"}, "schedule": {"start": "2026-12-01"},
    }
    path = root / "plan.yaml"
    path.write_text(json.dumps(plan))  # JSON is YAML
    return path


@pytest.fixture()
def planned(tmp_path):
    tiny_run(tmp_path)  # teacher folder and student config
    data = tmp_path / "train.txt"
    shutil.copy(TRAIN_TEXT, data)
    write_manifest(tmp_path / "manifest.json",
                   build_manifest([data], load_tokenizer(TOKENIZER_DIR), base=tmp_path))
    return tmp_path


def test_from_plan_maps_the_plan_and_trains(planned):
    loaded = load_plan(write_plan(planned))
    cfg = TrainConfig.from_plan(loaded, out_dir=planned / "out", flops_per_token=1000.0,
                                micro_batch=4, device="cpu", progress=False)
    assert cfg.teacher_dir == planned / "teacher" and cfg.student_init == "scratch"
    assert cfg.student_config == planned / "student.json"
    assert cfg.data_files == [planned / "train.txt"] and cfg.manifest == planned / "manifest.json"
    assert (cfg.seq_len, cfg.max_tokens, cfg.loss, cfg.temperature) == (16, 640, "jsd", 2.0)
    assert cfg.budget_flops == 640 * 1000.0  # no budget in the plan: the audited run compute
    result = train(cfg)
    assert result.steps == 640 // 64 and not result.stopped_by_budget

    # Data edited after the manifest was made: refused before any training.
    with open(planned / "train.txt", "a", encoding="utf-8") as handle:
        handle.write("\n\nthe cat sees a dog .\n")
    with pytest.raises(InputError, match=r"files\[0\]\.sha256"):
        train(cfg.model_copy(update={"out_dir": planned / "out2"}))
    assert not (planned / "out2" / "checkpoints").exists()


@pytest.mark.parametrize("edit, field", [
    (lambda p: p.update(teacher={"model": "meta-llama/Llama-3.1-8B", "access": "api"}), "teacher.model"),
    (lambda p: p["method"].update(kind="sequence", teacher_generated_tokens=1e6), "method.kind"),
    (lambda p: p["data"].pop("manifest"), "data.manifest"),
])
def test_from_plan_refuses_what_it_cannot_train(planned, edit, field):
    path = write_plan(planned)
    plan = json.loads(path.read_text())
    edit(plan)
    path.write_text(json.dumps(plan))
    with pytest.raises(InputError, match=field):
        TrainConfig.from_plan(load_plan(path), out_dir=planned / "out")


def test_budget_from_the_plan_wins(planned):
    path = write_plan(planned)
    plan = json.loads(path.read_text())
    plan["budget"] = {"max_flops": 123456.0}
    path.write_text(json.dumps(plan))
    cfg = TrainConfig.from_plan(load_plan(path), out_dir=planned / "out", flops_per_token=1.0)
    assert cfg.budget_flops == 123456.0
    assert cfg.device == "auto" and cfg.flops_per_token == 1.0


def test_bf16_autocast_path_keeps_fp32_master_weights(tmp_path):
    """The CUDA recipe (bf16 teacher, bf16 autocast student, fp32 loss) run on CPU."""
    result = train(TrainConfig.parse(tiny_run(tmp_path, max_steps=2, dtype="bf16")))
    from safetensors.torch import load_file

    weights = load_file(result.checkpoint_dir / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    fp32 = train(TrainConfig.parse(tiny_run(tmp_path, max_steps=2, out_dir=str(tmp_path / "fp32"))))
    assert result.final_loss == pytest.approx(fp32.final_loss, rel=0.05)  # same maths, bf16 rounding
    assert result.final_loss != fp32.final_loss


def test_the_bytes_tokenized_are_the_bytes_checked(planned, monkeypatch):
    """The attack: data that differs while the trainer reads it and while the manifest check
    reads it. A deterministic hook edits the file for the trainer's read and puts the audited
    bytes back before the check; the digests of the bytes actually tokenized give it away."""
    import distill.data.training_data as data_module

    cfg = TrainConfig.from_plan(load_plan(write_plan(planned)), out_dir=planned / "out", flops_per_token=1000.0,
                                micro_batch=4, device="cpu", progress=False, max_steps=1)
    audited = (planned / "train.txt").read_bytes()
    real_read_input = data_module.read_input

    def swapped_read(path, *args, **kwargs):
        if Path(path).name == "train.txt":
            Path(path).write_bytes(audited + b"\n\nignore the audit .\n")
            try:
                return real_read_input(path, *args, **kwargs)
            finally:
                Path(path).write_bytes(audited)
        return real_read_input(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "read_input", swapped_read)
    with pytest.raises(InputError, match=r"files\[0\]\.sha256"):
        train(cfg)
    assert not (planned / "out" / "checkpoints").exists()


def test_a_fifo_is_never_read_as_data(planned):
    cfg = TrainConfig.from_plan(load_plan(write_plan(planned)), out_dir=planned / "out", flops_per_token=1000.0,
                                micro_batch=4, device="cpu", progress=False, max_steps=1)
    (planned / "train.txt").unlink()
    os.mkfifo(planned / "train.txt")
    with pytest.raises(InputError, match="regular file, found a FIFO"):
        train(cfg)


def test_a_manifest_other_than_the_audited_one_is_refused(planned):
    cfg = TrainConfig.from_plan(load_plan(write_plan(planned)), out_dir=planned / "out", flops_per_token=1000.0,
                                micro_batch=4, device="cpu", progress=False, max_steps=1,
                                manifest_sha256="0" * 64)
    with pytest.raises(InputError, match="is not the audited manifest"):
        train(cfg)


def test_loop_meters_the_gpu_energy_counter_every_step(tmp_path, monkeypatch):
    """A fake NVML counter (+1,500 mJ a reading) stands for a GPU: every step logs the energy so
    far, the checkpoint keeps it, and the result carries it for the run record."""
    fake_gpu_counter(monkeypatch, step_mj=1_500, first_mj=10_000)   # the CPU run reads "GPU 0"
    result = train(TrainConfig.parse(tiny_run(tmp_path, max_steps=3, flops_per_token=500.0)))
    log = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl", encoding="utf-8")]
    assert [r["energy_j"] for r in log] == pytest.approx([1.5, 3.0, 4.5])
    assert result.energy_joules == pytest.approx(4.5) and result.energy_devices == ("NVIDIA H100 80GB HBM3",)
    state = json.loads((result.checkpoint_dir / "trainer_state.json").read_text())
    assert state["energy"] == {"millijoules": 4_500, "complete": True}


def test_a_cpu_loop_logs_no_energy_and_says_why(tmp_path):
    result = train(TrainConfig.parse(tiny_run(tmp_path, max_steps=2)))
    log = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl", encoding="utf-8")]
    assert [r["energy_j"] for r in log] == [None, None]
    assert result.energy_joules is None and "not an NVIDIA GPU" in result.energy_reason
