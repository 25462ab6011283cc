"""Count one training step of a Hugging Face causal LM (or encoder-decoder LM) on the meta device.

The model is built from its config with no weights and no memory, then one forward pass (with
the language-modelling loss) and one backward pass run under ``FlopCounter``. Hugging Face
paths are routed around so nothing data-dependent runs on meta:

* attention goes through our registered ``"flopgate"`` implementation (``flopgate::attention``),
  which also means HF builds no mask (its mask code calls ``.item()``); models with attention
  classes of their own (Falcon) are built with SDPA, whose calls are routed to the same op;
* MoE experts use HF's ``grouped_mm`` implementation in bf16 (FLOP do not depend on the routing:
  every token meets exactly top-k experts); batched dense experts (Llama 4) count at top-k;
* Mamba's reference scan (a Python loop over the sequence) is replaced by a loop-free scan with
  the same matmul FLOP, RWKV's recurrence likewise, and experts routed by ``nonzero``/``tolist``
  (DBRX, JetMoE) run the same top-k matmuls without reading the routing;
* LayerDrop is off (every layer counted, the same on every run).

``count_step`` extends a few shallow counts to the full depth by layer kind (exact, checked);
see its docstring and docs/flops.md. The pieces: :mod:`audit.flops.hf_config` (the config),
:mod:`audit.flops.meta_patches` (what runs differently while counting),
:mod:`audit.flops.depth` (layer kinds and the extension arithmetic).
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field
from typing import Any

import torch

from audit.flops.counter import Tally
from audit.flops.depth import (DepthError, kind_rows, per_layer_lists, plan_depths, extension_weights, signatures,
                               with_depth)
from audit.flops.hf_config import decoder_config, experts_top_k, is_encoder_decoder, is_moe, num_experts
from audit.flops.meta_patches import (ATTENTION_NAME, counting_context, known_inputs, register_counting_attention,
                                      routed_by_patch, sparse_key_cap)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}"


def without_layerdrop(config) -> list[str]:
    """Set every LayerDrop probability of ``config`` and its sub-configs to 0, in place (a
    training step with LayerDrop skips layers at random: the count would change run to run; the
    count is of every layer). Returns the fields that were set."""
    from transformers import PretrainedConfig

    changed = []
    for part in (config, *(v for v in vars(config).values() if isinstance(v, PretrainedConfig))):
        for key, value in list(vars(part).items()):
            if key.endswith("layerdrop") and isinstance(value, (int, float)) and value > 0:
                setattr(part, key, 0.0)
                changed.append(f"{key}={value:g}")
    return changed


def _from_config(builder, config, kwargs, dtype=torch.bfloat16):
    config = copy.deepcopy(config)  # a failed attempt may leave its settings on the config
    without_layerdrop(config)
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        model_class = _mapped_class(builder, config)
        wanted = getattr(model_class, "config_class", None)
        if wanted is not None and not isinstance(config, wanted):
            # a composite config whose causal-LM class takes one of its parts (MusicGen's decoder)
            part = next((v for v in vars(config).values() if isinstance(v, wanted)), None)
            if part is not None:
                return model_class._from_config(part, dtype=dtype, **kwargs)
        return builder.from_config(config, dtype=dtype, **kwargs)


def _mapped_class(builder, config):
    try:
        return builder._model_mapping[type(config)]
    except Exception:  # noqa: BLE001 - no mapping: let from_config say so
        return None


def _is_attention_refusal(exc: Exception) -> bool:
    text = f"{exc.__class__.__name__}: {exc}"
    return ATTENTION_NAME in text or "attn_implementation" in text or "attention implementation" in text


@dataclass
class MetaModel:
    """A model built on meta, with how its attention and experts are counted."""

    model: Any
    notes: list
    dense_experts: Any = None   # counter.DenseExperts when experts run densely
    attention: tuple = (ATTENTION_NAME,)  # the attention implementation it was built with
    dtype: Any = torch.bfloat16


def _runnable_model(config, seq_len: int, batch: int, source_len: int | None,
                    document_tokens: int | None = None) -> MetaModel:
    """The model built our way, or - when a model accepts our attention implementation but its
    own code then needs the mask transformers builds for the others (MPT) - built with SDPA.
    A one-layer trial run decides, so a failure is found before the layers are counted."""
    built = build_meta_model(config)
    if built.attention[0] != ATTENTION_NAME:
        return built
    trial_config = config
    depth = getattr(decoder_config(config), "num_hidden_layers", None)
    if isinstance(depth, int) and depth > 1 and not is_encoder_decoder(config):
        try:
            trial_config = with_depth(config, 1)
        except DepthError:
            pass

    def trial(attention: tuple, dtype) -> None:
        ours = attention[0] == ATTENTION_NAME and dtype == torch.bfloat16
        for candidate in ([trial_config, config] if trial_config is not config else [config]):  # shallow may not build
            try:
                model = built if candidate is config and ours else \
                    build_meta_model(candidate, attention=attention, dtype=dtype)
                count_step_full(candidate, seq_len, 1, source_len, built=model, document_tokens=document_tokens)
                return
            except Exception:  # noqa: BLE001
                if candidate is config:
                    raise

    # ours in bf16 (grouped MoE kernels need it), then the model's own attention, then float32
    # for code that mixes dtypes (XLNet, xLSTM)
    ways = [((ATTENTION_NAME,), torch.bfloat16), (("sdpa", "eager"), torch.bfloat16)]
    if not is_moe(config):
        ways += [((ATTENTION_NAME,), torch.float32), (("sdpa", "eager"), torch.float32)]
    first = None
    for attention, dtype in ways:
        try:
            trial(attention, dtype)
        except Exception as exc:  # noqa: BLE001 - the first failure is the one to report
            first = first or exc
            continue
        if attention[0] == ATTENTION_NAME and dtype == torch.bfloat16:
            return built
        return build_meta_model(config, attention=attention, dtype=dtype)
    raise first


def build_meta_model(config, attention: tuple = (ATTENTION_NAME, "sdpa", "eager"),
                     dtype: torch.dtype = torch.bfloat16) -> MetaModel:
    """The model on the meta device, bf16 (grouped MoE kernels require it), counting attention.

    Attention goes through our registered implementation; a model that keeps its own map of
    attention classes (Falcon) is built with SDPA, whose calls the counting run routes to our op.
    MoE experts use transformers' ``grouped_mm`` implementation; a model that does not offer it
    keeps its own experts code, and if that computes every expert for every token, its expert
    matmuls are counted at top-k (see ``counter.DenseExperts``).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    register_counting_attention()
    notes: list[str] = []
    builder = AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModelForCausalLM
    errors: list[str] = []
    model, used = None, {}
    with_experts = is_moe(config)
    for attn in attention:
        kwargs: dict[str, Any] = {"attn_implementation": attn}
        if with_experts:
            kwargs["experts_implementation"] = "grouped_mm"
        try:
            model, used = _from_config(builder, config, kwargs, dtype), kwargs
            break
        except Exception as exc:  # noqa: BLE001 - decide below whether another way may work
            message = _one_line(exc)
            if with_experts and "experts" in message and "implementation" in message:
                with_experts = False
                kwargs.pop("experts_implementation")
                try:
                    model, used = _from_config(builder, config, kwargs, dtype), kwargs
                    break
                except Exception as retry:  # noqa: BLE001
                    exc, message = retry, _one_line(retry)
            errors.append(f"with attn_implementation={attn!r}: {message}")
            if not _is_attention_refusal(exc):
                break
    if model is None:
        raise RuntimeError("cannot build the model on meta: " + "; then ".join(errors))
    if any(p.device.type != "meta" for p in model.parameters()):
        model.to("meta")  # made by a factory the device context does not reach (DiffLlama's torch.normal)
    dropped = without_layerdrop(copy.deepcopy(config))
    if dropped:
        notes.append(f"LayerDrop ({', '.join(dropped)}) off: every layer counted")
    if sparse_key_cap(config) and used["attn_implementation"] != ATTENTION_NAME:
        notes.append(f"sparse attention: each query attends to its top-{sparse_key_cap(config)} keys "
                     "(counted as min(causal keys, top-k)); the indexer's scores count as matmul")
    if used["attn_implementation"] == "sdpa":
        notes.append("attention: built with SDPA (the model does not work with transformers' attention "
                     "interface); SDPA calls are counted by our attention op (a mask is taken as causal), "
                     "attention written as matmuls counts as matmul over the full score matrix")
    elif used["attn_implementation"] == "eager":
        notes.append("attention: built with eager attention; its score matmuls count as matmul over the full matrix")
    dense = None
    if is_moe(config) and "experts_implementation" not in used:
        from audit.flops.counter import DenseExperts

        experts, top_k = num_experts(config), experts_top_k(config)
        shapes = frozenset(tuple(p.shape) for n, p in model.named_parameters()
                           if p.dim() == 3 and p.shape[0] == experts and ".experts." in n + ".")
        if routed_by_patch(model):
            notes.append("experts: the model's routing reads tensor values; while counting, a patch sends the "
                         "same number of (token, expert) pairs through experts of the same shape")
        elif shapes and top_k:
            dense = DenseExperts(weight_shapes=shapes, factor=top_k / experts)
            notes.append(f"experts: the model's own batched experts run every token through all {experts}; "
                         f"their matmuls are counted at top-{top_k}")
        else:
            notes.append("experts: the model's own experts implementation (not grouped_mm)")
    model.train()
    if dtype != torch.bfloat16:
        notes.append(f"built in {str(dtype).replace('torch.', '')}: the model's code mixes dtypes in bf16")
    return MetaModel(model=model, notes=notes, dense_experts=dense, attention=(used["attn_implementation"],),
                     dtype=dtype)


