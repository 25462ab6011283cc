"""The fused, chunked loss equals the full-logit reference in value and gradient, and never
materialises [tokens x vocab]; the reference itself matches hand-computed divergences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from distill.train.losses import LossSpec, fused_distill_loss, reference_distill_loss
from distill_testkit import assert_same_up_to_simd_tails

V, H_S, H_T = 50, 16, 24
SPECS = [
    LossSpec("forward_kl"),
    LossSpec("reverse_kl"),
    LossSpec("jsd", beta=0.1),
    LossSpec("jsd", beta=0.5),
    LossSpec("jsd", beta=0.9),
    LossSpec("forward_kl", temperature=2.0),
    LossSpec("reverse_kl", temperature=0.5),
    LossSpec("jsd", beta=0.3, temperature=1.7),
    LossSpec("forward_kl", hard_label_weight=0.4),
    LossSpec("jsd", beta=0.5, temperature=3.0, hard_label_weight=0.25),
    LossSpec("reverse_kl", hard_label_weight=1.0),
]


def make_inputs(tokens: int, seed: int, student_rows: int = V + 3, teacher_rows: int = V + 6,
                ignore_every: int = 4):
    """float64 hidden states and heads (padded rows past V), labels with ignored positions."""
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(tokens, H_S, generator=g, dtype=torch.float64).requires_grad_()
    w_s = (torch.randn(student_rows, H_S, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    h_t = torch.randn(tokens, H_T, generator=g, dtype=torch.float64)
    w_t = torch.randn(teacher_rows, H_T, generator=g, dtype=torch.float64) * 0.7
    labels = torch.randint(0, V, (tokens,), generator=g)
    labels[::ignore_every] = -100
    return h_s, w_s, h_t, w_t, labels


def reference(h_s, w_s, h_t, w_t, labels, spec, count):
    return reference_distill_loss(h_s @ w_s.T, h_t @ w_t.T, labels, spec, count, vocab_size=V)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-b{s.beta}-T{s.temperature}-w{s.hard_label_weight}")
def test_fused_equals_reference_in_value_and_gradient(spec):
    h_s, w_s, h_t, w_t, labels = make_inputs(37, seed=1)
    count = int((labels != -100).sum())
    fused = fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, count, vocab_size=V, chunk_size=5)
    grads_fused = torch.autograd.grad(fused, [h_s, w_s])
    ref = reference(h_s, w_s, h_t, w_t, labels, spec, count)
    grads_ref = torch.autograd.grad(ref, [h_s, w_s])
    assert ref.item() > 0
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads_fused, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # Ignored positions get exactly zero gradient, and so do the student's padded vocab rows.
    assert torch.count_nonzero(grads_fused[0][labels == -100]) == 0
    assert torch.count_nonzero(grads_fused[1][V:]) == 0


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[1], SPECS[3], SPECS[9]], ids=lambda s: s.kind)
def test_gradient_accumulation_with_global_count_equals_one_big_batch(spec):
    """Split into micro-steps of unequal valid counts: the summed losses and gradients,
    each normalised by the global count, equal the single batch's."""
    h_s, w_s, h_t, w_t, labels = make_inputs(60, seed=2, ignore_every=3)
    labels[40:52] = -100  # the micro-steps hold different numbers of valid tokens
    total_valid = int((labels != -100).sum())
    whole = reference(h_s, w_s, h_t, w_t, labels, spec, total_valid)
    grads_whole = torch.autograd.grad(whole, [h_s, w_s])

    splits = [(0, 13), (13, 41), (41, 60)]
    loss_sum = 0.0
    grad_h = torch.zeros_like(h_s)
    grad_w = torch.zeros_like(w_s)
    for start, end in splits:
        part_h = h_s.detach()[start:end].clone().requires_grad_()
        loss = fused_distill_loss(part_h, w_s, h_t[start:end], w_t, labels[start:end], spec,
                                  total_valid, vocab_size=V, chunk_size=4)
        g_h, g_w = torch.autograd.grad(loss, [part_h, w_s])
        loss_sum += loss.item()
        grad_h[start:end] = g_h
        grad_w += g_w
    assert loss_sum == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(grad_h, grads_whole[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_w, grads_whole[1], rtol=1e-10, atol=1e-12)

    # The classic bug: normalising each micro-step by its own count gives a different loss.
    local = sum(reference(h_s[s:e], w_s, h_t[s:e], w_t, labels[s:e], spec,
                          int((labels[s:e] != -100).sum())).item() / len(splits) for s, e in splits)
    assert abs(local - whole.item()) > 1e-3 * whole.item()


def test_reference_matches_hand_computed_divergences():
    """Two-token vocabulary, values worked out from the definitions with math.log."""
    z_s = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # p = (1/4, 3/4)
    z_t = torch.tensor([[0.0, 0.0]], dtype=torch.float64)            # q = (1/2, 1/2)
    labels = torch.tensor([1])
    p, q = (0.25, 0.75), (0.5, 0.5)
    forward = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    reverse = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    beta = 0.3
    m = [beta * qi + (1 - beta) * pi for pi, qi in zip(p, q)]
    jsd = (beta * sum(qi * math.log(qi / mi) for qi, mi in zip(q, m))
           + (1 - beta) * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m)))
    for spec, want in [(LossSpec("forward_kl"), forward), (LossSpec("reverse_kl"), reverse),
                       (LossSpec("jsd", beta=beta), jsd)]:
        got = reference_distill_loss(z_s, z_t, labels, spec, 1).item()
        assert got == pytest.approx(want, rel=1e-12)
    # Hard-label mix: 0.4 * CE + 0.6 * KL, CE = -log p(label) = -log 3/4.
    mixed = reference_distill_loss(z_s, z_t, labels, LossSpec("forward_kl", hard_label_weight=0.4), 1).item()
    assert mixed == pytest.approx(0.6 * forward + 0.4 * -math.log(0.75), rel=1e-12)
    # Temperature T: softmax of z/T, times T^2. At T = 2, p = softmax(0, log(3)/2) = (1/(1+sqrt3), sqrt3/(1+sqrt3)).
    root3 = math.sqrt(3.0)
    p2 = (1 / (1 + root3), root3 / (1 + root3))
    forward_t2 = 4 * sum(qi * math.log(qi / pi) for pi, qi in zip(p2, q))
    got = reference_distill_loss(z_s, z_t, labels, LossSpec("forward_kl", temperature=2.0), 1).item()
    assert got == pytest.approx(forward_t2, rel=1e-12)


