"""Cached teacher logits: the teacher's top-k next-token log-probabilities, computed once.

A second teacher source beside the online teacher. For every position of every packed
sequence the cache keeps

* ``topk_ids`` int32 [k]: the k most probable next tokens under the teacher at temperature T
  (4 bytes, the size uint32 would take; :func:`cache_size` gives a cache's bytes);
* ``topk_logprobs`` [k] (fp16 by default): their log-probabilities log q_i = log_softmax(z_t / T);
* ``tail_logmass`` fp32 []: log of the probability of every other token, log(1 - sum_i q_i),
  computed as a log-sum-exp over the other tokens (no cancellation when the tail is tiny).

Layout: a folder of safetensors shards (``shard-00000.safetensors``: the three tensors with a
leading [sequences, seq_len] shape, for a contiguous range of packed-sequence rows) and
``index.json`` (format version, k, dtype, temperature, vocabulary size, seq_len, sequence and
token counts, the sha256 of the packed data, of the teacher folder and of each shard, and the
teacher forward FLOP spent building it). The index is written last: a folder without one is
an unfinished cache. The index is sealed (``"mac"``: HMAC-SHA256 under the flopgate home's MAC
key, :mod:`audit.attest.seal`): a cache folder made by hand or by another tool (log-probabilities
of some other model, with an index that names the audited teacher's digest) does not open.
A cache is tied to its data (the packed token ids), teacher (every file of
its folder) and temperature; opening it with anything else is an ``InputError``.

Loss (forward KL on k + 1 buckets): the teacher's distribution is coarse-grained to its top-k
tokens plus one "tail" bucket, and so is the student's: p_tail = sum of p_j over j outside the
teacher's top-k. Per token, with u = z_s / T, log p = log_softmax(u), Q = sum_i q_i + q_tail:

    D = sum_{i in top-k} q_i (log q_i - log p_i) + q_tail (log q_tail - log p_tail)
    dD/du_j = Q p_j - r_j,   r_j = q_j (j in top-k),  r_j = q_tail p_j / p_tail (otherwise)

With k = V there is no tail and D is the full forward KL. For k < V, D is the KL between the
two coarse-grained distributions, so it is a lower bound of the full KL (log-sum inequality)
that can only rise as k grows (each larger top-k refines the buckets). Temperature and the
hard-label mix follow :mod:`distill.train.losses`: loss_i = (1 - w) T^2 D_i + w CE_i. Only
``forward_kl`` is defined on cached targets.

Size and scope: :func:`cache_size` gives the bytes per token and in all (k = 64 in fp16 or
bf16: 388 bytes per token), :func:`check_cache_disk` refuses a folder whose disk cannot hold
them, and ``max_sequences`` / ``max_tokens`` build the cache over the first packed rows only
(the audited tokens), not the whole data set.

Compute: building the cache runs the teacher forward once over every packed token; the
trainer charges that FLOP to its meter once per run (see :func:`distill.train.trainer.train`), and
training steps then cost the student's forward and backward only.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from audit.compute.types import logit_cache_bytes_per_token

from audit.attest.seal import hmac_hex, hmac_verifies, home_key
from audit.errors import FlopgateError, InputError
from audit.fsutil import read_json, sha256_file, write_atomic
from audit.limits import MAX_MANIFEST_BYTES
from distill.data.training_data import IGNORE_INDEX
from distill.train.losses import (Count, FusedOptions, LossSpec, _blockwise, _compute_dtype, _divide,
                                  _FusedHeadLoss, blockwise_terms, compiled, default_chunk_size, elementwise_rows,
                                  hard_label_terms, masked_sum_and_grad, matmul, resolve_chunk_size)

CACHE_FORMAT = "flopgate-teacher-cache"
CACHE_VERSION = 2   # 2: the index is sealed
_MAC_DOMAIN = b"flopgate teacher cache index v1\0"
INDEX_FILE = "index.json"
LOGPROB_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                  "float64": torch.float64}


class CachedTargets(NamedTuple):
    """Teacher targets for a block of positions: ids [..., k] int32, logprobs [..., k], tail [...]."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "CachedTargets":
        return CachedTargets(*(t.to(device, non_blocking=non_blocking) for t in self))

    def pin_memory(self) -> "CachedTargets":
        return CachedTargets(*(t.pin_memory() for t in self))

    def flat(self) -> "CachedTargets":
        k = self.ids.shape[-1]
        return CachedTargets(self.ids.reshape(-1, k), self.logprobs.reshape(-1, k), self.tail.reshape(-1))


