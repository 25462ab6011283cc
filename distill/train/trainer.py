"""The distillation recipe: one readable pass from config to checkpoint.

``train(cfg)`` runs logit distillation of a local Hugging Face teacher into a student:

1. join the process group if launched by torchrun (gloo on CPU, NCCL on CUDA);
2. load the tokenizer and teacher, build the student, reconcile their vocabularies;
3. map prepared shards (a shard manifest), or read, tokenize and pack raw files; check the
   data against the manifest;
4. AdamW, linear warm-up then cosine decay to ``min_lr_ratio x lr``, gradient clipping;
5. resume from the newest checkpoint when asked (bitwise exact on the same hardware);
6. each step: teacher forward (inference mode) or cached teacher targets, student forward,
   fused chunked loss normalised by the step's global valid-token count, backward, clip, step;
   meter, log, progress, checkpoint;
7. stop at ``max_steps`` / ``max_tokens`` or, with a checkpoint first, before the compute meter
   would pass budget x (1 + tolerance).

Precision: on CUDA the student runs under bf16 autocast (fp32 master weights) and the teacher
in bf16; on CPU everything is fp32. Logits are always formed and reduced in fp32 (on CUDA from
bf16 operands through fp32-output GEMMs, see :mod:`distill.train.losses`).

GPU fast path (the CUDA defaults): regional ``torch.compile`` of both models' decoder layers
and of the loss's per-chunk elementwise work (``compile``; off on CPU); bf16 GEMM operands in
the fused loss; the teacher under ``torch.inference_mode``; and no host sync inside a step:
batches are copied from pinned memory without blocking, ignored labels are masked rather than
gathered, the single-process valid-token count is taken on the host, and the loss and gradient
norm are read back (``.item()``) only every ``log_every`` steps (10 on CUDA, 1 on CPU) and at
checkpoints. Steps in between are still logged, with ``loss`` and ``grad_norm`` null.

Teacher source: ``online`` runs the teacher every step; ``cached`` reads top-k teacher
log-probabilities from ``teacher_cache_dir`` (:mod:`distill.train.teacher_cache`), building the cache
first when the folder has none, so the teacher's forward leaves the training loop. The meter
then charges the cache's teacher forward (``teacher_flops_per_token`` x the data's tokens) once
per run, and ``flops_per_token`` must be the student's training FLOP per token only.

Several processes (torchrun): the student is replicated under DDP or, from 1e9 parameters or
with ``student_sharding="fsdp"``, sharded with FSDP2 (:mod:`distill.runtime.fsdp`); the teacher (online,
or building a cache, each rank its share) is replicated too or, with ``shard_teacher``, its
decoder layers are sharded over the ranks with FSDP2 (:func:`distill.runtime.distributed.shard_teacher`),
for teachers larger than one device.

Device: ``device="auto"`` picks CUDA when present. Refusing to train on CPU without
``--allow-cpu`` is the CLI's job, not this module's. Nothing here checks an audit: callers
must run the gate first (``flopgate distill`` does).

Plan mapping: :meth:`TrainConfig.from_plan` maps a loaded plan onto a config (teacher folder,
student source, manifest files, seq_len, loss, temperature, budget); the CLI passes the
audited FLOP per token and its own overrides.
"""

from __future__ import annotations

import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ClassVar, Literal, Optional

import torch
from pydantic import Field, model_validator

from audit.errors import InputError
from audit.numbers import short_sci
from audit.validation import validate_model
from distill.runtime import distributed
from distill.train import losses
from distill.data.training_data import load_training_data, read_manifest
from distill.train.loop import LoopConfig, run_loop, total_steps
from distill.outputs.run_record import TrainResult
from distill.train.losses import LossKind, LossSpec, fused_distill_loss
from distill.runtime.models import (HiddenStates, build_student, check_vocab, compile_layers, decoder_layers,
                                    head_weight, library_progress_bars, load_teacher,
                                    load_tokenizer, stop_at_end_of_turn)


