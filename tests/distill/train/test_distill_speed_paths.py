"""Every GPU fast path computes the reference's loss and gradient (on CPU): masked instead of
gathered rows, bf16 GEMM operands with fp32 products, the compiled chunk work, regional
compilation of the models, the lean (inference-mode) teacher, and a trainer step loop that
reads the loss back only every ``log_every`` steps. Compilation uses the "aot_eager" backend
here: the same Dynamo tracing and AOT autograd as on the GPU, without Inductor's code
generation (which the bench script checks on the GPU)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import distill.train.losses as losses
from distill.train.losses import LossSpec, fused_distill_loss, reference_distill_loss
from distill.train.teacher_cache import fused_cached_loss, topk_targets
from distill.train.trainer import TrainConfig, train
from distill_testkit import TEACHER_SHAPE, llama_config, tiny_run
from test_distill_losses import SPECS, V, make_inputs, reference


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(losses, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def grads_of(loss, leaves):
    return (loss.detach(), *torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-b{s.beta}-T{s.temperature}-w{s.hard_label_weight}")
def test_masked_rows_equal_gathered_rows_and_the_reference(spec):
    """skip_ignored=False (the CUDA default: no host sync) runs every row and zeroes the ignored
    ones; value and gradient equal the gathered path and the full-logit reference (float64)."""
    h_s, w_s, h_t, w_t, labels = make_inputs(37, seed=11)
    count = torch.tensor(int((labels != -100).sum()))  # a tensor count: no host round trip needed
    want = grads_of(reference(h_s, w_s, h_t, w_t, labels, spec, count), [h_s, w_s])
    masked = grads_of(fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, count, vocab_size=V, chunk_size=6,
                                         skip_ignored=False), [h_s, w_s])
    for got, ref in zip(masked, want):
        torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-13)
    assert torch.count_nonzero(masked[1][labels == -100]) == 0


class OpLog(TorchDispatchMode):
    """Names of every aten op run inside the block."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


HOST_SYNC_OPS = {"nonzero", "_local_scalar_dense", "item", "masked_select", "is_nonzero", "equal"}


def test_masked_paths_have_no_op_that_waits_for_the_device():
    """Forward and backward of the online and the cached loss with skip_ignored=False and a tensor
    count run no op whose result size or value the host must wait for."""
    h_s, w_s, h_t, w_t, labels = make_inputs(40, seed=12)
    count = (labels != -100).sum()
    targets = topk_targets(h_t.detach() @ w_t[:V].T, 6, 1.0, torch.float64)
    with OpLog() as online:
        fused_distill_loss(h_s, w_s, h_t, w_t, labels, LossSpec("jsd", hard_label_weight=0.2), count, vocab_size=V,
                           chunk_size=8, skip_ignored=False).backward()
    with OpLog() as cached:
        fused_cached_loss(h_s, w_s, targets, labels, LossSpec(hard_label_weight=0.2), count, vocab_size=V,
                          chunk_size=8, skip_ignored=False).backward()
    with OpLog() as gathered:
        fused_distill_loss(h_s, w_s, h_t, w_t, labels, LossSpec(), count, vocab_size=V, skip_ignored=True)
    assert not online.names & HOST_SYNC_OPS and not cached.names & HOST_SYNC_OPS
    assert "mm" in online.names and "nonzero" in gathered.names  # the detector sees the gathered path's sync


