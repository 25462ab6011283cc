"""One audit's history in the ledger, summarised for the HTML report (``flopgate report``): the
events (audit, approvals, gate openings, resumes), the compute charged per run, and what is
spent and left of the audit's budget. Pure: it takes rows already read. FLOP throughout.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

EVENT_KINDS = ("audit", "approval", "gate_open", "run", "resume", "generation")


def audit_history(rows: Iterable[Mapping[str, Any]], audit_sha256: str, *, location: str,
                  chain_problem: str | None) -> dict[str, Any]:
    """The report's ledger section for ``audit_sha256`` from every row of the ledger (in seq
    order). ``chain_problem`` is the first line ``ledger verify`` gave, or None when the chain
    verified; the figures are shown either way, marked unverified when it did not."""
    events: list[dict[str, Any]] = []
    runs: dict[str, dict[str, Any]] = {}
    budget = spent = None
    for row in rows:
        if row.get("audit_sha256") != audit_sha256:
            continue
        body = row.get("body") or {}
        kind = row.get("kind")
        if kind == "charge":
            run = runs.setdefault(str(body.get("run_id")), {
                "run_id": str(body.get("run_id")), "charges": 0, "flops": 0.0,
                "update_flops": 0.0, "first_step": body.get("step_from"),
                "last_step": body.get("step_to"), "first_time": row.get("time")})
            run["charges"] += 1
            run["flops"] = math.fsum((run["flops"], float(body.get("flops") or 0)))
            run["update_flops"] = math.fsum((run["update_flops"], float(body.get("update_flops") or 0)))
            run["last_step"], run["last_time"] = body.get("step_to"), row.get("time")
            if isinstance(body.get("run_energy_j"), (int, float)):   # cumulative: the last one holds
                run["energy_j"] = float(body["run_energy_j"])
            spent = body.get("spent_flops")
        elif kind in EVENT_KINDS:
            if kind == "audit":
                budget = body.get("budget_flops")
            events.append({"seq": row.get("seq"), "time": row.get("time"), "kind": kind,
                           "keyid": row.get("keyid"), "detail": _detail(kind, body)})
    spent = float(spent) if isinstance(spent, (int, float)) else 0.0
    left = budget - spent if isinstance(budget, (int, float)) else None
    return {"location": location, "chain_problem": chain_problem, "events": events,
            "runs": list(runs.values()), "spent_flops": spent, "budget_flops": budget,
            "left_flops": left}


def _detail(kind: str, body: Mapping[str, Any]) -> str:
    if kind == "audit":
        return f"{body.get('plan_name')}: {body.get('outcome')}"
    if kind in ("gate_open", "resume", "run"):
        return str(body.get("run_id", ""))
    return ", ".join(f"{key}: {body[key]}" for key in sorted(body))[:200]
