"""Cross-tokenizer logit distillation: a teacher and a student whose tokenizers differ, on one text.

Method: span-aligned positions (the alignment TRL's GOLD trainer uses) with a hybrid loss: an
exact KL over the tokens both vocabularies spell alike, and Universal Logit Distillation
(Boizard et al. 2024, arXiv:2402.12030) over the rest. Why both: ULD compares the two
distributions sorted by probability, so it needs no vocabulary map, but it is blind to WHICH
token is likely (any permutation of the student's probabilities scores the same); the matched
part carries that. Byte-level BPE vocabularies share every byte and most common merges, so most
of the mass is usually matched; two unrelated vocabularies fall back to ULD.

Alignment. Each token of each tokenization gets a *boundary*: the character (in the packed text
stream) where the text it predicts from ends, i.e. the end of the token before it
(:func:`token_boundaries`). A student position ``i`` and a teacher position ``j`` are aligned
when the tokens they predict (``i + 1``, ``j + 1``) begin at the same boundary: both models then
predict what follows the same text. Positions inside a token of the other tokenization are not
aligned (they get the hard-label term only). A token that begins inside a character (a byte-level
piece of a multi-byte character) is never a boundary. Documents are laid end to end with one
virtual character between them, which each tokenizer's end-of-sequence token stands for (both
EOS tokens then align, and are matched to each other).

Rows. The student trains on packed rows of ``seq_len`` student tokens; the teacher reads its own
tokens of the same characters, from the first teacher boundary at or after the row's start, in a
row of :func:`audit.compute.estimate.teacher_row_tokens` tokens (right padded; a longer span is
cut, and its last positions are not aligned). That fixed length is what the audit counts.

Loss per aligned position, temperature T (p: student, q: teacher; ``M``: matched pairs):

    KL_M  = sum_{m in M} q~_m log(q~_m / p~_m)     (q~, p~: q and p renormalised over the matched tokens)
    ULD   = sum_k | sort(q)_k - sort(p)_k |          (probabilities sorted descending, the shorter zero padded)
    loss  = (1 - w) T^2 (KL_M + ULD)  [aligned positions]  +  w CE  [every labelled position]

summed and divided by the step's labelled student positions (as :mod:`distill.train.losses`).
Logits are formed in fp32 over the aligned positions only, :data:`DEFAULT_CHUNK` positions at a
time and recomputed in the backward, so memory holds one chunk x both vocabularies; ULD sorts
both distributions at every aligned position (V log V each).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.cross_tokenized import TokenStream
from distill.data.training_data import IGNORE_INDEX

def aligned_positions(student_next: np.ndarray, teacher_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(student positions, teacher positions) that predict tokens starting at the same boundary.
    ``*_next[k]``: the boundary of the token position ``k`` predicts (non-decreasing). Only the
    first token at a boundary counts on each side."""
    s_first = np.r_[True, student_next[1:] != student_next[:-1]] if len(student_next) else np.zeros(0, bool)
    t_first = np.r_[True, teacher_next[1:] != teacher_next[:-1]] if len(teacher_next) else np.zeros(0, bool)
    s_idx, t_idx = np.flatnonzero(s_first), np.flatnonzero(t_first)
    _, si, ti = np.intersect1d(student_next[s_idx], teacher_next[t_idx], assume_unique=True, return_indices=True)
    return s_idx[si], t_idx[ti]


