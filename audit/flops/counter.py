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

    @property
    def headline(self) -> float:
        """Matmul FLOP with attention counted over the pairs its mask keeps."""
        return self.matmul + self.attention_masked

    @property
    def headline_full_attention(self) -> float:
        return self.matmul + self.attention_full

    @property
    def coverage(self) -> float:
        """Share of op calls that were counted or known to be free, 0-1."""
        known = sum(self.counted_calls.values()) + sum(self.free_calls.values())
        total = known + sum(self.unknown_calls.values())
        return known / total if total else 1.0


class FlopCounter(TorchDispatchMode):
    """``with FlopCounter() as counter: model(x).sum().backward()`` then read ``counter.tally``."""

    def __init__(self) -> None:
        super().__init__()
        self.tally = Tally()

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
                self.tally.add(name, formula(bind_arguments(func, args, kwargs), out))
            except Exception as exc:  # noqa: BLE001 - a broken formula is reported, not hidden
                self.tally.unknown_calls[name] += 1
                self.tally.formula_errors[name] = f"{exc.__class__.__name__}: {exc}"
        elif name in FREE_OPS:
            self.tally.free_calls[name] += 1
        else:
            self.tally.unknown_calls[name] += 1
