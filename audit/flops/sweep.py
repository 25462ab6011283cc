"""Breadth check: every model type transformers maps to a causal-LM (or seq2seq-LM) class is
built from its config class, counted on meta, and either counted exactly or refused by name.

A type is **counted** when its training step runs on meta with every FLOP-bearing op under a
formula (no unknown ops, no formula errors), the total equals the same model counted layer by
layer (no depth extension), and the parameter count equals transformers' ``num_parameters()``.
Anything else is **refused**, with the first failure as the reason.

The configs are the config classes' defaults (the published shape transformers documents for
the type) cut to at most ``MAX_DEPTH`` layers, with the few fixes in ``FIXES`` where the default
cannot be built at all. Counting on meta costs no memory, so widths stay as published.
"""

from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_DEPTH = 8
SEQ_LEN = 64

# Defaults that cannot be built as they stand, completed from the published model the config
# class documents (its docstring's checkpoint).
FIXES: dict[str, dict[str, Any]] = {
    # the LM head requires is_decoder; axial positions must multiply to the sweep's 64 tokens
    "reformer": {"is_decoder": True, "axial_pos_shape": [8, 8]},
    # DeepSeek-V2-Lite: top-6 of 64 routed experts, 1408 wide
    "deepseek_v2": {"num_experts_per_tok": 6, "moe_intermediate_size": 1408},
    # dots.llm1: 128 routed experts, top-6, 2 shared
    "dots1": {"n_routed_experts": 128, "num_experts_per_tok": 6, "n_shared_experts": 2},
    # LFM2-8B-A1B: 24 layers, attention at 2, 6, 10, 14, 18, 21, short convolutions elsewhere
    "lfm2_moe": {"num_hidden_layers": 24, "layer_types": ["full_attention" if i in (2, 6, 10, 14, 18, 21) else "conv"
                                                          for i in range(24)]},
    # DBRX: 8 KV heads, rope theta 5e5, qkv clipped at 8
    "dbrx": {"attn_config": {"kv_n_heads": 8, "rope_theta": 500000.0, "clip_qkv": 8.0}},
    # X-MOD: a language for the adapters (the default has one, en_XX, and names none as default)
    "xmod": {"default_language": "en_XX"},
    # North-Micro: rope parameters per layer type (the default leaves them empty; theta changes no FLOP)
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
}

# Why a type fails where its raw error does not say it: shown beside the error.
KNOWN_LIMITS: dict[str, str] = {
    **dict.fromkeys(["dots3_note", "dots3_note_text"],
                    "per-layer attention settings the config will not read globally"),
    "blt": "byte patches are cut where the entropy model's output says: data-dependent shapes",
    # refused before transformers 5.25; from 5.25 its MoE sends identity picks through a real expert
    # with weight 0, so every top-k pick is computed and the count is what the model runs
    "longcat_flash": ("zero-computation (identity) experts among the top-k: the FLOP per token depend on how "
                      "many picks the trained router sends to them"),
    **dict.fromkeys(["gemma4_assistant", "gemma4_unified_assistant"],
                    "a draft model fed by another model's hidden states, not a language model alone"),
    "nllb-moe": "experts chosen by data-dependent indexing (nonzero)",
    "gemma3n": "its vision tower needs the timm package, not installed here",
    **dict.fromkeys(["qwen4_exp", "qwen4_exp_text"],
                    "QSA sparse attention: the class default leaves the indexer's sizes unset, and with them set "
                    "the indexer picks keys with nonzero (data-dependent)"),
    "git": "an image-captioning model: its loss expects image tokens before the text",
}


@dataclass
class SweepRow:
    model_type: str
    status: str = "refused"            # counted | refused
    reason: str = ""
    architecture: str = ""
    layers: int = 0
    train_flops_per_token: float = 0.0
    params_total: float = 0.0
    depth_method: str = ""
    seconds: float = 0.0
    notes: list = field(default_factory=list)
    seq2seq_only: bool = False         # a type with a seq2seq-LM class and no causal-LM class

    def as_dict(self) -> dict:
        return asdict(self)