def test_bf16_operands_keep_logits_exact_and_beat_rounded_bf16_logits():
    """matmul_dtype=bf16: operands rounded to bf16, products kept in fp32. The loss equals the fp64
    loss of the bf16 operands; the gradient error against that fp64 reference (from rounding the
    logit gradient to bf16 for its two GEMMs) stays small, well below the error of rounding the
    logits themselves to bf16 (the plain bf16 path)."""
    g = torch.Generator().manual_seed(13)
    n, hs, ht, v = 256, 64, 96, 500
    bf = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(torch.bfloat16)  # noqa: E731
    h_s, w_s, h_t, w_t = bf(n, hs), bf(v, hs, scale=2.5 / hs ** 0.5), bf(n, ht), bf(v, ht, scale=2.5 / ht ** 0.5)
    labels = torch.randint(0, v, (n,), generator=g)
    spec = LossSpec("forward_kl")
    leaves64 = [h_s.double().requires_grad_(), w_s.double().requires_grad_()]
    exact = grads_of(reference_distill_loss(leaves64[0] @ leaves64[1].T, h_t.double() @ w_t.double().T, labels,
                                            spec, n), leaves64)
    leaves = [h_s.clone().requires_grad_(), w_s.clone().requires_grad_()]
    fast = grads_of(fused_distill_loss(*leaves, h_t, w_t, labels, spec, n, matmul_dtype=torch.bfloat16,
                                       skip_ignored=False), leaves)
    leaves_plain = [h_s.clone().requires_grad_(), w_s.clone().requires_grad_()]
    plain = grads_of(reference_distill_loss(leaves_plain[0] @ leaves_plain[1].T, h_t @ w_t.T, labels, spec, n),
                     leaves_plain)

    def err(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert fast[0].dtype == torch.float32 and fast[1].dtype == torch.bfloat16 == fast[2].dtype
    assert err(fast[0], exact[0]) < 1e-5
    for i in (1, 2):
        # The bf16 gradient itself is rounded on return (2^-9 relative): allow a few times that.
        assert err(fast[i], exact[i]) < 1e-2
        assert err(plain[i], exact[i]) > 2 * err(fast[i], exact[i])


COMPILED_SPECS = {"forward_kl": SPECS[0], "reverse_kl": SPECS[1], "jsd": SPECS[3], "jsd-T3-hard": SPECS[9]}
COMPILED_FAST = {("gather", "forward_kl")}


def compiled_case(path: str, name: str):
    """Each case traces anew (a second or two on two cores): the fast loop keeps one gathered
    case here and the masked cached-loss case below; the slow run covers every loss on both."""
    return pytest.param(COMPILED_SPECS[name], path == "gather", id=f"{path}-{name}",
                        marks=() if (path, name) in COMPILED_FAST else pytest.mark.slow)


@pytest.mark.parametrize("spec, skip_ignored", [compiled_case(path, name) for path in ("gather", "mask")
                                                for name in COMPILED_SPECS])
def test_compiled_chunk_work_equals_eager(aot_eager, spec, skip_ignored):
    """compile=True traces the per-chunk function with Dynamo (chunks of 7 over 37 rows: the last
    one shorter, a second shape) and gives the eager result."""
    h_s, w_s, h_t, w_t, labels = make_inputs(37, seed=14)
    count = int((labels != -100).sum())
    eager = grads_of(fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, count, vocab_size=V, chunk_size=7,
                                        skip_ignored=skip_ignored), [h_s, w_s])
    fast = grads_of(fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, count, vocab_size=V, chunk_size=7,
                                       skip_ignored=skip_ignored, compile=True), [h_s, w_s])
    for got, want in zip(fast, eager):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_compiled_cached_chunk_work_equals_eager(aot_eager):
    h_s, w_s, h_t, w_t, labels = make_inputs(30, seed=15)
    targets = topk_targets(h_t.detach() @ w_t[:V].T, 9, 1.4, torch.float64)
    spec = LossSpec(temperature=1.4, hard_label_weight=0.3)
    eager = grads_of(fused_cached_loss(h_s, w_s, targets, labels, spec, 20, vocab_size=V, chunk_size=8), [h_s, w_s])
    fast = grads_of(fused_cached_loss(h_s, w_s, targets, labels, spec, 20, vocab_size=V, chunk_size=8,
                                      skip_ignored=False, compile=True), [h_s, w_s])
    for got, want in zip(fast, eager):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_regional_compilation_and_the_inference_mode_teacher_keep_values_and_names(aot_eager):
    from transformers import LlamaForCausalLM

    from distill.runtime.models import compile_layers, final_hidden_states, head_weight

    torch.manual_seed(0)
    student = LlamaForCausalLM(llama_config(TEACHER_SHAPE)).double()
    teacher = LlamaForCausalLM(llama_config(TEACHER_SHAPE, initializer_range=0.2)).double().eval().requires_grad_(False)
    compiled = LlamaForCausalLM(llama_config(TEACHER_SHAPE)).double()
    compiled.load_state_dict(student.state_dict())
    names = list(compiled.state_dict())
    compile_layers(compiled, backend="aot_eager")
    assert list(compiled.state_dict()) == names  # checkpoints keep their parameter names
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        teacher_hidden = final_hidden_states(teacher, ids)
    with torch.inference_mode():
        lean_hidden = final_hidden_states(teacher, ids)
    assert lean_hidden.is_inference() and torch.equal(lean_hidden, teacher_hidden)
    results = []
    for model, hidden in ((student, teacher_hidden), (compiled, lean_hidden)):
        loss = fused_distill_loss(final_hidden_states(model, ids), head_weight(model), hidden, head_weight(teacher),
                                  labels, LossSpec(), 24, vocab_size=64, skip_ignored=False, compile=model is compiled)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=0)
    for got, want in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_trainer_fast_path_on_cpu_reads_the_loss_only_every_log_every_steps(aot_eager, tmp_path):
    """compile=True and log_every=3 on CPU: every step is logged, the loss and gradient norm only
    at steps 3 and 5 (the last); the losses equal an eager run's at those steps."""
    fast = train(TrainConfig.parse(tiny_run(tmp_path, max_steps=5, compile=True, log_every=3,
                                            out_dir=str(tmp_path / "fast"))))
    eager = train(TrainConfig.parse(tiny_run(tmp_path, max_steps=5, out_dir=str(tmp_path / "eager"))))
    fast_log = [json.loads(line) for line in open(tmp_path / "fast" / "metrics.jsonl", encoding="utf-8")]
    eager_log = [json.loads(line) for line in open(tmp_path / "eager" / "metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in fast_log] == [1, 2, 3, 4, 5]
    assert [r["loss"] is not None for r in fast_log] == [False, False, True, False, True]
    assert [r["grad_norm"] is not None for r in fast_log] == [False, False, True, False, True]
    assert all(r["step_tokens"] == 64 and r["valid_tokens"] == 64 for r in fast_log)  # resume accounting intact
    for step in (3, 5):
        assert fast_log[step - 1]["loss"] == pytest.approx(eager_log[step - 1]["loss"], rel=1e-5)
    assert fast.final_loss == fast_log[-1]["loss"] and eager.final_loss == pytest.approx(fast.final_loss, rel=1e-5)


def test_default_chunk_sizes():
    assert losses.default_chunk_size(128256) == 128          # fp32 operands: 2^24 / V, multiple of 8
    assert losses.default_chunk_size(128256, torch.bfloat16) == 256   # bf16 operands: 2^25 / V
    assert losses.default_chunk_size(10) == 4096 and losses.default_chunk_size(10 ** 7) == 16