@dataclass
class ParamCounts:
    total: float
    active: float
    embedding: float


def count_parameters(model, config) -> ParamCounts:
    """Unique parameters (a tied lm_head counts once). Active = total minus the experts a token
    does not use (``_is_expert_weight``)."""
    total, embedding, expert = 0, 0, 0
    experts = num_experts(config)
    for name, param in model.named_parameters(remove_duplicate=True):
        n = param.numel()
        total += n
        if "embed" in name or name.endswith(("wte.weight", "wpe.weight")) or "lm_head" in name:
            embedding += n
        if experts and _is_expert_weight(name, param, experts):
            expert += n
    top_k = experts_top_k(config)
    active = total - expert * (1 - top_k / experts) if experts and top_k else total
    return ParamCounts(total=float(total), active=float(active), embedding=float(embedding))


def _is_expert_weight(name: str, param, experts: int) -> bool:
    """A parameter of one expert among ``experts``: under an ``experts`` module (not its router,
    nor a vector held by the experts module itself, which every token uses: JetMoE's output bias),
    or stacked per expert (3-d, first dimension the expert count: JetMoE's ``input_linear``)."""
    if param.dim() == 3 and param.shape[0] == experts:
        return True
    if ".experts." not in name + "." or ".router." in name:
        return False
    return not (param.dim() == 1 and name.rsplit(".", 1)[0].endswith("experts"))