def test_fused_is_zero_when_student_equals_teacher_and_loss_is_sum_over_global_count():
    h_s, w_s, h_t, w_t, labels = make_inputs(20, seed=3)
    for spec in SPECS[:5]:
        same = fused_distill_loss(h_s, w_s, h_s.detach(), w_s.detach(), labels, spec, 15, vocab_size=V)
        assert abs(same.item()) < 1e-12
    spec = LossSpec("forward_kl")
    one = fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, 1, vocab_size=V).item()
    seven = fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, torch.tensor(7), vocab_size=V).item()
    assert seven == pytest.approx(one / 7, rel=1e-12)
    nothing = torch.full_like(labels, -100)
    assert fused_distill_loss(h_s, w_s, h_t, w_t, nothing, spec, 0, vocab_size=V).item() == 0.0


def test_only_the_first_vocab_logits_count():
    """Padding rows, whatever their values, change nothing; without vocab_size the narrower head wins."""
    h_s, w_s, h_t, w_t, labels = make_inputs(16, seed=4, student_rows=V, teacher_rows=V + 9)
    spec = LossSpec("jsd", beta=0.4)
    base = fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, 12)
    w_t_noisy = w_t.clone()
    w_t_noisy[V:] = 100.0
    noisy = fused_distill_loss(h_s, w_s, h_t, w_t_noisy, labels, spec, 12)
    assert noisy.item() == base.item()
    with pytest.raises(ValueError, match="exceeds"):
        fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, 12, vocab_size=V + 1)


