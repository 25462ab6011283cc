"""Per-op formulas against hand-derived FLOP (1 multiply-add = 2 FLOP)."""

import itertools

import pytest
import torch

from audit.flops.counter import FlopCounter
from audit.flops.registry import FORMULAS, FREE_OPS, kept_pairs


def count(fn, *args, **kwargs):
    with FlopCounter() as counter:
        fn(*args, **kwargs)
    return counter.tally


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


def test_free_and_counted_ops_do_not_overlap():
    assert not FREE_OPS & set(FORMULAS)


@pytest.mark.parametrize("m,k,n", [(3, 5, 7), (64, 128, 32)])
def test_mm_addmm_and_linear(m, k, n):
    assert count(torch.mm, meta(m, k), meta(k, n)).matmul == 2 * m * k * n
    tally = count(torch.addmm, meta(n), meta(m, k), meta(k, n))
    assert tally.matmul == 2 * m * k * n and tally.non_matmul == m * n
    assert count(torch.nn.functional.linear, meta(m, k), meta(n, k)).matmul == 2 * m * k * n


def test_bmm_baddbmm_and_batched_matmul():
    assert count(torch.bmm, meta(4, 3, 5), meta(4, 5, 7)).matmul == 2 * 4 * 3 * 5 * 7
    assert count(torch.baddbmm, meta(4, 3, 7), meta(4, 3, 5), meta(4, 5, 7)).matmul == 2 * 4 * 3 * 5 * 7
    # a broadcasting matmul decomposes to bmm/mm below autograd; the total must not change
    assert count(torch.matmul, meta(2, 4, 3, 5), meta(5, 7)).headline == 2 * 2 * 4 * 3 * 5 * 7


@pytest.mark.parametrize("spelling", [
    lambda f, p: (f[None, :, None] @ p[:, None, :].float()).transpose(1, 2),   # transformers 5.17
    lambda f, p: p[..., None].float() * f,                                        # transformers 5.24
    lambda f, p: torch.mm(p.float().reshape(-1, 1), f[None, :]),
])
def test_outer_product_counts_the_same_however_it_is_spelled(spelling):
    """A K=1 matmul adds nothing up: one multiply per output, elementwise, never matmul FLOP."""
    inv_freq, positions = meta(32), meta(1, 100)
    tally = count(spelling, inv_freq, positions)
    assert tally.matmul == 0 and tally.headline == 0
    assert tally.non_matmul == 32 * 100


def test_einsum_contraction():
    # 'bik,bkj->bij' is a batched matmul: 2*b*i*k*j
    tally = count(torch.einsum, "bik,bkj->bij", meta(2, 3, 5), meta(2, 5, 7))
    assert tally.headline == 2 * 2 * 3 * 5 * 7


def test_einsum_with_ellipsis_broadcast_and_implicit_output():
    tally = count(torch.einsum, "...ik,...kj->...ij", meta(2, 3, 4, 5), meta(3, 5, 6))
    assert tally.headline == 2 * 2 * 3 * 4 * 5 * 6
    assert count(torch.einsum, "ij,jk", meta(2, 3), meta(3, 4)).headline == 2 * 2 * 3 * 4


def test_composite_ops_reach_the_counter_as_the_ops_they_decompose_into():
    """matmul, linear, einsum and SDPA have no formula: below autograd they are mm/bmm and an
    SDPA backend op. Were one to reach the counter whole, it would be reported as unknown."""
    q = meta(1, 2, 8, 16).requires_grad_()
    with FlopCounter() as counter:
        torch.matmul(meta(2, 3, 4), meta(4, 5))
        torch.nn.functional.linear(meta(3, 4), meta(5, 4), meta(5))
        torch.einsum("bij,jk->bik", meta(2, 3, 4), meta(4, 5))
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    assert not counter.tally.unknown_calls
    for name in ("aten.matmul", "aten.linear", "aten.einsum", "aten.scaled_dot_product_attention"):
        assert name not in FORMULAS


def test_grouped_mm_all_layouts():
    f = FORMULAS["aten._grouped_mm"]
    offs = None
    assert f({"self": meta(96, 16), "mat2": meta(4, 16, 32), "offs": offs}, None).matmul == 2 * 96 * 16 * 32
    assert f({"self": meta(4, 8, 16), "mat2": meta(4, 16, 32)}, None).matmul == 2 * 4 * 8 * 16 * 32
    # weight gradient: (K x tokens) @ (tokens x N), tokens split among groups
    assert f({"self": meta(16, 96), "mat2": meta(96, 32)}, None).matmul == 2 * 16 * 96 * 32
    assert f({"self": meta(4, 8, 16), "mat2": meta(16, 96)}, None).matmul == 2 * 8 * 16 * 96


def test_grouped_mm_forward_and_backward_on_meta():
    """An MoE expert layer: tokens*top_k rows through grouped weights; backward = 2x forward."""
    rows, hidden, out, experts = 64, 32, 48, 4
    x = meta(rows, hidden, dtype=torch.bfloat16).requires_grad_()
    w = meta(experts, hidden, out, dtype=torch.bfloat16).requires_grad_()
    offs = torch.empty(experts, dtype=torch.int32, device="meta")
    with FlopCounter() as fwd:
        y = torch._grouped_mm(x, w, offs=offs)
    with FlopCounter() as bwd:
        y.backward(torch.empty_like(y))
    assert fwd.tally.matmul == 2 * rows * hidden * out
    assert bwd.tally.matmul == 2 * fwd.tally.matmul
    assert not bwd.tally.unknown_calls


