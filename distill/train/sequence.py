"""Sequence-level distillation: the student learns the answers the teacher wrote.

``flopgate distill PLAN --attestation A --pubkey K --generated DIR`` for a plan with
``method.kind: sequence``. ``DIR`` is the folder ``flopgate generate`` wrote (docs/generate.md).
No teacher model is loaded: the teacher's work is in the answers, and ``generate`` metered it;
except with ``--also-logits`` (the plan's ``method.also_logits``, audited: the teacher's forward
over the training samples is counted and metered), where the local teacher runs over the same
packed samples (same block masks) and the loss mixes the answer cross-entropy
(``hard_label_weight``, 0.5) with the plan's divergence to the teacher's logits.

1. **Provenance** (fail closed, exit 6 with every reason): ``DIR/generation-record.intoto.json``
   must verify with the keys trusted for the audit (signature, statement, predicate type
   ``generation-record/v1``); its ``audit.sha256`` must be the digest of the audit envelope the
   gate verified; and the sha256 of the ``kept-samples.jsonl`` bytes read here must be its
   ``outputs.kept_sha256``. Those bytes, read once, are the bytes trained on.
2. **Tokenizing**: each kept row's ``messages`` plus its ``completion`` (the teacher's answer,
   role ``assistant``) is rendered with the tokenizer's chat template. The answer's tokens are
   those starting at or after the end of the prompt rendered with the generation prompt
   (``messages`` alone, ``add_generation_prompt=True``): the answer and the template's
   end-of-turn text after it. Only they are labels; every prompt token's label is -100. A sample
   longer than ``seq_len`` is cut to ``seq_len``; one with no answer token left is skipped (both
   counted in ``sequence-data.json``).
3. **Packing**: samples, in an order seeded by ``seed``, are packed whole into rows of
   ``seq_len`` tokens (next fit; the rest of a row is padding, label -100). Position ids restart
   at 0 for every sample, and the attention mask is block-diagonal causal ([B, 1, T, T]: a
   token sees the earlier tokens of its own sample only), so a packed row gives each sample
   the loss it has alone. Rows are read in a fresh seeded order each epoch.
4. **Training**: cross-entropy on the answer tokens, summed over the step and divided by the
   step's answer-token count; AdamW, warm-up + cosine (:func:`distill.train.loop.warmup_cosine`),
   gradient clipping, checkpoints (:mod:`distill.runtime.checkpoint`), metrics (``metrics.jsonl``).
   Logits are formed and reduced in fp32 (on CUDA the body runs under bf16 autocast).
5. **Metering**: every row position counts as a training token (padding included: it is
   computed), charged at the audited student training FLOP per token; the run stops before
   the meter would pass the budget; ``on_step`` gets each step's record (the ledger charge).

The tokenizer (and its chat template, which decides which tokens are trained on) is the audited
one (:meth:`distill.gate.attested.AttestedInputs.tokenizer`): the plan's ``data.tokenizer`` folder,
else the teacher's local folder, else a ``student.init: base`` folder holding a tokenizer, each
hashed by check and re-hashed by the gate. ``--tokenizer DIR`` may name a copy whose tokenizer
files are the audited ones byte for byte; any other is refused (exit 6, one line per file). Its
digest is recorded in ``sequence-data.json``, which the run record signs with the generation
record and the samples.

The loop itself (steps, resume, meter, checkpoints, metrics) is :func:`distill.train.loop.run_loop`,
shared with the logit recipe; ``--resume`` continues a run bitwise exactly, as for logit KD.
Under torchrun the student is replicated (DDP) or sharded (FSDP2) like the logit recipe's, with a
global answer-token count: 2 gloo processes follow the one-process loss curve (tested).
"""

from __future__ import annotations

import json
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from audit.errors import InputError
from audit.numbers import short_sci
from audit.validation import validate_model
from distill.data.training_data import EpochOrder, chat_messages, jsonl_records
from distill.train.loop import LoopConfig
from distill.outputs.generation_record import GeneratedData

