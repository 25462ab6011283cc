"""Distillation losses: a plain full-logit reference and the fused, chunked default.

Notation, per token: z_s, z_t are the student's and teacher's logits over the first V entries
of the vocabulary (rows past V are embedding padding and are left out of every softmax);
T is the temperature; p = softmax(z_s / T), q = softmax(z_t / T).

* ``forward_kl``: KL(q || p) = sum q (log q - log p)   (mass-covering; the classic KD loss)
* ``reverse_kl``: KL(p || q) = sum p (log p - log q)   (mode-seeking)
* ``jsd``: generalized Jensen-Shannon with weight beta in (0, 1) (Agarwal et al., GKD):
  m = beta q + (1 - beta) p,  JSD_beta = beta KL(q || m) + (1 - beta) KL(p || m).
  beta = 0.5 is the symmetric JSD; JSD_beta / beta tends to forward KL as beta -> 0.

Temperature: logits are divided by T and the divergence is multiplied by T^2 (Hinton et al.),
so gradient magnitudes do not shrink as T grows. The optional hard-label term is the student's
cross-entropy on the next token at T = 1. Per valid token:

    loss_i = (1 - w) * T^2 * D(q_i, p_i) + w * CE(z_s_i, y_i),   w = hard_label_weight

Normalisation: positions whose label is -100 are ignored; the loss returned is the SUM of loss_i
over this call's valid tokens divided by ``num_valid_tokens_global``, the count of valid tokens
in the whole optimizer step (all gradient-accumulation micro-steps, all ranks). Summing the
micro-step losses of every rank then gives the mean over the global batch, whatever its split.

Precision: logits are computed and reduced in fp32 (fp64 when the inputs are fp64), never
rounded to bf16 first. By default hidden states and head weights are cast up before the matmul;
with ``matmul_dtype=torch.bfloat16`` (the GPU fast path) they enter the GEMM as bf16 and the
products are accumulated and returned in fp32, which gives the logits of the bf16 operands
exactly up to summation order. The logit gradient then enters the two gradient GEMMs as bf16.

Host syncs: with ``skip_ignored=False`` (the CUDA default) nothing in the loss waits for the
GPU; the count of valid tokens may be a device tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F

from distill.data.training_data import IGNORE_INDEX

LossKind = Literal["forward_kl", "reverse_kl", "jsd"]
Count = Union[int, float, torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    """What to optimise. ``beta`` is used by ``jsd`` only."""

    kind: LossKind = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    hard_label_weight: float = 0.0

    def __post_init__(self):
        if self.kind not in ("forward_kl", "reverse_kl", "jsd"):
            raise ValueError(f"loss kind: expected forward_kl, reverse_kl or jsd, got {self.kind!r}")
        if self.kind == "jsd" and not 0.0 < self.beta < 1.0:
            raise ValueError(f"beta: expected 0 < beta < 1 for jsd, got {self.beta}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        if not 0.0 <= self.hard_label_weight <= 1.0:
            raise ValueError(f"hard_label_weight: expected 0..1, got {self.hard_label_weight}")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _divide(total: torch.Tensor, count: Count) -> torch.Tensor:
    """total / count with count clamped to >= 1 (a step with no valid token gives 0)."""
    if isinstance(count, torch.Tensor):
        return total / count.to(device=total.device, dtype=total.dtype).clamp_min(1)
    return total / max(float(count), 1.0)


def _scale_(grad: torch.Tensor, grad_output: torch.Tensor, count: Count) -> torch.Tensor:
    """grad * grad_output / count in place (count clamped to >= 1; no host sync for a tensor)."""
    grad.mul_(grad_output.to(grad.dtype))
    if isinstance(count, torch.Tensor):
        return grad.div_(count.to(device=grad.device, dtype=grad.dtype).clamp_min(1))
    return grad.div_(max(float(count), 1.0))


# ----------------------------------------------------------------------------------------------
# Reference: full logits, autograd, written to be read against the formulas above.
# ----------------------------------------------------------------------------------------------

def reference_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         spec: LossSpec) -> torch.Tensor:
    """Per-row divergence D(q, p) at temperature T (not multiplied by T^2). Shape [..., V] -> [...]."""
    log_p = F.log_softmax(student_logits / spec.temperature, dim=-1)
    log_q = F.log_softmax(teacher_logits / spec.temperature, dim=-1)
    p, q = log_p.exp(), log_q.exp()
    if spec.kind == "forward_kl":
        return (q * (log_q - log_p)).sum(-1)
    if spec.kind == "reverse_kl":
        return (p * (log_p - log_q)).sum(-1)
    beta = spec.beta
    log_m = torch.log(beta * q + (1 - beta) * p)
    return beta * (q * (log_q - log_m)).sum(-1) + (1 - beta) * (p * (log_p - log_m)).sum(-1)


def reference_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           labels: torch.Tensor, spec: LossSpec, num_valid_tokens_global: Count,
                           vocab_size: Optional[int] = None) -> torch.Tensor:
    """The loss from full logits [..., V_s] and [..., V_t]; labels [...] with -100 = ignore.

    Only the first ``vocab_size`` logits of each model are used (default: the smaller width).
    This materialises the whole [tokens x vocab] logits; it is the yardstick, not for training.
    """
    vocab = vocab_size or min(student_logits.shape[-1], teacher_logits.shape[-1])
    dtype = _compute_dtype(student_logits, teacher_logits)
    z_s = student_logits[..., :vocab].reshape(-1, vocab).to(dtype)
    z_t = teacher_logits[..., :vocab].reshape(-1, vocab).to(dtype).detach()
    labels = labels.reshape(-1)
    valid = labels != IGNORE_INDEX
    z_s, z_t, labels = z_s[valid], z_t[valid], labels[valid]
    w = spec.hard_label_weight
    per_token = (1 - w) * spec.temperature ** 2 * reference_divergence(z_s, z_t, spec)
    if w > 0:
        per_token = per_token + w * F.cross_entropy(z_s, labels, reduction="none")
    return _divide(per_token.sum(), num_valid_tokens_global)


# ----------------------------------------------------------------------------------------------
# Fused: lm_head + loss per chunk of tokens, gradients computed in closed form in the forward.
# ----------------------------------------------------------------------------------------------

def hard_label_terms(z_s: torch.Tensor, labels: torch.Tensor, log_p: Optional[torch.Tensor],
                     temperature: float, need_grad: bool):
    """Per-token cross-entropy [n] at T = 1 and its gradient wrt z_s (softmax - onehot).
    ``log_p`` is log_softmax(z_s / T) when already at hand (reused when T = 1)."""
    log_p1 = log_p if (log_p is not None and temperature == 1) else F.log_softmax(z_s, dim=-1)
    loss = -log_p1.gather(1, labels[:, None]).squeeze(1)
    grad = None
    if need_grad:
        grad = log_p1.exp()
        grad[torch.arange(len(labels), device=labels.device), labels] -= 1
    return loss, grad


def _chunk_loss_and_grad(z_s: torch.Tensor, z_t: Optional[torch.Tensor], labels: torch.Tensor,
                         spec: LossSpec, need_grad: bool):
    """Per-token loss [n] and d(sum of losses)/d z_s [n, V] for one chunk of logits.

    Closed forms, with u = z_s / T, log p = log_softmax(u), log q = log_softmax(z_t / T):
      forward KL:  dD/du = p - q
      reverse KL:  dD/du = p * (log p - log q - D)
      JSD_beta:    dD/du = p * (g - <p, g>),  g = (1 - beta)(log p - log m)
    and d/dz_s = (1/T) d/du. Cross-entropy at T = 1: softmax(z_s) - onehot(y).
    """
    temperature, w = spec.temperature, spec.hard_label_weight
    log_p = F.log_softmax(z_s / temperature, dim=-1)
    grad = None
    if w < 1:
        p = log_p.exp()
        log_q = F.log_softmax(z_t / temperature, dim=-1)
        if spec.kind == "forward_kl":
            q = log_q.exp()
            divergence = (q * (log_q - log_p)).sum(-1)
            d_u = (p - q) if need_grad else None
        elif spec.kind == "reverse_kl":
            log_ratio = log_p - log_q
            divergence = (p * log_ratio).sum(-1)
            d_u = p * (log_ratio - divergence[:, None]) if need_grad else None
        else:
            beta = spec.beta
            log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log(1 - beta))
            q = log_q.exp()
            divergence = (beta * (q * (log_q - log_m)).sum(-1)
                          + (1 - beta) * (p * (log_p - log_m)).sum(-1))
            if need_grad:
                g = (1 - beta) * (log_p - log_m)
                d_u = p * (g - (p * g).sum(-1, keepdim=True))
        scale = (1 - w) * temperature ** 2
        loss = scale * divergence
        if need_grad:
            grad = d_u * (scale / temperature)
    else:
        loss = torch.zeros(z_s.shape[0], dtype=z_s.dtype, device=z_s.device)
    if w > 0:
        ce, d_ce = hard_label_terms(z_s, labels, log_p, temperature, need_grad)
        loss = loss + w * ce
        if need_grad:
            grad = w * d_ce if grad is None else grad + w * d_ce
    return loss, grad


def forward_kl_in_place(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float, scale: float,
                        need_grad: bool) -> torch.Tensor:
    """The forward-KL terms of :func:`_chunk_loss_and_grad` (no hard labels) with fewer passes:
    returns scale * KL(q || p) per row and leaves ``scale / T * (p - q)`` in ``z_s``; both blocks
    are scratch (``z_t`` is overwritten too). The same operations on the same values as there,
    so the same bits."""
    if temperature != 1:
        z_s.div_(temperature)
        z_t.div_(temperature)
    log_p = F.log_softmax(z_s, dim=-1)
    log_q = F.log_softmax(z_t, dim=-1)
    q = log_q.exp()
    divergence = log_q.sub_(log_p).mul_(q).sum(-1)
    if need_grad:
        torch.exp(log_p, out=z_s).sub_(q).mul_(scale / temperature)
    return scale * divergence


def masked_sum_and_grad(loss: torch.Tensor, grad: Optional[torch.Tensor], valid: Optional[torch.Tensor],
                        grad_dtype: torch.dtype):
    """Sum of the per-token losses over valid rows, and the gradient with ignored rows zeroed and
    cast to ``grad_dtype`` (the matmul operand dtype). ``valid`` None: every row counts."""
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        if grad is not None:
            grad = torch.where(valid[:, None], grad, torch.zeros_like(grad))
    return loss.sum(), (grad.to(grad_dtype) if grad is not None else None)


def _online_chunk(z_s, z_t, labels, valid, spec: LossSpec, need_grad: bool, grad_dtype: torch.dtype):
    """One chunk of the online loss: (sum of valid losses, gradient wrt z_s in ``grad_dtype``).
    The unit :func:`torch.compile` fuses on GPU (one pass over the [chunk x V] blocks)."""
    if valid is not None:
        labels = labels.clamp_min(0)  # ignored rows: any index, their terms are zeroed
    loss, grad = _chunk_loss_and_grad(z_s, z_t, labels, spec, need_grad)
    return masked_sum_and_grad(loss, grad, valid, grad_dtype)


COMPILE_BACKEND = "inductor"
"""Backend of every torch.compile flopgate makes (tests use "aot_eager": same tracing, no codegen)."""

_COMPILED: dict = {}


def compiled(fn):
    """``torch.compile(fn)``, made once per function and backend (shapes may vary: the last
    chunk is shorter)."""
    key = (fn, COMPILE_BACKEND)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=None, backend=COMPILE_BACKEND)
    return _COMPILED[key]


def _has_out_dtype_matmul() -> bool:
    try:
        return "dtype" in torch.ops.aten.mm.overloads() and "dtype_out" in torch.ops.aten.addmm.overloads()
    except (AttributeError, RuntimeError):
        return False


_OUT_DTYPE_MATMUL = _has_out_dtype_matmul()
_OUT_DTYPE_WORKS: dict = {}


def _out_dtype_works(device: torch.device) -> bool:
    """Whether fp32-output bf16 GEMMs run on this CUDA device (tried once per device; an old
    torch or GPU falls back to casting the operands up)."""
    if not _OUT_DTYPE_MATMUL:
        return False
    if device not in _OUT_DTYPE_WORKS:
        try:
            a = torch.ones(16, 16, dtype=torch.bfloat16, device=device)
            acc = torch.zeros(16, 16, dtype=torch.float32, device=device)
            torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
            _OUT_DTYPE_WORKS[device] = bool(torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
                                            and acc[0, 0].item() == 16.0)
        except (RuntimeError, TypeError, NotImplementedError):
            _OUT_DTYPE_WORKS[device] = False
    return _OUT_DTYPE_WORKS[device]


def matmul(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """a @ b with the products summed and returned in ``out_dtype`` (fp32 or fp64).

    bf16 operands on CUDA use cuBLAS's fp32-output GEMM (bf16 tensor cores, nothing rounded to
    bf16 after the product); elsewhere the operands are cast up first, which gives the same
    values (a bf16 number is exact in fp32). ``out``: a contiguous ``out_dtype`` buffer of the
    result's shape to write into (reused across chunks: no fresh allocation, no page faults)."""
    if a.dtype != out_dtype and a.is_cuda and _out_dtype_works(a.device):
        return torch.mm(a, b, out_dtype=out_dtype)
    if out is not None:
        return torch.mm(a.to(out_dtype), b.to(out_dtype), out=out)
    return torch.mm(a.to(out_dtype), b.to(out_dtype))


