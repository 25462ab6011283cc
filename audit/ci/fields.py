"""Which plan fields a finding is about, so CI outputs can point at their lines.

A finding does not record the fields it read; they follow from what produced it: a regime
compares a fact, a terms clause has a type (a naming clause reads ``student.name``), an
organisation rule has ``when`` conditions, and each engine (fail-closed) finding checks one
thing. The tables below map those to dotted plan paths, most specific first. A compute fact
points at ``data.tokens``: the plan's own figure that the counted FLOP scale with (the model
configs and the method weigh in too, but the tokens are what a plan usually changes).
"""

from __future__ import annotations

import re

from audit.policy.decision import Finding
from audit.policy.packs import PolicySet
from audit.policy.schema import HostEntry, Regime, TeacherEntry, Upstream
from audit.policy.teachers import BASE_PREFIX

FACT_FIELDS = {
    "total_flops": "data.tokens",
    "update_flops": "data.tokens",
    "modification_flops": "data.tokens",
    "own_training_flops": "data.tokens",
    "original_model_flops": "student.base_model",
    "teacher_training_flops": "teacher.model",
    "cost_usd": "hardware.price_per_hour_usd",
    "annual_revenue_usd": "organization.annual_revenue_usd",
    "monthly_active_users": "use.monthly_active_users",
    "organization_monthly_active_users": "organization.monthly_active_users",
}
"""A fact a rule compares -> the plan field it comes from (compute facts: see the module docstring)."""

WHEN_FIELDS = {
    "distribution": "use.distribution", "distributed": "use.distribution", "scope": "use.scope",
    "commercial": "use.commercial", "student_init": "student.init", "student_derived_from": "student.base_model",
    "access": "teacher.access", "teacher_provider": "teacher.model", "teacher_model": "teacher.model",
    "teacher_terms": "teacher.model", "jurisdictions_any": "organization.jurisdictions",
    "domicile": "organization.domicile", "student_license": "student.license", "provider": "student.init",
}
"""A condition of a rule's or clause's ``when`` -> the plan field it reads."""

_TEACHER = "teacher.model"  # stands for "the model whose terms these are"; a base-model clause swaps it
CLAUSE_FIELDS = {
    "competitor_ban": [_TEACHER, "use.scope", "use.distribution"],
    "any_training_ban": [_TEACHER],
    "authorization_required": [_TEACHER, "teacher.authorization"],
    "needs_review": [_TEACHER, "use.scope", "use.distribution"],
    "derivative_pass_through": ["student.license"],
    "naming": ["student.name"],
    "attribution": [_TEACHER],
    "notice_file": [_TEACHER],
    "use_policy": [_TEACHER],
    "non_commercial": ["use.commercial"],
    "region_exclusion": ["organization.domicile"],
    "territory_exclusion": ["organization.jurisdictions", "organization.domicile"],
    "permission": [_TEACHER],
}
"""A terms clause's type -> the plan fields its effect depends on (usage caps: by metric)."""

ENGINE_FIELDS = {
    "engine.unknown-teacher": ["teacher.model"],
    "engine.unknown-license": ["teacher.license"],
    "engine.ambiguous-teacher": ["teacher.model"],
    "engine.license-mismatch": ["teacher.license", "teacher.model"],
    "engine.no-permission": ["teacher.model"],
    "engine.teacher-license-conflict": ["teacher.license", "teacher.model"],
    "engine.host-missing": ["teacher.host", "teacher.access"],
    "engine.unknown-host": ["teacher.host"],
    "engine.unknown-base-model": ["student.base_model"],
    "engine.unknown-base-license": ["student.base_model"],
    "engine.ambiguous-base-model": ["student.base_model"],
    "engine.data-tokens-exceed-manifest": ["data.tokens", "data.manifest"],
    "engine.uncounted-ops": ["student.config"],   # "teacher: ..." in observed -> teacher.config
    "engine.no-terms-in-force": ["schedule.start"],
    "engine.terms-not-in-force": ["schedule.start"],
    "engine.sub-national-scope": ["organization.jurisdictions"],
    "engine.unknown-jurisdiction": ["organization.jurisdictions"],
    "engine.provider-status": ["student.init", "student.base_model"],
    "engine.rule-error": [],                      # the rule named in observed decides
    "engine.unknown-derivative-base": ["teacher.weights", "teacher.model"],
    "engine.derived-from": ["teacher.weights", "teacher.model"],
    "engine.matched-by-name": ["teacher.model"],
    "engine.dataset-without-generator": ["data.sources"],
}
"""Each engine (fail-closed) finding -> the plan fields it checks. A test keeps it complete."""


