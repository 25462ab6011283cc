"""One model's per-token FLOP and parameter counts: :class:`ModelSummary` and
:func:`summarize_model`.

``summarize_model(ref, seq_len)`` resolves the config, counts a training step on the meta device
(or falls back to the closed form, saying why), and caches the result keyed by the config's
digest, the sequence length and the torch/transformers versions, so a cached lookup imports
neither library.

Convention: 1 multiply-add = 2 FLOP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from audit.flops.configs import ResolvedConfig, resolve_config
from audit.validation import StrictModel
from audit.versions import package_version


class ModelSummary(StrictModel):
    """Parameter counts and per-token FLOP of one model at the plan's sequence length."""

    ref: str = Field(description="the config reference as given in the plan")
    architecture: str
    config_sha256: Optional[str] = None
    params_total: float
    params_active: float = Field(description="parameters used per token (MoE: top-k experts)")
    params_embedding: float
    train_flops_per_token: float = Field(description="forward+backward, causal-corrected")
    train_flops_per_token_noncausal: float
    forward_flops_per_token: float = Field(description="forward only, causal-corrected")
    forward_flops_per_token_noncausal: float
    non_matmul_train_flops_per_token: float = Field(description="elementwise, norm and softmax FLOP (approximate), not in the headline")
    attention_share: float = Field(description="attention's share of the training FLOP per token (causal)")
    coverage: float = Field(description="share of dispatched FLOP-bearing ops with a formula, 0-1")
    unknown_ops: dict[str, int] = {}
    formula_errors: dict[str, str] = {}
    method: Literal["counted", "closed_form"]
    fallback_reason: Optional[str] = None

COUNTER_VERSION = "3"  # bump when formulas change, to invalidate caches


def cache_dir() -> Path:
    base = os.environ.get("FLOPGATE_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "flopgate" / "flops"


def cache_key(config: ResolvedConfig, seq_len: int) -> str:
    return "-".join([config.sha256[:32], str(seq_len), "torch" + str(package_version("torch")),
                     "tf" + str(package_version("transformers")), "v" + COUNTER_VERSION])


def summarize_model(ref: str, seq_len: int, *, source: str = "config", field: str | None = None,
                    use_cache: bool = True) -> ModelSummary:
    """Per-token FLOP and parameter counts of the model ``ref`` at ``seq_len`` tokens per sequence."""
    config = resolve_config(ref, source=source, field=field)
    path = cache_dir() / f"{cache_key(config, seq_len)}.json"
    if use_cache and path.is_file():
        try:
            cached = ModelSummary.model_validate_json(path.read_text())
            return cached.model_copy(update={"ref": ref})
        except ValueError:
            pass  # a corrupt cache entry is recounted and overwritten
    summary = _count(config, seq_len, source=source, field=field)
    if use_cache:
        from audit.fsutil import write_atomic

        try:
            write_atomic(path, summary.model_dump_json(indent=1))
        except OSError:
            pass  # a read-only home must not break a check
    return summary


def _count(config: ResolvedConfig, seq_len: int, *, source: str, field: str | None) -> ModelSummary:
    from audit.flops.model_step import build_config, count_step

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_config = build_config(config.data, source=config.ref if config.bundled else str(config.path))
    try:
        step = count_step(hf_config, seq_len)
    except Exception as exc:  # noqa: BLE001 - any failure of the HF path falls back, loudly
        return _closed_form_summary(config, seq_len, f"meta-device run failed: "
                                    f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
    fwd, bwd, tokens = step.forward, step.backward, step.tokens
    train = (fwd.headline + bwd.headline) / tokens
    attention = (fwd.attention_masked + bwd.attention_masked) / tokens
    unknown = fwd.unknown_calls + bwd.unknown_calls
    return ModelSummary(
        ref=config.ref, architecture=step.architecture, config_sha256=config.sha256,
        params_total=step.params.total, params_active=step.params.active,
        params_embedding=step.params.embedding,
        train_flops_per_token=train,
        train_flops_per_token_noncausal=(fwd.headline_full_attention + bwd.headline_full_attention) / tokens,
        forward_flops_per_token=fwd.headline / tokens,
        forward_flops_per_token_noncausal=fwd.headline_full_attention / tokens,
        non_matmul_train_flops_per_token=(fwd.non_matmul + bwd.non_matmul) / tokens,
        attention_share=attention / train if train else 0.0,
        coverage=min(fwd.coverage, bwd.coverage),
        unknown_ops=dict(sorted(unknown.items())),
        formula_errors={**fwd.formula_errors, **bwd.formula_errors},
        method="counted",
    )


def _closed_form_summary(config: ResolvedConfig, seq_len: int, reason: str) -> ModelSummary:
    from audit.flops import closed_form

    est = closed_form.estimate(config.data, seq_len)
    train = 3 * est.forward_per_token
    return ModelSummary(
        ref=config.ref, architecture=config.data.get("model_type", "?"), config_sha256=config.sha256,
        params_total=est.params_total, params_active=est.params_active,
        params_embedding=est.params_embedding,
        train_flops_per_token=train, train_flops_per_token_noncausal=3 * est.forward_per_token_full,
        forward_flops_per_token=est.forward_per_token,
        forward_flops_per_token_noncausal=est.forward_per_token_full,
        non_matmul_train_flops_per_token=0.0,
        attention_share=3 * est.attention_per_token / train if train else 0.0,
        coverage=0.0, method="closed_form", fallback_reason=reason,
    )
