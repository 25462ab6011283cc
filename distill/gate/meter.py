"""The compute meter: FLOP the run actually executes, against the audited budget.

compute = flops_per_token x tokens processed, summed over ranks. ``flops_per_token`` is the
audit's per-token figure for one training token (student forward + backward and teacher
forward, 1 multiply-add = 2 FLOP). Tokens processed are every position fed through the models
(sequences x seq_len), ignored labels included: they cost compute too.

The run stops BEFORE a step would take the total past budget x (1 + tolerance). The tolerance
is 0 by default: the hard limit is the budget itself, the figure the audit compared with the
legal thresholds, so a run audited just below a threshold can never end just above it.

Sampled positions (on-policy distillation): the student also samples the sequences it trains
on, and each position it runs while sampling (prompt prefill and every sampled token) costs
``generation_flops_per_token`` (the student's forward). :meth:`ComputeMeter.add` takes them
beside the training tokens, summed over ranks the same way.

Evaluation: each position a held-out evaluation runs costs ``eval_flops_per_token`` (the
student's forward, plus the teacher's when it runs online), charged like training compute and
held to the audited cap ``eval_tokens_limit`` (the plan's ``evaluation.tokens``) as well as to
the budget: :meth:`ComputeMeter.eval_refusal` says why an evaluation may not run.

One-off compute: with cached teacher logits, training tokens cost the student only
(``flops_per_token`` is then the student's training FLOP per token) and the teacher's forward
over the data is spent once, when the cache is built. :meth:`ComputeMeter.charge` books such a
one-off amount; it counts toward the total and the budget like per-token compute.
"""

from __future__ import annotations

from typing import Optional

from audit.numbers import short_sci
from distill.runtime.distributed import DistContext, all_reduce_sum


