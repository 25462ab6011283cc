"""Depth extension: count a few shallow copies of a model and extend to its full depth by layer
kind. Layers are grouped by a signature (module classes, parameter shapes, attention attributes,
per-layer config entries); the full count is an exact rational combination of the shallow
counts, and :func:`audit.flops.model_step.count_step` checks it (or counts every layer)."""

from __future__ import annotations


import torch

from audit.flops.hf_config import decoder_config


# Config keys that make decoder layers differ from one another (dense-then-MoE stacks,
# interleaved attention kinds, ...). Any of them set means: count every layer.
_HETEROGENEOUS_KEYS = ("first_k_dense_replace", "mlp_only_layers", "moe_layer_freq", "no_rope_layers",
                       "interleave_moe_layer_step", "sliding_window_pattern", "global_attn_every_n_layers",
                       "cross_attention_layers", "max_window_layers", "full_attn_idxs", "attn_layer_period",
                       "expert_layer_period", "hybrid_override_pattern", "layers_block_type",
                       "attention_chunk_size", "num_nextn_predict_layers", "mlp_layer_types")


def layers_identical(config) -> bool:
    """True when the config declares nothing that makes decoder layers differ. (The built
    model's layers are compared too, see ``layer_signatures``.)"""
    config = decoder_config(config)
    for key in _HETEROGENEOUS_KEYS:
        try:
            value = getattr(config, key, None)
        except Exception:  # noqa: BLE001 - a property that cannot be read: assume heterogeneous
            return False
        if key == "max_window_layers" and not getattr(config, "use_sliding_window", False):
            continue  # Qwen2 keeps this key even when sliding windows are off
        if isinstance(value, (list, tuple)) and len(set(map(str, value))) <= 1:
            continue
        if value not in (None, 0, 1, [], ()) or (key == "max_window_layers" and value is not None
                                                and value < config.num_hidden_layers):
            return False
    if getattr(config, "decoder_sparse_step", 1) not in (None, 1):
        return False
    layer_types = getattr(config, "layer_types", None)
    return not layer_types or len(set(map(str, layer_types))) == 1


class DepthError(ValueError):
    """The config cannot be shortened to fewer layers."""


def per_layer_lists(config, depth: int) -> list[str]:
    names = []
    for key, value in vars(config).items():
        if not key.startswith("_") and isinstance(value, (list, tuple)) and len(value) == depth and depth > 1:
            names.append(key)
    return names


def with_depth(config, layers: int):
    """A copy of ``config`` with ``layers`` decoder layers; per-layer lists are cut to match.
    ``DepthError`` when that cannot be done (a read-only per-layer property that does not follow)."""
    import copy

    shallow = copy.deepcopy(config)
    text = decoder_config(shallow)
    depth = text.num_hidden_layers
    per_layer = per_layer_lists(text, depth)
    try:
        text.num_hidden_layers = layers
        for key in per_layer:
            setattr(text, key, list(getattr(text, key))[:layers])
    except Exception as exc:  # noqa: BLE001 - read-only properties, validators
        raise DepthError(f"cannot shorten the config: {exc.__class__.__name__}: {exc}") from None
    if text.num_hidden_layers != layers:
        raise DepthError("cannot shorten the config: num_hidden_layers is derived")
    for key in ("layer_types", "layers_block_type"):
        try:
            value = getattr(text, key, None)
        except Exception as exc:  # noqa: BLE001
            raise DepthError(f"cannot shorten the config: {key}: {exc.__class__.__name__}") from None
        if isinstance(value, (list, tuple)) and len(value) not in (layers, 0):
            raise DepthError(f"cannot shorten the config: {key} keeps {len(value)} entries")
    return shallow


_LAYER_ATTRIBUTES = ("sliding_window", "is_causal", "attention_type", "layer_type", "is_sliding", "use_rope",
                     "attention_chunk_size", "use_sliding_window", "is_local", "window_size", "block_type",
                     "is_cross_attention", "use_chunked_attention", "no_rope", "mixer_type")


def decoder_layers(model, depth: int):
    """The ModuleList holding the ``depth`` decoder layers (the biggest such list), or None."""
    best, best_size = None, -1
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == depth:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = module, size
    return best


_INDEX_LIST_SUFFIXES = ("_layers", "_idxs", "_indices", "_ids")


def _entry(key: str, values, index: int) -> str:
    """Layer ``index``'s entry in the per-layer list ``key`` of a signature. A list of layer
    numbers that names every layer (Llama 4's ``moe_layers`` with an MoE in every layer:
    ``[0, 1, ..., L - 1]``, as long as the stack) says the same of each layer - "in the list" -
    not a different value per layer, which would make every layer a kind of its own."""
    if key.endswith(_INDEX_LIST_SUFFIXES) and list(values) == list(range(len(values))):
        return "every layer"
    return str(values[index])