def test_bf16_inputs_form_logits_in_fp32():
    """bf16 hidden states and weights: the fused loss must equal the fp64 loss of the same
    bf16 values (logits formed from the exact products, not rounded to bf16 first)."""
    h_s, w_s, h_t, w_t, labels = make_inputs(64, seed=5)
    spec = LossSpec("reverse_kl")
    bf = [x.detach().to(torch.bfloat16) for x in (h_s, w_s, h_t, w_t)]
    exact = reference_distill_loss(bf[0].double() @ bf[1].double().T, bf[2].double() @ bf[3].double().T,
                                   labels, spec, 48, vocab_size=V)
    fused = fused_distill_loss(*bf[:2], *bf[2:], labels, spec, 48, vocab_size=V)
    rounded = reference_distill_loss((bf[0] @ bf[1].T).double(), (bf[2] @ bf[3].T).double(),
                                     labels, spec, 48, vocab_size=V)
    assert fused.dtype == torch.float32
    assert abs(fused.item() - exact.item()) < 1e-5 * exact.item()
    assert abs(rounded.item() - exact.item()) > 10 * abs(fused.item() - exact.item())


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (outputs are every allocation an op makes
    visible, including the gradient computations in the fused forward and in backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


def test_fused_loss_never_materialises_tokens_by_vocab():
    tokens, chunk = 512, 32
    h_s, w_s, h_t, w_t, labels = make_inputs(tokens, seed=6)
    spec = LossSpec("jsd", beta=0.5, hard_label_weight=0.2)
    full = tokens * V
    with LargestTensor() as watch:
        loss = fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, 384, vocab_size=V, chunk_size=chunk)
        loss.backward()
    # Allowed: [chunk x vocab] blocks, [tokens x hidden] gradients, [vocab x hidden] heads.
    assert watch.largest <= max(chunk * (V + 6), tokens * H_T, (V + 6) * H_T) < full
    # The detector does see a full-logit computation.
    with LargestTensor() as watch_ref:
        reference(h_s, w_s, h_t, w_t, labels, spec, 384).backward()
    assert watch_ref.largest >= full


@pytest.mark.parametrize("bad", [dict(kind="tvd"), dict(kind="jsd", beta=0.0), dict(kind="jsd", beta=1.0),
                                 dict(temperature=0.0), dict(hard_label_weight=1.5)])
def test_loss_spec_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        LossSpec(**bad)


def test_matches_cross_entropy_when_hard_labels_only():
    h_s, w_s, h_t, w_t, labels = make_inputs(30, seed=7)
    valid = labels != -100
    loss = fused_distill_loss(h_s, w_s, h_t, w_t, labels, LossSpec(hard_label_weight=1.0), int(valid.sum()),
                              vocab_size=V)
    want = F.cross_entropy((h_s @ w_s.T)[:, :V][valid], labels[valid])
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# The CPU path: GEMMs over whole chunks, per-token work in cache-sized blocks of rows
# ----------------------------------------------------------------------------------------------

def small_row_blocks(monkeypatch, rows: int, vocab: int = V, itemsize: int = 8):
    """Make :func:`distill.train.losses.elementwise_rows` give ``rows`` rows per block."""
    import distill.train.losses as losses

    monkeypatch.setattr(losses, "ELEMENTWISE_BLOCK_BYTES", rows * vocab * itemsize)
    assert losses.elementwise_rows(vocab, torch.float64) == rows


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-b{s.beta}-T{s.temperature}-w{s.hard_label_weight}")
@pytest.mark.parametrize("skip_ignored", [True, False], ids=["gather", "mask"])
def test_row_blocks_inside_chunks_equal_the_reference(monkeypatch, spec, skip_ignored):
    """Blocks of 3 rows inside chunks of 8 (37 rows: the last chunk and the last block shorter):
    value and gradients equal the full-logit reference, ignored rows and padded vocabulary rows
    get exactly zero gradient, and the loss does not depend on the block size (beyond the last bits, see
    :func:`assert_same_up_to_simd_tails`)."""
    h_s, w_s, h_t, w_t, labels = make_inputs(37, seed=21)
    count = int((labels != -100).sum())
    want = (reference(h_s, w_s, h_t, w_t, labels, spec, count),)
    want += torch.autograd.grad(want[0], [h_s, w_s])
    results = {}
    for rows in (3, 1, 64):
        small_row_blocks(monkeypatch, rows)
        loss = fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, count, vocab_size=V, chunk_size=8,
                                  skip_ignored=skip_ignored)
        results[rows] = (loss.detach(), *torch.autograd.grad(loss, [h_s, w_s]))
    for got, ref in zip(results[3], want):
        torch.testing.assert_close(got, ref.detach(), rtol=1e-11, atol=1e-13)
    assert torch.count_nonzero(results[3][1][labels == -100]) == 0
    assert torch.count_nonzero(results[3][2][V:]) == 0
    for rows in (1, 64):  # per-token terms are summed once per chunk: the block size changes no sum's order
        for a, b in zip(results[rows], results[3]):
            assert_same_up_to_simd_tails(a, b)