class CrossRows:
    """Packed training rows of the student's tokens, each with the teacher's tokens of the same
    text and the aligned position pairs. ``rows(ids)`` -> (student inputs [B, L], labels [B, L],
    teacher inputs [B, Lt], pairs [P, 3]: row in the batch, student position, teacher position)."""

    def __init__(self, student: TokenStream, teacher: TokenStream, seq_len: int, teacher_len: int, pad_id: int = 0):
        if len(student) < seq_len + 1:
            raise ValueError(f"{len(student)} student tokens hold no row of {seq_len} + 1")
        self.student, self.teacher = student, teacher
        self.seq_len, self.teacher_len, self.pad_id = seq_len, teacher_len, pad_id

    def __len__(self) -> int:
        return (len(self.student) - 1) // self.seq_len

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(student ids [L + 1], teacher ids [<= Lt], student positions, teacher positions)."""
        lo, L = r * self.seq_len, self.seq_len
        s_ids = self.student.ids[lo:lo + L + 1]
        s_bounds = self.student.boundaries[lo:lo + L + 1]
        t_lo = int(np.searchsorted(self.teacher.boundaries, s_bounds[0], side="left"))
        # the teacher's first token at or after the last label: its input row stops before it
        t_hi = int(np.searchsorted(self.teacher.boundaries, s_bounds[-1], side="left"))
        t_hi = min(t_hi, t_lo + self.teacher_len)
        t_ids = self.teacher.ids[t_lo:t_hi]
        t_next = self.teacher.boundaries[t_lo + 1:t_hi + 1]
        si, ti = aligned_positions(s_bounds[1:], t_next)
        return s_ids, t_ids, si, ti

    def rows(self, ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = [int(r) for r in ids]
        s = torch.empty(len(ids), self.seq_len + 1, dtype=torch.long)
        t = torch.full((len(ids), self.teacher_len), self.pad_id, dtype=torch.long)
        pairs = []
        for b, r in enumerate(ids):
            s_ids, t_ids, si, ti = self.row(r)
            s[b] = torch.from_numpy(s_ids)
            t[b, :len(t_ids)] = torch.from_numpy(t_ids)
            pairs.append(np.stack([np.full(len(si), b), si, ti], axis=1))
        pairs_t = torch.from_numpy(np.concatenate(pairs)) if pairs else torch.zeros(0, 3, dtype=torch.long)
        return s[:, :-1], s[:, 1:], t, pairs_t


def teacher_len_for(student: TokenStream, teacher: TokenStream, seq_len: int) -> int:
    """The teacher row length for these streams and student rows: the audited rule
    (:func:`audit.compute.estimate.teacher_row_tokens`) on the streams' token counts."""
    from audit.compute.estimate import teacher_row_tokens

    return teacher_row_tokens(seq_len, len(student), len(teacher))


# -- the vocabulary map ----------------------------------------------------------------------------

def _byte_decoder() -> dict[str, int]:
    """The inverse of the byte -> printable character table byte-level BPE vocabularies are
    written in (GPT-2's scheme: printable Latin-1 bytes stand for themselves, the others are
    shifted to code points from 256 on)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, shift = {b: b for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + shift
            shift += 1
    return {chr(c): b for b, c in table.items()}


_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def is_byte_level(tokenizer) -> bool:
    """Whether a fast tokenizer writes its vocabulary in byte-level BPE's characters."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    return '"ByteLevel"' in json.dumps(decoder)


def token_bytes(token: str, byte_level: bool, table: dict[str, int]) -> bytes | None:
    """The text a vocabulary entry stands for, as UTF-8 bytes: byte-level entries through the
    byte table, SentencePiece entries with ``\u2581`` as a space and ``<0xNN>`` as byte NN.
    None when it cannot be read so."""
    if byte_level:
        try:
            return bytes(table[ch] for ch in token)
        except KeyError:
            return None
    fallback = _BYTE_FALLBACK.match(token)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    return token.replace("\u2581", " ").encode("utf-8")


@dataclass(frozen=True)
class VocabularyMap:
    """Student and teacher token ids that stand for the same text (the same bytes, read per
    :func:`token_bytes`: ``\u0120dog`` of a byte-level vocabulary matches ``\u2581dog`` of a
    SentencePiece one), special tokens left out, plus the two EOS tokens matched to each other.
    Where several ids of one side spell the same bytes, the lowest id is kept.
    ``student_to_teacher``: [student vocabulary] -> teacher id or -1."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_vocab: int
    teacher_vocab: int

    @property
    def student_to_teacher(self) -> torch.Tensor:
        out = torch.full((self.student_vocab,), -1, dtype=torch.long)
        out[self.student_ids] = self.teacher_ids
        return out

    @classmethod
    def from_tokenizers(cls, student_tokenizer, teacher_tokenizer) -> VocabularyMap:
        table = _byte_decoder()

        def spelled(tok) -> dict[bytes, int]:
            special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
            byte_level, out = is_byte_level(tok), {}
            for text, i in sorted(tok.get_vocab().items(), key=lambda item: item[1]):
                raw = token_bytes(text, byte_level, table) if i not in special else None
                if raw and raw not in out:
                    out[raw] = i
            return out

        s, t = spelled(student_tokenizer), spelled(teacher_tokenizer)
        pairs = sorted((s[raw], t[raw]) for raw in s.keys() & t.keys())
        s_eos, t_eos = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
        if s_eos is not None and t_eos is not None:
            pairs.append((s_eos, t_eos))
        s_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        t_ids = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        return cls(s_ids, t_ids, len(student_tokenizer), len(teacher_tokenizer))


# -- the loss ----------------------------------------------------------------------------------------

def aligned_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, vmap: VocabularyMap,
                       temperature: float = 1.0) -> torch.Tensor:
    """Per aligned position [N]: the KL over the matched tokens (each side renormalised over
    them) plus ULD over the whole distributions (module docstring), at ``temperature`` (not yet
    times T^2). Logits: [N, student vocabulary], [N, teacher vocabulary]."""
    z_s = student_logits[:, :vmap.student_vocab].float() / temperature
    z_t = teacher_logits[:, :vmap.teacher_vocab].float() / temperature
    device = z_s.device
    kl = torch.zeros(z_s.shape[0], device=device)
    if len(vmap.student_ids):
        lp_m = F.log_softmax(z_s[:, vmap.student_ids.to(device)], dim=-1)
        lq_m = F.log_softmax(z_t[:, vmap.teacher_ids.to(device)], dim=-1)
        kl = (lq_m.exp() * (lq_m - lp_m)).sum(-1)
    p = F.softmax(z_s, dim=-1).sort(dim=-1, descending=True).values
    q = F.softmax(z_t, dim=-1).sort(dim=-1, descending=True).values
    width = max(p.shape[1], q.shape[1])
    uld = (F.pad(p, (0, width - p.shape[1])) - F.pad(q, (0, width - q.shape[1]))).abs().sum(-1)
    return kl + uld


DEFAULT_CHUNK = 1024
"""Positions whose logits are formed at a time; each chunk's are recomputed in the backward
(activation checkpointing), so memory holds one chunk x vocabulary, not every position's."""


