"""Find a model's architecture config: a bundled name, a ``config.json`` path or a model folder.

Bundled configs hold hyperparameters only (no weights) and live in ``audit/model_configs``.
Reading a config never imports torch or transformers, so cached checks stay fast.

:func:`check_config_sizes` is the one sanity check of a config's sizes (layers, heads, hidden
and intermediate sizes, vocabulary, experts, positions: whole numbers below the ceilings in
``audit.limits``), run before any model is built or counted: by :func:`resolve_config`, by
``audit.flops.hf_config.build_config`` and by ``distill.runtime.models`` before a model is built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.attest.canonical import json_depth
from audit.errors import InputError
from audit.fsutil import read_input
from audit.limits import (MAX_EXPERTS, MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_JSON_DEPTH,
                          MAX_LAYERS, MAX_POSITIONS, MAX_SMALL_FILE_BYTES, MAX_VOCAB)

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "model_configs"


@dataclass(frozen=True)
class ResolvedConfig:
    ref: str                 # as the user wrote it
    path: Path               # the config.json read
    bundled: bool
    data: dict[str, Any]
    sha256: str              # of the file's bytes


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.json"))


def resolve_config(ref: str, *, source: str = "config", field: str | None = None) -> ResolvedConfig:
    """Resolve ``ref`` (bundled name, config.json path or model dir). ``source``/``field`` name
    where the reference came from, for error messages."""
    bundled = BUNDLED_DIR / f"{ref}.json"
    if "/" not in ref and bundled.is_file():
        path, is_bundled = bundled, True
    else:
        candidate = Path(ref).expanduser()
        if candidate.is_dir():
            if not (candidate / "config.json").exists():
                raise InputError(f"{ref!r} is a folder without a config.json; expected a model folder, "
                                 "a config.json or a bundled config name", source=source, field=field)
            candidate = candidate / "config.json"
        elif not candidate.exists():
            hint = ", ".join(bundled_names())
            raise InputError(f"expected a bundled config name ({hint}), a config.json or a model "
                             f"folder, got {ref!r} (not found)", source=source, field=field)
        path, is_bundled = candidate, False
    raw = read_input(path, "model config", source=source, field=field, max_bytes=MAX_SMALL_FILE_BYTES)
    try:
        if json_depth(raw.decode("utf-8"), MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise InputError(f"invalid JSON in {path} ({exc})", source=source, field=field) from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise InputError(f"{path} has no 'model_type'; expected a Hugging Face config.json",
                         source=source, field=field)
    check_config_sizes(data, source=source, field=field, where=str(path))
    return ResolvedConfig(ref=ref, path=path, bundled=is_bundled, data=data,
                          sha256=hashlib.sha256(raw).hexdigest())


# Config keys that size a model, by kind: (keys, least value, ceiling, kind in words).
SIZE_FIELDS = (
    (("num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers", "num_encoder_layers",
      "encoder_layers", "decoder_layers"), 1, MAX_LAYERS, "layers"),
    (("hidden_size", "n_embd", "d_model", "n_embed", "dim", "hidden_dim", "model_dim", "emb_dim", "head_dim",
      "d_kv", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
     1, MAX_HIDDEN, "hidden size"),
    (("intermediate_size", "ffn_dim", "d_ff", "n_inner", "moe_intermediate_size",
      "shared_expert_intermediate_size", "encoder_ffn_dim", "decoder_ffn_dim", "ffn_hidden_size"),
     1, MAX_INTERMEDIATE, "intermediate size"),
    (("num_attention_heads", "n_head", "n_heads", "num_key_value_heads", "num_kv_heads", "n_kv_heads",
      "encoder_attention_heads", "decoder_attention_heads", "num_heads"), 1, MAX_HEADS, "heads"),
    (("vocab_size", "n_vocab", "padded_vocab_size"), 1, MAX_VOCAB, "vocabulary"),
    (("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "n_shared_experts",
      "num_shared_experts", "num_experts_per_tok", "num_experts_per_token", "moe_top_k", "moe_k"),
     0, MAX_EXPERTS, "experts"),
    (("max_position_embeddings", "n_positions", "n_ctx"), 1, MAX_POSITIONS, "positions"),
)
_LIMIT_OF = {key: (least, ceiling, kind) for keys, least, ceiling, kind in SIZE_FIELDS for key in keys}


def check_config_sizes(data: dict[str, Any], *, source: str, field: str | None = None,
                       where: str | None = None) -> None:
    """Refuse a config whose size fields (:data:`SIZE_FIELDS`, at any level: ``text_config``,
    ``ffn_config``, per-layer lists) are not whole numbers from their least value to their
    ceiling (``audit.limits``): a billion layers would hang building them, -1 would count as
    something. ``null`` is allowed (transformers' default). ``InputError`` names ``source``,
    ``field``, the config (``where``) and the key."""
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:
        prefix, node = pending.pop()
        if isinstance(node, dict):
            entries = [(f"{prefix}.{key}" if prefix else str(key), key, value) for key, value in node.items()]
        else:
            entries = [(f"{prefix}[{i}]", None, value) for i, value in enumerate(node)]
        for name, key, value in entries:
            if key in _LIMIT_OF:
                _check_size(value, name, _LIMIT_OF[key], source, field, where)
            elif isinstance(value, (dict, list)):
                pending.append((name, value))


def _check_size(value: Any, name: str, limit: tuple[int, int, str], source: str, field: str | None,
                where: str | None) -> None:
    least, ceiling, kind = limit
    values = value if isinstance(value, list) else [value]  # per-layer sizes (OpenELM)
    for item in values:
        if item is None and not isinstance(value, list):
            continue
        if isinstance(item, int) and not isinstance(item, bool) and least <= item <= ceiling:
            continue
        if kind == "positions" and isinstance(item, float) and item.is_integer() and least <= item <= ceiling:
            continue  # a length, not a count of modules: some default configs write 1200.0
        shown = repr(item) if len(repr(item)) <= 40 else repr(item)[:40] + "..."
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}{name}: expected a whole number from {least} to {ceiling:,} (the limit "
                         f"for {kind}), got {shown}", source=source, field=field)