def finding_fields(finding: Finding, packs: PolicySet, student_init: str = "scratch") -> list[str]:
    """The plan fields ``finding`` is about, most specific first; ``[]`` when none can be named
    (an output then points at the plan's first line). ``student_init``: the plan's, which says
    where a base-model clause's weights come from."""
    if finding.kind == "engine":
        if finding.rule_id == "engine.rule-error" and finding.observed:
            fields = rule_fields(finding.observed, packs, student_init)
        elif finding.rule_id == "engine.uncounted-ops" and (finding.observed or "").startswith("teacher"):
            fields = ["teacher.config"]
        else:
            fields = list(ENGINE_FIELDS.get(finding.rule_id, []))
    else:
        fields = rule_fields(finding.rule_id, packs, student_init)
    return rerooted(fields, finding.source)


_SOURCE_LABEL = re.compile(r"^(teachers|data\.sources)\[(\d+)\]")


def rerooted(fields: list[str], source: str | None) -> list[str]:
    """``fields`` of a finding about another source of outputs (``Finding.source``: a label
    such as ``teachers[1] 'x'`` or ``data.sources[0] 'y' (written by 'z')``): the teacher's
    fields become that teacher's (``teachers[1].model``) or that data source's (its ``license``,
    else its ``generated_by``)."""
    match = _SOURCE_LABEL.match(source or "")
    if match is None:
        return fields
    root = f"{match.group(1)}[{match.group(2)}]"
    out = []
    for name in fields:
        if not name.startswith("teacher."):
            out.append(name)
        elif match.group(1) == "teachers":
            out.append(root + name[len("teacher"):])
        else:
            out.append(f"{root}.license" if name == "teacher.license" else f"{root}.generated_by")
    return list(dict.fromkeys(out))


def rule_fields(rule_id: str, packs: PolicySet, student_init: str = "scratch") -> list[str]:
    """The plan fields the rule, clause, regime or entry ``rule_id`` reads."""
    base = rule_id.startswith(BASE_PREFIX)
    found = packs.find(rule_id[len(BASE_PREFIX):] if base else rule_id)
    if found is None:
        return []
    item = found[1]
    fields: list[str] = []
    if isinstance(item, Regime):
        fields.append(FACT_FIELDS[item.fact])
        fields += [FACT_FIELDS[t.fact] for t in item.requires]
    elif isinstance(item, HostEntry):
        fields.append("teacher.host")
    elif isinstance(item, (TeacherEntry, Upstream)):
        fields.append(_TEACHER)
    elif getattr(item, "type", None) == "usage_cap":
        fields.append(FACT_FIELDS[item.metric])
    elif getattr(item, "type", None) in CLAUSE_FIELDS:
        fields += CLAUSE_FIELDS[item.type]
    fields += when_fields(getattr(item, "when", None))
    if base:  # the terms are the base model's: the weights the student starts from
        origin = "teacher.model" if student_init == "pruned_teacher" else "student.base_model"
        fields = [origin if f == _TEACHER else f for f in fields]
    return list(dict.fromkeys(fields))


def when_fields(when) -> list[str]:
    """The plan fields a ``when`` block's conditions read, in the order the schema lists them."""
    if when is None:
        return []
    given = when.model_dump(exclude_none=True, exclude_defaults=True)
    fields = [WHEN_FIELDS[name] for name in given if name in WHEN_FIELDS]
    fields += [FACT_FIELDS[t.fact] for t in when.facts]
    return fields


def locate(fields: list[str], positions: dict[str, tuple[int, int]]) -> tuple[str | None, int, int]:
    """``(field, line, column)`` of the first of ``fields`` written in the plan; when none is
    written (``teacher.host`` left out), the nearest written parent of the first (``teacher``);
    nothing at all: ``(None, 1, 1)``, the plan's first line."""
    # a plan written with `teachers:` has no `teacher` key: its first teacher is the teacher
    fields = [*fields, *(f"teachers[0]{name[len('teacher'):]}" for name in fields if name.startswith("teacher."))]
    for name in fields:
        if name in positions:
            return name, *positions[name]
    for name in fields:
        path = name.rpartition(".")[0]
        while path:
            if path in positions:
                return path, *positions[path]
            path = path.rpartition(".")[0]
    return None, 1, 1
