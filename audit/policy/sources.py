"""Every model whose outputs the student learns from is a teacher: the plan's other teachers and
the models that wrote its third-party datasets. Pure.

:func:`output_sources` lists them, each as the :class:`~audit.plan.Teacher` that ``decide``
judges the way it judges the plan's own teacher (the strictest outcome wins):

- ``teachers[1:]``: as the plan gives them (their outputs are already in the data);
- ``data.sources[i].generated_by``: each model as a teacher. Access: ``weights`` when a pack's
  weights entry describes the model (an open-weights model: its licence binds its outputs,
  whoever ran it), else ``api`` (a closed model's outputs come from its provider's API or app,
  whose terms bind them). When ``generated_by`` is left out, the cited dataset table
  (``datasets:`` in the packs) fills it in, and a finding says so and cites the dataset card;
- ``data.sources[i].license``: the dataset's own licence, judged like a teacher's licence.

A dataset that is neither in the table nor says who wrote it is taken as written by people
(an ``info`` finding says so); ``generated_by`` naming a model no pack knows is REVIEW, as an
unknown teacher is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from audit.plan import Plan, Teacher
from audit.policy.decision import Citation
from audit.policy.packs import PolicySet
from audit.policy.teachers import Resolution, resolve_plan_teacher, resolve_teacher


@dataclass(frozen=True)
class OutputSource:
    """One source of outputs besides the plan's own teacher. ``label`` names it in findings;
    ``table``: the dataset table entry it came from (pack id, version, citation), if any."""

    label: str
    teacher: Teacher
    res: Resolution
    table: Optional[tuple[str, str, Citation]] = None


@dataclass(frozen=True)
class TableNote:
    """A data source whose generators came from the dataset table (for an ``info`` finding)."""

    label: str
    dataset: str
    generated_by: tuple[str, ...]
    pack: tuple[str, str]
    citation: Citation


def generator_access(model: str, packs: PolicySet) -> str:
    """``weights`` for a model a pack's weights entry knows (open weights), else ``api``."""
    return "weights" if resolve_teacher(model, "weights", None, packs).entries else "api"


def output_sources(plan: Plan, packs: PolicySet) -> tuple[list[OutputSource], list[TableNote], list[str]]:
    """The other teachers and dataset generators, the table lookups made, and the labels of
    data sources with no known generator (taken as written by people)."""
    out: list[OutputSource] = []
    notes: list[TableNote] = []
    plain: list[str] = []
    for index, teacher in enumerate(plan.teachers[1:], start=1):
        out.append(OutputSource(f"teachers[{index}] {teacher.model!r}", teacher,
                                resolve_plan_teacher(teacher, packs)))
    for index, source in enumerate(plan.data.sources):
        label = f"data.sources[{index}] {source.id!r}"
        generators, table = source.generated_by, None
        if generators is None:
            found = packs.dataset(source.id)
            if found is not None:
                loaded, entry = found
                generators = entry.generated_by
                table = (loaded.pack.id, loaded.pack.version, entry.citation)
                notes.append(TableNote(label, entry.id, tuple(generators), table[:2], entry.citation))
        for model in generators or []:
            teacher = Teacher(model=model, access=generator_access(model, packs))
            out.append(OutputSource(f"{label} (written by {model!r})", teacher, resolve_plan_teacher(teacher, packs),
                                    table))
        if source.license:
            teacher = Teacher(model=source.id, access="weights", license=source.license)
            res = replace(resolve_teacher("./" + source.id, "weights", source.license, packs), model=source.id)
            out.append(OutputSource(f"{label} (its licence {source.license!r})", teacher, res))
        if not generators:
            plain.append(label)
    return out, notes, plain