@dataclass
class StepCount:
    """FLOP of one training step of ``batch x seq_len`` tokens (target tokens for an
    encoder-decoder, whose encoder reads ``source_len`` tokens per sequence)."""

    tokens: int
    forward: Tally
    backward: Tally
    params: ParamCounts
    architecture: str
    depth_method: str = "every layer"
    notes: list = field(default_factory=list)
    mtp_train_flops: float = 0.0   # of forward + backward headline: the MTP layers added (see _with_mtp)
    mtp_params: float = 0.0        # parameters of those layers (not in the built model)
    attention: tuple = (ATTENTION_NAME,)  # the attention implementation the model was built with
    dtype: Any = torch.bfloat16


def count_step(config, seq_len: int, batch: int = 1, source_len: int | None = None,
               document_tokens: int | None = None) -> StepCount:
    """One training step of ``batch x seq_len`` tokens (an encoder-decoder's encoder reads
    ``source_len`` tokens per sequence, default ``seq_len``; ``document_tokens``: each sequence is
    packed documents of that length under document masking, see ``counting_context``).

    Depth extension by layer kind: the built model's decoder layers are grouped by signature
    (``layer_signature``). The step is counted at a few shallow depths - 1 and 2 when every layer
    is the same; more for interleaved stacks (Jamba: 1, 2, 3 and 5 of 32) - and the full depth's
    count is the exact linear combination of those (``plan_depths``). Each shallow model's
    layers must have the full model's signatures in order, and the combination must reproduce
    the full model's parameter count exactly; otherwise, or when the config cannot be shortened,
    every layer runs, and ``depth_method`` says why.
    """
    built = _runnable_model(config, seq_len, batch, source_len, document_tokens)
    depth = getattr(decoder_config(config), "num_hidden_layers", None)
    reason = None
    kinds = None
    if not isinstance(depth, int) or depth <= 2:
        reason = "2 layers or fewer"
    elif is_encoder_decoder(config):
        reason = "encoder-decoder"
    else:
        keys = per_layer_lists(decoder_config(config), depth)
        kinds = signatures(built.model, config, depth, keys)
        if kinds is None:
            reason = "decoder layers not found"
    if reason is None:
        depths, weights = plan_depths(kinds, limit=depth // 2)
        if not depths:
            reason = f"{len(set(kinds))} layer kinds; extension would not save time"
    if reason is None:
        try:
            steps = []
            for k in depths:
                shallow = with_depth(config, k)
                shallow_built = build_meta_model(shallow, attention=built.attention, dtype=built.dtype)
                if signatures(shallow_built.model, shallow, k, keys) != kinds[:k]:
                    raise DepthError(f"the {k}-layer model's layers are not the full model's first {k}")
                steps.append(count_step_full(shallow, seq_len, batch, source_len, built=shallow_built,
                                             document_tokens=document_tokens))
        except DepthError as exc:
            reason = str(exc)[:160]
        except Exception as exc:  # noqa: BLE001 - a shallow model that will not run: count every layer
            reason = f"a shortened model cannot be counted: {_one_line(exc)}"[:200]
        else:
            full_params = count_parameters(built.model, config)
            params = ParamCounts(*(float(sum(w * getattr(s.params, f) for s, w in zip(steps, weights)))
                                   for f in ("total", "active", "embedding")))
            if params.total != full_params.total or params.active != full_params.active:
                reason = (f"depth extension does not reproduce the parameter count "
                          f"({params.total:.0f} vs {full_params.total:.0f})")
            else:
                from audit.flops.counter import Tally

                kinds_n = len(set(kinds))
                method = (f"extended from {', '.join(map(str, depths))} layers"
                          + (f" ({kinds_n} layer kinds)" if kinds_n > 1 else ""))
                result = StepCount(tokens=steps[0].tokens,
                                   forward=Tally.combine([s.forward for s in steps], weights),
                                   backward=Tally.combine([s.backward for s in steps], weights),
                                   params=full_params, architecture=steps[0].architecture,
                                   depth_method=method, notes=list(steps[0].notes), attention=built.attention,
                                   dtype=built.dtype)
                return _with_mtp(result, config, built.model, kinds, depths, steps)
    step = count_step_full(config, seq_len, batch, source_len, built=built, document_tokens=document_tokens)
    step.depth_method = f"every layer ({reason})"
    return _with_mtp(step, config, built.model, None, None, None)


def _with_mtp(step: StepCount, config, model, kinds, depths, steps) -> StepCount:
    """Multi-token-prediction layers (DeepSeek-V3 ``num_nextn_predict_layers``) that the config
    declares but transformers' model does not build. Each MTP depth is one more decoder layer of
    the last layer's kind, a projection of [hidden; embedding] (2d -> d) and the shared lm_head
    (d -> vocab), and two RMSNorms; its layer is counted from the shallow runs (the cost of one
    layer of that kind), the projection and head by formula. Without a depth extension to read
    the layer's cost from, the layers are named in a note, not counted."""
    text = decoder_config(config)
    n = getattr(text, "num_nextn_predict_layers", 0) or 0
    if not isinstance(n, int) or n <= 0:
        return step
    if any(key in name for name, _ in model.named_parameters() for key in ("mtp", "nextn")):
        return step  # the model builds them: already counted
    if kinds is None:
        step.notes.append(f"the config declares {n} multi-token-prediction layer(s), which transformers' "
                          "model does not build: not counted")
        return step
    from fractions import Fraction

    from audit.flops.counter import Tally

    distinct = list(dict.fromkeys(kinds))
    unit = [Fraction(0)] * (len(distinct) + 1)
    unit[1 + distinct.index(kinds[-1])] = Fraction(1)
    weights = extension_weights(kind_rows(kinds, depths), unit)  # one layer of the last kind
    if weights is None:
        step.notes.append(f"the config declares {n} multi-token-prediction layer(s), which transformers' "
                          "model does not build: not counted (its layer's cost is not separable here)")
        return step
    layer_fwd = Tally.combine([s.forward for s in steps], weights)
    layer_bwd = Tally.combine([s.backward for s in steps], weights)
    layer_params = [float(sum(w * getattr(s.params, f) for s, w in zip(steps, weights)))
                    for f in ("total", "active")]
    d, vocab, tokens = text.hidden_size, text.vocab_size, step.tokens
    head = 2.0 * tokens * (2 * d * d + d * vocab)  # projection and lm_head, forward
    forward = Tally.combine([step.forward, layer_fwd], [1, n])
    backward = Tally.combine([step.backward, layer_bwd], [1, n])
    forward.matmul += n * head
    backward.matmul += n * 2 * head
    extra = n * (2 * d * d + 2 * d)
    params = ParamCounts(total=step.params.total + n * layer_params[0] + extra,
                         active=step.params.active + n * layer_params[1] + extra, embedding=step.params.embedding)
    notes = step.notes + [f"{n} multi-token-prediction layer(s) declared by the config (not built by "
                          "transformers) counted: one decoder layer of the last kind, a 2d -> d projection "
                          "and the shared lm_head each"]
    added = (forward.headline + backward.headline) - (step.forward.headline + step.backward.headline)
    return StepCount(tokens=tokens, forward=forward, backward=backward, params=params,
                     architecture=step.architecture, depth_method=step.depth_method, notes=notes,
                     mtp_train_flops=added, mtp_params=params.total - step.params.total, attention=step.attention,
                     dtype=step.dtype)


def audio_codebooks(model, config) -> int:
    """Parallel codebooks of an audio-token decoder (MusicGen: ``num_codebooks`` token streams,
    one code of each summed into every position, one lm_head each), else 0. Such a model is
    counted per position (audio frame): ``seq_len`` frames of that many codes each. A model that
    declares codebooks but predicts text with one head (Moshi's causal LM) is not one."""
    value = getattr(decoder_config(config), "num_codebooks", None)
    heads = getattr(model, "lm_heads", None)
    if is_encoder_decoder(config) or not isinstance(value, int) or value < 2:
        return 0
    return value if isinstance(heads, torch.nn.ModuleList) and len(heads) == value else 0


def count_step_full(config, seq_len: int, batch: int = 1, source_len: int | None = None,
                    built: MetaModel | None = None, document_tokens: int | None = None,
                    prepare=None) -> StepCount:
    """Run forward (with loss) and backward on meta under the counter, every layer. ``prepare``:
    called with the built model before the step, returns the model to run (audit.flops.adapter:
    frozen weights with LoRA adapters)."""
    from audit.flops.counter import FlopCounter

    built = built or build_meta_model(config)
    model = built.model if prepare is None else prepare(built.model)
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    codebooks = audio_codebooks(model, config)
    if codebooks:  # one token stream per codebook, summed into one position
        streams = torch.zeros(batch * codebooks, seq_len, dtype=torch.long, device="meta")
        labels = torch.zeros(batch, seq_len, codebooks, dtype=torch.long, device="meta")
        inputs = dict(input_ids=streams, labels=labels, use_cache=False)
    elif is_encoder_decoder(config):
        source = torch.zeros(batch, source_len or seq_len, dtype=torch.long, device="meta")
        # decoder inputs given, so the labels are not shifted (no decoder_start_token_id needed)
        inputs = dict(input_ids=source, decoder_input_ids=ids, labels=ids, use_cache=False)
    else:
        inputs = dict(input_ids=ids, labels=ids, use_cache=False, **known_inputs(config, batch, seq_len))
    with counting_context(sparse_key_cap(config), document_tokens or 0):
        with FlopCounter(built.dense_experts) as forward:
            out = model(**inputs)
        loss = out.loss if getattr(out, "loss", None) is not None else out[0]
        with FlopCounter(built.dense_experts) as backward:
            loss.backward()
    return StepCount(tokens=batch * seq_len, forward=forward.tally, backward=backward.tally,
                     params=count_parameters(model, config),
                     architecture=type(model).__name__, attention=built.attention, dtype=built.dtype,
                     notes=list(built.notes) + ([f"audio tokens: counted per position (frame) of {codebooks} "
                                                 "codebooks"] if codebooks else []))