def layer_signature(layer, config=None, index: int | None = None, keys: list | None = None) -> tuple:
    """What makes two decoder layers cost the same: module classes, parameter shapes, the
    attributes that change attention (window, causal flag, layer type) and the layer's entry in
    every per-layer list of the config (``layer_types``, ``no_rope_layers`` ...)."""
    parts = []
    for name, module in layer.named_modules():
        attrs = []
        for key in _LAYER_ATTRIBUTES:
            value = getattr(module, key, None)
            if isinstance(value, (int, float, str, bool)):
                attrs.append((key, value))
        parts.append((name, type(module).__name__, tuple(attrs)))
    params = tuple((n, tuple(p.shape)) for n, p in layer.named_parameters())
    declared = ()
    if config is not None and index is not None:
        text = decoder_config(config)
        keys = per_layer_lists(text, text.num_hidden_layers) if keys is None else keys
        declared = tuple((key, _entry(key, getattr(text, key), index)) for key in keys
                         if isinstance(getattr(text, key, None), (list, tuple)) and index < len(getattr(text, key)))
        for key in ("layer_types", "layers_block_type"):
            try:
                value = getattr(text, key, None)
            except Exception:  # noqa: BLE001
                value = None
            if isinstance(value, (list, tuple)) and index < len(value):
                declared += ((key, str(value[index])),)
    return tuple(parts), params, declared


def signatures(model, config, depth: int, keys: list | None = None):
    """Each decoder layer's signature; ``keys``: the per-layer config lists to read (those of the
    full-depth config, so a shortened config's are read the same way)."""
    layers = decoder_layers(model, depth)
    if layers is None:
        return None
    return [layer_signature(layer, config, i, keys) for i, layer in enumerate(layers)]


def kind_rows(kinds: list, depths) -> list:
    from fractions import Fraction

    distinct = list(dict.fromkeys(kinds))
    rows = []
    for k in depths:
        counts = [Fraction(0)] * len(distinct)
        for kind in kinds[:k]:
            counts[distinct.index(kind)] += 1
        rows.append([Fraction(1)] + counts)
    return rows


def plan_depths(kinds: list, limit: int | None = None) -> tuple[list[int], list]:
    """Depths to count so the full depth is a linear combination of them, and the weights.

    The count at depth k is base + sum over layer kinds of (layers of that kind among the first
    k) x (that kind's cost). Depths are taken in order while they add an independent equation,
    until the full depth's equation is a combination of them; the weights give the full depth's
    count exactly (rational arithmetic). Identical layers: depths 1 and 2, f(L) = (2 - L) f(1) +
    (L - 1) f(2); DeepSeek-V3 (3 dense layers, then MoE): 1, 2, 4.

    ``limit``: the deepest shallow count worth making; ``([], [])`` when more would be needed.
    Every kind must be counted at least once, so a kind first met deeper than ``limit`` ends the
    search before any arithmetic (a stack of all-different layers would otherwise cost seconds of
    rational elimination to find out)."""
    limit = len(kinds) if limit is None else min(limit, len(kinds))
    first_seen = {}
    for k, kind in enumerate(kinds, start=1):
        first_seen.setdefault(kind, k)
    if max(first_seen.values(), default=0) > limit:
        return [], []
    target = kind_rows(kinds, [len(kinds)])[0]
    depths, rows = [], []
    for k in range(1, limit + 1):
        candidate = rows + kind_rows(kinds, [k])
        if _rank(candidate) > len(rows):
            depths.append(k)
            rows = candidate
            weights = extension_weights(rows, target)
            if weights is not None:
                return depths, weights
    return [], []


def extension_weights(rows: list, target: list):
    """w with sum_i w_i rows_i == target (rows independent), or None when target is not in their span."""
    if _rank(rows + [target]) > _rank(rows):
        return None
    gram = [[sum(a * b for a, b in zip(r1, r2)) for r2 in rows] for r1 in rows]
    rhs = [sum(a * b for a, b in zip(r, target)) for r in rows]
    return _solve(gram, rhs)


def _rank(rows: list) -> int:
    matrix = [list(r) for r in rows]
    rank, cols = 0, len(matrix[0]) if matrix else 0
    for c in range(cols):
        pivot = next((r for r in range(rank, len(matrix)) if matrix[r][c] != 0), None)
        if pivot is None:
            continue
        matrix[rank], matrix[pivot] = matrix[pivot], matrix[rank]
        for r in range(len(matrix)):
            if r != rank and matrix[r][c] != 0:
                factor = matrix[r][c] / matrix[rank][c]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[rank])]
        rank += 1
    return rank


def _solve(matrix: list, rhs: list) -> list:
    """Gauss-Jordan on a square, invertible rational system."""
    n = len(matrix)
    aug = [list(matrix[i]) + [rhs[i]] for i in range(n)]
    for c in range(n):
        pivot = next(r for r in range(c, n) if aug[r][c] != 0)
        aug[c], aug[pivot] = aug[pivot], aug[c]
        for r in range(n):
            if r != c and aug[r][c] != 0:
                factor = aug[r][c] / aug[c][c]
                aug[r] = [a - factor * b for a, b in zip(aug[r], aug[c])]
    return [aug[i][n] / aug[i][i] for i in range(n)]
