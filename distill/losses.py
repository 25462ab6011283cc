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

Precision: logits are computed and reduced in fp32 (fp64 when the inputs are fp64): hidden
states and head weights are cast up before the matmul, never the bf16 logits after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
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

def _chunk_loss_and_grad(z_s: torch.Tensor, z_t: torch.Tensor, labels: torch.Tensor,
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
    p = log_p.exp()
    grad = None
    if w < 1:
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
        log_p1 = log_p if temperature == 1 else F.log_softmax(z_s, dim=-1)
        loss = loss + w * -log_p1.gather(1, labels[:, None]).squeeze(1)
        if need_grad:
            d_ce = log_p1.exp()
            d_ce[torch.arange(len(labels), device=labels.device), labels] -= 1
            grad = w * d_ce if grad is None else grad + w * d_ce
    return loss, grad


class _FusedDistillLoss(torch.autograd.Function):
    """Forward computes the loss and, if needed, its gradients wrt student hidden states and
    head weight chunk by chunk; backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, labels, spec, num_valid, vocab, chunk_size, need_grad):
        dtype = _compute_dtype(h_s, w_s)
        with torch.autocast(device_type=h_s.device.type, enabled=False):
            head_s = w_s.detach()[:vocab].to(dtype)
            head_t = w_t.detach()[:vocab].to(dtype)
            rows_valid = (labels != IGNORE_INDEX).nonzero().squeeze(1)
            total = torch.zeros((), dtype=dtype, device=h_s.device)
            grad_h = torch.zeros(h_s.shape, dtype=dtype, device=h_s.device) if need_grad else None
            grad_w = torch.zeros(head_s.shape, dtype=dtype, device=h_s.device) if need_grad else None
            for start in range(0, rows_valid.numel(), chunk_size):
                rows = rows_valid[start:start + chunk_size]
                hs = h_s.detach()[rows].to(dtype)
                z_s = hs @ head_s.T
                z_t = (h_t.detach()[rows].to(dtype) @ head_t.T) if spec.hard_label_weight < 1 else None
                loss, d_z = _chunk_loss_and_grad(z_s, z_t, labels[rows], spec, need_grad)
                total += loss.sum()
                if need_grad:
                    grad_h.index_copy_(0, rows, d_z @ head_s)
                    grad_w.addmm_(d_z.T, hs)
            loss_value = _divide(total, num_valid)
        if need_grad:
            ctx.save_for_backward(_divide(grad_h, num_valid), _divide(grad_w, num_valid))
            ctx.meta = (h_s.dtype, w_s.dtype, w_s.shape[0])
        return loss_value

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype, w_rows = ctx.meta
        grad_h = (grad_h * grad_output).to(h_dtype)
        grad_w = grad_w * grad_output
        if w_rows > grad_w.shape[0]:  # padded vocabulary rows get no gradient
            grad_w = F.pad(grad_w, (0, 0, 0, w_rows - grad_w.shape[0]))
        return grad_h, grad_w.to(w_dtype), None, None, None, None, None, None, None, None


def default_chunk_size(vocab: int) -> int:
    """Tokens per chunk: a [chunk x V] fp32 block of about 64 MiB (2^24 elements), 16..4096.
    A chunk's loss and gradient hold about ten such blocks at once (V = 128k: 130 tokens)."""
    return max(16, min(4096, (1 << 24) // max(vocab, 1)))


def fused_distill_loss(student_hidden: torch.Tensor, student_head: torch.Tensor,
                       teacher_hidden: torch.Tensor, teacher_head: torch.Tensor,
                       labels: torch.Tensor, spec: LossSpec, num_valid_tokens_global: Count,
                       vocab_size: Optional[int] = None,
                       chunk_size: Optional[int] = None) -> torch.Tensor:
    """The same loss as :func:`reference_distill_loss`, from final hidden states and head weights.

    ``student_hidden`` [..., H_s] and ``teacher_hidden`` [..., H_t] are the models' last hidden
    states (after the final norm); ``student_head`` [V_s, H_s] and ``teacher_head`` [V_t, H_t]
    their lm_head weights (no bias). Gradients flow to ``student_hidden`` and ``student_head``
    only. Peak extra memory is a few [chunk_size x V] blocks plus one [V x H_s] gradient, never
    [tokens x V]. Ignored positions (label -100) cost no matmul.
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
    return _FusedDistillLoss.apply(h_s, student_head, h_t, teacher_head, flat_labels, spec,
                                   num_valid_tokens_global, vocab,
                                   chunk_size or default_chunk_size(vocab), need_grad)
