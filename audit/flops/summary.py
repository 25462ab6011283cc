"""One model's per-token FLOP and parameter counts: :class:`ModelSummary` and
:func:`summarize_model`.

``summarize_model(ref, seq_len)`` resolves the config, counts a training step on the meta device
(or falls back to the closed form, saying why), and caches the result keyed by the config's
digest, the sequence length (and, when given, the encoder's source length and the packed
documents' length) and the torch/transformers versions, so a cached lookup imports neither
library.

The cache is outside the trust boundary (a shared CI cache, anyone's home): an entry is used
only when its HMAC-SHA256, keyed by the secret in the flopgate home folder
(:func:`audit.attest.keys.ensure_cache_mac_key`) and bound to the entry's cache key, verifies.
Anything else is recounted and overwritten. The summary says which it was (``count_source``).

Convention: 1 multiply-add = 2 FLOP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from audit.attest.seal import hmac_hex, hmac_verifies
from audit.errors import InputError
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
    coverage: float = Field(description="share of FLOP-bearing op calls counted by a formula, 0-1 (free ops excluded)")
    unknown_ops: dict[str, int] = {}
    formula_errors: dict[str, str] = {}
    method: Literal["counted", "closed_form"]
    fallback_reason: Optional[str] = None
    depth_method: Optional[str] = Field(None, description="how the layers were counted: extended from 1 and 2, or every layer and why")
    notes: list[str] = Field([], description="how attention, experts or stacks were counted where it is not the default")
    warnings: list[str] = Field([], description="inputs outside what the config declares (a sequence longer than its "
                                "positions), and assumptions the plan left to the counter (an encoder-decoder's "
                                "source length)")
    source_len: Optional[int] = Field(None, description="encoder-decoders: encoder tokens per sequence counted")
    document_tokens: Optional[int] = Field(None, description="packed documents' length under document masking "
                                           "(data.mean_document_tokens); causal self-attention counted per document")
    count_source: Literal["counted", "cache"] = Field(
        "counted", description="counted by this run, or read from the count cache (authenticated)")


COUNTER_VERSION = "7"  # bump when formulas or the cache format change, to invalidate caches
ENTRY_MAX_BYTES = 1 << 20  # an entry is under 1 KiB; a bigger file is not read
_MAC_DOMAIN = b"flopgate count cache entry v1\0"


def cache_dir() -> Path:
    base = os.environ.get("FLOPGATE_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "flopgate" / "flops"


def cache_key(config: ResolvedConfig, seq_len: int, source_len: int | None = None,
              document_tokens: int | None = None) -> str:
    extra = ([f"src{source_len}"] if source_len is not None else []) + \
            ([f"doc{document_tokens}"] if document_tokens is not None else [])
    return "-".join([config.sha256[:32], str(seq_len), *extra, "torch" + str(package_version("torch")),
                     "tf" + str(package_version("transformers")), "v" + COUNTER_VERSION])


def summarize_model(ref: str | ResolvedConfig, seq_len: int, *, source_len: int | None = None,
                    document_tokens: int | None = None, source: str = "config",
                    field: str | None = None, use_cache: bool = True) -> ModelSummary:
    """Per-token FLOP and parameter counts of the model ``ref`` at ``seq_len`` tokens per sequence.

    ``source_len`` (``data.source_len``): an encoder-decoder's encoder tokens per sequence; unset,
    ``seq_len`` is assumed and the summary's ``warnings`` say so. Ignored for decoder-only models.
    ``document_tokens`` (``data.mean_document_tokens``): each sequence is packed documents of that
    length under document masking; causal self-attention is counted per document.

    ``ref`` is a config reference (bundled name, config.json, model folder), or a config already
    read (:class:`ResolvedConfig`): an audit counts exactly the bytes it hashed and signs.

    With ``use_cache``, an authenticated cache entry is used (``count_source="cache"``); a
    missing, tampered, foreign or unreadable one is recounted and overwritten. ``InputError`` when
    the MAC key file is unusable (others may read it, not a key); when none can be made (a
    read-only home), the model is counted and nothing is cached.
    """
    config = ref if isinstance(ref, ResolvedConfig) else resolve_config(ref, source=source, field=field)
    ref = config.ref
    from audit.attest.keys import cache_mac_key_or_none

    mac_key = cache_mac_key_or_none() if use_cache else None
    for value, what in ((source_len, "data.source_len"), (document_tokens, "data.mean_document_tokens")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise InputError(f"{what}: expected a whole number of tokens > 0, got {value!r}", source=source,
                             field=what)
    name = cache_key(config, seq_len, source_len, document_tokens)
    path = cache_dir() / f"{name}.json"
    if mac_key is not None:
        cached = _read_entry(path, name, mac_key)
        if cached is not None and cached.config_sha256 == config.sha256:
            return cached.model_copy(update={"ref": ref, "count_source": "cache"})
    summary = _count(config, seq_len, source_len=source_len, document_tokens=document_tokens, source=source,
                     field=field)
    if mac_key is not None:
        _write_entry(path, name, mac_key, summary)
    return summary


def _entry_mac(key: bytes, name: str, summary_text: bytes) -> str:
    """HMAC-SHA256 over the summary's exact bytes, bound to the entry's cache key ``name`` (so a
    good entry moved to another model's or sequence length's file does not verify)."""
    return hmac_hex(key, _MAC_DOMAIN, summary_text, name)


def _read_entry(path: Path, name: str, key: bytes) -> ModelSummary | None:
    """The summary in the cache entry ``path`` when its MAC verifies under ``key``, else None.

    An entry is ``{"mac": hex, "summary": "<ModelSummary JSON text>"}``; the MAC is checked (in
    constant time) before the summary is parsed.
    """
    from audit.fsutil import read_input

    try:
        if not path.is_file() or path.stat().st_size > ENTRY_MAX_BYTES:
            return None
        raw = read_input(path, "count cache entry", max_bytes=ENTRY_MAX_BYTES)
    except (OSError, InputError):
        return None
    try:
        entry = json.loads(raw)
        mac, text = entry["mac"], entry["summary"]
        if not isinstance(mac, str) or not isinstance(text, str):
            return None
        summary_bytes = text.encode("utf-8")
        if not hmac_verifies(mac, key, _MAC_DOMAIN, summary_bytes, name):
            return None
        summary = ModelSummary.model_validate_json(summary_bytes)
    except (ValueError, KeyError, TypeError, RecursionError):
        return None  # not an entry we wrote: recounted and overwritten
    return summary if summary.count_source == "counted" else None


def _write_entry(path: Path, name: str, key: bytes, summary: ModelSummary) -> None:
    from audit.fsutil import write_atomic

    text = summary.model_dump_json()
    entry = {"mac": _entry_mac(key, name, text.encode("utf-8")), "summary": text}
    try:
        write_atomic(path, json.dumps(entry, indent=1) + "\n")
    except OSError:
        pass  # a read-only cache must not break a check


def _count(config: ResolvedConfig, seq_len: int, source_len: int | None = None,
           document_tokens: int | None = None, *, source: str, field: str | None) -> ModelSummary:
    from audit.flops.hf_config import build_config, is_encoder_decoder
    from audit.flops.model_step import count_step

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    where = config.ref if config.bundled else str(config.path)
    hf_config = build_config(config.data, source=where)
    warnings = sequence_warnings(hf_config, seq_len)
    encoder_decoder = is_encoder_decoder(hf_config)
    if not encoder_decoder:
        source_len = None  # no encoder: nothing reads it
    elif source_len is None:
        source_len = seq_len
        warnings.append(f"encoder-decoder counted with source_len = seq_len ({seq_len} encoder tokens per "
                        "sequence): data.source_len is not set; set it to the encoder input length")
    try:
        step = count_step(hf_config, seq_len, source_len=source_len, document_tokens=document_tokens)
    except Exception as exc:  # noqa: BLE001 - any failure of the HF path falls back, loudly
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return _closed_form_summary(config, seq_len, f"meta-device run failed: {exc.__class__.__name__}: {text}",
                                    source=where, warnings=warnings, document_tokens=document_tokens)
    notes = list(step.notes)
    if document_tokens is not None:
        notes.append(document_note(seq_len, document_tokens))
    if encoder_decoder:
        notes.append(f"encoder-decoder: both stacks, {source_len} encoder tokens per {seq_len} target tokens")
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
        method="counted", depth_method=step.depth_method, notes=notes, warnings=warnings,
        source_len=source_len, document_tokens=document_tokens,
    )


def document_note(seq_len: int, document_tokens: int) -> str:
    if document_tokens >= seq_len:
        return (f"packed documents of {document_tokens} tokens (data.mean_document_tokens) fill the "
                f"{seq_len}-token window: attention counted as one causal document per window")
    return (f"packed documents: causal self-attention counted per document of {document_tokens} tokens "
            f"(data.mean_document_tokens, document masking) in each {seq_len}-token window; cross- and "
            "bidirectional attention, and attention the model computes as matmuls, over the whole window")


def sequence_warnings(hf_config, seq_len: int) -> list[str]:
    """A sequence longer than the positions the config declares is counted, with a warning."""
    from audit.flops.hf_config import decoder_config

    positions = getattr(decoder_config(hf_config), "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < seq_len:
        return [f"seq_len {seq_len} exceeds max_position_embeddings {positions}: counted as given, "
                "but the model was not built for sequences this long"]
    return []


def _closed_form_summary(config: ResolvedConfig, seq_len: int, reason: str, *, source: str = "config",
                         warnings: list[str] | None = None, document_tokens: int | None = None) -> ModelSummary:
    """The closed form when the meta run failed; ``InputError`` (naming the meta failure too)
    when the config is outside what the closed form covers."""
    from audit.flops import closed_form

    try:
        est = closed_form.estimate(config.data, seq_len)
    except closed_form.OutsideBand as exc:
        raise InputError(f"cannot count this model: {reason}; the closed form does not apply: {exc}",
                         source=source) from None
    except (TypeError, ValueError, KeyError) as exc:  # a field of an unexpected kind
        raise InputError(f"cannot count this model: {reason}; the closed form cannot read the config "
                         f"({exc.__class__.__name__}: {exc})", source=source) from None
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
        coverage=0.0, method="closed_form", fallback_reason=reason, warnings=list(warnings or []),
        notes=list(est.notes) + ([f"packed documents of {document_tokens} tokens: not applied by the closed form, "
                                  "attention counted as one causal document per window (an upper bound)"]
                                 if document_tokens is not None else []),
    )
