"""Loading the teacher and building the student, and checking that they share a vocabulary.

Everything is read from local folders (``local_files_only``): nothing is downloaded.

Student sources (``init``):
* ``scratch``: a config (a ``config.json`` file or a folder holding one), random weights drawn
  from ``torch.manual_seed(seed)``;
* ``base``: a local Hugging Face model folder (its weights are the starting point);
* ``pruned_teacher``: depth pruning. The student is the teacher with only some decoder layers:
  ``layers`` lists the teacher layer indices to keep, in order; without it, the FIRST k layers
  are kept, k = the student config's ``num_hidden_layers`` (or the teacher's halved when there
  is no student config). Embeddings, final norm and lm_head are copied unchanged; every other
  dimension of a student config must equal the teacher's.

Vocabulary rule: V = len(teacher tokenizer). Both models' output rows must be >= V; rows past V
are padding (e.g. 151936 vs 152064) and are left out of every softmax. Fewer rows, or a student
folder whose own tokenizer maps tokens differently, is a real mismatch and an ``InputError``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from audit.errors import InputError
from audit.fsutil import read_json

UNSUPPORTED_HEAD_OPTIONS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def load_tokenizer(model_dir: str | Path):
    """The tokenizer saved in a local model folder."""
    from transformers import AutoTokenizer

    _require_dir(model_dir, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load a tokenizer ({_first_line(exc)})", source=str(model_dir)) from None


def load_teacher(model_dir: str | Path, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """The teacher in eval mode with gradients off (use bf16 on GPU, fp32 on CPU)."""
    model = _load_pretrained(model_dir, dtype, "teacher")
    model.to(device).eval().requires_grad_(False)
    check_head(model, str(model_dir))
    return model


def build_student(init: str, *, teacher: Optional[nn.Module] = None, config: str | Path | dict | None = None,
                  base_dir: str | Path | None = None, layers: Optional[Sequence[int]] = None,
                  seed: int = 0) -> nn.Module:
    """The student in fp32 on CPU, train mode. See the module docstring for the three sources."""
    if init == "scratch":
        if config is None:
            raise InputError("init is 'scratch' but no student config is given", field="student.config")
        student_config = load_config(config)
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(student_config, dtype=torch.float32)
    elif init == "base":
        if base_dir is None:
            raise InputError("init is 'base' but no base model folder is given", field="student.base_model")
        model = _load_pretrained(base_dir, torch.float32, "student")
    elif init == "pruned_teacher":
        if teacher is None:
            raise InputError("init is 'pruned_teacher' but there is no teacher", field="student.init")
        student_config = load_config(config) if config is not None else None
        if layers is None:
            count = (student_config.num_hidden_layers if student_config is not None
                     else max(1, teacher.config.num_hidden_layers // 2))
            layers = list(range(count))
        model = prune_layers(teacher, layers, config=student_config)
    else:
        raise InputError(f"expected scratch, base or pruned_teacher, got {init!r}", field="student.init")
    model.train()
    check_head(model, "student")
    return model


def prune_layers(teacher: nn.Module, layers: Sequence[int], config=None) -> nn.Module:
    """A copy of ``teacher`` (fp32) keeping decoder layers ``layers`` in that order."""
    from transformers import AutoModelForCausalLM

    total = teacher.config.num_hidden_layers
    layers = list(layers)
    if not layers or any(not 0 <= i < total for i in layers) or len(set(layers)) != len(layers):
        raise InputError(f"expected distinct layer indices in 0..{total - 1}, got {layers}",
                         field="student.layers")
    pruned = teacher.config.to_dict()
    pruned["num_hidden_layers"] = len(layers)
    if isinstance(pruned.get("layer_types"), list):  # per-layer attention kinds follow their layers
        pruned["layer_types"] = [pruned["layer_types"][i] for i in layers]
    if config is not None:
        mismatched = [key for key, value in config.to_dict().items()
                      if key in pruned and key not in _IGNORED_CONFIG_KEYS and pruned[key] != value]
        if mismatched:
            raise InputError("a pruned student must match the teacher except num_hidden_layers; "
                             f"differs in {', '.join(sorted(mismatched))}", field="student.config")
    student_config = type(teacher.config).from_dict(pruned)
    student = AutoModelForCausalLM.from_config(student_config, dtype=torch.float32)
    prefix = _layer_list_prefix(teacher)
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        match = pattern.match(key)
        teacher_key = (f"{prefix}.{layers[int(match.group(1))]}.{key[match.end():]}" if match else key)
        state[key] = source[teacher_key].detach().to(torch.float32).clone()
    student.load_state_dict(state)
    return student


_IGNORED_CONFIG_KEYS = {"num_hidden_layers", "layer_types", "dtype", "torch_dtype", "_name_or_path",
                        "architectures", "transformers_version", "use_cache"}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of layers (``model.layers`` for Llama)."""
    return model.get_submodule(_layer_list_prefix(model))


