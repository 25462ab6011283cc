"""Sharded students (FSDP2, ``distill/runtime/fsdp.py``) and sharded checkpoints (DCP,
``distill/runtime/checkpoint.py``): a tiny Llama student trained with the KD loss by ``run_fsdp.py``.

One process (fast): activation checkpointing recomputes the layers and changes no number;
a sharded-format checkpoint resumes bitwise; the exported folder loads with
``from_pretrained`` and gives the trained model's logits. Several gloo processes (slow): 2
and 4 ranks follow the one-process loss curve and gradient norms; a checkpoint saved at 4
ranks resumes at 2 on the same curve; one saved at 2 resumes at 2 bitwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.runtime.checkpoint import Checkpoint, is_sharded_checkpoint, list_checkpoints, load_latest

HERE = Path(__file__).resolve().parents[1]  # tests/distill, where the run_*.py scripts are
RUNNER = HERE / "run_fsdp.py"
sys.path.insert(0, str(HERE))
import run_fsdp  # noqa: E402

STEPS, GLOBAL_BATCH, SEQ_LEN = 6, 8, 16
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def spec(tmp: Path, name: str, **fields) -> dict:
    return {"out": str(tmp / f"{name}.json"), "steps": STEPS, "global_batch": GLOBAL_BATCH,
            "micro_batch": 4, "seq_len": SEQ_LEN, "probe": True, **fields}


def run_here(tmp: Path, name: str, **fields) -> dict:
    """One process, in this one (no process group: the unsharded reference)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the arithmetic of the OMP_NUM_THREADS=1 subprocesses
    try:
        return run_fsdp.run(spec(tmp, name, **fields))
    finally:
        torch.set_num_threads(threads)


def launch(tmp: Path, name: str, nproc: int, **fields) -> dict:
    """``nproc`` gloo processes under torchrun; rank 0's result."""
    path = tmp / f"{name}-spec.json"
    path.write_text(json.dumps(spec(tmp, name, **fields)))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), str(RUNNER), str(path)], env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((tmp / f"{name}.json").read_text())


def steps(result: dict, key: str = "losses") -> list[float]:
    return [result[key][str(s)] for s in sorted(int(k) for k in result[key])]


def logits_of(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    with torch.no_grad():
        return model(input_ids=run_fsdp.probe_tokens(SEQ_LEN)).logits


# --- One process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unsharded one-process run: 6 steps, sharded-format checkpoint at step 3, export."""
    tmp = tmp_path_factory.mktemp("reference")
    result = run_here(tmp, "one", checkpoint_dir=str(tmp / "ck"), save_at=[3], export=str(tmp / "export"),
                      full_weights=True)
    return tmp, result


def test_activation_checkpointing_recomputes_layers_and_changes_no_number(tmp_path, reference, monkeypatch):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    calls = {"n": 0}
    original = LlamaDecoderLayer.forward

    def counting(self, *args, **kwargs):
        calls["n"] += torch.is_grad_enabled()  # the student's layers (the teacher's run in inference mode)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaDecoderLayer, "forward", counting)
    plain = run_here(tmp_path, "plain", probe=False)
    plain_calls, calls["n"] = calls["n"], 0
    checkpointed = run_here(tmp_path, "ac", probe=False, activation_checkpointing=True)
    forwards = STEPS * 2 * run_fsdp.STUDENT["num_hidden_layers"]  # 2 micro-steps per step
    assert plain_calls == forwards
    assert calls["n"] == 2 * forwards  # each layer ran again in the backward
    assert steps(checkpointed) == steps(plain) == steps(reference[1])
    assert steps(checkpointed, "grad_norms") == steps(plain, "grad_norms")


def test_checkpointing_keeps_only_layer_inputs():
    """The measurement behind AC_MIN_PARAMS: a layer keeps ~20 x hidden values per token for
    its backward; checkpointed, nothing past its input."""
    from distill.runtime.fsdp import _measure

    (row,) = _measure(hidden_sizes=(64,), seq_len=32)
    assert row["values_per_token_per_hidden"] > 10
    assert row["with_checkpointing"] == 0


def test_sharded_format_resume_is_bitwise_in_one_process(tmp_path, reference):
    tmp, straight = reference
    (saved,) = list_checkpoints(tmp / "ck")
    assert saved.name == "step-00000003" and is_sharded_checkpoint(load_latest(tmp / "ck"))
    assert not list((tmp / "ck" / "checkpoints").glob(".tmp-*"))
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["sharded"] is True and state["saved_world_size"] == 1 and state["cursor"] == 3 * GLOBAL_BATCH
    resumed = run_here(tmp_path, "resumed", resume_from=str(tmp / "ck"))
    assert sorted(resumed["losses"], key=int) == ["4", "5", "6"]
    assert steps(resumed) == steps(straight)[3:]
    assert steps(resumed, "grad_norms") == steps(straight, "grad_norms")[3:]
    assert resumed["probe_logits"] == straight["probe_logits"]


def test_export_loads_with_from_pretrained_and_gives_the_same_logits(reference):
    tmp, straight = reference
    got = logits_of(tmp / "export")[..., :run_fsdp.VOCAB]
    want = torch.tensor(straight["probe_logits"])[..., :run_fsdp.VOCAB]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    _, initial = run_fsdp.build_models()
    with torch.no_grad():
        before = initial(input_ids=run_fsdp.probe_tokens(SEQ_LEN)).logits[..., :run_fsdp.VOCAB]
    assert (before - want).abs().max() > 100 * 1e-5  # training moved the logits far past the tolerance
    assert not (tmp / ".tmp-export").exists()


def test_restore_refuses_an_unsharded_checkpoint(tmp_path):
    from audit.errors import InputError
    from distill.runtime.checkpoint import restore_sharded_checkpoint
    from distill.runtime.distributed import DistContext

    folder = tmp_path / "step-00000001"
    folder.mkdir()
    ctx = DistContext(0, 1, 0, torch.device("cpu"), owns_group=False)
    with pytest.raises(InputError, match="not a sharded checkpoint"):
        restore_sharded_checkpoint(Checkpoint(folder, 1, {}), model=None, optimizer=None, scheduler=None, ctx=ctx)


def test_precision_policies():
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from distill.runtime.fsdp import mixed_precision_policy

    assert mixed_precision_policy("auto", torch.device("cpu")) is None
    cuda = mixed_precision_policy("auto", torch.device("cuda", 0))
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)
    own = MixedPrecisionPolicy(param_dtype=torch.float16)
    assert mixed_precision_policy(own, torch.device("cpu")) is own
    with pytest.raises(ValueError):
        mixed_precision_policy("fp8", torch.device("cpu"))