# ----------------------------------------------------------------------------------------------
# Targets from teacher logits
# ----------------------------------------------------------------------------------------------

def topk_targets(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0,
                 logprob_dtype: torch.dtype = torch.float16) -> CachedTargets:
    """Top-k targets of logits [n, V] (already restricted to the shared vocabulary).
    Log-probabilities are formed in fp32 (fp64 for fp64 logits), then stored in ``logprob_dtype``."""
    if not 1 <= k <= teacher_logits.shape[-1]:
        raise ValueError(f"k: expected 1..{teacher_logits.shape[-1]}, got {k}")
    dtype = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    log_q = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    values, ids = log_q.topk(k, dim=-1)
    tail = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1)
    return CachedTargets(ids.to(torch.int32), values.to(logprob_dtype),
                         tail.to(torch.float64 if dtype == torch.float64 else torch.float32))


def teacher_topk(hidden: torch.Tensor, head: torch.Tensor, vocab: int, k: int, temperature: float,
                 logprob_dtype: torch.dtype = torch.float16, chunk_size: Optional[int] = None,
                 matmul_dtype: Optional[torch.dtype] = None) -> CachedTargets:
    """Top-k targets from the teacher's final hidden states [n, H] and head [V_t, H], chunk by
    chunk: the [n x V] logits are never held at once."""
    out_dtype = _compute_dtype(hidden, head)
    op_dtype = matmul_dtype or out_dtype
    chunk_size = chunk_size or default_chunk_size(vocab)
    parts = []
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        w = head.detach()[:vocab].to(op_dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            logits = matmul(hidden[start:start + chunk_size].to(op_dtype), w.T, out_dtype)
            parts.append(topk_targets(logits, k, temperature, logprob_dtype))
    return CachedTargets(*(torch.cat(tensors) for tensors in zip(*parts)))


# ----------------------------------------------------------------------------------------------
# The loss against cached targets
# ----------------------------------------------------------------------------------------------

def cached_divergence_and_grad(u: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor,
                               tail: torch.Tensor, need_grad: bool):
    """Bucketed forward KL D [n] and dD/du [n, V] (see the module docstring); u = z_s / T."""
    log_p = F.log_softmax(u, dim=-1)
    ids = ids.long()
    lp = logprobs.to(u.dtype)
    tail = tail.to(u.dtype)
    log_p_top = log_p.gather(1, ids)
    outside = log_p.scatter(1, ids, float("-inf"))          # log p_j outside the top-k, -inf inside
    log_p_tail = torch.logsumexp(outside, dim=-1)
    q_top, q_tail = lp.exp(), tail.exp()
    has_tail = q_tail > 0
    tail_term = torch.where(has_tail, q_tail * (tail - log_p_tail), torch.zeros_like(q_tail))
    divergence = (q_top * (lp - log_p_top)).sum(-1) + tail_term
    if not need_grad:
        return divergence, None
    total_q = q_top.sum(-1) + q_tail
    safe_log_p_tail = torch.where(torch.isfinite(log_p_tail), log_p_tail, torch.zeros_like(log_p_tail))
    spread = torch.where(has_tail, q_tail, torch.zeros_like(q_tail))[:, None] * (outside - safe_log_p_tail[:, None]).exp()
    target = spread.scatter(1, ids, q_top)
    return divergence, total_q[:, None] * log_p.exp() - target


def cached_terms(z_s, ids, logprobs, tail, labels, spec: LossSpec, need_grad: bool):
    """Per-token cached-target loss [n] and d(sum of losses)/d z_s [n, V] (or None)."""
    temperature, w = spec.temperature, spec.hard_label_weight
    loss = torch.zeros(z_s.shape[0], dtype=z_s.dtype, device=z_s.device)
    grad = None
    if w < 1:
        divergence, d_u = cached_divergence_and_grad(z_s / temperature, ids, logprobs, tail, need_grad)
        scale = (1 - w) * temperature ** 2
        loss = scale * divergence
        if need_grad:
            grad = d_u * (scale / temperature)
    if w > 0:
        ce, d_ce = hard_label_terms(z_s, labels, None, temperature, need_grad)
        loss = loss + w * ce
        if need_grad:
            grad = w * d_ce if grad is None else grad + w * d_ce
    return loss, grad


def _cached_chunk(z_s, ids, logprobs, tail, labels, valid, spec: LossSpec, need_grad: bool,
                  grad_dtype: torch.dtype):
    """One chunk of the cached-target loss: (sum of valid losses, gradient wrt z_s)."""
    if valid is not None:
        labels = labels.clamp_min(0)
    loss, grad = cached_terms(z_s, ids, logprobs, tail, labels, spec, need_grad)
    return masked_sum_and_grad(loss, grad, valid, grad_dtype)


def _check_spec(spec: LossSpec) -> None:
    if spec.kind != "forward_kl" and spec.hard_label_weight < 1:
        raise ValueError(f"cached teacher targets support the forward_kl loss only, not {spec.kind}")


def reference_cached_loss(student_logits: torch.Tensor, targets: CachedTargets, labels: torch.Tensor,
                          spec: LossSpec, num_valid_tokens_global: Count,
                          vocab_size: Optional[int] = None) -> torch.Tensor:
    """The cached-target loss from full student logits [..., V_s], by autograd: the yardstick."""
    _check_spec(spec)
    vocab = vocab_size or student_logits.shape[-1]
    dtype = _compute_dtype(student_logits)
    z_s = student_logits[..., :vocab].reshape(-1, vocab).to(dtype)
    flat = targets.flat()
    labels = labels.reshape(-1)
    valid = labels != IGNORE_INDEX
    z_s, labels = z_s[valid], labels[valid]
    ids, lp, tail = flat.ids[valid].long(), flat.logprobs[valid].to(dtype), flat.tail[valid].to(dtype)
    w, temperature = spec.hard_label_weight, spec.temperature
    log_p = F.log_softmax(z_s / temperature, dim=-1)
    in_top = torch.zeros_like(log_p, dtype=torch.bool).scatter(1, ids, True)
    log_p_tail = torch.logsumexp(log_p.masked_fill(in_top, float("-inf")), dim=-1)
    q_tail = tail.exp()
    tail_term = torch.where(q_tail > 0, q_tail * (tail - log_p_tail), torch.zeros_like(q_tail))
    divergence = (lp.exp() * (lp - log_p.gather(1, ids))).sum(-1) + tail_term
    per_token = (1 - w) * temperature ** 2 * divergence
    if w > 0:
        per_token = per_token + w * F.cross_entropy(z_s, labels, reduction="none")
    return _divide(per_token.sum(), num_valid_tokens_global)


def fused_cached_loss(student_hidden: torch.Tensor, student_head: torch.Tensor, targets: CachedTargets,
                      labels: torch.Tensor, spec: LossSpec, num_valid_tokens_global: Count,
                      vocab_size: Optional[int] = None, chunk_size: Optional[int] = None, *,
                      matmul_dtype: Optional[torch.dtype] = None, skip_ignored: Optional[bool] = None,
                      compile: bool = False) -> torch.Tensor:
    """The loss of :func:`reference_cached_loss` from the student's final hidden states [..., H]
    and head [V_s, H], fused and chunked like :func:`distill.train.losses.fused_distill_loss` (never
    [tokens x V]); ``targets`` hold one row per position, on the student's device."""
    _check_spec(spec)
    vocab = vocab_size or student_head.shape[0]
    if vocab > student_head.shape[0]:
        raise ValueError(f"vocab_size {vocab} exceeds the student head's {student_head.shape[0]} rows")
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    flat = targets.flat()
    flat_labels = labels.reshape(-1).to(h_s.device)
    if not (h_s.shape[0] == flat.ids.shape[0] == flat_labels.shape[0]):
        raise ValueError(f"token counts differ: student {h_s.shape[0]}, targets {flat.ids.shape[0]}, "
                         f"labels {flat_labels.shape[0]}")
    need_grad = torch.is_grad_enabled() and (h_s.requires_grad or student_head.requires_grad)
    chunk_fn = compiled(_cached_chunk) if compile else _cached_chunk
    options = FusedOptions(matmul_dtype, skip_ignored, compile)
    blockwise = _blockwise(options, h_s.device)
    rows_per_block = elementwise_rows(vocab, _compute_dtype(h_s, student_head))

    def chunk_terms(rows, z_s, rows_labels, valid, grad_dtype):
        ids, logprobs, tail = flat.ids[rows], flat.logprobs[rows], flat.tail[rows]
        if blockwise and grad_dtype == z_s.dtype:
            return blockwise_terms(z_s, rows_labels, valid, need_grad, rows_per_block,
                                   lambda block, z_s_block, labels_block: cached_terms(
                                       z_s_block, ids[block], logprobs[block], tail[block], labels_block, spec,
                                       need_grad))
        return chunk_fn(z_s, ids, logprobs, tail, rows_labels, valid, spec, need_grad, grad_dtype)

    return _FusedHeadLoss.apply(h_s, student_head, flat_labels, num_valid_tokens_global, vocab,
                                resolve_chunk_size(chunk_size, vocab, h_s.shape[1], options, h_s.device), need_grad,
                                options, chunk_terms)


# ----------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------

ID_DTYPE = torch.int32
"""Stored top-k ids: 4 bytes, like uint32 (ids < 2^31 cover every vocabulary; int32 is what
torch's indexing ops take after one ``.long()``, uint32 has few torch ops)."""
SHARD_HEADER_BYTES = 1024
"""Upper bound of one shard's safetensors header (three tensors: about 300 bytes)."""
INDEX_BYTES_PER_SHARD = 256
"""Upper bound of one shard's entry in ``index.json`` (plus 4 KiB for the rest of the index)."""


class CacheSize(NamedTuple):
    """Bytes of a cache: ``bytes_per_token`` of targets, ``payload_bytes`` = tokens x that, and
    ``total_bytes`` = payload + shard headers + index (an upper bound of the folder's size)."""

    tokens: int
    k: int
    logprob_dtype: str
    bytes_per_token: int
    payload_bytes: int
    total_bytes: int
    shards: int


def cache_size(tokens: int, k: int, logprob_dtype: str = "float16", *, seq_len: Optional[int] = None,
               shard_sequences: Optional[int] = None) -> CacheSize:
    """Bytes per token and in all of a cache of ``tokens`` positions with top-``k`` targets.

    Per token: k ids (4 bytes each, :data:`ID_DTYPE`), k log-probabilities (2 bytes in float16
    or bfloat16, 4 in float32, 8 in float64) and one fp32 tail log-mass: k = 64 in fp16 is
    64 x 6 + 4 = 388 bytes. Pure arithmetic, no file is touched. With ``seq_len`` (tokens must be
    whole sequences) the shard count is :func:`shard_rows`'s and ``total_bytes`` adds a header
    bound per shard and the index; without it one shard is assumed."""
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype: expected one of {', '.join(LOGPROB_DTYPES)}, got {logprob_dtype!r}")
    if tokens < 0 or k < 1:
        raise ValueError(f"expected tokens >= 0 and k >= 1, got {tokens} and {k}")
    per_token = logit_cache_bytes_per_token(k, logprob_dtype)  # the audit's figure: one home for the format
    shards = 1
    if seq_len:
        sequences = -(-tokens // seq_len)
        shards = max(1, -(-sequences // shard_rows(seq_len, k, logprob_dtype, shard_sequences)))
    payload = tokens * per_token
    total = payload + shards * (SHARD_HEADER_BYTES + INDEX_BYTES_PER_SHARD) + 4096
    return CacheSize(tokens, k, logprob_dtype, per_token, payload, total, shards)


class CacheDiskError(FlopgateError):
    """The disk holding a cache folder has less free space than the cache needs."""

    exit_code = 2


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def check_cache_disk(folder: str | Path, needed_bytes: int) -> int:
    """Refuse up front (:class:`CacheDiskError`, one line naming the folder, the bytes needed and
    the bytes free) when the disk that will hold ``folder`` has fewer than ``needed_bytes`` free
    (``shutil.disk_usage`` of the folder, or of its nearest existing parent when it does not exist
    yet). Returns the free bytes."""
    path = Path(folder).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed_bytes > free:
        raise CacheDiskError(f"{path}: the teacher cache needs {needed_bytes:,} bytes ({_gib(needed_bytes)}), "
                             f"its disk has {free:,} bytes free ({_gib(free)})")
    return free


def cache_sequences(sequences: int, seq_len: int, *, max_sequences: Optional[int] = None,
                    max_tokens: Optional[int] = None) -> int:
    """Packed sequences a cache covers: the first ``max_sequences`` rows, or the fewest whole rows
    holding ``max_tokens`` tokens, never more than the data has; all of them when both are None."""
    count = sequences
    if max_sequences is not None:
        if max_sequences < 1:
            raise ValueError(f"max_sequences: expected >= 1, got {max_sequences}")
        count = min(count, max_sequences)
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens: expected >= 1, got {max_tokens}")
        count = min(count, -(-max_tokens // seq_len))
    return count


def data_digest(sequences: torch.Tensor) -> str:
    """sha256 of packed sequences [n, seq_len + 1] (int64 token ids, row-major), with the shape:
    it changes with the data, the tokenizer and seq_len."""
    digest = hashlib.sha256(f"{tuple(sequences.shape)}\n".encode())
    digest.update(sequences.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def batch_sequence_ids(data, start: int, count: int) -> torch.Tensor:
    """Packed-sequence rows read at global cursor positions [start, start + count): the rows
    ``data.batch(start, count)`` returns (same epoch order)."""
    return data.row_ids(start, count)


@dataclass(frozen=True)
class CacheIndex:
    k: int
    logprob_dtype: str
    temperature: float
    vocab_size: int
    seq_len: int
    sequences: int
    tokens: int
    data_sha256: str
    teacher_sha256: str
    teacher_forward_flops: Optional[float]
    shards: tuple  # ({"file", "first", "count", "sha256"}, ...)

    def to_json(self, key: bytes) -> str:
        """The index file's text, sealed under ``key`` (the home's MAC key)."""
        body = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **self.__dict__, "shards": list(self.shards)}
        return json.dumps({**body, "mac": hmac_hex(key, _MAC_DOMAIN, _canonical(body))}, indent=2, sort_keys=True) + "\n"


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _shard_sequences(seq_len: int, k: int, logprob_dtype: torch.dtype, target_bytes: int = 256 << 20) -> int:
    per_sequence = seq_len * (k * (4 + torch.finfo(logprob_dtype).bits // 8) + 4)
    return max(1, target_bytes // per_sequence)


def shard_plan(sequences: int, per_shard: int, world_size: int = 1) -> list[tuple[int, int, int]]:
    """(first row, row count, building rank) of each shard, in row order.

    The rows are split into ``world_size`` contiguous blocks of near-equal size, one per rank,
    and each block into shards of at most ``per_shard`` rows, so every shard is a contiguous
    row range and the ranks share the teacher's work evenly. The same arguments give the same
    plan on every rank; no communication is needed to agree on it."""
    plan = []
    for rank in range(world_size):
        lo, hi = sequences * rank // world_size, sequences * (rank + 1) // world_size
        plan += [(first, min(per_shard, hi - first), rank) for first in range(lo, hi, per_shard)]
    return plan


def shard_rows(seq_len: int, k: int, logprob_dtype: str, shard_sequences: Optional[int] = None) -> int:
    """Packed sequences per shard: ``shard_sequences``, or about 256 MiB of targets."""
    return shard_sequences or _shard_sequences(seq_len, k, LOGPROB_DTYPES[logprob_dtype])


def lockstep_padding(sequences: int, per_shard: int, world_size: int, batch_size: int) -> list[int]:
    """Extra teacher forwards each rank runs so that all run the same number (a teacher sharded
    with FSDP2 all-gathers its layers in every forward, on every rank together). Each extra
    forward is one packed sequence whose output is thrown away: its compute is spent and counted."""
    plan = shard_plan(sequences, per_shard, world_size)
    forwards = [sum(-(-count // batch_size) for _, count, owner in plan if owner == rank)
                for rank in range(world_size)]
    return [max(forwards) - mine for mine in forwards]


@torch.inference_mode()
def build_cache_shards(folder: str | Path, *, teacher, sequences: torch.Tensor, vocab: int, k: int,
                       temperature: float = 1.0, logprob_dtype: str = "float16", batch_size: int = 8,
                       device: torch.device | str = "cpu", amp_dtype: Optional[torch.dtype] = None,
                       shard_sequences: Optional[int] = None, rank: int = 0, world_size: int = 1,
                       lockstep: bool = False, max_sequences: Optional[int] = None,
                       max_tokens: Optional[int] = None, check_disk: bool = True) -> list[dict]:
    """Run the teacher over the shards :func:`shard_plan` gives ``rank`` and write them to
    ``folder`` (inputs = the first seq_len ids of each packed row [seq_len + 1]). Returns their
    index entries ({file, first, count, sha256}); :func:`write_cache_index` finishes the cache.
    ``lockstep`` (a sharded teacher): pad with :func:`lockstep_padding` forwards.

    ``max_sequences`` / ``max_tokens``: build only the first rows of ``sequences`` that hold
    them (:func:`cache_sequences`; e.g. the audited token count), not every packed row; pass the
    same limit to :func:`write_cache_index` and :meth:`TeacherCache.open`. ``check_disk``: first
    refuse (:class:`CacheDiskError`), before the folder is made or the teacher runs, when the
    folder's disk has less free space than the whole cache (:func:`cache_size`) needs."""
    from distill.runtime.models import final_hidden_states, head_weight

    if logprob_dtype not in LOGPROB_DTYPES:
        raise InputError(f"expected one of {', '.join(LOGPROB_DTYPES)}, got {logprob_dtype!r}",
                         field="teacher_cache_dtype")
    store_dtype = LOGPROB_DTYPES[logprob_dtype]
    folder = Path(folder)
    from safetensors.torch import save

    device = torch.device(device)
    seq_len = sequences.shape[1] - 1
    sequences = sequences[:cache_sequences(sequences.shape[0], seq_len, max_sequences=max_sequences,
                                           max_tokens=max_tokens)]
    per_shard = shard_rows(seq_len, k, logprob_dtype, shard_sequences)
    plan = shard_plan(sequences.shape[0], per_shard, world_size)
    if check_disk:  # the whole cache: every rank writes its shards into this one folder
        check_cache_disk(folder, cache_size(sequences.shape[0] * seq_len, k, logprob_dtype, seq_len=seq_len,
                                            shard_sequences=per_shard).total_bytes)
    folder.mkdir(parents=True, exist_ok=True)
    head = head_weight(teacher)
    matmul_dtype = amp_dtype if device.type == "cuda" else None
    written = []
    padding = lockstep_padding(sequences.shape[0], per_shard, world_size, batch_size)[rank] if lockstep else 0
    for _ in range(padding):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            final_hidden_states(teacher, sequences[:1, :-1].to(device))
    for number, (first, count, owner) in enumerate(plan):
        if owner != rank:
            continue
        rows = sequences[first:first + count, :-1]
        parts = []
        for start in range(0, count, batch_size):
            inputs = rows[start:start + batch_size].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                hidden = final_hidden_states(teacher, inputs)
            flat = teacher_topk(hidden.reshape(-1, hidden.shape[-1]), head, vocab, k, temperature, store_dtype,
                                matmul_dtype=matmul_dtype)
            parts.append(CachedTargets(*(t.reshape(inputs.shape[0], seq_len, *t.shape[1:]).cpu() for t in flat)))
        block = CachedTargets(*(torch.cat(tensors) for tensors in zip(*parts)))
        name = f"shard-{number:05d}.safetensors"
        payload = save({"topk_ids": block.ids.contiguous(), "topk_logprobs": block.logprobs.contiguous(),
                        "tail_logmass": block.tail.to(torch.float32).contiguous()
                        if block.tail.dtype != torch.float64 else block.tail.contiguous()})
        write_atomic(folder / name, payload)
        written.append({"file": name, "first": first, "count": count, "sha256": hashlib.sha256(payload).hexdigest()})
    return written


def write_cache_index(folder: str | Path, shards: list[dict], *, sequences: torch.Tensor, vocab: int, k: int,
                      temperature: float, logprob_dtype: str, teacher_digest: str,
                      teacher_flops_per_token: Optional[float] = None, padding_sequences: int = 0,
                      max_sequences: Optional[int] = None, max_tokens: Optional[int] = None) -> CacheIndex:
    """Write ``index.json`` over every shard (from all ranks), last: it marks the cache finished.
    ``teacher_flops_per_token`` (forward) makes the index record the compute spent, lockstep
    padding forwards (``padding_sequences`` in all) included. ``max_sequences`` / ``max_tokens``:
    the limit :func:`build_cache_shards` was given (the index then covers those rows only)."""
    seq_len = sequences.shape[1] - 1
    sequences = sequences[:cache_sequences(sequences.shape[0], seq_len, max_sequences=max_sequences,
                                           max_tokens=max_tokens)]
    tokens = int(sequences.shape[0] * seq_len)
    spent_tokens = tokens + padding_sequences * seq_len
    index = CacheIndex(k=k, logprob_dtype=logprob_dtype, temperature=float(temperature), vocab_size=vocab,
                       seq_len=seq_len, sequences=int(sequences.shape[0]), tokens=tokens,
                       data_sha256=data_digest(sequences), teacher_sha256=teacher_digest,
                       teacher_forward_flops=(teacher_flops_per_token * spent_tokens
                                              if teacher_flops_per_token is not None else None),
                       shards=tuple(sorted(shards, key=lambda shard: shard["first"])))
    write_atomic(Path(folder) / INDEX_FILE, index.to_json(home_key("the teacher cache index")))
    return index


class TeacherCache:
    """A verified cache, read lazily (memory-mapped shards)."""

    def __init__(self, folder: Path, index: CacheIndex):
        from safetensors import safe_open

        self.folder, self.index = folder, index
        self._handles = [safe_open(str(folder / s["file"]), framework="pt", device="cpu") for s in index.shards]
        self._firsts = [s["first"] for s in index.shards]

    @classmethod
    def open(cls, folder: str | Path, *, sequences: torch.Tensor, vocab: int, temperature: float,
             teacher_digest: str, max_sequences: Optional[int] = None,
             max_tokens: Optional[int] = None) -> "TeacherCache":
        """Open the cache in ``folder`` for this data, vocabulary, temperature and teacher;
        ``InputError`` naming the index field that does not match, or a shard whose sha256 differs.
        ``max_sequences`` / ``max_tokens``: the limit the cache was built with (it covers the
        first rows of ``sequences`` only; :meth:`targets` refuses any other row)."""
        folder = Path(folder)
        source = str(folder / INDEX_FILE)
        sequences = sequences[:cache_sequences(sequences.shape[0], sequences.shape[1] - 1,
                                               max_sequences=max_sequences, max_tokens=max_tokens)]
        index = read_index(folder)
        expected = {"seq_len": sequences.shape[1] - 1, "sequences": sequences.shape[0], "vocab_size": vocab,
                    "data_sha256": data_digest(sequences), "teacher_sha256": teacher_digest}
        for field, want in expected.items():
            if getattr(index, field) != want:
                raise InputError(f"the cache was built for {field} {getattr(index, field)!r}, this run has "
                                 f"{want!r}: rebuild it (delete the folder)", source=source, field=field)
        if not math.isclose(index.temperature, temperature, rel_tol=0, abs_tol=1e-12):
            raise InputError(f"the cache holds log-probabilities at temperature {index.temperature}, this run uses "
                             f"{temperature}", source=source, field="temperature")
        for number, shard in enumerate(index.shards):
            path = folder / shard["file"]
            try:
                actual = sha256_file(path)
            except FileNotFoundError:
                raise InputError("shard file missing", source=str(path)) from None
            if actual != shard["sha256"]:
                raise InputError(f"shard {shard['file']} has sha256 {actual[:12]}..., the index says "
                                 f"{shard['sha256'][:12]}...", source=source, field=f"shards[{number}].sha256")
        return cls(folder, index)

    def targets(self, sequence_ids: torch.Tensor) -> CachedTargets:
        """Targets [len(ids), seq_len, ...] of these packed-sequence rows (CPU tensors)."""
        import bisect

        parts = []
        for row in sequence_ids.tolist():
            if not 0 <= row < self.index.sequences:
                raise InputError(f"packed sequence {row} is not in the cache (it holds rows 0..{self.index.sequences - 1}"
                                 "): train on the rows it was built for", source=str(self.folder / INDEX_FILE))
            shard = bisect.bisect_right(self._firsts, row) - 1
            offset = row - self._firsts[shard]
            handle = self._handles[shard]
            parts.append([handle.get_slice(name)[offset:offset + 1]
                          for name in ("topk_ids", "topk_logprobs", "tail_logmass")])
        return CachedTargets(*(torch.cat(tensors) for tensors in zip(*parts)))


def read_index(folder: str | Path) -> CacheIndex:
    """The index of a cache folder; ``InputError`` when missing or malformed."""
    path = Path(folder) / INDEX_FILE
    data = read_json(path, "the cache index", missing="no teacher cache index (an unfinished or missing cache)",
                     max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
        raise InputError(f"expected format {CACHE_FORMAT!r} version {CACHE_VERSION} (a cache from an older "
                         "flopgate: rebuild it, delete the folder)", source=str(path), field="format")
    body = {name: value for name, value in data.items() if name != "mac"}
    try:
        sealed = hmac_verifies(data.get("mac"), home_key("the teacher cache index"), _MAC_DOMAIN, _canonical(body))
    except ValueError:   # NaN or infinity in the index: not a file flopgate wrote
        sealed = False
    if not sealed:
        raise InputError("does not verify: flopgate did not write this index with this home's key (edited, "
                         "written by hand or by another tool, or built under another FLOPGATE_HOME): rebuild "
                         "the cache (delete the folder)", source=str(path), field="mac")
    fields = [name for name in CacheIndex.__dataclass_fields__]
    missing = [name for name in fields if name not in data]
    if missing:
        raise InputError(f"missing {', '.join(missing)}", source=str(path), field=missing[0])
    shards = data["shards"]
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and "/" not in s["file"]
            and isinstance(s.get("first"), int) and isinstance(s.get("count"), int) and isinstance(s.get("sha256"), str)
            for s in shards):
        raise InputError("expected a list of {file, first, count, sha256}", source=str(path), field="shards")
    if data["logprob_dtype"] not in LOGPROB_DTYPES:
        raise InputError(f"unknown dtype {data['logprob_dtype']!r}", source=str(path), field="logprob_dtype")
    covered = sum(s["count"] for s in shards)
    if covered != data["sequences"] or [s["first"] for s in shards] != sorted(s["first"] for s in shards):
        raise InputError(f"the shards cover {covered} sequences, the index says {data['sequences']}",
                         source=str(path), field="shards")
    return CacheIndex(**{name: (tuple(data[name]) if name == "shards" else data[name]) for name in fields})