def _divergence_sum(h_s, head_s, h_t, head_t, vmap: VocabularyMap, temperature: float) -> torch.Tensor:
    with torch.no_grad():
        z_t = h_t.float() @ head_t[:vmap.teacher_vocab].float().T
    z_s = h_s.float() @ head_s[:vmap.student_vocab].float().T
    return aligned_divergence(z_s, z_t, vmap, temperature).sum()


def _cross_entropy_sum(h_s, head_s, labels, vocab: int) -> torch.Tensor:
    return F.cross_entropy(h_s.float() @ head_s[:vocab].float().T, labels, reduction="sum")


def cross_tokenizer_loss(student_hidden: torch.Tensor, student_head: torch.Tensor, labels: torch.Tensor,
                         teacher_hidden: torch.Tensor, teacher_head: torch.Tensor, pairs: torch.Tensor,
                         vmap: VocabularyMap, num_valid, *, temperature: float = 1.0,
                         hard_label_weight: float = 0.0, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """One micro-step's loss (module docstring): the sum over aligned pairs and labelled student
    positions, divided by ``num_valid`` (the step's labelled student positions). Hidden states:
    [B, L, H] (student), [B, Lt, H'] (teacher); ``pairs`` [P, 3] from :class:`CrossRows`.
    Logits are formed ``chunk`` positions at a time (:data:`DEFAULT_CHUNK`)."""
    from torch.utils.checkpoint import checkpoint

    pairs = pairs.to(student_hidden.device)
    total = student_hidden.new_zeros((), dtype=torch.float32)
    w = hard_label_weight
    if w < 1 and len(pairs):
        h_s = student_hidden[pairs[:, 0], pairs[:, 1]]
        h_t = teacher_hidden[pairs[:, 0], pairs[:, 2]]
        for at in range(0, len(pairs), chunk):
            part = slice(at, at + chunk)
            total = total + (1 - w) * temperature ** 2 * checkpoint(
                _divergence_sum, h_s[part], student_head, h_t[part], teacher_head, vmap, temperature,
                use_reentrant=False)
    if w > 0:
        keep = labels != IGNORE_INDEX
        h_s, target = student_hidden[keep], labels[keep]
        for at in range(0, len(target), chunk):
            part = slice(at, at + chunk)
            total = total + w * checkpoint(_cross_entropy_sum, h_s[part], student_head, target[part],
                                           vmap.student_vocab, use_reentrant=False)
    return total / num_valid


def aligned_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor, vmap: VocabularyMap) -> torch.Tensor:
    """Per aligned position: 1 when the student's most likely token is the teacher's most likely
    one (the same string: matched through ``vmap``), else 0 (an unmatched top token disagrees)."""
    top_s = student_logits[:, :vmap.student_vocab].argmax(-1)
    top_t = teacher_logits[:, :vmap.teacher_vocab].argmax(-1)
    return (vmap.student_to_teacher.to(top_s.device)[top_s] == top_t).float()