def sweep_types() -> list[str]:
    """Every model type with a causal-LM class, then those with only a seq2seq-LM class."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    causal = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    return causal + sorted(set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES) - set(causal))


def _depth_key(config) -> str | None:
    from audit.flops.hf_config import decoder_config

    text = decoder_config(config)
    return "num_hidden_layers" if isinstance(getattr(text, "num_hidden_layers", None), int) else None


def default_config(model_type: str):
    """The config class's default with ``FIXES``, and head sizes filled in where the default
    leaves them None (head_dim = hidden_size / heads, KV heads = heads), as the classes document."""
    from transformers import CONFIG_MAPPING

    from audit.flops.hf_config import decoder_config

    config = CONFIG_MAPPING[model_type](**FIXES.get(model_type, {}))
    for target in {id(config): config, id(decoder_config(config)): decoder_config(config)}.values():
        hidden, heads = _read(target, "hidden_size"), _read(target, "num_attention_heads")
        if _read(target, "head_dim", 0) is None and isinstance(hidden, int) and isinstance(heads, int):
            target.head_dim = hidden // heads
        if _read(target, "num_key_value_heads", 0) is None and isinstance(heads, int):
            target.num_key_value_heads = heads
    return config


def _read(config, key: str, missing: Any = None) -> Any:
    """``getattr`` that survives configs whose per-layer attributes refuse a global read."""
    try:
        return getattr(config, key, missing)
    except Exception:  # noqa: BLE001
        return missing


def small_config(model_type: str):
    """The type's default config with at most ``MAX_DEPTH`` decoder layers (rebuilt through the
    config class, so per-layer lists are derived for the new depth)."""
    from transformers import CONFIG_MAPPING

    from audit.flops.hf_config import decoder_config

    cls = CONFIG_MAPPING[model_type]
    fixes = FIXES.get(model_type, {})
    default = default_config(model_type)
    text = decoder_config(default)
    depth = getattr(text, "num_hidden_layers", None)
    if not isinstance(depth, int) or depth <= MAX_DEPTH:
        return default
    try:
        if text is default:
            small = cls(**{**fixes, "num_hidden_layers": MAX_DEPTH})
        else:
            sub_key = next((k for k, v in vars(default).items() if v is text), None)
            if sub_key is None:
                return default
            sub = type(text)(**{**text.to_dict(), "num_hidden_layers": MAX_DEPTH, "layer_types": None})
            small = cls(**{**fixes, sub_key: sub.to_dict()})
    except Exception:  # noqa: BLE001 - the class will not take fewer layers: count them all
        return default
    for target in (small, decoder_config(small)):  # the same fill-ins as the default's
        for key in ("head_dim", "num_key_value_heads"):
            if _read(target, key, 0) is None:
                setattr(target, key, _read(decoder_config(default), key))
    return small


class _Timeout(Exception):
    pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text[:150]}"


def check_type(model_type: str, seq_len: int = SEQ_LEN, timeout_s: int = 120) -> SweepRow:
    """Count one model type and decide counted or refused (see the module docstring)."""
    from audit.flops.model_step import build_meta_model, count_step, count_step_full
    from audit.flops.hf_config import decoder_config, is_encoder_decoder

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    row = SweepRow(model_type=model_type, seq2seq_only=model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    start = time.perf_counter()

    def expire(*_):
        raise _Timeout(f"over {timeout_s} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(timeout_s)
    try:
        try:
            config = small_config(model_type)
        except Exception as exc:  # noqa: BLE001
            limit = KNOWN_LIMITS.get(model_type)
            row.reason = (f"{limit}; " if limit else "") + f"config class default cannot be built: {_one_line(exc)}"
            return row
        if row.seq2seq_only and not getattr(config, "is_encoder_decoder", False):
            row.reason = ("a speech or audio model (its seq2seq class is not a text encoder-decoder): "
                          "its input is audio features, which a token count does not describe")
            return row
        try:
            step = count_step(config, seq_len)
        except _Timeout:
            raise
        except Exception as exc:  # noqa: BLE001
            try:  # the cut-down config may be what fails: the default, every layer
                full_depth = default_config(model_type)
                if decoder_config(full_depth).to_dict() == decoder_config(config).to_dict():
                    raise exc
                config = full_depth
                step = count_step(config, seq_len)
            except _Timeout:
                raise
            except Exception as exc2:  # noqa: BLE001
                limit = KNOWN_LIMITS.get(model_type)
                row.reason = (f"{limit}; " if limit else "") + f"meta run failed: {_one_line(exc2)}"
                return row
        row.layers = int(getattr(decoder_config(config), "num_hidden_layers", 0) or 0)
        row.architecture, row.depth_method, row.notes = step.architecture, step.depth_method, step.notes
        row.train_flops_per_token = (step.forward.headline + step.backward.headline) / step.tokens
        row.params_total = step.params.total
        unknown = step.forward.unknown_calls + step.backward.unknown_calls
        errors = {**step.forward.formula_errors, **step.backward.formula_errors}
        if unknown:
            row.reason = "ops without a formula: " + ", ".join(sorted(unknown))
            return row
        if errors:
            row.reason = "formula errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
            return row
        if row.train_flops_per_token <= 0:
            row.reason = "no FLOP counted"
            return row
        if step.depth_method.startswith("extended"):
            full = count_step_full(config, seq_len, built=build_meta_model(config, attention=step.attention, dtype=step.dtype))
            total_full = (full.forward.headline + full.backward.headline + step.mtp_train_flops) / full.tokens
            if abs(total_full - row.train_flops_per_token) > 1e-12 * total_full:
                row.reason = f"depth extension {row.train_flops_per_token:.6g} != every layer {total_full:.6g}"
                return row
        reference = build_meta_model(config, attention=step.attention, dtype=step.dtype).model.num_parameters() + step.mtp_params  # MTP: not built
        if reference != step.params.total:
            row.reason = f"parameters {step.params.total:.0f} != num_parameters() {reference}"
            return row
        if is_encoder_decoder(config):
            row.notes = row.notes + [f"encoder-decoder: both stacks, source length {seq_len}"]
        row.status, row.reason = "counted", ""
        return row
    except _Timeout as exc:
        row.reason = f"timed out: {exc}"
        return row
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        row.seconds = round(time.perf_counter() - start, 2)


def run_sweep(types: list[str] | None = None, seq_len: int = SEQ_LEN, progress=None,
              workers: int = 1) -> list[SweepRow]:
    """A :class:`SweepRow` per type (all of :func:`sweep_types` by default), in order;
    ``progress(row)`` after each. ``workers`` > 1: the types are counted in that many fresh
    processes (spawned, one torch thread each), since each type is counted on its own."""
    types = types or sweep_types()
    if workers <= 1:
        rows = [_quietly_checked(model_type, seq_len, progress) for model_type in types]
        return rows
    import multiprocessing

    rows = []
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_one_thread) as pool:
        for row in pool.imap(_checked_in_worker, [(model_type, seq_len) for model_type in types]):
            rows.append(row)
            if progress:
                progress(row)
    return rows


def _quietly_checked(model_type: str, seq_len: int, progress=None) -> SweepRow:
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = check_type(model_type, seq_len)
    if progress:
        progress(row)
    return row


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _checked_in_worker(job: tuple[str, int]) -> SweepRow:
    return _quietly_checked(*job)