def compile_layers(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Regional compilation: ``torch.compile`` each decoder layer in place (``Module.compile``).

    Layers of one model share code and shapes, so one compiled graph serves them all: compile
    time is that of one layer, not of the whole stack, and parameter names (checkpoints) do not
    change. Fusions stay inside a layer (norms, rotary embedding, SwiGLU, residual adds)."""
    for layer in decoder_layers(model):
        layer.compile(backend=backend, dynamic=None)
    return model


def _layer_list_prefix(model: nn.Module) -> str:
    """State-dict prefix of the decoder's layer list (``model.layers`` for Llama)."""
    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and name:
            return name
    raise InputError(f"cannot find the decoder layer list of {type(model).__name__} to prune")


def check_vocab(tokenizer, teacher: Optional[nn.Module], student: nn.Module,
                student_tokenizer=None) -> int:
    """Number of logits both models are compared on: len(tokenizer). ``InputError`` on a mismatch.
    ``teacher`` may be None (cached teacher logits: the cache records its own vocabulary)."""
    vocab = len(tokenizer)
    for role, model in (("teacher", teacher), ("student", student)):
        if model is None:  # no teacher in memory: cached teacher logits
            continue
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < vocab:
            raise InputError(f"the {role}'s output layer has {rows} rows but the teacher's tokenizer "
                             f"has {vocab} tokens: the models do not share a vocabulary",
                             field=f"{role}.vocab_size")
    if student_tokenizer is not None:
        ours, theirs = tokenizer.get_vocab(), student_tokenizer.get_vocab()
        if ours != theirs:
            differing = len(set(ours.items()) ^ set(theirs.items()))
            raise InputError(f"the student's tokenizer differs from the teacher's ({len(theirs)} vs "
                             f"{len(ours)} tokens, {differing} differing entries): logit distillation over one "
                             "vocabulary needs one tokenizer; name the student's in student.tokenizer for "
                             "cross-tokenizer distillation", field="student.tokenizer")
    return vocab


ANSWER_MARKER = "flopgate answer text"
"""Plain text a chat template copies into an assistant turn and writes nowhere else."""


def end_of_turn_ids(tokenizer) -> list[int]:
    """The ids that end an answer: the special token the tokenizer's chat template writes right
    after an assistant message's text (found by rendering one: ``<|eot_id|>``, ``<|im_end|>``,
    ``<end_of_turn>``...), then the tokenizer's eos. Without a chat template, the eos alone."""
    ids: list[int] = []
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": ANSWER_MARKER}]
        text = tokenizer.apply_chat_template(chat, tokenize=False)
        tail = text.split(ANSWER_MARKER, 1)[1] if ANSWER_MARKER in text else ""
        special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
        found = sorted((tail.index(token), -len(token), token) for token in special if token and token in tail)
        if found:
            ids.append(tokenizer.convert_tokens_to_ids(found[0][2]))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def stop_at_end_of_turn(model: nn.Module, tokenizer) -> None:
    """Make ``model``'s generation config (saved with it) stop where the tokenizer's chat template
    ends a turn, and pad with the tokenizer's pad token (else the first stop id): a student
    trained on chat turns must end its own answers, not run to ``max_new_tokens``."""
    stops = end_of_turn_ids(tokenizer)
    if not stops:
        return
    config = model.generation_config
    config.eos_token_id = stops if len(stops) > 1 else stops[0]
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]


def check_head(model: nn.Module, where: str) -> None:
    """Refuse output heads the fused loss cannot reproduce (a bias, soft-capping, logit scaling)."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise InputError("the model has no output embedding (lm_head)", source=where)
    if getattr(head, "bias", None) is not None:
        raise InputError("an lm_head with a bias is not supported by the fused loss", source=where)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for option in UNSUPPORTED_HEAD_OPTIONS:
        value = getattr(config, option, None)
        if value not in (None, 0, 1, 1.0):
            raise InputError(f"{option}={value} is not supported by the fused loss", source=where)


def head_weight(model: nn.Module) -> torch.Tensor:
    """The lm_head weight [V, H] (a Parameter; tied to the input embedding where the model ties)."""
    return model.get_output_embeddings().weight


def final_hidden_states(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states [B, T, H] (after the final norm), without computing logits."""
    body = getattr(model, model.base_model_prefix)
    return body(input_ids=input_ids, use_cache=False).last_hidden_state


class HiddenStates(nn.Module):
    """Wraps a causal LM so its forward returns final hidden states: the module DDP wraps.

    The lm_head weight stays a parameter of this module; the fused loss uses it directly, and
    its gradient reaches DDP's hooks like any other."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return final_hidden_states(self.lm, input_ids)


def load_config(path: str | Path | dict):
    """A transformers config from a ``config.json`` file or a folder holding one, or from a
    config's JSON object already read (the audited one, as the gate read it)."""
    from transformers import AutoConfig

    from audit.flops.configs import check_config_sizes

    if isinstance(path, dict):
        file, data = "the audited config", dict(path)
        if "model_type" not in data:
            raise InputError("expected a JSON object with a model_type", source=file, field="model_type")
        check_config_sizes(data, source=file)
    else:
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        data = read_config_dict(file)
    model_type = data.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, TypeError) as exc:
        raise InputError(f"unusable config ({_first_line(exc)})", source=str(file)) from None


def read_config_dict(file: Path) -> dict:
    """The ``config.json`` dict in ``file``, its sizes checked (``check_config_sizes``: no model
    is built from a billion layers or a negative width)."""
    from audit.flops.configs import check_config_sizes

    data = read_json(file, "the config", missing="config file not found")
    if not isinstance(data, dict) or "model_type" not in data:
        raise InputError("expected a JSON object with a model_type", source=str(file), field="model_type")
    check_config_sizes(data, source=str(file))
    return data


def library_progress_bars(enabled: bool) -> None:
    """Turn transformers' own progress bars (loading and writing weights) on or off. The trainer
    turns them off unless stderr is a terminal, so logs and CI output carry no bar fragments."""
    from transformers.utils import logging as hf_logging

    if enabled:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


def _load_pretrained(model_dir: str | Path, dtype: torch.dtype, role: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    _require_dir(model_dir, role)
    if (Path(model_dir) / "config.json").is_file():  # sizes checked before transformers builds it
        read_config_dict(Path(model_dir) / "config.json")
    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the {role} model ({_first_line(exc)})", source=str(model_dir)) from None


def _require_dir(path: str | Path, role: str) -> None:
    if not Path(path).is_dir():
        raise InputError(f"expected a local Hugging Face model folder for the {role}", source=str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
