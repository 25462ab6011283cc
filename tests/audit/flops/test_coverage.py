"""Coverage counts FLOP-bearing calls only; complex, RNG and scatter-index ops are classified."""

import pytest
import torch

from audit.flops.counter import FlopCounter, Tally
from audit.flops.registry import FORMULAS, FREE_OPS


def count(fn, *args, **kwargs):
    with FlopCounter() as counter:
        fn(*args, **kwargs)
    return counter.tally


def test_free_ops_are_left_out_of_both_sides():
    tally = Tally()
    tally.counted_calls.update({"aten.mm": 3})
    tally.free_calls.update({"aten.view": 100})
    assert tally.coverage == 1.0
    tally.unknown_calls.update({"aten.mystery": 1})
    assert tally.coverage == pytest.approx(3 / 4)  # the 100 views do not dilute the unknown op


def test_complex_multiply_counts_six_real_flop():
    a = torch.randn(4, 8, dtype=torch.complex64)
    b = torch.randn(4, 8, dtype=torch.complex64)
    assert count(torch.mul, a, b).non_matmul == 6 * 32
    assert count(torch.add, a, b).non_matmul == 2 * 32
    assert count(torch.mul, a.real, b.real).non_matmul == 32


@pytest.mark.parametrize("op", ["aten.rand_like", "aten.exponential_", "aten.bernoulli_", "aten.scatter",
                                "aten.index_put", "aten.gather", "aten.view_as_complex", "aten.logical_and_"])
def test_rng_index_and_complex_view_ops_are_free(op):
    assert op in FREE_OPS and op not in FORMULAS


def test_scatter_add_counts_one_add_per_element():
    src = torch.ones(5, 3)
    out = torch.zeros(2, 3)
    index = torch.zeros(5, 3, dtype=torch.long)
    tally = count(lambda: out.scatter_add_(0, index, src))
    assert tally.non_matmul == 15 and not tally.unknown_calls


def test_triangular_solve_counts_n_squared_k():
    a = torch.eye(6).tril() + 1
    b = torch.randn(2, 6, 4)
    tally = count(torch.linalg.solve_triangular, a.expand(2, 6, 6), b, upper=False)
    assert tally.matmul == 2 * 6 * 6 * 4
    assert not tally.unknown_calls


def test_rng_in_a_model_leaves_coverage_whole():
    x = torch.randn(8, 16)
    tally = count(lambda: torch.nn.functional.dropout(x @ torch.randn(16, 4), 0.5, training=True))
    assert tally.coverage == 1.0 and tally.matmul == 2 * 8 * 16 * 4