def test_convolution_forward_and_backward():
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    with FlopCounter() as fwd:
        y = conv(x)
    expected = 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)
    assert fwd.tally.matmul == expected
    with FlopCounter() as bwd:
        y.sum().backward()
    assert bwd.tally.matmul == 2 * expected  # input grad + weight grad


def brute_pairs(q, k, causal, window):
    if not causal:
        return q * k
    return sum(1 for i in range(q) for j in range(k)
               if j <= i + (k - q) and (not window or (i + (k - q)) - j < window))


@pytest.mark.parametrize("q,k,window", [(q, k, w) for q, k, w in itertools.product(range(1, 9), range(1, 9), [None, 1, 3, 20]) if q <= k])
def test_kept_pairs_matches_brute_force(q, k, window):
    assert kept_pairs(q, k, True, window) == brute_pairs(q, k, True, window)
    assert kept_pairs(q, k, False) == q * k


def test_kept_pairs_long_context_closed_form():
    t = 131072
    assert kept_pairs(t, t, True) == t * (t + 1) // 2


def attention_hand(b, hq, sq, sk, d, dv, pairs):
    return 2 * b * hq * pairs * (d + dv)


def test_cpu_flash_sdpa_forward_backward_with_gqa():
    """The CPU fused op that FlopCounterMode leaves at zero; GQA via enable_gqa."""
    b, hq, hkv, s, d = 2, 8, 2, 32, 16
    q = torch.randn(b, hq, s, d, requires_grad=True)
    k = torch.randn(b, hkv, s, d, requires_grad=True)
    v = torch.randn(b, hkv, s, d, requires_grad=True)
    with FlopCounter() as fwd:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    with FlopCounter() as bwd:
        out.sum().backward()
    ran = set(fwd.tally.counted_calls)
    assert any("attention" in name for name in ran), ran
    full = attention_hand(b, hq, s, s, d, d, s * s)
    causal = attention_hand(b, hq, s, s, d, d, s * (s + 1) // 2)
    assert fwd.tally.attention_full == full
    assert fwd.tally.attention_masked == causal
    assert bwd.tally.attention_masked == 2 * causal


@pytest.mark.parametrize("op,layout,extra", [
    ("_scaled_dot_product_flash_attention", "bhsd", {}),
    ("_scaled_dot_product_efficient_attention", "bhsd", {"attn_bias": None, "compute_log_sumexp": True}),
    ("_scaled_dot_product_cudnn_attention", "bhsd", {"attn_bias": None, "compute_log_sumexp": True}),
    ("_scaled_dot_product_flash_attention_for_cpu", "bhsd", {}),
])
def test_fused_sdpa_forward_formulas(op, layout, extra):
    b, h, s, d = 2, 4, 64, 32
    args = {"query": meta(b, h, s, d), "key": meta(b, h, s, d), "value": meta(b, h, s, d), "is_causal": True, **extra}
    cost = FORMULAS[f"aten.{op}"](args, None)
    assert cost.attention_full == attention_hand(b, h, s, s, d, d, s * s)
    assert cost.attention_masked == attention_hand(b, h, s, s, d, d, s * (s + 1) // 2)
    back = FORMULAS[f"aten.{op}_backward"]({**args, "grad_out": meta(b, h, s, d)}, None)
    assert back.attention_full == 2 * cost.attention_full


def test_low_level_flash_and_efficient_ops_use_bshd_layout():
    b, s, h, d = 2, 64, 4, 32
    args = {"query": meta(b, s, h, d), "key": meta(b, s, h, d), "value": meta(b, s, h, d)}
    flash = FORMULAS["aten._flash_attention_forward"]({**args, "is_causal": True}, None)
    eff = FORMULAS["aten._efficient_attention_forward"]({**args, "custom_mask_type": 1}, None)
    expected = attention_hand(b, h, s, s, d, d, s * (s + 1) // 2)
    assert flash.attention_masked == eff.attention_masked == expected


def test_gqa_counts_query_heads():
    b, hq, hkv, s, d = 1, 32, 8, 128, 64
    args = {"query": meta(b, hq, s, d), "key": meta(b, hkv, s, d), "value": meta(b, hkv, s, d), "is_causal": False}
    assert FORMULAS["aten._scaled_dot_product_efficient_attention"](args, None).attention_full == 4 * b * hq * s * s * d


def test_flex_attention_formula_is_full_matrix():
    b, h, s, d = 1, 2, 16, 8
    args = {"query": meta(b, h, s, d), "key": meta(b, h, s, d), "value": meta(b, h, s, d)}
    assert FORMULAS["higher_order.flex_attention"](args, None).attention_full == 4 * b * h * s * s * d


def test_unknown_ops_are_reported_by_name_with_counts():
    x = torch.randn(8)
    with FlopCounter() as c:
        torch.special.bessel_j0(x)
        torch.special.bessel_j0(x)
    assert c.tally.unknown_calls["aten.special_bessel_j0"] == 2
    assert c.tally.coverage < 1.0


def test_a_failing_formula_is_reported_not_zero(monkeypatch):
    def broken(args, out):
        raise ValueError("bad shapes")

    monkeypatch.setitem(FORMULAS, "aten.mm", broken)
    with FlopCounter() as c:
        torch.mm(torch.randn(2, 2), torch.randn(2, 2))
    assert c.tally.unknown_calls["aten.mm"] == 1
    assert "bad shapes" in c.tally.formula_errors["aten.mm"]
