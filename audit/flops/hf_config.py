"""A Hugging Face model config for counting: built from the config dict the audit reads (with
the shape fields it must have), and the few facts about it the counter asks (its decoder part,
MoE expert counts, encoder-decoder or not)."""

from __future__ import annotations

from typing import Any


from audit.errors import InputError


# Keys that give a model its size. A config with none of them would be counted at
# transformers' default shape for the type, which is nobody's model: refused.
SHAPE_KEYS = ("hidden_size", "n_embd", "d_model", "n_embed", "dim", "hidden_dim", "model_dim", "emb_dim",
              "num_hidden_layers", "n_layer", "num_layers", "n_layers", "intermediate_size", "ffn_dim",
              "d_ff", "n_inner", "num_attention_heads", "n_head", "n_heads", "vocab_size")


def has_shape_fields(data: dict[str, Any]) -> bool:
    if any(key in data for key in SHAPE_KEYS):
        return True
    return any(isinstance(v, dict) and has_shape_fields(v) for k, v in data.items()
               if k.endswith("_config") or k in ("encoder", "decoder"))


def build_config(data: dict[str, Any], *, source: str):
    """A transformers config from a config.json dict (the floats transformers writes as
    ``{"__float__": ...}`` decoded as its loader decodes them); checks its sizes are sane
    (``configs.check_config_sizes``), that it is a causal LM (or an encoder-decoder LM) and that
    it says what size the model is."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    from audit.flops.configs import check_config_sizes

    check_config_sizes(data, source=source)  # before transformers builds anything from it
    model_type = data["model_type"]
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        known = "known" if model_type in transformers.CONFIG_MAPPING else "unknown"
        raise InputError(f"expected a causal language model config; model_type {model_type!r} "
                         f"({known} to transformers {transformers.__version__}) has no causal-LM class",
                         source=source, field="model_type")
    if not has_shape_fields(data):
        raise InputError(f"the config has no shape fields (none of {', '.join(SHAPE_KEYS[:6])}, ...); "
                         "it would be counted at transformers' default size for "
                         f"{model_type!r}, which is not a model", source=source, field="model_type")
    fields = {k: decode_special_floats(v) for k, v in data.items()
              if k not in ("model_type", "architectures", "auto_map")}
    try:
        return AutoConfig.for_model(model_type, **fields)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds on bad configs
        raise InputError(f"transformers rejected the config: {str(exc).splitlines()[0]}",
                         source=source, field="model_type") from None


# How transformers writes the floats JSON has no literal for (``PreTrainedConfig.save_pretrained``:
# Bamba's and Falcon-H1's ``time_step_limit`` upper end is ``{"__float__": "Infinity"}``).
FLOAT_TAG = "__float__"
FLOAT_TAG_VALUES = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def decode_special_floats(value: Any) -> Any:
    """``value`` with every ``{"__float__": "Infinity" | "-Infinity" | "NaN"}`` (an object with
    that one key) replaced by the float, at any depth - what transformers' own config loader
    (``PreTrainedConfig._decode_special_floats``) does; any other object or tag is left as it is."""
    if isinstance(value, dict):
        if set(value) == {FLOAT_TAG} and isinstance(value[FLOAT_TAG], str):
            return FLOAT_TAG_VALUES.get(value[FLOAT_TAG], value)
        return {k: decode_special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_special_floats(v) for v in value]
    return value


def is_moe(config) -> bool:
    return num_experts(config) > 1


def decoder_config(config):
    """The config that holds the decoder stack's depth (the text config of a multimodal model)."""
    getter = getattr(config, "get_text_config", None)
    if getter is not None:
        try:
            return getter(decoder=True)
        except TypeError:
            return getter()
    return config


def _first_int(config, keys: tuple, least: int) -> int:
    """The first of ``keys`` set to an int >= ``least`` on the decoder config or its MoE part
    (DBRX keeps its experts under ``ffn_config``), else 0."""
    text = decoder_config(config)
    for part in (text, getattr(text, "ffn_config", None)):
        for key in keys:
            value = getattr(part, key, None)
            if isinstance(value, int) and value >= least:
                return value
    return 0


def num_experts(config) -> int:
    return _first_int(config, ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"), 2)


def experts_top_k(config) -> int:
    return _first_int(config, ("num_experts_per_tok", "moe_top_k", "top_k", "num_experts_per_token", "moe_k"), 1)


def is_encoder_decoder(config) -> bool:
    """An encoder-decoder config (``is_encoder_decoder``) of a type with a seq2seq LM class: both
    stacks are counted (never the decoder alone, which is what its causal-LM class would run)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return (bool(getattr(config, "is_encoder_decoder", False))
            and config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