def accumulate_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b, accumulated in acc's dtype (fp32 or fp64) whatever the operands' dtype."""
    if a.dtype != acc.dtype and a.is_cuda and _out_dtype_works(a.device):
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


@dataclass(frozen=True)
class FusedOptions:
    """How the fused loss runs; none of these change the function it computes.

    * ``matmul_dtype``: dtype of the GEMM operands. None: the compute dtype (fp32, or fp64 for
      fp64 inputs). ``torch.bfloat16``: hidden states, heads and the logit gradient enter the
      matmuls as bf16 (what autocast gives the plain lm_head) while products are accumulated
      and returned in fp32: logits are never rounded to bf16. The fast choice on GPU.
    * ``skip_ignored``: gather the valid rows first (ignored positions cost no matmul, at the
      price of one host sync for their count), or run every row and zero the ignored ones
      (no host sync). None: skip on CPU, mask on CUDA.
    * ``compile``: run the per-chunk elementwise work through :func:`torch.compile`.
    """

    matmul_dtype: Optional[torch.dtype] = None
    skip_ignored: Optional[bool] = None
    compile: bool = False


def run_fused_chunks(h_s: torch.Tensor, w_s: torch.Tensor, labels: torch.Tensor, vocab: int,
                     chunk_size: int, need_grad: bool, options: FusedOptions, chunk_terms):
    """The chunk loop shared by the online and the cached-target losses.

    ``chunk_terms(rows, z_s, labels_rows, valid_rows, grad_dtype)`` returns the chunk's summed
    loss and its gradient wrt the student logits z_s [rows x vocab] (valid_rows is None when
    only valid rows are passed). ``z_s`` is scratch owned by this loop: ``chunk_terms`` may
    overwrite it with the gradient and return it (the CPU path does, see :func:`blockwise_terms`).
    Returns (summed loss, d/d h_s, d/d w_s[:vocab]) in the compute dtype; the gradients are those
    of the SUM, not yet divided by the token count.

    Each chunk costs three GEMMs (logits, d/d h_s, and d/d w_s accumulated into one [V x H]
    buffer). The student logits of every chunk are written into one reused [chunk x V] buffer
    when the GEMM runs in the compute dtype (no fresh allocation, whose page faults cost as much
    as the arithmetic on a CPU), and the first chunk writes d/d w_s instead of adding to zeros.
    """
    out_dtype = _compute_dtype(h_s, w_s)
    op_dtype = options.matmul_dtype or out_dtype
    skip = options.skip_ignored if options.skip_ignored is not None else not h_s.is_cuda
    with torch.autocast(device_type=h_s.device.type, enabled=False):
        head = w_s.detach()[:vocab].to(op_dtype)
        hidden = h_s.detach()
        tokens = hidden.shape[0]
        total = torch.zeros((), dtype=out_dtype, device=h_s.device)
        grad_h = torch.zeros(hidden.shape, dtype=out_dtype, device=h_s.device) if need_grad else None
        grad_w = torch.empty(head.shape, dtype=out_dtype, device=h_s.device) if need_grad else None
        if skip:
            index = (labels != IGNORE_INDEX).nonzero().squeeze(1)
            blocks = [index[start:start + chunk_size] for start in range(0, index.numel(), chunk_size)]
        else:
            blocks = [slice(start, min(start + chunk_size, tokens)) for start in range(0, tokens, chunk_size)]
        logits = RowBuffer(vocab, out_dtype, h_s.device) if op_dtype == out_dtype else None
        if need_grad and not blocks:
            grad_w.zero_()
        for number, rows in enumerate(blocks):
            hs = hidden[rows].to(op_dtype)
            z_s = matmul(hs, head.T, out_dtype, out=logits.rows(hs.shape[0]) if logits is not None else None)
            rows_labels = labels[rows]
            valid = None if skip else rows_labels != IGNORE_INDEX
            loss_sum, d_z = chunk_terms(rows, z_s, rows_labels, valid, op_dtype)
            del z_s
            total += loss_sum
            if need_grad:
                if skip:
                    grad_h.index_copy_(0, rows, matmul(d_z, head, out_dtype))
                else:
                    grad_h[rows] = matmul(d_z, head, out_dtype)
                if number == 0 and d_z.dtype == out_dtype:
                    matmul(d_z.T, hs, out_dtype, out=grad_w)
                else:
                    if number == 0:
                        grad_w.zero_()
                    accumulate_matmul(grad_w, d_z.T, hs)
            del d_z
    return total, grad_h, grad_w


class RowBuffer:
    """One [rows x V] buffer reused by every chunk of a call: ``rows(n)`` is a contiguous view of
    its first n rows (allocated at the first chunk's size, which is the largest)."""

    def __init__(self, vocab: int, dtype: torch.dtype, device: torch.device):
        self.vocab, self.dtype, self.device, self.buffer = vocab, dtype, device, None

    def rows(self, n: int) -> torch.Tensor:
        if self.buffer is None or self.buffer.shape[0] < n:
            self.buffer = torch.empty(n, self.vocab, dtype=self.dtype, device=self.device)
        return self.buffer[:n]


def blockwise_terms(z_s: torch.Tensor, labels: torch.Tensor, valid: Optional[torch.Tensor], need_grad: bool,
                    rows_per_block: int, terms):
    """A chunk's per-token work in blocks of ``rows_per_block`` rows, small enough to stay in a
    core's cache (:func:`elementwise_rows`): the CPU path. ``terms(block, z_s_block, labels_block)``
    gives the block's per-token loss [b] and d(loss)/d z_s [b x V] (or None), computed from
    ``z_s_block`` before it is overwritten with that gradient (or ``z_s_block`` itself, already
    holding it). Returns (sum of the valid rows' losses, z_s now holding the gradient, ignored
    rows zeroed). The per-token losses are summed once per chunk, so the value does not depend
    on ``rows_per_block``."""
    n = z_s.shape[0]
    per_token = torch.empty(n, dtype=z_s.dtype, device=z_s.device)
    if valid is not None:
        labels = labels.clamp_min(0)  # ignored rows: any index, their terms are zeroed
    for start in range(0, n, rows_per_block):
        block = slice(start, min(start + rows_per_block, n))
        loss, grad = terms(block, z_s[block], labels[block])
        per_token[block] = loss
        if need_grad and grad.data_ptr() != z_s[block].data_ptr():
            z_s[block].copy_(grad)
        del grad
    if valid is not None:
        per_token = torch.where(valid, per_token, torch.zeros_like(per_token))
        if need_grad:
            z_s.masked_fill_(~valid[:, None], 0)
    return per_token.sum(), (z_s if need_grad else None)


class _FusedHeadLoss(torch.autograd.Function):
    """Forward computes the loss and, if needed, its gradients wrt the student's hidden states
    and head weight chunk by chunk; backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h_s, w_s, labels, num_valid, vocab, chunk_size, need_grad, options, chunk_terms):
        total, grad_h, grad_w = run_fused_chunks(h_s, w_s, labels, vocab, chunk_size, need_grad, options,
                                                 chunk_terms)
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w)
            ctx.meta = (num_valid, h_s.dtype, w_s.dtype, w_s.shape[0])
        return _divide(total, num_valid)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grad_h, grad_w = ctx.saved_tensors
        num_valid, h_dtype, w_dtype, w_rows = ctx.meta
        # In place: these buffers are this call's own and backward runs once.
        grad_h = _scale_(grad_h, grad_output, num_valid).to(h_dtype)
        grad_w = _scale_(grad_w, grad_output, num_valid)
        if w_rows > grad_w.shape[0]:  # padded vocabulary rows get no gradient
            grad_w = F.pad(grad_w, (0, 0, 0, w_rows - grad_w.shape[0]))
        return grad_h, grad_w.to(w_dtype), None, None, None, None, None, None, None


def default_chunk_size(vocab: int, matmul_dtype: Optional[torch.dtype] = None) -> int:
    """Tokens per chunk on CUDA (and for :func:`distill.train.teacher_cache.teacher_topk`). fp32/fp64
    operands: a [chunk x V] fp32 block of about 64 MiB (2^24 elements; V = 128k: 128 tokens),
    since a chunk holds about ten such blocks. bf16 operands (the GPU path, compiled): 2^25
    elements (V = 128k: 256 tokens). The compiled chunk holds about 10 bytes per element (fp32
    student and teacher logits, the bf16 logit gradient) beside the fp32 head gradient [V x H_s];
    at V = 128k, H_s = 1024 that is an estimated 0.33 + 0.49 GiB, inside the 1 GiB goal, where
    2^26 would need about 1.1 GiB. Larger chunks re-read and re-write that head gradient fewer
    times; bench/distill_step.py measures 128 to 1024 tokens side by side. Rounded down to a
    multiple of 8, clamped to 16..4096. The CPU path uses :func:`cpu_chunk_size` instead."""
    budget = 1 << (25 if matmul_dtype in (torch.bfloat16, torch.float16) else 24)
    return max(16, min(4096, budget // max(vocab, 1) // 8 * 8))


CPU_CHUNK_ELEMENTS = (1 << 24, 1 << 27)
"""CPU: bounds of one [chunk x V] logit buffer's elements (64 MiB .. 512 MiB in fp32)."""


def cpu_chunk_size(vocab: int, hidden: int) -> int:
    """Tokens per chunk on the CPU path, for a student head [V x H].

    On the CPU path a chunk holds two [chunk x V] buffers (student logits, overwritten by their
    gradient, and the online teacher's logits) and the per-token work runs in cache-sized
    blocks of rows (:func:`elementwise_rows`), so the chunk size only sets the GEMMs' width:
    wider GEMMs run nearer the speed of the reference's [tokens x V] ones, and the [V x H] head
    gradient is read and written once per chunk. Each buffer takes half the head gradient's
    elements, V x H / 2, within :data:`CPU_CHUNK_ELEMENTS`: the two together cost no more memory
    than that gradient, which every method must hold. V = 128,256, H = 2,048: 1,024 tokens
    (2 x 0.5 GiB beside the 1 GiB gradient, where the reference at 2,048 tokens takes about
    10 GiB); H = 512: 256 tokens; V = 32,000, H = 256: 512 tokens. Rounded down to a multiple of
    64 (of 8 below 64), clamped to 16..4096. It depends on nothing but V and H (not on measured
    free memory), since it fixes the order in which the head gradient is summed.
    """
    low, high = CPU_CHUNK_ELEMENTS
    rows = min(high, max(low, vocab * hidden // 2)) // max(vocab, 1)
    return max(16, min(4096, rows // 64 * 64 if rows >= 64 else rows // 8 * 8))


def _cache_bytes(level: int) -> Optional[int]:
    """The size of CPU 0's level-``level`` data or unified cache, from Linux sysfs (None if unknown)."""
    import glob

    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/")):
        try:
            with open(path + "level") as lvl, open(path + "type") as kind, open(path + "size") as size:
                if lvl.read().strip() == str(level) and kind.read().strip() != "Instruction":
                    text = size.read().strip().upper()
                    return int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        except (OSError, ValueError):
            continue
    return None


def _block_bytes() -> int:
    """Bytes of one [rows x V] block of the CPU path's per-token work: a sixth of the last-level
    cache (the work keeps about six blocks live), at most 16 MiB, at least half the L2 cache."""
    l2, l3 = _cache_bytes(2) or (1 << 20), _cache_bytes(3)
    return max(l2 // 2, min(16 << 20, (l3 or 8 << 20) // 6))


ELEMENTWISE_BLOCK_BYTES = _block_bytes()
"""See :func:`_block_bytes`; 16 MiB on the development machine (105 MiB L3)."""


def elementwise_rows(vocab: int, dtype: torch.dtype = torch.float32) -> int:
    """Rows per block of the CPU path's per-token work: [rows x V] blocks of
    :data:`ELEMENTWISE_BLOCK_BYTES` (at least one row). The work makes several temporaries of a
    block's size: blocks that stay in the cache run it faster than [chunk x V] ones streamed from
    memory, and blocks not much smaller keep the number of (thread-synchronised) ops low, which
    matters when other processes share the cores. V = 128,256 in fp32: 32 rows. The block size
    does not change the result (see :func:`blockwise_terms`)."""
    itemsize = torch.finfo(dtype).bits // 8
    return max(1, ELEMENTWISE_BLOCK_BYTES // (max(vocab, 1) * itemsize))


def _blockwise(options: FusedOptions, device: torch.device) -> bool:
    """Whether a call runs the CPU path: per-token work in cache-sized row blocks, eager, GEMM
    operands in the compute dtype (bf16 operands keep the chunked path of the GPU)."""
    return (device.type != "cuda" and not options.compile
            and options.matmul_dtype in (None, torch.float32, torch.float64))


def resolve_chunk_size(chunk_size: Optional[int], vocab: int, hidden: int, options: FusedOptions,
                       device: torch.device) -> int:
    """``chunk_size``, or the default for this path: :func:`cpu_chunk_size` on the CPU path,
    :func:`default_chunk_size` otherwise."""
    if chunk_size:
        return chunk_size
    if _blockwise(options, device):
        return cpu_chunk_size(vocab, hidden)
    return default_chunk_size(vocab, options.matmul_dtype)


def fused_distill_loss(student_hidden: torch.Tensor, student_head: torch.Tensor,
                       teacher_hidden: torch.Tensor, teacher_head: torch.Tensor,
                       labels: torch.Tensor, spec: LossSpec, num_valid_tokens_global: Count,
                       vocab_size: Optional[int] = None,
                       chunk_size: Optional[int] = None, *,
                       matmul_dtype: Optional[torch.dtype] = None,
                       skip_ignored: Optional[bool] = None,
                       compile: bool = False) -> torch.Tensor:
    """The same loss as :func:`reference_distill_loss`, from final hidden states and head weights.

    ``student_hidden`` [..., H_s] and ``teacher_hidden`` [..., H_t] are the models' last hidden
    states (after the final norm); ``student_head`` [V_s, H_s] and ``teacher_head`` [V_t, H_t]
    their lm_head weights (no bias). Gradients flow to ``student_hidden`` and ``student_head``
    only. Peak extra memory is a few [chunk_size x V] blocks plus one [V x H_s] gradient, never
    [tokens x V]. ``matmul_dtype``, ``skip_ignored`` and ``compile``: see :class:`FusedOptions`.

    ``chunk_size`` None: :func:`resolve_chunk_size`. On the CPU path (not CUDA, not compiled) a
    chunk is two reused [chunk x V] logit buffers (student, overwritten by its gradient, and
    teacher: 2 x 0.5 GiB at V = 128k, H = 2k) and the per-token work runs in cache-sized row blocks
    (:func:`blockwise_terms`); bench/loss_speed.py measures it against the reference.
    """
    vocab = vocab_size or min(student_head.shape[0], teacher_head.shape[0])
    if vocab > min(student_head.shape[0], teacher_head.shape[0]):
        raise ValueError(f"vocab_size {vocab} exceeds a head's rows "
                         f"({student_head.shape[0]}, {teacher_head.shape[0]})")
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    flat_labels = labels.reshape(-1).to(h_s.device)
    if not (h_s.shape[0] == h_t.shape[0] == flat_labels.shape[0]):
        raise ValueError(f"token counts differ: student {h_s.shape[0]}, teacher {h_t.shape[0]}, "
                         f"labels {flat_labels.shape[0]}")
    need_grad = torch.is_grad_enabled() and (h_s.requires_grad or student_head.requires_grad)
    options = FusedOptions(matmul_dtype, skip_ignored, compile)
    out_dtype = _compute_dtype(h_s, student_head)
    op_dtype = matmul_dtype or out_dtype
    head_t = teacher_head.detach()[:vocab].to(op_dtype) if spec.hard_label_weight < 1 else None
    chunk_fn = compiled(_online_chunk) if compile else _online_chunk
    blockwise = _blockwise(options, h_s.device)
    rows_per_block = elementwise_rows(vocab, out_dtype)
    teacher_logits = RowBuffer(vocab, out_dtype, h_s.device) if op_dtype == out_dtype else None
    # Pure forward KL writes into the logit buffers it owns (the teacher's block is scratch too).
    in_place = spec.kind == "forward_kl" and spec.hard_label_weight == 0 and teacher_logits is not None

    def chunk_terms(rows, z_s, rows_labels, valid, grad_dtype):
        z_t = None
        if head_t is not None:
            with torch.autocast(device_type=h_s.device.type, enabled=False):
                hidden_t = h_t.detach()[rows].to(op_dtype)
                z_t = matmul(hidden_t, head_t.T, out_dtype,
                             out=teacher_logits.rows(hidden_t.shape[0]) if teacher_logits is not None else None)
        if blockwise and grad_dtype == z_s.dtype:
            if in_place:
                def terms(block, z_s_block, labels_block):
                    loss = forward_kl_in_place(z_s_block, z_t[block], spec.temperature, spec.temperature ** 2,
                                               need_grad)
                    return loss, z_s_block  # the gradient is already in place
            else:
                def terms(block, z_s_block, labels_block):
                    return _chunk_loss_and_grad(z_s_block, None if z_t is None else z_t[block], labels_block,
                                                spec, need_grad)
            return blockwise_terms(z_s, rows_labels, valid, need_grad, rows_per_block, terms)
        return chunk_fn(z_s, z_t, rows_labels, valid, spec, need_grad, grad_dtype)

    return _FusedHeadLoss.apply(h_s, student_head, flat_labels, num_valid_tokens_global, vocab,
                                resolve_chunk_size(chunk_size, vocab, h_s.shape[1], options, h_s.device), need_grad,
                                options,
                                chunk_terms)