class TrainConfig(LoopConfig):
    """A logit-distillation run (the loop's fields are :class:`distill.train.loop.LoopConfig`'s). Paths
    are local; token counts are tokens of the teacher's tokenizer."""

    RESUMABLE: ClassVar[frozenset] = LoopConfig.RESUMABLE | {"compile", "teacher_cache_dir", "teacher_flops_per_token",
                                                             "shard_teacher"}

    teacher_dir: Path = Field(description="local Hugging Face model folder (weights + tokenizer)")
    student_init: Literal["scratch", "base", "pruned_teacher"] = "scratch"
    student_config: Optional[Path] = Field(default=None, description="config.json or folder (scratch, pruned)")
    student_config_data: Optional[dict] = Field(default=None, description="the audited student config as the gate "
                                                "read it (scratch, pruned): the student is built from it, never "
                                                "from the file again")
    student_base_dir: Optional[Path] = Field(default=None, description="model folder (base)")
    student_layers: Optional[list[int]] = Field(default=None, description="teacher layers kept (pruned)")
    data_files: list[Path] = Field(min_length=1)
    manifest: Optional[Path] = None
    manifest_sha256: Optional[str] = Field(default=None, description="the audited manifest's digest (from "
                                           "the gate); the manifest the trainer reads must have it")
    loss: LossKind = "forward_kl"
    beta: float = Field(default=0.5, description="JSD weight, 0 < beta < 1")
    temperature: float = Field(default=1.0, gt=0)
    hard_label_weight: float = Field(default=0.0, ge=0, le=1)
    chunk_size: Optional[int] = Field(default=None, gt=0, description="tokens per fused-loss chunk")
    compile: Optional[bool] = Field(default=None, description="regional torch.compile of both models and "
                                    "the loss's chunk work; None: on for CUDA, off for CPU")
    teacher_source: Literal["online", "cached"] = "online"
    teacher_cache_dir: Optional[Path] = Field(default=None, description="cached teacher logits (built if absent)")
    teacher_cache_k: int = Field(default=64, gt=0, description="top-k kept per position when building the cache")
    teacher_cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    teacher_cache_tokens: Optional[int] = Field(default=None, gt=0, description="cached: the audited teacher "
                                                "tokens; the cache (and the training) cover the whole packed rows "
                                                "within them, never more")
    teacher_flops_per_token: Optional[float] = Field(default=None, gt=0, description="audited teacher "
                                                     "forward FLOP per token (charged once for a cache)")
    shard_teacher: bool = Field(default=False, description="several processes: shard the teacher's "
                                "decoder layers over them (FSDP2) instead of a whole copy on each")
    student_tokenizer_dir: Optional[Path] = Field(default=None, description="the student's own tokenizer "
                                                  "(student.tokenizer): cross-tokenizer distillation "
                                                  "(distill/train/cross_trainer.py); token counts are then "
                                                  "the student's")
    mean_document_tokens: Optional[int] = Field(default=None, gt=0, description="the plan's data.mean_document_"
                                                "tokens: the audit counted attention per document, so the "
                                                "document masks must keep no more pairs than it counted")
    document_masking: Optional[bool] = Field(default=None, description="each document piece of a packed row "
                                             "attends to itself only (block-diagonal causal masks, position ids "
                                             "restarting per document); None: on when mean_document_tokens is set")

    @property
    def masks_documents(self) -> bool:
        return self.document_masking if self.document_masking is not None else self.mean_document_tokens is not None

    @model_validator(mode="after")
    def _consistent(self):
        if self.loss == "jsd" and not 0 < self.beta < 1:
            raise ValueError(f"beta must be in (0, 1) for jsd, got {self.beta}")
        if self.student_init == "scratch" and self.student_config is None:
            raise ValueError("student_init 'scratch' needs student_config")
        if self.student_init == "base" and self.student_base_dir is None:
            raise ValueError("student_init 'base' needs student_base_dir")
        if self.student_layers is not None and self.student_init != "pruned_teacher":
            raise ValueError("student_layers applies to student_init 'pruned_teacher' only")
        if self.mean_document_tokens is not None and not self.masks_documents:
            raise ValueError("mean_document_tokens made the audit count attention per document: document_masking "
                             "cannot be off")
        if self.teacher_source == "cached":
            if self.masks_documents:
                raise ValueError("cached teacher logits are built over whole rows: document masking (and "
                                 "mean_document_tokens) apply to the online teacher only")
            if self.teacher_cache_dir is None:
                raise ValueError("teacher_source 'cached' needs teacher_cache_dir")
            if self.loss != "forward_kl" and self.hard_label_weight < 1:
                raise ValueError(f"cached teacher logits support the forward_kl loss only, not {self.loss}")
            if self.flops_per_token is not None and self.teacher_flops_per_token is None:
                raise ValueError("a metered run on cached teacher logits needs teacher_flops_per_token "
                                 "(the cache's teacher forward is charged to the budget)")
        return self

    @classmethod
    def parse(cls, data: dict, source: str = "train config") -> "TrainConfig":
        """Validate a mapping; ``InputError`` naming the field on bad input."""
        return validate_model(cls, data, source)

    @classmethod
    def from_plan(cls, loaded, *, out_dir: str | Path, flops_per_token: Optional[float] = None,
                  **overrides) -> "TrainConfig":
        """A config from a loaded plan (``audit.plan.LoadedPlan``).

        Mapped: teacher.model (a local model folder) -> teacher_dir; student.init/config/
        base_model -> the student source (bundled config names resolve to their JSON); data.
        manifest -> manifest and data_files (in manifest order); data.seq_len; data.tokens x
        epochs -> max_tokens; method.loss/temperature; method.kind ``logits`` -> the online
        teacher, ``cached_logits`` -> ``teacher_source="cached"`` with the cache in
        ``OUT/teacher-cache`` unless ``teacher_cache_dir`` is given; budget.max_flops ->
        budget_flops, or, without one, the audited run compute: flops_per_token x tokens, plus,
        for cached logits, teacher_flops_per_token x data.tokens once. For cached logits
        ``flops_per_token`` must be the student's training FLOP per token alone. ``overrides``
        set any other field (micro_batch, lr, ...) and win over the mapping.
        """
        plan, source = loaded.plan, str(loaded.path)
        if plan.teacher.access != "weights" or not Path(plan.teacher.model).is_dir():
            raise InputError(f"training needs the teacher's weights in a local model folder, got "
                             f"{plan.teacher.model!r} ({plan.teacher.access})", source=source, field="teacher.model")
        if plan.method.kind not in ("logits", "cached_logits"):
            raise InputError(f"the trainer runs logit distillation (online or cached), not {plan.method.kind!r}",
                             source=source, field="method.kind")
        cached = plan.method.kind == "cached_logits"
        if cached and plan.method.loss != "forward_kl":
            raise InputError(f"cached teacher logits support the forward_kl loss only, not {plan.method.loss!r}",
                             source=source, field="method.loss")
        if not plan.data.manifest:
            raise InputError("the trainer reads its data files from the manifest; none is set",
                             source=source, field="data.manifest")
        # the files the caller checked against the audited manifest (flopgate distill), else the manifest's
        files = overrides["data_files"] if overrides.get("data_files") else read_manifest(plan.data.manifest)[1]
        student_config = (loaded.student_config.path
                          if plan.student.init != "base" else None)
        base_dir = None
        if plan.student.init == "base":
            base_dir = Path(plan.student.base_model).expanduser()
            if not base_dir.is_absolute():
                base_dir = loaded.path.parent / base_dir
        tokens = int(plan.data.tokens * plan.data.epochs)
        teacher_fpt = overrides.get("teacher_flops_per_token")
        budget = plan.budget.max_flops
        if budget is None and flops_per_token is not None:
            budget = flops_per_token * tokens
            if cached:
                budget = budget + teacher_fpt * plan.data.tokens if teacher_fpt is not None else None
        if plan.student.tokenizer is not None:  # cross-tokenizer: the recipe of distill/train/cross_trainer.py
            overrides = {"student_tokenizer_dir": Path(plan.student.tokenizer), **overrides}
        fields = dict(teacher_dir=Path(plan.teacher.model), student_init=plan.student.init,
                      student_config=student_config, student_base_dir=base_dir, data_files=files,
                      student_config_data=dict(loaded.student_config.data) if student_config is not None else None,
                      manifest=Path(plan.data.manifest), seq_len=plan.data.seq_len, max_tokens=tokens,
                      mean_document_tokens=plan.data.mean_document_tokens,
                      loss=plan.method.loss, temperature=plan.method.temperature, budget_flops=budget,
                      flops_per_token=flops_per_token, out_dir=Path(out_dir))
        if cached:
            fields.update(teacher_source="cached", teacher_cache_dir=Path(out_dir) / "teacher-cache",
                          teacher_cache_tokens=int(plan.data.tokens), teacher_cache_k=plan.method.cache_top_k,
                          teacher_cache_dtype=plan.method.cache_dtype)
        fields.update(overrides)
        return cls.parse(fields, source)

    def loss_spec(self) -> LossSpec:
        return LossSpec(self.loss, self.beta, self.temperature, self.hard_label_weight)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without blocking the host on CUDA (from pinned memory)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _open_cache(cfg: TrainConfig, *, build: bool, teacher, data, vocab: int, device, amp_dtype, ctx,
                rows: int, lockstep: bool = False, padding: int = 0):
    """The verified teacher cache of this run. ``build`` (the folder has no index yet): every
    rank first builds its share of the shards (:func:`distill.train.teacher_cache.shard_plan`) and
    rank 0 writes the index. ``rows``: the first packed rows the cache covers. ``lockstep``: the
    teacher is sharded, so every rank runs as many forwards (``padding`` extra in all, recorded in
    the index's compute)."""
    from distill.runtime.checkpoint import checkpoint_digest
    from distill.train.teacher_cache import (INDEX_FILE, TeacherCache, build_cache_shards, read_index,
                                             write_cache_index)

    folder = cfg.teacher_cache_dir
    digest = checkpoint_digest(cfg.teacher_dir)
    sequences = data.first_sequences(rows)
    if build:
        shards = build_cache_shards(folder, teacher=teacher, sequences=sequences, vocab=vocab,
                                    k=cfg.teacher_cache_k, temperature=cfg.temperature,
                                    logprob_dtype=cfg.teacher_cache_dtype, batch_size=cfg.micro_batch,
                                    device=device, amp_dtype=amp_dtype, rank=ctx.rank, world_size=ctx.world_size,
                                    lockstep=lockstep, max_sequences=rows, check_disk=False)
        shards = [shard for part in distributed.gather_objects(shards, ctx) for shard in part]
        if ctx.is_main:
            write_cache_index(folder, shards, sequences=sequences, vocab=vocab, k=cfg.teacher_cache_k,
                              temperature=cfg.temperature, logprob_dtype=cfg.teacher_cache_dtype,
                              teacher_digest=digest, teacher_flops_per_token=cfg.teacher_flops_per_token,
                              padding_sequences=padding, max_sequences=rows)
        distributed.barrier(ctx)
    index = read_index(folder)
    if index.k != cfg.teacher_cache_k or index.logprob_dtype != cfg.teacher_cache_dtype:
        raise InputError(f"holds top-{index.k} {index.logprob_dtype} targets, the run asks for top-"
                         f"{cfg.teacher_cache_k} {cfg.teacher_cache_dtype}", source=str(folder / INDEX_FILE),
                         field="k")
    return TeacherCache.open(folder, sequences=sequences, vocab=vocab, temperature=cfg.temperature,
                             teacher_digest=digest, max_sequences=rows)


