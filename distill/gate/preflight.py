"""The checks ``flopgate distill`` (and ``generate``'s local teacher) run after the gate and
before any model loads, in one place: the output folder, the teacher folder against the audited
config, the training data against the audited manifest (prepared shards only), the device, the
packed attention against what the audit counted; and the models as loaded against the audited
configs (:func:`audited_model_checks`, the trainer's ``after_load`` hook). The meter's per-token
figures and budget come from ``audit.compute.run_budget.meter_figures`` through the gate.

Attention under packing. The audit counts attention over the (query, key) pairs a mask keeps
(``audit.flops.registry.kept_pairs``). A packed row of ``seq_len`` positions is counted as one
causal sequence, unless the plan declares ``data.mean_document_tokens = m``: then as blocks of
``m`` positions, each causal on its own (document masking), which is fewer pairs. What a run
keeps depends on its real document lengths: a row split into documents of lengths L1..Lk keeps
sum(Li (Li + 1) / 2) pairs, and for the same mean that sum grows with the spread of the lengths,
so a mean can under-count. Hence:

* the logit trainer masks each document piece of a row as its own block when the plan
  declares ``mean_document_tokens`` (document masking, :mod:`distill.data.documents`): the pairs
  its masks keep over every packed row must not exceed the audited pairs per row x rows
  (:func:`check_document_masks`), else it is refused the same way. Cached teacher logits are
  built over plain causal rows, so a ``cached_logits`` plan that declares it is refused;
* the sequence recipe masks each packed sample (and the padding) as its own block: its pairs,
  summed over the data, must not exceed the audited pairs per row x rows, else it is refused
  with the smallest ``mean_document_tokens`` that would cover them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from audit.errors import InputError
from audit.numbers import short_sci

SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size")
"""Config fields that fix a model's FLOP per token: the teacher used must match the audited one."""


