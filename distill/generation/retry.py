"""Retries: exponential backoff with full jitter, never shorter than a server's ``Retry-After``.

Attempt ``n`` (0-based) that failed waits ``uniform(0, min(cap, base * 2**n))`` seconds, or the
server's ``Retry-After`` when that is longer (capped at ``cap`` too, so that a server cannot park
a job for hours: past the cap the attempt counts as failed like any other).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6          # attempts per prompt, the first included
    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, failed_attempt: int, retry_after: Optional[float] = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (0-based) failed."""
        rng = rng or random
        backoff = rng.uniform(0.0, min(self.cap_s, self.base_s * (2 ** failed_attempt)))
        if retry_after is not None and retry_after > 0:
            return min(self.cap_s, max(backoff, float(retry_after)))
        return backoff


def parse_retry_after(value: Optional[str], *, now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` as seconds: a number of seconds, or an HTTP date. None when absent or
    unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        import email.utils
        import time

        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
