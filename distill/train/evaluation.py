"""Held-out evaluation metrics, summed per position (the loop divides by the positions scored).

For the positions whose label is not ``IGNORE_INDEX``:

* ``ce``: the student's cross-entropy of the label (nats), i.e. next-token loss on the data
  (for sequence KD: on the teacher's answer tokens);
* with a teacher (logit KD, online): ``kl``: KL(teacher || student) of the next-token
  distributions at temperature 1 (nats), and ``top1_agreement``: the student's most likely
  token is the teacher's;
* without one (sequence KD): ``top1_agreement``: the student's most likely token is the label,
  the token the teacher wrote.

Logits are formed in fp32 over the first ``vocab`` rows of each head, ``chunk`` positions at a
time, so memory stays at ``chunk x vocab`` whatever the batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from distill.data.training_data import IGNORE_INDEX


def token_metric_sums(student_hidden: torch.Tensor, student_head: torch.Tensor, labels: torch.Tensor, vocab: int, *,
                      teacher_hidden: Optional[torch.Tensor] = None, teacher_head: Optional[torch.Tensor] = None,
                      chunk: int = 1024) -> dict[str, torch.Tensor]:
    """``{"tokens", "ce", "top1_agreement"[, "kl"]}`` summed over the labelled positions."""
    keep = labels.reshape(-1) != IGNORE_INDEX
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])[keep]
    target = labels.reshape(-1)[keep]
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])[keep] if teacher_hidden is not None else None
    sums = {"tokens": torch.tensor(float(target.numel()), dtype=torch.float64)}
    ce = agree = kl = torch.zeros((), dtype=torch.float64, device=hs.device)
    with torch.autocast(device_type=hs.device.type, enabled=False):
        for start in range(0, target.numel(), chunk):
            rows = slice(start, start + chunk)
            log_s = F.log_softmax(hs[rows].float() @ student_head[:vocab].float().T, dim=-1)
            ce = ce + F.nll_loss(log_s, target[rows], reduction="sum").double()
            if ht is None:
                agree = agree + (log_s.argmax(-1) == target[rows]).sum().double()
                continue
            log_t = F.log_softmax(ht[rows].float() @ teacher_head[:vocab].float().T, dim=-1)
            kl = kl + (log_t.exp() * (log_t - log_s)).sum().double()
            agree = agree + (log_s.argmax(-1) == log_t.argmax(-1)).sum().double()
    sums.update(ce=ce, top1_agreement=agree)
    if ht is not None:
        sums["kl"] = kl
    return sums
