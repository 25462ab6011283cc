"""What a teacher backend is: one chat request in, one completion with its token usage out.

A backend raises :class:`Transient` for what a later attempt may fix (rate limits, server
errors, timeouts, dropped connections) and :class:`Fatal` for what it cannot (a refused key, an
unknown model); the runner retries the first and stops on the second. ``Transient.spent`` says
whether the teacher may have done the work anyway (a timeout, a dropped connection): the meter
then charges the attempt's reserved bound, since the provider may bill it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Protocol

from audit.errors import FlopgateError


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters of every request of a job (recorded with each sample)."""

    model: str
    max_tokens: int
    temperature: float = 1.0
    top_p: Optional[float] = None
    seed: Optional[int] = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str                     # the model id the teacher reported
    finish_reason: Optional[str] = None
    response_id: Optional[str] = None


class Transient(Exception):
    """A failure a later attempt may fix. ``retry_after``: seconds the server asked for;
    ``spent``: the teacher may have generated anyway (charge the attempt's bound)."""

    def __init__(self, what: str, *, retry_after: Optional[float] = None, spent: bool = False):
        super().__init__(what)
        self.what, self.retry_after, self.spent = what, retry_after, spent


class Fatal(FlopgateError):
    """A failure no retry fixes (a refused key, an unknown model or path, a malformed answer):
    one line, exit 2. The message never holds the API key."""

    exit_code = 2


class Backend(Protocol):
    """``describe`` names the teacher for messages and the record (never a secret)."""

    def describe(self) -> dict: ...

    def complete(self, messages: list[dict], sampling: Sampling) -> Completion: ...
