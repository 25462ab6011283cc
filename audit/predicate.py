"""The signed audit predicate as one typed model.

``check`` builds it (so nothing it signs can be mis-shaped) and the training gate parses the
verified payload into it once, before any other check; every check then reads typed fields.
FLOP use 1 multiply-add = 2 FLOP (see :mod:`audit.compute.types`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from audit.compute.types import ComputeEstimate
from audit.policy.decision import Decision, Outcome
from audit.validation import StrictModel, describe_error, field_path


class PlanRecord(StrictModel):
    """The audited plan: its name, where it was, the sha256 of the bytes decided on, its content."""

    name: str
    path: str
    sha256: str
    content: dict[str, Any]


class AttestedInput(BaseModel):
    """One input the signature covers (``role``: plan, student_config, teacher_weights, ...).
    Policy packs and reference tables add ``pack_id``/``pack_version``, model folders ``files``
    and ``bytes``: extra keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)
    role: str
    name: str
    sha256: str
    path: str


class AuditPredicate(StrictModel):
    tool: dict[str, Any]
    as_of: dt.date                       # the rules were applied as of this date
    historical: bool                     # as_of is before the plan's start and the signing day
    created: str                         # RFC 3339 UTC, when it was signed
    plan: PlanRecord
    conventions: dict[str, str]
    compute: ComputeEstimate
    decision: Decision
    outcome: Outcome
    gate_open: bool
    inputs: list[AttestedInput]

    def inputs_of(self, role: str) -> list[AttestedInput]:
        return [entry for entry in self.inputs if entry.role == role]


def parse_audit_predicate(data: Any) -> tuple[Optional[AuditPredicate], Optional[str]]:
    """(the typed predicate, None), or (None, why it cannot be read: the first field and what
    was expected)."""
    try:
        return AuditPredicate.model_validate(data), None
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=lambda e: [str(p) for p in e["loc"]])
        return None, f"{field_path(errors[0]['loc'])}: {describe_error(errors[0])}"
