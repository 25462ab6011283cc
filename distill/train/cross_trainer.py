"""The cross-tokenizer logit recipe: :func:`distill.train.trainer.train` hands a run here when the
config names the student's own tokenizer (``student_tokenizer_dir``, from ``student.tokenizer``).

Same loop, optimiser, meter, checkpoints and evaluation schedule as the logit recipe
(:mod:`distill.train.loop`); what differs is the data and the loss:

* data: the prepared shards hold the student's tokens; the teacher's tokens of the same text and
  both tokenizations' character boundaries come from the manifest's ``teacher_tokenization``
  (:mod:`distill.data.cross_tokenized`, verified file by file). Each packed student row carries
  the teacher's row of the same characters and the aligned position pairs
  (:class:`distill.train.cross_tokenizer.CrossRows`);
* loss: :func:`distill.train.cross_tokenizer.cross_tokenizer_loss` (matched-token KL + ULD on
  aligned positions, the hard-label term on every labelled position), divided by the step's
  labelled student positions;
* evaluation: per aligned held-out position, the student's cross-entropy on its own next token,
  the divergence, and top-1 agreement through the vocabulary map. Held out by document, as the
  logit recipe (the shards' document starts): only pairs whose label lies in a wholly held-out
  document are scored.

The teacher runs online (``teacher_source="online"``) on rows of the audited teacher row length;
the meter charges per student token the audited rate (student training + teacher forward x
teacher tokens per student token). A pruned-teacher student shares the teacher's vocabulary and
is refused here, as are cached teacher logits and a sharded teacher (each process holds a
whole teacher). Regional ``torch.compile`` of both models' layers as in the logit recipe
(``compile``; on for CUDA); the loss itself is not compiled.
"""

from __future__ import annotations

import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch

from audit.errors import InputError
from distill.data.training_data import IGNORE_INDEX, EpochOrder, load_training_data, read_manifest
from distill.runtime import distributed
from distill.runtime.models import (HiddenStates, build_student, decoder_layers, final_hidden_states, head_weight,
                                    library_progress_bars, load_teacher, load_tokenizer, stop_at_end_of_turn)
from distill.train.cross_tokenizer import (CrossRows, VocabularyMap, aligned_agreement, aligned_divergence,
                                           cross_tokenizer_loss, teacher_len_for)


class CrossData(EpochOrder):
    """:class:`CrossRows` in the loop's seeded epoch order; ``rows(ids)`` -> (student inputs,
    labels, teacher inputs, pairs). ``starts``: where documents start in the student's stream
    (the shards' ``.idx`` offsets), so :meth:`hold_out` holds out whole documents as the logit
    recipe does (:class:`distill.data.documents.DocumentIndex`)."""

    def __init__(self, rows: CrossRows, seed: int, starts=None):
        self.cross, self.seed, self.starts = rows, seed, starts

    def total_rows(self) -> int:
        return len(self.cross)

    @property
    def seq_len(self) -> int:
        return self.cross.seq_len

    def document_starts(self):
        return self.starts

    def rows(self, ids):
        return self.cross.rows(ids)

    def eval_rows(self, ids) -> tuple:
        """Held-out rows as evaluation reads them: the aligned pairs whose student label lies in a
        wholly held-out document (the labels :meth:`EpochOrder.eval_rows` leaves scored)."""
        inputs, labels, teacher_inputs, pairs = super().eval_rows(ids)
        scored = labels[pairs[:, 0], pairs[:, 1]] != IGNORE_INDEX
        return inputs, labels, teacher_inputs, pairs[scored]


def check_heads(teacher, student, teacher_tokenizer, student_tokenizer) -> None:
    """Each model's output rows cover its own tokenizer (rows past it are padding)."""
    for role, model, tok in (("teacher", teacher, teacher_tokenizer), ("student", student, student_tokenizer)):
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < len(tok):
            raise InputError(f"the {role}'s output layer has {rows} rows but its tokenizer has {len(tok)} tokens",
                             field=f"{role}.vocab_size")


def open_cross_data(cfg, student_tokenizer, teacher_tokenizer, manifest: Optional[dict]) -> CrossData:
    """The verified shards (the student's tokens) and the teacher's tokenization beside them."""
    from distill.data.cross_tokenized import read_teacher_tokenization

    if cfg.manifest is None:
        raise InputError("cross-tokenizer distillation reads prepared shards with the teacher's tokenization "
                         "(flopgate data prepare --teacher-tokenizer); no manifest is set", field="data.manifest")
    if manifest is None:
        manifest = read_manifest(cfg.manifest, expected_sha256=cfg.manifest_sha256)[0]
    shards = load_training_data(cfg.data_files, student_tokenizer, cfg.seq_len, cfg.seed, manifest=cfg.manifest,
                                manifest_sha256=cfg.manifest_sha256, manifest_data=manifest)
    if not hasattr(shards, "shards"):
        raise InputError("cross-tokenizer distillation reads prepared shards, not raw files", source=str(cfg.manifest),
                         field="format")
    student_ids, _ = shards.shards.read(0, shards.shards.total)
    student, teacher = read_teacher_tokenization(manifest, Path(cfg.manifest).parent, student_ids,
                                                 teacher_tokenizer=teacher_tokenizer, source=str(cfg.manifest))
    rows = CrossRows(student, teacher, cfg.seq_len, teacher_len_for(student, teacher, cfg.seq_len),
                     pad_id=teacher_tokenizer.eos_token_id or 0)
    return CrossData(rows, cfg.seed, shards.document_starts())


