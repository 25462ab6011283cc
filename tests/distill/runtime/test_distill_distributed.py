"""Two CPU processes under torchrun (gloo, DDP; the teacher whole on each or sharded with FSDP2)
follow the single-process loss curve for the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.runtime.distributed import DistContext, micro_batch_start
from distill.runtime.models import build_student
from distill.train.trainer import TrainConfig, train
from distill_testkit import tiny_run

RUNNER = Path(__file__).resolve().parents[1] / "run_train.py"


def test_micro_batches_tile_the_global_batch():
    """Every (rank, micro-step) reads a distinct slice and together they cover the step."""
    for world, accum, micro in [(1, 3, 4), (2, 2, 3), (4, 1, 2)]:
        starts = []
        for rank in range(world):
            ctx = DistContext(rank, world, rank, torch.device("cpu"), owns_group=False)
            starts += [micro_batch_start(100, a, micro, ctx) for a in range(accum)]
        covered = sorted(p for s in starts for p in range(s, s + micro))
        assert covered == list(range(100, 100 + world * accum * micro))


@pytest.mark.slow
@pytest.mark.parametrize("shard_teacher", [False, True], ids=["teacher-replicated", "teacher-sharded"])
def test_two_gloo_processes_match_one_process(tmp_path, shard_teacher):
    common = dict(max_steps=6, lr=2e-3, checkpoint_every=3)
    two = tiny_run(tmp_path, micro_batch=2, grad_accum=2, out_dir=str(tmp_path / "two"),
                   shard_teacher=shard_teacher, **common)
    (tmp_path / "two.json").write_text(json.dumps(two))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(RUNNER), str(tmp_path / "two.json"), "--result", str(tmp_path / "two-result.json")],
        env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-4000:]

    one_cfg = TrainConfig.parse(tiny_run(tmp_path, micro_batch=4, grad_accum=2,
                                         out_dir=str(tmp_path / "one"), **common))
    one = train(one_cfg)
    result = json.loads((tmp_path / "two-result.json").read_text())
    assert result["world_size"] == 2 and one.world_size == 1
    assert result["teacher_sharded"] is shard_teacher and one.teacher_sharded is False
    assert result["tokens"] == one.tokens == 6 * 8 * 16  # the meter sums both ranks

    def curve(name):
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    curve_two, curve_one = curve("two"), curve("one")
    assert [r["valid_tokens"] for r in curve_two] == [r["valid_tokens"] for r in curve_one] == [128] * 6
    for a, b in zip(curve_two, curve_one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)

    final = tmp_path / "two" / "checkpoints" / "step-00000006"
    assert (final / "rng-rank0.pt").is_file() and (final / "rng-rank1.pt").is_file()
    weights_two = load_file(final / "model.safetensors")
    weights_one = load_file(one.checkpoint_dir / "model.safetensors")
    initial = build_student("scratch", config=one_cfg.student_config, seed=one_cfg.seed).state_dict()
    moved = max((weights_one[name] - initial[name]).abs().max().item() for name in weights_one)
    assert moved > 1e-3  # training moved the weights far more than the tolerance below
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sharded_teacher_keeps_half_of_each_layer_and_computes_the_same(tmp_path):
    """FSDP2 over two gloo ranks, one FSDP tree (the base model its root): each rank holds half of
    the decoder layers' weights and of the embedding and norm, and the whole head; the teacher's
    hidden states do not change."""
    from distill_testkit import make_model_dir

    teacher = make_model_dir(tmp_path / "teacher", seed=0, initializer_range=0.2)
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(RUNNER.parent / "run_shard_teacher.py"), str(teacher), str(tmp_path / "shard")],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-4000:]
    reports = [json.loads((tmp_path / f"shard-rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["layer_whole"] > 0
    assert sum(r["layer_local"] for r in reports) == reports[0]["layer_whole"]
    for report in reports:
        assert report["layer_local"] <= report["layer_whole"] // 2 + 1024  # dim-0 shards, rounded up
        assert report["head_local"] == report["head_whole"] > 0 and report["head_is_plain_tensor"]
        assert report["root_local"] <= report["root_whole"] // 2 + 1024    # embedding and norm sharded too
        assert report["fsdp_roots"] == 1                        # one FSDP tree: the base model is its root
        assert report["max_abs_diff"] <= 1e-5 * report["scale"]
    assert sum(r["root_local"] for r in reports) == reports[0]["root_whole"]


@pytest.mark.slow
@pytest.mark.parametrize("shard_teacher", [False, True], ids=["teacher-replicated", "teacher-sharded"])
def test_two_processes_build_a_cache_share_each_and_train_like_one(tmp_path, shard_teacher):
    """Cached teacher logits under torchrun: each rank builds the shards of its half of the rows,
    rank 0 writes the index, and training on that cache follows the one-process run. A sharded
    teacher keeps the ranks in step with padding forwards, which the index's compute counts."""
    from distill.train.teacher_cache import lockstep_padding, read_index, shard_rows

    common = dict(max_steps=4, lr=2e-3, teacher_source="cached", teacher_cache_k=8, teacher_cache_dtype="float32",
                  flops_per_token=1.0, teacher_flops_per_token=1.0)
    two = tiny_run(tmp_path, micro_batch=3, grad_accum=2, out_dir=str(tmp_path / "two"),
                   teacher_cache_dir=str(tmp_path / "cache-two"), shard_teacher=shard_teacher, **common)
    (tmp_path / "two.json").write_text(json.dumps(two))
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(RUNNER), str(tmp_path / "two.json"), "--result", str(tmp_path / "two-result.json")],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-4000:]
    one = train(TrainConfig.parse(tiny_run(tmp_path, micro_batch=6, grad_accum=2, out_dir=str(tmp_path / "one"),
                                           teacher_cache_dir=str(tmp_path / "cache-one"), **common)))
    result = json.loads((tmp_path / "two-result.json").read_text())
    assert result["teacher_sharded"] is shard_teacher

    index_two, index_one = read_index(tmp_path / "cache-two"), read_index(tmp_path / "cache-one")
    rows, seq_len = index_one.sequences, index_one.seq_len
    assert len(index_one.shards) == 1 and index_two.sequences == rows > 2
    assert [(s["first"], s["count"]) for s in index_two.shards] == [(0, rows // 2), (rows // 2, rows - rows // 2)]
    assert index_two.data_sha256 == index_one.data_sha256
    per_shard = shard_rows(seq_len, 8, "float32")
    padding = sum(lockstep_padding(rows, per_shard, 2, 3)) if shard_teacher else 0
    assert padding == (1 if shard_teacher else 0)  # the rows split so that rank 0 runs one forward fewer
    assert index_one.teacher_forward_flops == rows * seq_len
    assert index_two.teacher_forward_flops == (rows + padding) * seq_len
    # the meter charged the same teacher forward, padding included, beside the student's tokens
    assert result["flops_used"] == pytest.approx((rows + padding) * seq_len + result["tokens"])

    def curve(name):
        return [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert one.steps == 4 and len(curve("two")) == 4
    assert curve("two") == pytest.approx(curve("one"), rel=1e-5)


def _launch(tmp_path, name: str, cfg: dict, ranks: int, *extra, hang_after=None):
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               str(RUNNER), str(tmp_path / f"{name}.json"), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if hang_after is None:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        return None
    return subprocess.Popen(command + ["--hang-after-step", str(hang_after)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_a_sharded_student_matches_one_process_and_resumes_at_another_process_count(tmp_path):
    """The trainer with its student sharded by FSDP2: 4 gloo ranks follow the one-process loss
    curve; killed after step 4 (checkpoint at 3), the run resumes on 2 ranks (DCP reshards; the
    global batch kept at 8 by grad_accum) and still follows the curve; the last checkpoint holds
    the whole student, equal to the one-process weights."""
    import signal
    import time

    common = dict(max_steps=6, lr=2e-3, checkpoint_every=3)
    one = train(TrainConfig.parse(tiny_run(tmp_path, micro_batch=4, grad_accum=2, out_dir=str(tmp_path / "one"),
                                           **common)))
    four = tiny_run(tmp_path, micro_batch=2, grad_accum=1, out_dir=str(tmp_path / "sharded"),
                    student_sharding="fsdp", **common)
    victim = _launch(tmp_path, "four", four, 4, hang_after=4)
    deadline, line = time.monotonic() + 300, ""
    while "HANGING" not in line and time.monotonic() < deadline:
        line = victim.stdout.readline()
        if not line and victim.poll() is not None:
            break
    assert "HANGING 4" in line, victim.stderr.read()[-4000:]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    checkpoints = sorted(p.name for p in (tmp_path / "sharded" / "checkpoints").iterdir() if p.name.startswith("step"))
    assert checkpoints == ["step-00000003"] and (tmp_path / "sharded" / "checkpoints" / "step-00000003" / "dcp").is_dir()

    two = dict(four, grad_accum=2)   # 2 ranks x 2 x 2 = the same global batch of 8 sequences
    _launch(tmp_path, "two", two, 2, "--resume")

    def curve(name):
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    sharded, single = curve("sharded"), curve("one")
    assert [r["step"] for r in sharded] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(sharded, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    final = tmp_path / "sharded" / "checkpoints" / "step-00000006"
    weights = load_file(final / "model.safetensors")
    for name, value in load_file(one.checkpoint_dir / "model.safetensors").items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5)