class ComputeMeter:
    """Counts tokens (and so FLOP) across ranks; every rank holds the same global totals.

    With a ``ctx`` of several processes, :meth:`add` and :meth:`would_exceed` take this rank's
    token counts and sum them over ranks, so all ranks must call them together."""

    def __init__(self, flops_per_token: float, budget_flops: Optional[float] = None,
                 tolerance: float = 0.0, ctx: Optional[DistContext] = None, *,
                 generation_flops_per_token: float = 0.0, eval_flops_per_token: float = 0.0,
                 eval_tokens_limit: Optional[float] = None):
        if not flops_per_token >= 0:
            raise ValueError(f"flops_per_token: expected >= 0, got {flops_per_token}")
        if not generation_flops_per_token >= 0:
            raise ValueError(f"generation_flops_per_token: expected >= 0, got {generation_flops_per_token}")
        if budget_flops is not None and not budget_flops > 0:
            raise ValueError(f"budget_flops: expected > 0, got {budget_flops}")
        if not tolerance >= 0:
            raise ValueError(f"tolerance: expected >= 0, got {tolerance}")
        self.flops_per_token = float(flops_per_token)
        self.generation_flops_per_token = float(generation_flops_per_token)
        self.generated = 0          # positions the student ran while sampling, all ranks
        self.budget_flops = budget_flops
        self.tolerance = tolerance
        self.ctx = ctx
        self.tokens = 0
        self.one_off_flops = 0.0
        self.lost_tokens = 0        # tokens of steps whose weights a crash lost (still in ``tokens``)
        if not eval_flops_per_token >= 0:
            raise ValueError(f"eval_flops_per_token: expected >= 0, got {eval_flops_per_token}")
        self.eval_flops_per_token = float(eval_flops_per_token)
        self.eval_tokens_limit = eval_tokens_limit
        self.eval_tokens = 0        # positions held-out evaluations ran, all ranks

    @property
    def flops(self) -> float:
        """FLOP executed so far, all ranks: per-token compute (training tokens, sampled
        positions) plus one-off charges."""
        return (self.tokens * self.flops_per_token + self.generated * self.generation_flops_per_token
                + self.one_off_flops + self.eval_flops)

    @property
    def eval_flops(self) -> float:
        """FLOP of the held-out evaluations so far, all ranks."""
        return self.eval_tokens * self.eval_flops_per_token

    def eval_refusal(self, tokens: int) -> Optional[str]:
        """Why evaluating ``tokens`` more positions (all ranks') may not run: past the audited
        evaluation cap, or past the budget's limit; None when it fits."""
        if self.eval_tokens_limit is not None and self.eval_tokens + tokens > self.eval_tokens_limit:
            return (f"evaluation: {tokens:,} more positions would pass the audited evaluation.tokens "
                    f"{short_sci(self.eval_tokens_limit, 4)} ({self.eval_tokens:,} evaluated so far)")
        limit = self.limit_flops
        if limit is not None and self.flops + tokens * self.eval_flops_per_token > limit:
            return (f"evaluation: {short_sci(tokens * self.eval_flops_per_token, 4)} FLOP would take compute past "
                    f"the limit {short_sci(limit, 4)} FLOP")
        return None

    def add_eval(self, tokens: int) -> None:
        """Record the positions (all ranks') an evaluation ran."""
        self.eval_tokens += int(tokens)

    def charge(self, flops: float) -> None:
        """Book one-off compute (the same figure on every rank, not summed over ranks)."""
        if not flops >= 0:
            raise ValueError(f"flops: expected >= 0, got {flops}")
        self.one_off_flops += float(flops)

    @property
    def limit_flops(self) -> Optional[float]:
        """budget x (1 + tolerance), or None without a budget."""
        return None if self.budget_flops is None else self.budget_flops * (1 + self.tolerance)

    def _global(self, tokens: int, summed: bool) -> int:
        if summed or self.ctx is None:
            return int(tokens)
        return int(all_reduce_sum(int(tokens), self.ctx))

    def _global_pair(self, tokens: int, generated: int, summed: bool) -> tuple[int, int]:
        """Both counts summed over ranks (one all-reduce each; the second only when some rank
        could sample: every rank takes the same branch, since the rate is the same on all)."""
        if not self.generation_flops_per_token:
            if generated:
                raise ValueError("sampled positions given, but this run has no sampling rate: the audit's "
                                 "method is not on_policy")
            return self._global(tokens, summed), 0
        return self._global(tokens, summed), self._global(generated, summed)

    def add(self, tokens: int, *, generated: int = 0, summed: bool = False) -> None:
        """Record this rank's ``tokens`` (and ``generated``: positions it ran while sampling)
        from the step just done (all ranks' when ``summed``, e.g. a count the caller already
        gathered: then nothing is all-reduced)."""
        tokens, generated = self._global_pair(tokens, generated, summed)
        self.tokens += tokens
        self.generated += generated

    def charge_lost(self, tokens: int) -> None:
        """Book the global ``tokens`` of steps that ran but were lost to a crash: they used
        compute, so they count toward the total and the budget, and are kept apart to be shown."""
        self.tokens += int(tokens)
        self.lost_tokens += int(tokens)

    @property
    def lost_flops(self) -> float:
        return self.lost_tokens * self.flops_per_token

    def would_exceed(self, next_tokens: int, *, generated: int = 0, summed: bool = False) -> bool:
        """True when processing ``next_tokens`` more (and sampling ``generated`` positions; this
        rank's share; all ranks' when ``summed``) would pass the limit."""
        limit = self.limit_flops
        if limit is None:
            return False
        tokens, generated = self._global_pair(next_tokens, generated, summed)
        return ((self.tokens + tokens) * self.flops_per_token
                + (self.generated + generated) * self.generation_flops_per_token + self.one_off_flops
                + self.eval_flops) > limit

    def state_dict(self) -> dict:
        state = {"tokens": self.tokens, "flops": self.flops, "flops_per_token": self.flops_per_token,
                 "one_off_flops": self.one_off_flops, "lost_tokens": self.lost_tokens}
        if self.generation_flops_per_token:
            state.update(generated=self.generated, generation_flops_per_token=self.generation_flops_per_token)
        if self.eval_tokens:
            state.update(eval_tokens=self.eval_tokens, eval_flops_per_token=self.eval_flops_per_token)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.tokens = int(state["tokens"])
        self.one_off_flops = float(state.get("one_off_flops", 0.0))
        self.lost_tokens = int(state.get("lost_tokens", 0))
        self.generated = int(state.get("generated", 0))
        self.eval_tokens = int(state.get("eval_tokens", 0))
