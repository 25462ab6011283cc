"""The audited token allowance of a generation job.

The audit signs ``method.prompt_tokens`` (prompt tokens prefilled) and
``method.teacher_generated_tokens`` (every token the teacher generates, discarded samples
included). A job may spend what the audit allows less what other jobs under the same audit
already spent (the ledger's ``generation`` rows).

Before a request the runner *reserves* its bound: the prompt's conservative token count
(:meth:`distill.data.prompts.Prompt.max_prompt_tokens`) and ``max_tokens`` for the
completion. A reservation that would take used + reserved past either limit is refused, so
requests in flight together can never pass the allowance. When the answer comes back the
reservation is *settled* with the usage the teacher reported (or with the whole bound, when
the teacher may have worked without saying what it spent: a timeout, a dropped connection).

With a ledger allowance (:class:`distill.generation.allowance.LedgerAllowance`) the limits are
not read once: a reservation the job's holding cannot cover asks the ledger, under its lock, to
hold more of the audit's allowance, so jobs running at once under one audit never pass it
together; tokens spent past what the job holds are booked at once.

The job's energy (:func:`job_energy`): a local teacher's GPU counter over the job, when every
session of it read one; else the estimate from the job's wall time on one accelerator; an API
teacher's energy is spent on the provider's hardware and is the provider's to report.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Reservation:
    prompt_tokens: int
    completion_tokens: int


class TokenMeter:
    """Thread-safe. ``used_*`` start at what this job already spent (a resumed job)."""

    def __init__(self, prompt_limit: float, completion_limit: float, *, used_prompt: int = 0,
                 used_completion: int = 0, allowance=None):
        self._limits = float(prompt_limit), float(completion_limit)
        self.used_prompt, self.used_completion = int(used_prompt), int(used_completion)
        self.reserved_prompt = self.reserved_completion = 0
        self.allowance = allowance  # a LedgerAllowance, or None: fixed limits
        self._lock = threading.Lock()

    @property
    def prompt_limit(self) -> float:
        """The most prompt tokens this job may spend (with a ledger allowance: the audited
        figure less what other jobs hold, as last seen)."""
        return self.allowance.ceiling[0] if self.allowance is not None else self._limits[0]

    @property
    def completion_limit(self) -> float:
        return self.allowance.ceiling[1] if self.allowance is not None else self._limits[1]

    def reserve(self, prompt_tokens: int, completion_tokens: int) -> Reservation | None:
        """The reservation, or None when it does not fit now (the caller waits for requests in
        flight to settle, or stops when none is)."""
        with self._lock:
            need = (self.used_prompt + self.reserved_prompt + prompt_tokens,
                    self.used_completion + self.reserved_completion + completion_tokens)
            if self.allowance is not None:
                held = self.allowance.held
                if (need[0] > held[0] or need[1] > held[1]) and not self.allowance.book(
                        (max(need[0], held[0]), max(need[1], held[1])), (self.used_prompt, self.used_completion),
                        status="running"):
                    return None
            elif need[0] > self.prompt_limit or need[1] > self.completion_limit:
                return None
            self.reserved_prompt += prompt_tokens
            self.reserved_completion += completion_tokens
            return Reservation(prompt_tokens, completion_tokens)

    def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        """Replace ``reservation`` by what was spent. More than reserved (a teacher whose
        tokenizer broke the bound) is charged in full: the meter never undercounts (and with a
        ledger allowance, what passes the job's holding is booked at once)."""
        with self._lock:
            self.reserved_prompt -= reservation.prompt_tokens
            self.reserved_completion -= reservation.completion_tokens
            self.used_prompt += int(prompt_tokens)
            self.used_completion += int(completion_tokens)
            if self.allowance is not None:
                held = self.allowance.held
                if self.used_prompt > held[0] or self.used_completion > held[1]:
                    self.allowance.book((max(self.used_prompt, held[0]), max(self.used_completion, held[1])),
                                        (self.used_prompt, self.used_completion), status="running", force=True)

    def fits_ever(self, prompt_tokens: int, completion_tokens: int) -> bool:
        """Whether a request of this bound could fit once nothing is in flight."""
        with self._lock:
            return (self.used_prompt + prompt_tokens <= self.prompt_limit
                    and self.used_completion + completion_tokens <= self.completion_limit)

    @property
    def over(self) -> bool:
        """Spent past a limit (only a teacher reporting more than the reserved bound can do it)."""
        return self.used_prompt > self.prompt_limit or self.used_completion > self.completion_limit


def job_energy(*, teacher: dict, session_joules, sessions: int, reason: str, wall_time_s: float,
               device_name: str, device_type: str, plan_hardware, tables) -> dict:
    """The generation record's ``energy`` block (:class:`audit.energy.Energy` as a dict).
    ``session_joules``: this session's measured joules (None: not measured); a job resumed from
    earlier sessions, whose counters were not kept, is estimated from its whole wall time
    (``wall_time_s``, all sessions) x one accelerator's board power. ``teacher``: the job's
    teacher identity (an ``endpoint_host`` means an API teacher)."""
    from audit.energy import run_energy, unavailable

    if teacher.get("endpoint_host"):
        return unavailable(f"the teacher ran behind an API ({teacher['endpoint_host']}): its energy is spent on "
                           "the provider's hardware, and the provider does not report it to flopgate").to_dict()
    if session_joules is not None and sessions > 1:
        session_joules, reason = None, "the job's earlier sessions kept no energy reading"
    return run_energy(session_joules, wall_time_s / 3600.0, devices=[device_name] if session_joules is not None else [],
                      device_name=device_name, device_type=device_type, plan_hardware=plan_hardware, tables=tables,
                      reason=reason).to_dict()
