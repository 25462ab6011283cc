"""A dispatch-level FLOP counter: every aten op a step runs passes through it.

It sits below autograd, so the backward pass is counted op by op, not assumed. Each op is
looked up in ``registry.FORMULAS`` (counted), ``registry.FREE_OPS`` (no arithmetic by
convention) or recorded as unknown with its call count - never silently zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

from audit.flops.registry import FORMULAS, FREE_OPS, OpCost


def op_name(func: Any) -> str:
    """``aten.mm.default`` -> ``aten.mm``; custom ops keep their namespace (``flopgate.attention``)."""
    namespace = getattr(func, "namespace", None)
    packet = getattr(func, "overloadpacket", None)
    if namespace and packet is not None:
        return f"{namespace}.{packet.__name__}"
    return f"higher_order.{getattr(func, '__name__', str(func))}"


def bind_arguments(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Name an op's positional arguments after its schema (``query``, ``is_causal`` ...)."""
    schema = getattr(func, "_schema", None)
    if schema is None:
        return {**{str(i): a for i, a in enumerate(args)}, **kwargs}
    bound = {arg.name: value for arg, value in zip(schema.arguments, args)}
    bound.update(kwargs)
    return bound


@dataclass
class Tally:
    """FLOP added up by kind, with per-op totals and the ops that could not be counted."""

    matmul: float = 0.0
    attention_full: float = 0.0
    attention_masked: float = 0.0
    non_matmul: float = 0.0
    by_op: Counter = field(default_factory=Counter)
    counted_calls: Counter = field(default_factory=Counter)
    free_calls: Counter = field(default_factory=Counter)
    unknown_calls: Counter = field(default_factory=Counter)
    formula_errors: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, cost: OpCost) -> None:
        self.matmul += cost.matmul
        self.attention_full += cost.attention_full
        self.attention_masked += cost.attention_masked
        self.non_matmul += cost.non_matmul
        self.by_op[name] += cost.matmul + cost.attention_masked
        self.counted_calls[name] += 1

    def extrapolate(self, deeper: "Tally", depth: int) -> "Tally":
        """The tally of a ``depth``-layer model from this 1-layer tally and a 2-layer one."""
        grow = depth - 1
        line = lambda a, b: a + grow * (b - a)  # noqa: E731

        def counters(a: Counter, b: Counter) -> Counter:
            return Counter({k: line(a.get(k, 0), b.get(k, 0)) for k in set(a) | set(b)})

        return Tally(matmul=line(self.matmul, deeper.matmul),
                     attention_full=line(self.attention_full, deeper.attention_full),
                     attention_masked=line(self.attention_masked, deeper.attention_masked),
                     non_matmul=line(self.non_matmul, deeper.non_matmul),
                     by_op=counters(self.by_op, deeper.by_op),
                     counted_calls=counters(self.counted_calls, deeper.counted_calls),
                     free_calls=counters(self.free_calls, deeper.free_calls),
                     unknown_calls=counters(self.unknown_calls, deeper.unknown_calls),
                     formula_errors={**self.formula_errors, **deeper.formula_errors})

    @staticmethod
    def combine(tallies: list["Tally"], weights: list) -> "Tally":
        """``sum(w * t)``: the tally of a model whose per-layer costs are a linear combination of
        the counted ones (depth extension by layer kind)."""
        def mix(get):
            return float(sum(w * get(t) for t, w in zip(tallies, weights)))

        def counters(get) -> Counter:
            keys = set().union(*(get(t) for t in tallies))
            return Counter({k: mix(lambda t: get(t).get(k, 0)) for k in keys})

        errors: dict[str, str] = {}
        for t in tallies:
            errors.update(t.formula_errors)
        return Tally(matmul=mix(lambda t: t.matmul), attention_full=mix(lambda t: t.attention_full),
                     attention_masked=mix(lambda t: t.attention_masked), non_matmul=mix(lambda t: t.non_matmul),
                     by_op=counters(lambda t: t.by_op), counted_calls=counters(lambda t: t.counted_calls),
                     free_calls=counters(lambda t: t.free_calls), unknown_calls=counters(lambda t: t.unknown_calls),
                     formula_errors=errors)

    @property
    def headline(self) -> float:
        """Matmul FLOP with attention counted over the pairs its mask keeps."""
        return self.matmul + self.attention_masked

    @property
    def headline_full_attention(self) -> float:
        return self.matmul + self.attention_full

    @property
    def coverage(self) -> float:
        """Share of FLOP-bearing op calls counted by a formula, 0-1. Free ops (views, copies,
        indexing, RNG) are left out of both sides: an unknown op is assumed FLOP-bearing."""
        counted = sum(self.counted_calls.values())
        total = counted + sum(self.unknown_calls.values())
        return counted / total if total else 1.0


_MATMUL_OPS = frozenset({"aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm", "aten._grouped_mm"})


@dataclass(frozen=True)
class DenseExperts:
    """An MoE whose experts run every token through every expert (Llama 4's batched experts):
    a matmul with an expert weight's shape (as an operand, transposed, or as its gradient) is
    counted at ``top_k / experts`` of what ran, the FLOP of routing each token to top-k."""

    weight_shapes: frozenset
    factor: float

    def touches(self, bound: dict, out: Any) -> bool:
        values = list(bound.values()) + [out]
        for value in values:
            shape = tuple(getattr(value, "shape", ()) or ())
            if len(shape) >= 2 and (shape in self.weight_shapes
                                    or shape[:-2] + (shape[-1], shape[-2]) in self.weight_shapes):
                return True
        return False


class FlopCounter(TorchDispatchMode):
    """``with FlopCounter() as counter: model(x).sum().backward()`` then read ``counter.tally``."""

    def __init__(self, dense_experts: DenseExperts | None = None) -> None:
        super().__init__()
        self.tally = Tally()
        self.dense_experts = dense_experts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.record(func, args, kwargs, out)
        return out

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = op_name(func)
        formula = FORMULAS.get(name)
        if formula is not None:
            try:
                bound = bind_arguments(func, args, kwargs)
                cost = formula(bound, out)
                if (self.dense_experts is not None and name in _MATMUL_OPS
                        and self.dense_experts.touches(bound, out)):
                    f = self.dense_experts.factor
                    cost = OpCost(matmul=cost.matmul * f, non_matmul=cost.non_matmul * f)
                self.tally.add(name, cost)
            except Exception as exc:  # noqa: BLE001 - a broken formula is reported, not hidden
                self.tally.unknown_calls[name] += 1
                self.tally.formula_errors[name] = f"{exc.__class__.__name__}: {exc}"
        elif name in FREE_OPS:
            self.tally.free_calls[name] += 1
        else:
            self.tally.unknown_calls[name] += 1