def block_pairs(lengths: Iterable[int]) -> int:
    """Causal (query, key) pairs kept by a row split into blocks of ``lengths`` positions."""
    return sum(n * (n + 1) // 2 for n in lengths)


def audited_pairs_per_row(seq_len: int, mean_document_tokens: Optional[int]) -> int:
    """The pairs the audit counted for one packed row (no sliding window: an upper bound of it)."""
    from audit.flops.registry import kept_pairs

    return kept_pairs(seq_len, seq_len, True, document=mean_document_tokens or None)


def refuse_document_counting_without_masking(plan, source: str) -> None:
    """Cached teacher logits are built over plain causal rows (across documents)."""
    if plan.data.mean_document_tokens and plan.method.kind == "cached_logits":
        raise InputError(f"data.mean_document_tokens {plan.data.mean_document_tokens} made the audit count attention "
                         "per document, but the teacher cache is built over whole rows (no document masking), so it "
                         "would run more attention than audited: remove the field and re-run flopgate check",
                         source=source, field="data.mean_document_tokens")


def check_document_masks(documents, mean_document_tokens: Optional[int], source: str) -> int:
    """The logit trainer's document masks over every packed row of ``documents`` (a
    :class:`distill.data.documents.DocumentIndex`) against what the audit counted; returns the
    pairs kept, or an ``InputError`` as :func:`check_packed_attention`'s."""
    return _check_kept(documents.kept_pairs(), documents.rows, documents.seq_len, mean_document_tokens, source,
                       "the documents' masked pieces")


def check_packed_attention(rows: Iterable[Iterable[int]], seq_len: int, mean_document_tokens: Optional[int],
                           source: str) -> int:
    """``rows``: per packed row, the lengths of its masked blocks. Returns the pairs kept; an
    ``InputError`` when they pass what the audit counted for that many rows."""
    rows = [list(r) for r in rows]
    return _check_kept(sum(block_pairs(r) for r in rows), len(rows), seq_len, mean_document_tokens, source,
                       "the packed samples")


def _check_kept(kept: int, rows: int, seq_len: int, mean_document_tokens: Optional[int], source: str,
                what: str) -> int:
    audited = audited_pairs_per_row(seq_len, mean_document_tokens) * rows
    if kept > audited:
        fit = _smallest_covering_mean(kept / max(rows, 1), seq_len)
        raise InputError(f"{what} keep {kept:,} attention pairs, the audit counted {audited:,} for "
                         f"{rows} rows of {seq_len} (data.mean_document_tokens {mean_document_tokens}): "
                         f"set it to {fit} or more (or remove it) and re-run flopgate check", source=source,
                         field="data.mean_document_tokens")
    return kept


def _smallest_covering_mean(pairs_per_row: float, seq_len: int) -> int:
    """The smallest document length whose audited pairs per row cover ``pairs_per_row`` (the
    pairs grow with the length; the whole row, ``seq_len``, covers any split of it)."""
    low, high = 1, seq_len
    while low < high:
        mid = (low + high) // 2
        if audited_pairs_per_row(seq_len, mid) >= pairs_per_row:
            high = mid
        else:
            low = mid + 1
    return low


# -- the output folder, the teacher, the data -----------------------------------------------------

def run_files() -> tuple[str, ...]:
    """What a finished or started run leaves in --out besides checkpoints: a new run there must
    say --resume, so that a signed run record or a metrics log is never overwritten silently."""
    from distill.outputs.model_card import README_NAME
    from distill.outputs.run_record import RECORD_ENVELOPE, RECORD_JSON
    from distill.outputs.run_report import REPORT_NAME

    return RECORD_ENVELOPE, RECORD_JSON, "metrics.jsonl", README_NAME, REPORT_NAME


def check_out_dir(out_dir: Path, resume: bool, more: Sequence[str] = ()) -> None:
    """A folder that holds a run (checkpoints, a record, a log, a report, or ``more``) is only
    continued, with --resume: a signed record or a log is never overwritten silently."""
    from distill.runtime.checkpoint import list_checkpoints

    used = [name for name in (*run_files(), *more) if (out_dir / name).exists()]
    if list_checkpoints(out_dir):
        used.insert(0, "checkpoints")
    if used and not resume:
        raise InputError(f"already holds checkpoints or a run ({', '.join(used)}); resume the run (--resume) "
                         "or choose another output folder (--out)", source=str(out_dir))


def teacher_dir(loaded, inputs=None) -> Path:
    """The teacher's local folder, signed by the audit, whose config.json is the audited one;
    ``inputs``: the attested layer, which reads config.json against the gate's folder digest."""
    from audit.weights import teacher_folder

    folder = teacher_folder(loaded.plan)
    if folder is None:
        raise InputError(f"training needs the teacher's weights in a local folder, signed by the audit; "
                         f"{loaded.plan.teacher.model!r} is not one: set teacher.weights and re-run flopgate check",
                         source=str(loaded.path), field="teacher.weights")
    raw = inputs.folder_file("teacher_weights", "config.json") if inputs is not None else None
    check_teacher_matches_audit(loaded, folder, config_raw=raw)
    return folder


def check_teacher_matches_audit(loaded, teacher_dir: Path, config_raw: Optional[bytes] = None) -> None:
    """A cheap check before any model loads: the teacher folder's config.json agrees with the
    audited teacher config (as the gate verified it) on every shape field both give. The model
    as loaded is checked in full afterwards (:func:`audited_model_checks`). ``config_raw``: the
    file's bytes as the attested layer read them (:meth:`distill.gate.attested.AttestedInputs.
    folder_file`); else it is read here."""
    from audit.fsutil import parse_json, read_json

    if loaded.teacher_config is None:
        raise InputError("the plan has no teacher.config, so the teacher's weights cannot be matched "
                         "to the audit: add it and re-run flopgate check", source=str(loaded.path),
                         field="teacher.config")
    audited = loaded.teacher_config.data
    actual = (parse_json(config_raw, teacher_dir / "config.json", "the teacher's config.json") if config_raw is not None
              else read_json(teacher_dir / "config.json", "the teacher's config.json"))
    if not isinstance(actual, dict):
        raise InputError("config.json is not a JSON object", source=str(teacher_dir))
    differing = [f"{k} {actual[k]!r} (audited {audited[k]!r})" for k in SHAPE_FIELDS
                 if k in actual and k in audited and actual[k] != audited[k]]
    if differing or not all(k in actual and k in audited for k in ("hidden_size", "num_hidden_layers")):
        detail = ", ".join(differing) or "hidden_size/num_hidden_layers missing"
        raise InputError(f"the teacher folder is not the audited teacher: {detail}",
                         source=str(teacher_dir / "config.json"))


def training_data_files(loaded, override: Optional[Sequence[str]], manifest_sha256: Optional[str],
                        read: Optional[tuple] = None) -> list[Path]:
    """The shard files the run maps: the audited manifest's (or ``override``, --data), each
    checked against it; a raw-text manifest is refused (prepare it first). ``read``: the
    manifest and its files as the attested layer read them (:meth:`distill.gate.attested.
    AttestedInputs.manifest`); else it is read here against ``manifest_sha256``."""
    from distill.data.training_data import check_manifest, read_manifest
    from distill.data.shards import is_shard_manifest

    plan, source = loaded.plan, str(loaded.path)
    if not plan.data.manifest:
        raise InputError("the trainer reads its data through an audited manifest; none is set",
                         source=source, field="data.manifest")
    manifest, manifest_files = read if read is not None else read_manifest(plan.data.manifest,
                                                                           expected_sha256=manifest_sha256)
    if not is_shard_manifest(manifest):
        raise InputError("is a manifest of raw text files; the trainer reads prepared shards only: run flopgate data "
                         "prepare on the files, set data.manifest to its manifest.json and re-run flopgate check",
                         source=str(plan.data.manifest), field="format")
    data_files = [Path(f) for f in override] if override else manifest_files
    check_manifest(manifest, data_files, source=plan.data.manifest)
    return data_files


def device_name(args) -> str:
    """The accelerator's name; refuses CPU training without --allow-cpu."""
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if not args.allow_cpu:
        raise InputError("no CUDA device found; distillation runs on GPUs. Pass --allow-cpu to train "
                         "on the CPU (tests and tiny demos only)", field="--allow-cpu")
    return f"CPU ({platform.machine() or 'unknown'})"


# -- after the models load --------------------------------------------------------------------------

def audited_model_checks(loaded, gate):
    """The trainer's ``after_load`` hook: the models as loaded have exactly the parameter shapes
    of the audited configs (so the audited FLOP per token is theirs), and the teacher folder did
    not change between the gate's hash and the load."""
    from audit.weights import teacher_folder, verify_unchanged
    from distill.gate.model_check import check_loaded_model

    def check(teacher, student) -> None:
        if teacher is not None and loaded.teacher_config is not None:
            check_loaded_model(teacher, loaded.teacher_config.data, role="teacher",
                               source=str(teacher_folder(loaded.plan)))
        if student is not None and loaded.plan.student.init != "pruned_teacher":
            check_loaded_model(student, loaded.student_config.data, role="student",
                               source=str(loaded.student_config.path))
        for digest in gate.model_folders.values():
            verify_unchanged(digest)

    return check


# -- the budget: one step must fit ------------------------------------------------------------------

def check_first_step_fits(opened, *, step_tokens: int, flops_per_token: float, tolerance: float = 0.0,
                          one_off_flops: float = 0.0, what: str = "one step") -> None:
    """Refuse (:class:`distill.gate.gated_run.GateRefused`, exit 6) a run whose first optimizer step
    cannot fit in what the audit has left for it, before any model loads: a run that could take
    no step would still write an untrained student with a card and a signed record.

    Left: the run's budget (the audit's, less other runs' ledger charges) x (1 + ``tolerance``),
    less what the ledger already charged this run. Needed: ``step_tokens`` (all processes') x
    ``flops_per_token``, plus ``one_off_flops`` (a charge the run makes before its first step,
    e.g. a lower bound of a logit cache's teacher forward). FLOP, 1 multiply-add = 2 FLOP."""
    from distill.gate.gated_run import GateRefused

    left = opened.budget_flops * (1 + tolerance) - opened.charges.this_run
    needed = step_tokens * flops_per_token + one_off_flops
    if needed > left:
        extra = f" + {short_sci(one_off_flops, 4)} FLOP before it" if one_off_flops else ""
        raise GateRefused([f"budget: audit {opened.envelope_sha256[:12]}... has {short_sci(max(left, 0.0), 4)} FLOP left "
                           f"for this run; {what} needs {short_sci(needed, 4)} FLOP ({step_tokens:,} tokens x "
                           f"{short_sci(flops_per_token, 4)} FLOP per token{extra}): nothing was run or written"])


def step_tokens(cfg) -> int:
    """Training positions in one optimizer step, all processes: WORLD_SIZE (torchrun's, 1
    without it) x grad_accum x micro_batch x seq_len."""
    import os

    world_size = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    return world_size * cfg.grad_accum * cfg.micro_batch * cfg.seq_len