def train(cfg: TrainConfig, *, resume: bool = False,
          on_step: Optional[Callable[[dict], None]] = None,
          after_load: Optional[Callable[[Optional[torch.nn.Module], torch.nn.Module], None]] = None,
          after_resume: Optional[Callable[[float], None]] = None, tokenizer=None,
          manifest: Optional[dict] = None, student_tokenizer=None) -> TrainResult:
    """Run the distillation ``cfg`` describes; see the module docstring. All ranks call it.
    ``after_load(teacher, student)`` runs once the models are built, before anything trains (the
    gated path checks them against the audit there; it raises to refuse); ``after_resume(flops)``
    gets the meter's total as restored from a checkpoint (lost steps included), before any step.
    ``tokenizer``: the teacher's, as the attested layer built it from the audited folder's bytes
    (``flopgate distill``); None loads it from ``cfg.teacher_dir``. ``manifest``: the audited
    manifest as the attested layer read it; None reads ``cfg.manifest`` against
    ``cfg.manifest_sha256``. With ``cfg.student_tokenizer_dir`` the run is cross-tokenizer
    (:func:`distill.train.cross_trainer.train_cross_tokenizer`; ``student_tokenizer``: the
    student's, as the attested layer built it)."""
    if cfg.student_tokenizer_dir is not None:
        from distill.train.cross_trainer import train_cross_tokenizer

        return train_cross_tokenizer(cfg, resume=resume, on_step=on_step, after_load=after_load,
                                     after_resume=after_resume, tokenizer=tokenizer,
                                     student_tokenizer=student_tokenizer, manifest=manifest)
    session_start = time.monotonic()
    library_progress_bars(cfg.progress and sys.stderr.isatty())
    ctx = distributed.setup(cfg.device)
    try:
        device = ctx.device
        on_cuda = device.type == "cuda"
        amp_dtype = cfg.amp_dtype(device)
        compile_models = cfg.compile if cfg.compile is not None else on_cuda
        cached = cfg.teacher_source == "cached"
        if on_cuda:
            torch.set_float32_matmul_precision("high")  # fp32 matmuls (the loss's logits) use TF32
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        # --- Models, vocabulary, data --------------------------------------------------------
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.teacher_dir)
        from distill.train.teacher_cache import INDEX_FILE

        # Prepared shards (a shard manifest) or raw files; either way checked against the manifest.
        # Before any model loads: the document masks are checked against the audit here.
        data = load_training_data(cfg.data_files, tokenizer, cfg.seq_len, cfg.seed, manifest=cfg.manifest,
                                  manifest_sha256=cfg.manifest_sha256,
                                  manifest_data=manifest)
        if cfg.masks_documents:
            from distill.gate.preflight import check_document_masks

            documents = data.documents()
            if documents is None:
                raise InputError("document masking needs the documents' starts, which this data does not record",
                                 field="data.mean_document_tokens")
            check_document_masks(documents, cfg.mean_document_tokens, source=str(cfg.manifest or cfg.data_files[0]))
            data.mask_documents = True
        # Checked once: no rank writes an index before every rank has passed this point.
        build_cache = cached and not (cfg.teacher_cache_dir / INDEX_FILE).is_file()
        need_teacher = not cached or cfg.student_init == "pruned_teacher" or build_cache
        shard = cfg.shard_teacher and ctx.enabled and need_teacher  # one process has nothing to shard over
        teacher = (load_teacher(cfg.teacher_dir, "cpu" if shard else device,
                                torch.bfloat16 if amp_dtype else torch.float32) if need_teacher else None)
        student = build_student(cfg.student_init, teacher=teacher, config=cfg.student_config_data or cfg.student_config,
                                base_dir=cfg.student_base_dir, layers=cfg.student_layers, seed=cfg.seed).to(device)
        if after_load is not None:
            after_load(teacher, student)
        if shard:  # after a pruned student has copied its layers from the whole teacher
            distributed.shard_teacher(teacher, decoder_layers(teacher), ctx)
        student_tokenizer = None
        if cfg.student_base_dir is not None and any(
                (cfg.student_base_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            student_tokenizer = load_tokenizer(cfg.student_base_dir)
        vocab = check_vocab(tokenizer, teacher, student, student_tokenizer)
        stop_at_end_of_turn(student, tokenizer)
        total_steps(cfg, ctx.world_size)  # refuse a run shorter than one step before any cache is built

        if compile_models:
            compile_layers(student, backend=losses.COMPILE_BACKEND)
        if cfg.masks_documents:  # block-diagonal causal masks from the rows' document layout
            from distill.train.sequence import PackedHiddenStates

            body = cfg.prepare_student(PackedHiddenStates(student), decoder_layers(student), ctx)
            teacher_body = PackedHiddenStates(teacher) if teacher is not None else None
        else:
            body = cfg.prepare_student(HiddenStates(student), decoder_layers(student), ctx)
            teacher_body = HiddenStates(teacher) if teacher is not None else None
        spec = cfg.loss_spec()
        meter = cfg.compute_meter(ctx)

        # --- Teacher source -------------------------------------------------------------------
        cache = None
        if cached:
            from distill.train.teacher_cache import cache_size, check_cache_disk, lockstep_padding, shard_rows

            rows = len(data)  # the cache covers, and the run trains on, the audited tokens' whole rows
            if cfg.teacher_cache_tokens is not None:
                rows = min(rows, cfg.teacher_cache_tokens // cfg.seq_len)
                if rows < 1:
                    raise InputError(f"the audited {cfg.teacher_cache_tokens} tokens hold no whole sequence of "
                                     f"{cfg.seq_len}", field="data.tokens")
                data.limit(rows)
            padding = 0  # forwards a sharded teacher runs to keep the ranks in step (a build only)
            if shard and build_cache:
                per_shard = shard_rows(cfg.seq_len, cfg.teacher_cache_k, cfg.teacher_cache_dtype)
                padding = sum(lockstep_padding(rows, per_shard, ctx.world_size, cfg.micro_batch))
            if build_cache:  # refused before the teacher runs when the disk cannot hold the cache
                check_cache_disk(cfg.teacher_cache_dir, cache_size(rows * cfg.seq_len, cfg.teacher_cache_k,
                                                                   cfg.teacher_cache_dtype, seq_len=cfg.seq_len).total_bytes)
            if cfg.flops_per_token is not None:
                charge = cfg.teacher_flops_per_token * (rows + padding) * cfg.seq_len
                step = 0.0 if resume else cfg.flops_per_token * ctx.world_size * cfg.grad_accum * cfg.micro_batch * cfg.seq_len
                if meter.limit_flops is not None and charge + step > meter.limit_flops:
                    from distill.gate.gated_run import GateRefused  # before the cache is built: no step could follow it

                    raise GateRefused([f"budget: the teacher cache's forward pass takes {short_sci(charge, 4)} FLOP and "
                                       f"one step {short_sci(step, 4)} FLOP, past the budget's limit "
                                       f"{short_sci(meter.limit_flops, 4)}"])
                meter.charge(charge)  # a resumed run restores the meter, charge included
            cache = _open_cache(cfg, build=build_cache, teacher=teacher, data=data, vocab=vocab, device=device,
                                amp_dtype=amp_dtype, ctx=ctx, rows=rows, lockstep=shard, padding=padding)
            teacher = teacher_body = None  # not needed any more: free its memory
        elif compile_models and not shard:  # a sharded layer's all-gather hooks stay eager
            compile_layers(teacher, backend=losses.COMPILE_BACKEND)

        # --- One micro-step's loss; the loop (distill/train/loop.py) does the rest ------------------
        autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        teacher_head = head_weight(teacher) if teacher is not None else None
        loss_options = dict(matmul_dtype=amp_dtype if on_cuda else None, compile=compile_models)

        def micro_loss(batch, start: int, num_valid) -> torch.Tensor:
            inputs, labels, *layout = (_to_device(t, device) for t in batch)  # layout: positions, segments
            if cache is not None:
                from distill.train.teacher_cache import batch_sequence_ids, fused_cached_loss

                targets = cache.targets(batch_sequence_ids(data, start, cfg.micro_batch))
                targets = targets.pin_memory() if on_cuda else targets
                targets = targets.to(device, non_blocking=on_cuda)
                with autocast():
                    student_hidden = body(inputs)
                return fused_cached_loss(student_hidden, head_weight(student), targets, labels, spec, num_valid,
                                         vocab, cfg.chunk_size, **loss_options)
            with torch.inference_mode(), autocast():
                teacher_hidden = teacher_body(inputs, *layout)
            with autocast():
                student_hidden = body(inputs, *layout)
            # read after the forward: a sharded student's head is whole only until its backward
            return fused_distill_loss(student_hidden, head_weight(student), teacher_hidden, teacher_head,
                                      labels, spec, num_valid, vocab, cfg.chunk_size, **loss_options)

        def eval_sums(batch) -> dict:
            """Held-out metrics (distill/train/evaluation.py): with the online teacher, KL and top-1
            agreement too; on cached logits (no teacher left) the student's cross-entropy."""
            from distill.train.evaluation import token_metric_sums

            inputs, labels, *layout = (_to_device(t, device) for t in batch)
            with autocast():
                student_hidden = body(inputs, *layout)
                teacher_hidden = teacher_body(inputs, *layout) if teacher is not None else None
            sums = token_metric_sums(student_hidden, head_weight(student), labels, vocab,
                                     teacher_hidden=teacher_hidden, teacher_head=teacher_head)
            if teacher is None:
                del sums["top1_agreement"]  # against the data's tokens, not the teacher's: not reported
            return sums

        return run_loop(cfg, ctx, student=student, body=body, data=data, micro_loss=micro_loss, meter=meter,
                        tokenizer=tokenizer, resume=resume, session_start=session_start, teacher_sharded=shard,
                        on_step=on_step, after_resume=after_resume, eval_sums=eval_sums)
    finally:
        distributed.teardown(ctx)