def train_cross_tokenizer(cfg, *, resume: bool = False, on_step: Optional[Callable[[dict], None]] = None,
                          after_load=None, after_resume=None, tokenizer=None, student_tokenizer=None,
                          manifest: Optional[dict] = None):
    """Run ``cfg`` (a :class:`distill.train.trainer.TrainConfig` with ``student_tokenizer_dir``);
    arguments as :func:`distill.train.trainer.train`, plus ``student_tokenizer``: the student's,
    as the attested layer built it (None loads it from ``cfg.student_tokenizer_dir``)."""
    from distill.train.loop import run_loop, total_steps

    if cfg.teacher_source != "online":
        raise InputError("cross-tokenizer distillation runs the teacher online (cached top-k log-probabilities are "
                         "over the teacher's vocabulary alone)", field="teacher_source")
    if cfg.shard_teacher:
        raise InputError("a sharded teacher is not supported for cross-tokenizer distillation yet: each process "
                         "holds a whole teacher", field="shard_teacher")
    if cfg.student_init == "pruned_teacher":
        raise InputError("a pruned-teacher student has the teacher's vocabulary; student.tokenizer does not apply",
                         field="student.init")
    session_start = time.monotonic()
    library_progress_bars(cfg.progress and sys.stderr.isatty())
    ctx = distributed.setup(cfg.device)
    try:
        device = ctx.device
        amp_dtype = cfg.amp_dtype(device)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.teacher_dir)
        student_tokenizer = (student_tokenizer if student_tokenizer is not None
                             else load_tokenizer(cfg.student_tokenizer_dir))
        teacher = load_teacher(cfg.teacher_dir, device, torch.bfloat16 if amp_dtype else torch.float32)
        student = build_student(cfg.student_init, teacher=teacher, config=cfg.student_config_data or cfg.student_config,
                                base_dir=cfg.student_base_dir, seed=cfg.seed).to(device)
        if after_load is not None:
            after_load(teacher, student)
        check_heads(teacher, student, tokenizer, student_tokenizer)
        stop_at_end_of_turn(student, student_tokenizer)
        vmap = VocabularyMap.from_tokenizers(student_tokenizer, tokenizer)
        data = open_cross_data(cfg, student_tokenizer, tokenizer, manifest)
        total_steps(cfg, ctx.world_size)
        if cfg.compile if cfg.compile is not None else device.type == "cuda":  # as the logit recipe
            from distill.runtime.models import compile_layers
            from distill.train.losses import COMPILE_BACKEND

            compile_layers(student, backend=COMPILE_BACKEND)
            compile_layers(teacher, backend=COMPILE_BACKEND)
        body = cfg.prepare_student(HiddenStates(student), decoder_layers(student), ctx)
        meter = cfg.compute_meter(ctx)
        autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        teacher_head = head_weight(teacher)

        def forwards(batch):
            inputs, labels, teacher_inputs, pairs = (t.to(device) for t in batch)
            with torch.inference_mode(), autocast():
                teacher_hidden = final_hidden_states(teacher, teacher_inputs)
            with autocast():
                student_hidden = body(inputs)
            return student_hidden, labels, teacher_hidden.clone(), pairs

        def micro_loss(batch, start: int, num_valid) -> torch.Tensor:
            student_hidden, labels, teacher_hidden, pairs = forwards(batch)
            return cross_tokenizer_loss(student_hidden, head_weight(student), labels, teacher_hidden, teacher_head,
                                        pairs, vmap, num_valid, temperature=cfg.temperature,
                                        hard_label_weight=cfg.hard_label_weight)

        def eval_sums(batch) -> dict:
            """Per aligned held-out position: the student's cross-entropy on its own next token,
            the divergence (matched-token KL + ULD) and top-1 agreement with the teacher."""
            student_hidden, labels, teacher_hidden, pairs = forwards(batch)
            b, i, j = pairs[:, 0], pairs[:, 1], pairs[:, 2]
            z_s = student_hidden[b, i].float() @ head_weight(student)[:vmap.student_vocab].float().T
            z_t = teacher_hidden[b, j].float() @ teacher_head[:vmap.teacher_vocab].float().T
            ce = torch.nn.functional.cross_entropy(z_s, labels[b, i], reduction="sum")
            return {"tokens": float(len(pairs)), "ce": ce.double(),
                    "aligned_divergence": aligned_divergence(z_s, z_t, vmap, cfg.temperature).sum().double(),
                    "top1_agreement": aligned_agreement(z_s, z_t, vmap).sum().double()}

        return run_loop(cfg, ctx, student=student, body=body, data=data, micro_loss=micro_loss, meter=meter,
                        tokenizer=student_tokenizer, resume=resume, session_start=session_start,
                        teacher_sharded=False, on_step=on_step, after_resume=after_resume, eval_sums=eval_sums)
    finally:
        distributed.teardown(ctx)
