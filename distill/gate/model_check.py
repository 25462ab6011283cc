"""Proving that a loaded model is the audited model: same parameter names, shapes and count.

The audit counts FLOP from a config (``config.json`` as a dict). A folder's own ``config.json``
may differ from it: swapped, or sparse, so transformers fills defaults (a Llama config that
omits ``num_hidden_layers`` gets 32 layers). After the trainer loads a model, call
:func:`check_loaded_model` with the AUDITED config: it builds that config's model on the meta
device (no memory, no weights) and compares every parameter's shape with the loaded model's.

Parameters are compared by name as ``named_parameters()`` gives them (a tied ``lm_head`` is left
out on both sides, as shared parameters are listed once). Call it on the model as loaded, before
it is wrapped (DDP, ``HiddenStates``) or its vocabulary is resized.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import torch
from torch import nn

from audit.errors import InputError

SHOWN = 3  # differing tensors named in the error


def expected_shapes(config_dict: dict[str, Any], *, source: str = "the audited config"
                    ) -> dict[str, tuple[int, ...]]:
    """Every parameter's name -> shape (elements per dimension) of the causal LM that
    ``config_dict`` describes, built on the meta device. ``InputError`` naming ``source`` when
    the config cannot be built."""
    from transformers import AutoModelForCausalLM

    from audit.flops.hf_config import build_config

    if not isinstance(config_dict, dict) or "model_type" not in config_dict:
        raise InputError("expected a model config with a model_type", source=source, field="model_type")
    config = build_config(config_dict, source=source)
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        try:
            model = AutoModelForCausalLM.from_config(config)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds on bad configs
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot build the model: {detail}", source=source) from None
    return parameter_shapes(model)


def parameter_shapes(model: nn.Module, *, adapters: bool = False) -> dict[str, tuple[int, ...]]:
    """Name -> shape of ``model``'s parameters, shared (tied) ones listed once, in module order.
    ``adapters``: a PEFT base model, whose LoRA tensors (``lora_*``) are set aside and whose
    wrapped layers (``.base_layer``) are named as in the plain model."""
    shapes = {}
    for name, param in model.named_parameters(remove_duplicate=True):
        if adapters:
            if "lora_" in name:
                continue
            name = name.replace(".base_layer.", ".")
        shapes[name] = tuple(param.shape)
    return shapes


def check_loaded_model(model: nn.Module, config_dict: dict[str, Any], *, role: str, source: str,
                       adapters: bool = False) -> None:
    """``InputError`` (one line) when ``model``'s parameter names, shapes or total parameter
    count differ from the audited ``config_dict``'s: it names ``role`` (teacher/student), the
    first few differing tensors (loaded shape vs audited shape) and both parameter counts.
    ``source`` is the folder the model was loaded from; ``adapters`` as in
    :func:`parameter_shapes`."""
    audited = expected_shapes(config_dict, source=source)
    loaded = parameter_shapes(model, adapters=adapters)
    differing = [name for name in [*audited, *(n for n in loaded if n not in audited)]
                 if loaded.get(name) != audited.get(name)]
    n_loaded, n_audited = _count(loaded), _count(audited)
    if not differing and n_loaded == n_audited:
        return
    shown = "; ".join(f"{name}: loaded {_shape(loaded.get(name))} vs audited {_shape(audited.get(name))}"
                      for name in differing[:SHOWN])
    more = f" (and {len(differing) - SHOWN} more)" if len(differing) > SHOWN else ""
    raise InputError(f"the loaded {role} is not the audited model: {shown}{more}; "
                     f"{n_loaded:,} parameters loaded vs {n_audited:,} audited", source=source)


def _count(shapes: dict[str, tuple[int, ...]]) -> int:
    """Total number of parameters (elements)."""
    return sum(math.prod(shape) for shape in shapes.values())


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"