# --- Several gloo processes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory, reference):
    """4 ranks (checkpoint at step 3, export), 2 ranks with activation checkpointing (checkpoint
    at step 3), then 2 ranks resumed from each of those checkpoints."""
    tmp = tmp_path_factory.mktemp("sharded")
    runs = {"one": reference[1]}
    runs["four"] = launch(tmp, "four", 4, micro_batch=2, checkpoint_dir=str(tmp / "four-ck"), save_at=[3],
                          export=str(tmp / "four-export"), full_weights=True)
    runs["two_ac"] = launch(tmp, "two_ac", 2, micro_batch=2, activation_checkpointing=True,
                            checkpoint_dir=str(tmp / "two-ck"), save_at=[3])
    runs["four_to_two"] = launch(tmp, "four_to_two", 2, micro_batch=2, resume_from=str(tmp / "four-ck"))
    runs["two_to_two"] = launch(tmp, "two_to_two", 2, micro_batch=2, activation_checkpointing=True,
                                resume_from=str(tmp / "two-ck"))
    return tmp, runs, reference[0]


@pytest.mark.slow
def test_two_and_four_gloo_ranks_follow_the_one_process_curve(sharded_runs):
    tmp, runs, _ = sharded_runs
    one = runs["one"]
    for name, world, accum in [("four", 4, 1), ("two_ac", 2, 2)]:
        run = runs[name]
        assert run["world_size"] == world and run["accum"] == accum and run["sharded"] is True
        assert run["head_is_dtensor_at_rest"] is True
        assert steps(run) == pytest.approx(steps(one), rel=1e-5)
        # Adam hides a wrongly scaled gradient; the norm before clipping does not
        assert steps(run, "grad_norms") == pytest.approx(steps(one, "grad_norms"), rel=1e-5)
        torch.testing.assert_close(torch.tensor(run["probe_logits"]), torch.tensor(one["probe_logits"]),
                                   rtol=1e-5, atol=1e-5)
    assert one["accum"] == 2 and one["sharded"] is False
    # the losses moved by far more than the tolerance: the comparison means something
    assert max(steps(one)) - min(steps(one)) > 1e3 * 1e-5 * max(steps(one))


@pytest.mark.slow
def test_checkpoint_saved_at_four_ranks_resumes_at_two_on_the_curve(sharded_runs):
    tmp, runs, _ = sharded_runs
    (saved,) = list_checkpoints(tmp / "four-ck")
    assert sorted(p.name for p in (saved / "dcp").glob("*.distcp")) == [f"__{r}_0.distcp" for r in range(4)]
    assert sorted(p.name for p in saved.glob("rng-rank*.pt")) == [f"rng-rank{r}.pt" for r in range(4)]
    resumed = runs["four_to_two"]
    assert resumed["world_size"] == 2 and sorted(resumed["losses"], key=int) == ["4", "5", "6"]
    assert steps(resumed) == pytest.approx(steps(runs["one"])[3:], rel=1e-5)
    assert steps(resumed, "grad_norms") == pytest.approx(steps(runs["one"], "grad_norms")[3:], rel=1e-5)


@pytest.mark.slow
def test_resume_at_the_same_world_size_is_bitwise(sharded_runs):
    _, runs, _ = sharded_runs
    straight, resumed = runs["two_ac"], runs["two_to_two"]
    assert steps(resumed) == steps(straight)[3:]
    assert steps(resumed, "grad_norms") == steps(straight, "grad_norms")[3:]
    assert resumed["probe_logits"] == straight["probe_logits"]