IGNORE_INDEX = -100
DATA_RECORD = "sequence-data.json"
"""What the run trained on (generation record, samples, tokenizer, packing); signed by the run record."""


# -- provenance --------------------------------------------------------------------------------


def read_samples(generated: GeneratedData) -> list[tuple[list[dict], dict]]:
    """``(messages, answer)`` of every kept row, from the verified bytes; one-line errors."""
    source = str(generated.kept_path)
    try:
        text = generated.kept.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("expected UTF-8 text", source=source) from None
    samples = []
    for number, row in jsonl_records(text, source):
        where = f"line {number}"
        if not isinstance(row, dict) or row.get("status", "kept") != "kept":
            raise InputError("expected a kept sample (an object with status 'kept')", source=source, field=where)
        messages = chat_messages(row.get("messages"), source, f"{where}: messages")
        completion = row.get("completion")
        if not (isinstance(completion, dict) and isinstance(completion.get("content"), str)):
            raise InputError("expected 'completion': {role, content}", source=source, field=f"{where}: completion")
        samples.append((messages, {"role": "assistant", "content": completion["content"]}))
    if not samples:
        raise InputError("holds no kept sample to train on", source=source)
    return samples


# -- tokenizing and packing --------------------------------------------------------------------

def encode_sample(tokenizer, messages: list[dict], answer: dict, *,
                  where: str = "sample") -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and their next-token labels: ``labels[t]`` is
    ``ids[t + 1]`` when that token belongs to the answer (module docstring, 2), else -100."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the tokenizer has no chat template, so prompts and answers cannot be rendered",
                         field="--tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("expected a fast tokenizer (a tokenizer.json): the answer's tokens are found by "
                         "character offsets", field="--tokenizer")
    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [answer], tokenize=False)
    except Exception as exc:  # a template error names the sample
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"the chat template cannot render this sample ({exc.__class__.__name__}: {first})",
                         source=where) from None
    if not full.startswith(prompt):
        raise InputError("the chat template renders the prompt differently once the answer follows, so the "
                         "answer's tokens cannot be told apart", source=where)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    answer_token = [start >= len(prompt) for start, _ in encoded["offset_mapping"]]
    labels = [ids[t + 1] if answer_token[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return ids, labels + [IGNORE_INDEX] * min(1, len(ids))


@dataclass
class PackedSamples(EpochOrder):
    """Rows [n, seq_len] of packed samples: ids, labels, position ids and the sample each
    position belongs to (``segments``; padding is a segment of its own). A row holds whole
    samples, so a held-out row holds out whole samples."""

    ROW_UNIT = "sample"

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    seed: int
    samples: int = 0
    truncated: int = 0
    skipped: int = 0

    def total_rows(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(ids, labels, position ids, segments) [len(ids), seq_len] of rows ``ids``."""
        return self.input_ids[ids], self.labels[ids], self.position_ids[ids], self.segments[ids]


def pack(encoded: list[tuple[list[int], list[int]]], seq_len: int, *, seed: int = 0, pad_id: int = 0) -> PackedSamples:
    """Pack whole samples into rows of ``seq_len`` (module docstring, 3)."""
    truncated = skipped = 0
    kept = []
    for ids, labels in encoded:
        if len(ids) > seq_len:
            ids, labels = ids[:seq_len], labels[:seq_len - 1] + [IGNORE_INDEX]
            truncated += 1
        if all(label == IGNORE_INDEX for label in labels):
            skipped += 1
            continue
        kept.append((ids, labels))
    if not kept:
        raise InputError(f"no sample has an answer token within seq_len {seq_len}", field="data.seq_len")
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed)).tolist()
    rows: list[list[tuple[list[int], list[int]]]] = [[]]
    used = 0
    for index in order:
        ids, labels = kept[index]
        if used + len(ids) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append((ids, labels))
        used += len(ids)
    shape = (len(rows), seq_len)
    input_ids = torch.full(shape, pad_id, dtype=torch.int64)
    label_rows = torch.full(shape, IGNORE_INDEX, dtype=torch.int64)
    positions = torch.zeros(shape, dtype=torch.int64)
    segments = torch.zeros(shape, dtype=torch.int64)
    for r, row in enumerate(rows):
        at = 0
        for s, (ids, labels) in enumerate(row):
            end = at + len(ids)
            input_ids[r, at:end] = torch.tensor(ids)
            label_rows[r, at:end] = torch.tensor(labels)
            positions[r, at:end] = torch.arange(len(ids))
            segments[r, at:end] = s
            at = end
        positions[r, at:] = torch.arange(seq_len - at)
        segments[r, at:] = len(row)
    return PackedSamples(input_ids, label_rows, positions, segments, seed, len(kept), truncated, skipped)


def packed_attention_mask(segments: torch.Tensor, *, additive_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """[B, 1, T, T] block-diagonal causal mask: True (or 0.0) where a query may attend to a key.
    Boolean for SDPA; with ``additive_dtype``, 0 / the dtype's minimum (eager attention)."""
    length = segments.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = (causal & (segments[:, :, None] == segments[:, None, :]))[:, None]
    if additive_dtype is None:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=additive_dtype, device=segments.device)
    return mask.masked_fill(~allowed, torch.finfo(additive_dtype).min)


class PackedHiddenStates(torch.nn.Module):
    """Final hidden states of packed rows (the module DDP wraps); the lm_head stays a parameter."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm
        impl = getattr(lm.config, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):
            raise InputError(f"packed training needs sdpa or eager attention (a 4D mask), the student uses {impl!r}",
                             field="student")
        self.boolean_mask = impl == "sdpa"

    def forward(self, input_ids, position_ids, segments):
        mask = packed_attention_mask(segments, additive_dtype=None if self.boolean_mask else
                                     next(self.lm.parameters()).dtype)
        body = getattr(self.lm, self.lm.base_model_prefix)
        return body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                    use_cache=False).last_hidden_state


def answer_loss_sum(hidden: torch.Tensor, head: torch.Tensor, labels: torch.Tensor, vocab: int) -> torch.Tensor:
    """Summed cross-entropy of the labelled positions, logits in fp32 over the first ``vocab`` rows."""
    keep = labels.reshape(-1) != IGNORE_INDEX
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = hidden.reshape(-1, hidden.shape[-1])[keep].float() @ head[:vocab].float().T
        return F.cross_entropy(logits, labels.reshape(-1)[keep], reduction="sum")


# -- config and training -----------------------------------------------------------------------

class SequenceConfig(LoopConfig):
    """A sequence-level run (the loop's fields are :class:`distill.train.loop.LoopConfig`'s). Token
    counts are positions fed to the student (padding included)."""

    generated_dir: Path
    tokenizer_dir: Path
    student_init: Literal["scratch", "base"] = "scratch"
    student_config: Optional[Path] = None
    student_config_data: Optional[dict] = Field(default=None, description="the audited student config as the gate "
                                                "read it (scratch, pruned): the student is built from it, never "
                                                "from the file again")
    student_base_dir: Optional[Path] = None
    mean_document_tokens: Optional[int] = Field(default=None, gt=0, description="the plan's data.mean_document_"
                                                "tokens: the packed samples' attention must fit what it counted")
    teacher_dir: Optional[Path] = Field(default=None, description="also_logits: the teacher's local folder")
    also_logits: bool = Field(default=False, description="the teacher runs over the packed samples too and the loss "
                              "mixes its logits in (method.also_logits, audited)")
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    temperature: float = Field(default=1.0, gt=0)
    hard_label_weight: float = Field(default=0.5, ge=0, le=1, description="also_logits: the answer cross-entropy's "
                                     "share of the loss, the divergence to the teacher the rest")

    @model_validator(mode="after")
    def _consistent(self):
        if self.student_init == "scratch" and self.student_config is None:
            raise ValueError("student_init 'scratch' needs student_config")
        if self.student_init == "base" and self.student_base_dir is None:
            raise ValueError("student_init 'base' needs student_base_dir")
        if self.also_logits and self.teacher_dir is None:
            raise ValueError("also_logits needs teacher_dir")
        return self

    @classmethod
    def from_plan(cls, loaded, *, generated_dir: str | Path, out_dir: str | Path,
                  tokenizer_dir: str | Path, flops_per_token: Optional[float] = None,
                  budget_flops: Optional[float] = None, **overrides) -> "SequenceConfig":
        """Student source, seq_len and tokens (data.tokens x epochs) from the plan;
        ``tokenizer_dir``: where the attested tokenizer was read; ``overrides`` win."""
        from audit.weights import teacher_folder

        plan, source = loaded.plan, str(loaded.path)
        if plan.method.kind != "sequence":
            raise InputError(f"sequence-level training needs method.kind 'sequence', not {plan.method.kind!r}",
                             source=source, field="method.kind")
        if plan.student.init == "pruned_teacher":
            raise InputError("a sequence plan loads no teacher, so its student cannot be a pruned teacher",
                             source=source, field="student.init")
        base_dir = None
        if plan.student.init == "base":
            base_dir = Path(plan.student.base_model).expanduser()
            if not base_dir.is_absolute():
                base_dir = loaded.path.parent / base_dir
        student_config = (loaded.student_config.path
                          if plan.student.init == "scratch" else None)
        logits = {}
        if plan.method.also_logits:
            teacher_dir = teacher_folder(plan)
            if teacher_dir is None:
                raise InputError("method.also_logits runs the teacher beside the student: set teacher.weights (its "
                                 "local folder) and re-run flopgate check", source=source, field="teacher.weights")
            logits = dict(also_logits=True, teacher_dir=teacher_dir, loss=plan.method.loss,
                          temperature=plan.method.temperature)
        fields = dict(**logits, generated_dir=Path(generated_dir), tokenizer_dir=Path(tokenizer_dir),
                      student_init=plan.student.init, student_config=student_config, student_base_dir=base_dir,
                      student_config_data=dict(loaded.student_config.data) if student_config is not None else None,
                      seq_len=plan.data.seq_len, max_tokens=int(plan.data.tokens * plan.data.epochs),
                      mean_document_tokens=plan.data.mean_document_tokens,
                      budget_flops=budget_flops, flops_per_token=flops_per_token, out_dir=Path(out_dir))
        fields.update(overrides)
        return validate_model(cls, fields, source)


def tokenize_and_pack(generated: GeneratedData, tokenizer, cfg: SequenceConfig) -> PackedSamples:
    """The kept samples tokenized and packed; refused (before any model loads) when their
    attention blocks pass what the audit counted (:mod:`distill.gate.preflight`)."""
    from distill.gate.preflight import check_packed_attention

    encoded = [encode_sample(tokenizer, messages, answer, where=f"{generated.kept_path}: sample {i + 1}")
               for i, (messages, answer) in enumerate(read_samples(generated))]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    data = pack(encoded, cfg.seq_len, seed=cfg.seed, pad_id=pad)
    check_packed_attention((torch.bincount(row).tolist() for row in data.segments), cfg.seq_len,
                           cfg.mean_document_tokens, source=str(generated.kept_path))
    return data


def train_sequence(cfg: SequenceConfig, generated: GeneratedData, attested_tokenizer, *, resume: bool = False,
                   on_step: Optional[Callable[[dict], None]] = None,
                   after_load: Optional[Callable[[Optional[torch.nn.Module], torch.nn.Module], None]] = None,
                   after_resume: Optional[Callable[[float], None]] = None):
    """Train per the module docstring; ``attested_tokenizer``: a
    :class:`distill.gate.attested.AttestedTokenizer`. Returns a :class:`distill.outputs.run_record.TrainResult`."""
    from distill.runtime import distributed
    from distill.train.loop import run_loop
    from distill.train.losses import LossSpec, fused_distill_loss
    from distill.runtime.models import (build_student, check_vocab, decoder_layers, head_weight,
                                        library_progress_bars, load_teacher, stop_at_end_of_turn)

    session_start = time.monotonic()
    library_progress_bars(cfg.progress and sys.stderr.isatty())
    ctx = distributed.setup(cfg.device)
    try:
        device = ctx.device
        amp_dtype = cfg.amp_dtype(device)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        tokenizer = attested_tokenizer.tokenizer
        data = tokenize_and_pack(generated, tokenizer, cfg)
        teacher = (load_teacher(cfg.teacher_dir, device, torch.bfloat16 if amp_dtype else torch.float32)
                   if cfg.also_logits else None)
        student = build_student(cfg.student_init, config=cfg.student_config_data or cfg.student_config,
                                base_dir=cfg.student_base_dir,
                                seed=cfg.seed).to(device)
        if after_load is not None:
            after_load(teacher, student)
        vocab = check_vocab(tokenizer, teacher, student)
        stop_at_end_of_turn(student, tokenizer)
        body = cfg.prepare_student(PackedHiddenStates(student), decoder_layers(student), ctx)
        teacher_body = PackedHiddenStates(teacher) if teacher is not None else None
        teacher_head = head_weight(teacher) if teacher is not None else None
        spec = LossSpec(cfg.loss, temperature=cfg.temperature, hard_label_weight=cfg.hard_label_weight)
        autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext

        def teacher_hidden(ids, positions, segments):
            with torch.inference_mode(), autocast():
                return teacher_body(ids, positions, segments)

        def micro_loss(batch, start: int, num_valid) -> torch.Tensor:
            ids, labels, positions, segments = (t.to(device) for t in batch)
            with autocast():
                hidden = body(ids, positions, segments)
            # the head after the forward: a sharded student's is whole only until its backward
            if teacher is None:
                return answer_loss_sum(hidden, head_weight(student), labels, vocab) / num_valid
            return fused_distill_loss(hidden, head_weight(student), teacher_hidden(ids, positions, segments),
                                      teacher_head, labels, spec, num_valid, vocab,
                                      matmul_dtype=amp_dtype if device.type == "cuda" else None)

        def eval_sums(batch) -> dict:
            """Held-out answers: the student's cross-entropy and top-1 agreement with the tokens
            the teacher wrote (distill/train/evaluation.py)."""
            from distill.train.evaluation import token_metric_sums

            ids, labels, positions, segments = (t.to(device) for t in batch)
            with autocast():
                hidden = body(ids, positions, segments)
            if teacher is None:
                return token_metric_sums(hidden, head_weight(student), labels, vocab)
            return token_metric_sums(hidden, head_weight(student), labels, vocab,
                                     teacher_hidden=teacher_hidden(ids, positions, segments), teacher_head=teacher_head)

        result = run_loop(cfg, ctx, student=student, body=body, data=data, micro_loss=micro_loss,
                          meter=cfg.compute_meter(ctx),
                          tokenizer=tokenizer, resume=resume, session_start=session_start, on_step=on_step,
                          after_resume=after_resume, eval_sums=eval_sums)
        if ctx.is_main:
            _write_data_record(cfg, generated, data, attested_tokenizer.digest())
        return result
    finally:
        distributed.teardown(ctx)


def _write_data_record(cfg: SequenceConfig, generated: GeneratedData, data: PackedSamples,
                       tokenizer_digest: dict) -> Path:
    from audit.fsutil import write_atomic

    body = {"generated": {"folder": str(generated.folder), "record_sha256": generated.record_sha256,
                          "kept_sha256": generated.kept_sha256,
                          "audit_sha256": (generated.predicate.get("audit") or {}).get("sha256"),
                          "job_id": (generated.predicate.get("job") or {}).get("id")},
            "tokenizer": {"folder": str(cfg.tokenizer_dir), **tokenizer_digest},
            "packing": {"seq_len": cfg.seq_len, "samples": data.samples, "truncated": data.truncated,
                        "skipped": data.skipped, "rows": len(data),
                        "answer_tokens": int((data.labels != IGNORE_INDEX).sum())}}
    return write_atomic(cfg.out_dir / DATA_RECORD, json.dumps(body, indent=2, sort_keys=True) + "\n")


# -- the command's branch ----------------------------------------------------------------------

def run(args, opened) -> int:
    """``flopgate distill`` for a sequence plan (or any plan given --generated), after the gate
    opened: provenance, config, device, dry run, training, then the record as for logit KD."""
    from distill.gate import preflight, gated_run
    from distill.train import session

    gate = opened.gate
    loaded = gate.loaded_plan
    kind = loaded.plan.method.kind
    if kind != "sequence":
        return gated_run.refuse("distill", [f"method: --generated trains on the teacher's answers, but the audited "
                                      f"plan is {kind!r}: its audit did not cover sequence-level training"])
    if not args.generated:
        raise InputError("a sequence plan trains on the teacher's answers: pass the folder flopgate generate "
                         "wrote with --generated DIR", source=str(loaded.path), field="--generated")
    from distill.gate.attested import InputsRefused

    reasons, generated, tokenizer = [], None, None
    try:  # every input from the attested layer; a refusal names every reason
        generated = gate.inputs.generated(args.generated)  # verified with the keys that verified the audit
    except InputsRefused as refused:
        reasons += refused.reasons
    try:
        tokenizer = gate.inputs.tokenizer(args.tokenizer)
    except InputsRefused as refused:
        reasons += refused.reasons
    if reasons:
        return gated_run.refuse("distill", reasons)
    out_dir = opened.out_dir
    preflight.check_out_dir(out_dir, args.resume, more=(DATA_RECORD,))
    also = bool(getattr(args, "also_logits", False))
    if also and not loaded.plan.method.also_logits:
        return gated_run.refuse("distill", ["method: --also-logits runs the teacher over the training samples, but the "
                                      "audited plan does not count it (method.also_logits): set it and re-run "
                                      "flopgate check"])
    if loaded.plan.method.also_logits and not also:
        raise InputError("the audit counts the teacher's logits over the training samples (method.also_logits): "
                         "pass --also-logits", source=str(loaded.path), field="--also-logits")
    overrides = {**session.loop_overrides(args), **opened.eval_figures()}
    cfg = SequenceConfig.from_plan(loaded, generated_dir=args.generated, out_dir=out_dir,
                                   tokenizer_dir=tokenizer.folder, flops_per_token=opened.flops_per_token,
                                   budget_flops=opened.budget_flops, **overrides)
    from distill.gate.gated_run import GateRefused

    try:
        preflight.check_first_step_fits(opened, step_tokens=preflight.step_tokens(cfg),
                                        flops_per_token=cfg.flops_per_token, tolerance=cfg.tolerance)
    except GateRefused as refused:
        return gated_run.refuse("distill", refused.reasons)
    device_name = preflight.device_name(args)
    print(f"generated data: {generated.kept_path} (sha256 {generated.kept_sha256[:12]}..., signed by the "
          f"generation record for this audit); tokenizer {cfg.tokenizer_dir} (sha256 {tokenizer.sha256[:12]}..., "
          f"from the audited {tokenizer.role.replace('_', ' ')})")
    print(f"compute: {short_sci(cfg.flops_per_token, 4)} FLOP per token (student training), budget "
          f"{short_sci(cfg.budget_flops, 4)} FLOP; device {device_name}")
    if args.dry_run:
        tokenize_and_pack(generated, tokenizer.tokenizer, cfg)
        return session.dry_run_done(args)

    booked = opened.step_charges()
    check = preflight.audited_model_checks(loaded, gate)
    result = train_sequence(cfg, generated, tokenizer, resume=args.resume, on_step=booked.on_step if booked else None,
                            after_load=check,
                            after_resume=booked.after_resume if booked else None)
    if result.rank != 0:
        return 0
    extra = [("generation_record", generated.record_path), ("sequence_data", cfg.out_dir / DATA_RECORD)]
    return session.finish_run(args, loaded, gate, cfg, result, opened.signing_key(), device_name, extra_files=extra,
                          ledger_head=opened.ledger_anchor())
