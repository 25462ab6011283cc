"""Per-op FLOP formulas: a registry of small pure functions, keyed by op name.

Convention: one multiply-add = 2 FLOP. A formula receives the op's arguments bound to their
schema names (``query``, ``key``, ``is_causal`` ...) and its output, and returns an ``OpCost``.

Every op the counter sees is either here (counted), in ``FREE_OPS`` (shape, copy, indexing and
comparison ops that do no arithmetic by convention) or reported as unknown by name. Composite
ops (``matmul``, ``linear``, ``einsum``, ``scaled_dot_product_attention``) never reach a dispatch
mode: they decompose into the ops below first, so they have no formula of their own.

Attention is counted twice: over the full score matrix (what FlopCounterMode and the PaLM/MFU
formula count) and over the (query, key) pairs a causal or sliding-window mask keeps. Attention
backward is counted as 2x forward (dQ, dK, dV and dScores: four matmuls); the recomputation of
scores inside fused kernels is not counted, as in the MFU convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpCost:
    """FLOP of one op call, split by kind. ``attention_*`` are matmul FLOP inside attention."""

    matmul: float = 0.0
    attention_full: float = 0.0
    attention_masked: float = 0.0
    non_matmul: float = 0.0


Formula = Callable[[Mapping[str, Any], Any], OpCost]
FORMULAS: dict[str, Formula] = {}


def formula(*names: str) -> Callable[[Formula], Formula]:
    """Register ``fn`` as the formula of the ops ``names`` (``aten.mm``, ``flopgate.attention``)."""

    def add(fn: Formula) -> Formula:
        for name in names:
            FORMULAS[name] = fn
        return fn

    return add


def shape(x: Any) -> Shape:
    return tuple(int(s) for s in x.shape)


def numel(x: Any) -> int:
    return math.prod(shape(x))


# --------------------------------------------------------------------------- matmul family


def _product(outputs: int, k: int, extra: int = 0) -> OpCost:
    """A matmul with ``outputs`` output elements, each a dot product of length ``k``, plus
    ``extra`` elementwise FLOP (a bias or an added matrix).

    With ``k == 1`` there is nothing to add up: the "matmul" is an outer product, one multiply
    per output, and is counted as elementwise work like the broadcast ``a[:, None] * b`` that
    computes the same thing (transformers' rotary embeddings use either, depending on version).
    """
    if k == 1:
        return OpCost(non_matmul=float(outputs + extra))
    return OpCost(matmul=2.0 * outputs * k, non_matmul=float(extra))


@formula("aten.mm", "aten._scaled_mm")
def _mm(a: Mapping[str, Any], out: Any) -> OpCost:
    first = a.get("self", a.get("mat1"))
    second = a.get("mat2")
    (m, k), n = shape(first), shape(second)[-1]
    return _product(m * n, k)


@formula("aten.addmm")
def _addmm(a: Mapping[str, Any], out: Any) -> OpCost:
    (m, k), n = shape(a["mat1"]), shape(a["mat2"])[-1]
    return _product(m * n, k, extra=m * n)


@formula("aten.bmm")
def _bmm(a: Mapping[str, Any], out: Any) -> OpCost:
    b, m, k = shape(a["self"])
    return _product(b * m * shape(a["mat2"])[-1], k)


@formula("aten.baddbmm")
def _baddbmm(a: Mapping[str, Any], out: Any) -> OpCost:
    b, m, k = shape(a["batch1"])
    n = shape(a["batch2"])[-1]
    return _product(b * m * n, k, extra=b * m * n)


@formula("aten._grouped_mm")
def _grouped_mm(a: Mapping[str, Any], out: Any) -> OpCost:
    """Grouped GEMM (MoE experts). The FLOP do not depend on how ``offs`` splits the rows:
    every row of the ragged operand meets exactly one group's matrix."""
    left, right = shape(a["self"]), shape(a["mat2"])
    if len(left) == 2 and len(right) == 3:      # tokens x K  @  groups x K x N
        return OpCost(matmul=2.0 * left[0] * left[1] * right[2])
    if len(left) == 3 and len(right) == 3:      # dense batched groups
        return OpCost(matmul=2.0 * left[0] * left[1] * left[2] * right[2])
    if len(left) == 2 and len(right) == 2:      # ragged contraction (weight gradients)
        return OpCost(matmul=2.0 * left[0] * left[1] * right[1])
    if len(left) == 3 and len(right) == 2:      # groups x M x K  @  K x ragged N
        return OpCost(matmul=2.0 * left[1] * left[2] * right[1])
    raise ValueError(f"unexpected _grouped_mm shapes {left} x {right}")


def _conv_flops(x_shape: Shape, w_shape: Shape, out_shape: Shape, transposed: bool) -> float:
    """2 x (output positions) x (input channels per group x kernel size) for each output channel."""
    kernel = math.prod(w_shape[2:])
    if transposed:  # weight: in x out/groups x k...
        return 2.0 * math.prod(x_shape) * w_shape[1] * kernel
    return 2.0 * math.prod(out_shape) * w_shape[1] * kernel


@formula("aten.convolution", "aten._convolution", "aten.cudnn_convolution",
         "aten.convolution_overrideable", "aten.mkldnn_convolution", "aten._slow_conv2d_forward")
def _convolution(a: Mapping[str, Any], out: Any) -> OpCost:
    transposed = bool(a.get("transposed", False))
    x, w = a.get("input", a.get("self")), a["weight"]
    flops = _conv_flops(shape(x), shape(w), shape(out), transposed)
    bias = numel(out) if a.get("bias") is not None else 0
    return OpCost(matmul=flops, non_matmul=float(bias))


@formula("aten.convolution_backward")
def _convolution_backward(a: Mapping[str, Any], out: Any) -> OpCost:
    """Input gradient and weight gradient each cost one forward convolution."""
    mask = a.get("output_mask", [True, True, True])
    forward = _conv_flops(shape(a["input"]), shape(a["weight"]), shape(a["grad_output"]),
                          bool(a.get("transposed", False)))
    bias = numel(a["grad_output"]) if mask[2] else 0
    return OpCost(matmul=forward * (int(bool(mask[0])) + int(bool(mask[1]))), non_matmul=float(bias))


# --------------------------------------------------------------------------- attention


def kept_pairs(q_len: int, k_len: int, causal: bool, window: int | None = None, chunk: int | None = None,
               document: int | None = None) -> int:
    """Number of (query, key) pairs a mask keeps.

    Causal masks align the last query with the last key (bottom-right, as in a KV-cache
    decode): query ``i`` sees keys ``0 .. i + (k_len - q_len)``. ``window`` (causal only) keeps
    at most that many keys per query, the query's own position included. ``chunk`` (causal
    only, Llama 4's chunked attention) keeps only keys in the query's own block of ``chunk``
    positions. ``document`` (causal only: packed documents under document masking) does the
    same with blocks of ``document`` positions; with a chunk as well, the two blocks' common
    refinement is exact when one length divides the other, and otherwise the smaller of the two
    counts is taken (an upper bound: never fewer pairs than the mask keeps). Closed form, so a
    128k context costs nothing to count.
    """
    if not causal:
        return q_len * k_len
    if document:
        if not chunk or chunk % document == 0:
            chunk = document  # the document blocks refine the chunks (or there are none)
        elif document % chunk != 0:  # neither refines the other: an upper bound
            return min(kept_pairs(q_len, k_len, True, window, chunk),
                       kept_pairs(q_len, k_len, True, window, document))
    if chunk:
        offset = k_len - q_len
        cap = min(window, chunk) if window else chunk

        def upto(n: int) -> int:  # sum over positions v < n of min(v mod chunk + 1, cap)
            full, rest = divmod(max(n, 0), chunk)
            return full * _sum_clamped(1, chunk, cap) + _sum_clamped(1, rest, cap)

        return upto(offset + q_len) - upto(offset)
    cap = min(window, k_len) if window else k_len
    offset = k_len - q_len
    return _sum_clamped(offset + 1, offset + q_len, cap)


def _sum_clamped(lo: int, hi: int, cap: int) -> int:
    """``sum(min(max(v, 0), cap) for v in range(lo, hi + 1))`` in O(1)."""
    lo = max(lo, 1)
    if hi < lo:
        return 0
    total = 0
    ramp_end = min(hi, cap)
    if ramp_end >= lo:
        total += (lo + ramp_end) * (ramp_end - lo + 1) // 2
    flat_start = max(lo, cap + 1)
    if hi >= flat_start:
        total += cap * (hi - flat_start + 1)
    return total


def _attention_cost(batch: int, q_heads: int, q_len: int, k_len: int, qk_dim: int, v_dim: int,
                    causal: bool, window: int | None, backward: bool, chunk: int | None = None,
                    document: int | None = None) -> OpCost:
    """Forward: scores = Q K^T (2*d_qk per pair) and out = P V (2*d_v per pair) per head.
    Backward: twice the forward. Softmax: about 5 FLOP per kept score (max, sub, exp, sum, div)."""
    per_pair = 2.0 * (qk_dim + v_dim) * batch * q_heads
    factor = 2.0 if backward else 1.0
    full = per_pair * q_len * k_len * factor
    kept = kept_pairs(q_len, k_len, causal, window, chunk, document)
    masked = per_pair * kept * factor
    softmax = 5.0 * batch * q_heads * kept
    return OpCost(attention_full=full, attention_masked=masked, non_matmul=softmax)


def _bhsd(a: Mapping[str, Any], *, backward: bool, causal: bool, window: int | None = None,
          chunk: int | None = None, document: int | None = None) -> OpCost:
    """Attention with (batch, heads, seq, dim) tensors; grouped-query K/V may have fewer heads."""
    b, hq, sq, dqk = shape(a["query"])
    sk, dv = shape(a["key"])[-2], shape(a["value"])[-1]
    return _attention_cost(b, hq, sq, sk, dqk, dv, causal, window, backward, chunk, document)


def _bshd(a: Mapping[str, Any], *, backward: bool, causal: bool) -> OpCost:
    """Attention with (batch, seq, heads, dim) tensors, as in the low-level flash/efficient ops."""
    b, sq, hq, dqk = shape(a["query"])
    sk, dv = shape(a["key"])[1], shape(a["value"])[-1]
    return _attention_cost(b, hq, sq, sk, dqk, dv, causal, None, backward)


@formula("aten._scaled_dot_product_flash_attention", "aten._scaled_dot_product_efficient_attention",
         "aten._scaled_dot_product_cudnn_attention", "aten._scaled_dot_product_flash_attention_for_cpu",
         "aten._scaled_dot_product_fused_attention_overrideable")
def _sdpa_forward(a: Mapping[str, Any], out: Any) -> OpCost:
    return _bhsd(a, backward=False, causal=bool(a.get("is_causal", False)))


@formula("aten._scaled_dot_product_flash_attention_backward",
         "aten._scaled_dot_product_efficient_attention_backward",
         "aten._scaled_dot_product_cudnn_attention_backward",
         "aten._scaled_dot_product_flash_attention_for_cpu_backward",
         "aten._scaled_dot_product_fused_attention_overrideable_backward")
def _sdpa_backward(a: Mapping[str, Any], out: Any) -> OpCost:
    return _bhsd(a, backward=True, causal=bool(a.get("is_causal", False)))


@formula("aten._flash_attention_forward")
def _flash_forward(a: Mapping[str, Any], out: Any) -> OpCost:
    return _bshd(a, backward=False, causal=bool(a.get("is_causal", False)))


@formula("aten._flash_attention_backward")
def _flash_backward(a: Mapping[str, Any], out: Any) -> OpCost:
    return _bshd(a, backward=True, causal=bool(a.get("is_causal", False)))


@formula("aten._efficient_attention_forward")
def _efficient_forward(a: Mapping[str, Any], out: Any) -> OpCost:
    return _bshd(a, backward=False, causal=int(a.get("custom_mask_type", 0)) != 0)


@formula("aten._efficient_attention_backward")
def _efficient_backward(a: Mapping[str, Any], out: Any) -> OpCost:
    return _bshd(a, backward=True, causal=int(a.get("custom_mask_type", 0)) != 0)


@formula("higher_order.flex_attention")
def _flex_forward(a: Mapping[str, Any], out: Any) -> OpCost:
    """Flex attention: counted over the full score matrix (an upper bound for sparse block masks)."""
    return _bhsd(a, backward=False, causal=False)


@formula("higher_order.flex_attention_backward")
def _flex_backward(a: Mapping[str, Any], out: Any) -> OpCost:
    return _bhsd(a, backward=True, causal=False)


@formula("flopgate.attention")
def _our_attention(a: Mapping[str, Any], out: Any) -> OpCost:
    """The op our counting attention calls; it knows the layer's causal flag, window, chunk and
    (packed sequences under document masking) the document length."""
    return _bhsd(a, backward=False, **_our_mask(a))


@formula("flopgate.attention_backward")
def _our_attention_backward(a: Mapping[str, Any], out: Any) -> OpCost:
    return _bhsd(a, backward=True, **_our_mask(a))


def _our_mask(a: Mapping[str, Any]) -> dict:
    return dict(causal=bool(a["is_causal"]), window=int(a["window"]) or None,
                chunk=int(a.get("chunk", 0) or 0) or None, document=int(a.get("document", 0) or 0) or None)


# --------------------------------------------------------------------------- non-matmul

# Approximate FLOP per output element of elementwise ops (counted as non-matmul FLOP).
_PER_OUTPUT_ELEMENT = {
    **dict.fromkeys([
        "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "rsqrt", "sqrt", "pow",
        "exp", "log", "sin", "cos", "tanh", "sigmoid", "reciprocal", "abs", "addcmul", "addcdiv",
        "addcmul_", "addcdiv_", "lerp", "lerp_", "rsub", "clamp_min", "floor_divide", "sign",
        "maximum", "minimum", "threshold_backward", "sgn", "square",
        "exp_", "sqrt_", "erf", "log1p", "expm1", "fmod", "remainder", "_foreach_add",
        "mul_", "add_", "neg_", "sigmoid_", "tanh_", "rsqrt_", "reciprocal_", "pow_", "atan2",
        "elu", "elu_backward", "hardsigmoid", "hardswish", "mish", "logit", "clamp_min_", "cumprod",
        "log_", "abs_", "sign_", "xlogy", "exp2", "log2", "erfinv", "acos", "asin", "atan", "cosh", "sinh",
    ], 1.0),
    **dict.fromkeys(["silu", "silu_backward", "gelu", "relu", "sigmoid_backward", "tanh_backward",
                     "gelu_backward", "hardtanh", "leaky_relu", "softplus", "softplus_backward",
                     "log_sigmoid_forward", "log_sigmoid_backward", "relu_", "silu_", "gelu_",
                     "hardswish_backward", "hardsigmoid_backward", "mish_backward",
                     "leaky_relu_backward", "hardtanh_backward", "_prelu_kernel", "glu", "glu_backward"], 4.0),
    # polar(abs, angle) = abs*cos + i*abs*sin
    "polar": 4.0,
    **dict.fromkeys(["_softmax", "_safe_softmax", "_softmax_backward_data", "_log_softmax",
                     "_log_softmax_backward_data"], 5.0),
    **dict.fromkeys(["native_layer_norm", "native_layer_norm_backward", "_fused_rms_norm",
                     "_fused_rms_norm_backward", "native_group_norm", "native_batch_norm"], 5.0),
}
# Reductions: one FLOP per input element.
_PER_INPUT_ELEMENT = ["sum", "mean", "cumsum", "amax", "max", "min", "norm", "linalg_vector_norm",
                      "nll_loss_forward", "nll_loss_backward", "embedding_dense_backward", "index_add",
                      "index_add_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_",
                      "index_reduce", "index_reduce_", "var_mean", "std", "var", "prod", "logsumexp",
                      "_segment_reduce", "segment_reduce", "amin", "nansum", "cummax", "cummin", "logcumsumexp",
                      "_embedding_bag", "embedding_bag", "_embedding_bag_backward", "_embedding_bag_dense_backward",
                      "native_group_norm_backward", "native_batch_norm_backward", "_native_batch_norm_legit",
                      "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
                      "_log_softmax_backward_data_out", "binary_cross_entropy_with_logits",
                      "mse_loss", "mse_loss_backward", "smooth_l1_loss", "l1_loss"]


# A complex multiply is 4 real multiplies and 2 adds; a complex add or subtract is 2 real adds.
_COMPLEX_FACTOR = {"mul": 6.0, "mul_": 6.0, "div": 11.0, "div_": 11.0}


def _per_output(cost: float, name: str = "") -> Formula:
    def count(a: Mapping[str, Any], out: Any) -> OpCost:
        first = out[0] if isinstance(out, (tuple, list)) else out
        if not hasattr(first, "shape"):
            return OpCost()
        per = cost
        if getattr(getattr(first, "dtype", None), "is_complex", False):
            per = _COMPLEX_FACTOR.get(name, 2.0 * cost)
        return OpCost(non_matmul=per * numel(first))

    return count


def _per_input(a: Mapping[str, Any], out: Any) -> OpCost:
    tensors = [v for v in a.values() if hasattr(v, "shape")]
    return OpCost(non_matmul=float(max((numel(t) for t in tensors), default=0)))


for _name, _cost in _PER_OUTPUT_ELEMENT.items():
    FORMULAS.setdefault(f"aten.{_name}", _per_output(_cost, _name))
for _name in _PER_INPUT_ELEMENT:
    FORMULAS.setdefault(f"aten.{_name}", _per_input)


@formula("aten.linalg_solve_triangular", "aten.triangular_solve")
def _triangular_solve(a: Mapping[str, Any], out: Any) -> OpCost:
    """Solving A X = B, A (..., n, n) triangular, B (..., n, k): per right-hand side about n^2/2
    multiply-adds, so n^2 k FLOP (matmul kind). ``linalg_solve_triangular(self=A, B)``;
    ``triangular_solve(self=B, A)``."""
    if "B" in a:
        tri, rhs, left = a["self"], a["B"], bool(a.get("left", True))
    else:
        tri, rhs, left = a["A"], a["self"], True
    n = shape(tri)[-1]
    b = shape(rhs)
    k = b[-1] if left else b[-2]
    return OpCost(matmul=float(math.prod(b[:-2])) * n * n * k)


@formula("aten.linalg_inv_ex", "aten.linalg_inv", "aten.inverse")
def _inverse(a: Mapping[str, Any], out: Any) -> OpCost:
    """Gauss-Jordan inversion of (..., n, n): about n^3 multiply-adds, 2 n^3 FLOP."""
    s = shape(a.get("A", a.get("self")))
    n = s[-1]
    return OpCost(matmul=2.0 * math.prod(s[:-2]) * n ** 3)


@formula("aten.dot", "aten.vdot")
def _dot(a: Mapping[str, Any], out: Any) -> OpCost:
    return _product(1, numel(a["self"]))


@formula("aten.mv")
def _mv(a: Mapping[str, Any], out: Any) -> OpCost:
    m, k = shape(a["self"])
    return _product(m, k)


# --------------------------------------------------------------------------- free ops

FREE_OPS = frozenset(f"aten.{name}" for name in """
    view _unsafe_view reshape t transpose permute expand expand_as squeeze unsqueeze flatten
    unflatten alias detach clone contiguous copy_ copy _to_copy to lift_fresh empty empty_like
    empty_strided new_empty new_empty_strided zeros zeros_like new_zeros ones ones_like new_ones
    full full_like fill_ fill zero_ arange slice slice_backward slice_scatter select
    select_backward select_scatter index index_select index_put index_put_ gather scatter
    scatter_ masked_select cat stack split split_with_sizes chunk unbind narrow embedding
    as_strided as_strided_scatter _reshape_alias diagonal triu tril one_hot topk sort argsort
    argmax argmin histc bincount nonzero eq ne gt ge lt le logical_not logical_and logical_or
    bitwise_not bitwise_and bitwise_or isinf isnan any all _local_scalar_dense sym_size
    sym_stride sym_numel sym_storage_offset is_same_size repeat repeat_interleave roll flip
    pad constant_pad_nd _has_compatible_shallow_copy_type set_ resize_ randn rand randint
    normal_ uniform_ bernoulli_ native_dropout native_dropout_backward dropout t_ view_as
    _pin_memory lift_fresh_copy clamp clamp_ clamp_max floor ceil round trunc
    _unsafe_index _unsafe_index_put masked_fill masked_fill_ where where_ scalar_tensor item
    logical_and_ logical_or_ logical_not_ logical_xor eye new_full view_as_complex view_as_real _conj
    conj conj_physical resolve_conj resolve_neg _neg_view rand_like randn_like randint_like exponential_
    random_ multinomial poisson geometric_ log_normal_ cauchy_ normal rand_like uniform
    index_copy index_copy_ index_fill index_fill_ masked_scatter masked_scatter_ scatter_reduce_two
    unfold unfold_backward im2col col2im diag_embed diagonal_scatter tril_ triu_ tril_indices
    triu_indices searchsorted bucketize unique_consecutive _unique2 unique_dim _assert_async
    _assert_tensor_metadata _functional_assert_async lt_ gt_ le_ ge_ eq_ ne_ bitwise_xor
    bitwise_left_shift bitwise_right_shift __and__ __or__ masked_select_backward index_put_backward
    split_copy unbind_copy view_copy permute_copy t_copy transpose_copy expand_copy _to_dense
    alias_copy empty_permuted copy_  linspace logspace full_like isfinite signbit
    _index_put_impl_ put_ take take_along_dim movedim moveaxis swapaxes swapdims _is_all_true _is_any_true
""".split())