@pytest.mark.slow
def test_export_from_four_ranks_loads_and_gives_the_sharded_models_logits(sharded_runs):
    tmp, runs, _ = sharded_runs
    got = logits_of(tmp / "four-export")
    torch.testing.assert_close(got, torch.tensor(runs["four"]["probe_logits"]), rtol=0, atol=1e-5)
    from safetensors.torch import load_file

    weights = load_file(tmp / "four-export" / "model.safetensors")
    _, student = run_fsdp.build_models()
    assert weights.keys() == student.state_dict().keys()
    assert all(weights[k].shape == v.shape for k, v in student.state_dict().items())


@pytest.mark.slow
def test_tied_student_with_cpu_offload_follows_the_curve_and_exports(tmp_path):
    """A student whose head is its embedding (one parameter in the root's shard group), with
    FSDP's CPU offload policy, at 2 ranks against one process; the export keeps the tie."""
    one = run_here(tmp_path, "one", tie=True)
    two = launch(tmp_path, "two", 2, micro_batch=2, tie=True, offload=True, export=str(tmp_path / "export"))
    assert two["sharded"] is True and one["sharded"] is False
    assert steps(two) == pytest.approx(steps(one), rel=1e-5)
    assert steps(two, "grad_norms") == pytest.approx(steps(one, "grad_norms"), rel=1e-5)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), local_files_only=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits_of(tmp_path / "export"), torch.tensor(two["probe_logits"]), rtol=0, atol=1e-5)
    untied = run_here(tmp_path, "untied", probe=False)
    # the tie changes training by far more than the tolerance above
    assert max(abs(a - b) for a, b in zip(steps(untied), steps(one))) > 100 * 1e-5 * max(steps(one))


@pytest.mark.slow
def test_ddp_strategy_trains_replicated_and_resumes_from_the_sharded_format(tmp_path):
    """``strategy="ddp"`` (small students) keeps whole replicas under DDP, with a real no_sync;
    the DCP checkpoint path works for it too (2 ranks save, 2 ranks resume)."""
    one = run_here(tmp_path, "one")
    two = launch(tmp_path, "two", 2, micro_batch=2, strategy="ddp", checkpoint_dir=str(tmp_path / "ck"),
                 save_at=[3])
    resumed = launch(tmp_path, "resumed", 2, micro_batch=2, strategy="ddp", resume_from=str(tmp_path / "ck"))
    assert two["body"] == "DistributedDataParallel" and two["sharded"] is False and two["accum"] == 2
    assert steps(two) == pytest.approx(steps(one), rel=1e-5)
    assert steps(two, "grad_norms") == pytest.approx(steps(one, "grad_norms"), rel=1e-5)
    assert steps(resumed) == steps(two)[3:]
    assert resumed["probe_logits"] == two["probe_logits"]


@pytest.mark.slow
def test_full_weights_in_a_sharded_checkpoint_match_the_one_process_checkpoint(sharded_runs):
    """``full_weights=True``: the 4-rank step-3 checkpoint also holds the whole student where
    ``distill.outputs.export`` looks, equal to the one-process run's at the same step."""
    from safetensors.torch import load_file

    from distill.outputs.export import model_files

    tmp, _, reference_tmp = sharded_runs
    (four,) = list_checkpoints(tmp / "four-ck")
    (one,) = list_checkpoints(reference_tmp / "ck")
    assert [p.name for p in model_files(four)] == ["config.json", "generation_config.json", "model.safetensors"]
    got, want = load_file(four / "model.safetensors"), load_file(one / "model.safetensors")
    _, initial = run_fsdp.build_models()
    assert got.keys() == want.keys() == initial.state_dict().keys()
    moved = max((want[k] - v).abs().max().item() for k, v in initial.state_dict().items())
    assert moved > 1e-3
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)  # as the DDP test does


@pytest.mark.slow
def test_deferred_reduction_and_resharding_after_evaluation_keep_the_curve(tmp_path, reference):
    """Issue 29, 2 gloo ranks x 2 micro-steps: deferring the gradient reduction to the last
    micro-step (set_requires_gradient_sync) halves the reduce-scatters and leaves the loss curve
    where reducing every micro-step had it (1e-5); a no-grad forward leaves the root's head
    gathered, reshard_after_eval frees it, and evaluating between steps changes no loss."""
    every = launch(tmp_path, "every", 2, micro_batch=2, defer=False)
    deferred = launch(tmp_path, "deferred", 2, micro_batch=2, eval_between=True)
    one = reference[1]
    assert every["accum"] == deferred["accum"] == 2
    assert steps(deferred) == pytest.approx(steps(every), rel=1e-5, abs=1e-7)
    assert steps(deferred) == pytest.approx(steps(one), rel=1e-5)
    assert steps(deferred, "grad_norms") == pytest.approx(steps(every, "grad_norms"), rel=1e-5)
    assert every["reduce_scatters"] == 2 * deferred["reduce_scatters"] > 0
    assert deferred["gathered_after_eval"] == deferred["resharded_after_eval"] == [True] * STEPS