def test_cpu_default_chunk_and_block_sizes():
    import distill.train.losses as losses

    # Each of the two [chunk x V] buffers: V x H / 2 elements, within 2^24 .. 2^27.
    assert losses.cpu_chunk_size(128256, 2048) == 1024 and losses.cpu_chunk_size(128256, 512) == 256
    assert losses.cpu_chunk_size(32000, 256) == 512 and losses.cpu_chunk_size(32000, 8192) == 4096
    assert losses.cpu_chunk_size(10, 16) == 4096 and losses.cpu_chunk_size(10 ** 8, 4096) == 16
    assert losses.cpu_chunk_size(2 ** 24 // 40, 16) == 40       # below 64 rows: a multiple of 8
    rows = losses.elementwise_rows(128256)
    assert rows >= 1 and rows * 128256 * 4 <= max(losses.ELEMENTWISE_BLOCK_BYTES, 128256 * 4)
    assert losses.ELEMENTWISE_BLOCK_BYTES <= 16 << 20
    assert losses.elementwise_rows(10 ** 9) == 1
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    eager, compiled = losses.FusedOptions(), losses.FusedOptions(compile=True)
    assert losses.resolve_chunk_size(None, 128256, 2048, eager, cpu) == 1024
    assert losses.resolve_chunk_size(None, 128256, 2048, compiled, cpu) == losses.default_chunk_size(128256)
    assert losses.resolve_chunk_size(None, 128256, 2048, eager, cuda) == losses.default_chunk_size(128256)
    assert losses.resolve_chunk_size(100, 128256, 2048, eager, cpu) == 100
    bf16 = losses.FusedOptions(matmul_dtype=torch.bfloat16)  # bf16 operands: the chunked GPU path
    assert losses.resolve_chunk_size(None, 128256, 2048, bf16, cpu) == losses.default_chunk_size(128256, torch.bfloat16)


class LargeAllocations(TorchDispatchMode):
    """Counts op outputs of shape [at least ``rows`` x ``width``] whose storage is new (not an
    input's, as with ``out=`` or in-place ops): the logit-sized allocations a computation makes."""

    def __init__(self, rows: int, width: int):
        super().__init__()
        self.rows, self.width, self.count = rows, width, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs or {}))
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(item, torch.Tensor) and item.dim() == 2 and item.shape[1] == self.width
                    and item.shape[0] >= self.rows and item.untyped_storage().data_ptr() not in inputs):
                self.count += 1
        return out


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[3], SPECS[9]], ids=lambda s: s.kind)
def test_cpu_path_allocates_its_chunk_sized_logit_buffers_once(monkeypatch, spec):
    """Six chunks of 16 rows, blocks of 2 rows: the student's and the teacher's [chunk x V] logits
    are each allocated once and reused (a fresh allocation per chunk costs page faults on a CPU);
    the per-token work allocates nothing of a chunk's size."""
    small_row_blocks(monkeypatch, 2)
    h_s, w_s, h_t, w_t, labels = make_inputs(96, seed=22)
    with LargeAllocations(16, V) as watch:
        fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, 70, vocab_size=V, chunk_size=16,
                           skip_ignored=False).backward()
    assert watch.count == 2
    with LargeAllocations(16, V) as watch_ref:  # the detector counts a full-logit computation's
        reference(h_s, w_s, h_t, w_t, labels, spec, 70).backward()
    assert watch_ref.count >= 6
