"""The gate's refusal: the exception every gate check raises, and its exit code (6).

Its own module so that the file-level checks (``gate``), the attested-input layer and the run
handle (``gated``) can all raise it without importing one another.
"""

from __future__ import annotations

from audit.errors import FlopgateError

GATE_REFUSED_EXIT = 6


class GateRefused(FlopgateError):
    """The gate did not open; ``reasons`` has one line per failed check."""

    exit_code = GATE_REFUSED_EXIT

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__(f"gate refused ({len(self.reasons)} reason(s)): " + "; ".join(self.reasons))
