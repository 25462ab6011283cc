"""A judged plan as CI outputs see it: one result per reason, each at a plan line.

The three formats (:mod:`audit.ci.sarif`, :mod:`audit.ci.junit`, :mod:`audit.ci.github`) render
the same list, so they never disagree on what is an error:

- a ``deny`` finding is an ``error``;
- a ``review`` finding, and an obligation that is checkable and ``unmet`` (the engine turns it
  into REVIEW), is a ``warning``;
- every other obligation (``met`` or ``todo``) is a ``note``, and so is an engine note (what the
  check left out, e.g. sub-national laws): never silent;
- ``allow`` and ``info`` findings of the packs are no result: their rule passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from audit.ci.fields import finding_fields, locate, rule_fields
from audit.policy.decision import Citation, Decision
from audit.policy.duties import bases_note
from audit.policy.packs import PolicySet
from audit.yamlio import field_positions

Level = Literal["error", "warning", "note"]
LEVEL_ORDER = {"error": 0, "warning": 1, "note": 2}


@dataclass(frozen=True)
class Rule:
    """A policy rule (regime, clause, organisation rule, teacher entry or engine check) that was
    applied to at least one plan, with the source it cites (None for engine checks)."""

    id: str
    pack: str                    # "id@version"
    kind: str                    # regime, teacher, organization or engine
    summary: str                 # the first finding's explanation: what the rule says
    citation: Citation | None


@dataclass(frozen=True)
class Result:
    """One reason in one plan, at the line of the field it is about."""

    rule_id: str
    level: Level
    message: str
    fields: tuple[str, ...]      # the plan fields it is about, most specific first
    field: str | None            # the one written in the plan that it points at (None: line 1)
    line: int                    # 1-based
    column: int                  # 1-based, in Unicode code points
    effect: str                  # the finding's effect, or "obligation"


@dataclass(frozen=True)
class JudgedPlan:
    """One plan and its decision, with the results the CI formats render."""

    path: str                    # as given on the command line (relative paths stay relative)
    sha256: str                  # of the bytes the plan was read from
    plan_name: str
    decision: Decision
    exit_code: int
    results: tuple[Result, ...]
    rules: tuple[Rule, ...]      # every rule applied, in decision order
    positions: dict[str, tuple[int, int]]  # plan field -> (line, column), from the same bytes

    def shown_path(self) -> str:
        """The plan's path as annotations and reports show it: relative, with ``/``."""
        return repo_path(self.path)


def judge(path: str, raw: bytes, sha256: str, plan_name: str, student_init: str, decision: Decision,
          packs: PolicySet, exit_code: int) -> JudgedPlan:
    """Place every reason of ``decision`` at a line of the plan whose bytes are ``raw`` (the
    bytes the plan was loaded from; ``sha256`` is their digest as :func:`audit.plan.load_plan`
    recorded it)."""
    from audit.fsutil import sha256_bytes

    if sha256_bytes(raw) != sha256:
        raise ValueError("the plan bytes to locate fields in are not the bytes that were judged")
    positions = field_positions(raw.decode("utf-8"), path)
    results: list[Result] = []

    def add(rule_id: str, level: Level, message: str, fields: list[str], effect: str) -> None:
        field, line, column = locate(fields, positions)
        results.append(Result(rule_id, level, message, tuple(fields), field, line, column, effect))

    for f in decision.findings:
        level = {"deny": "error", "review": "warning"}.get(f.effect)
        if level is None and f.kind == "engine" and f.effect == "info":
            level = "note"
        if level is None:
            continue
        add(f.rule_id, level, _finding_text(f), finding_fields(f, packs, student_init), f.effect)
    observed = {f.rule_id: f.observed for f in decision.findings if f.effect == "obligation" and f.observed}
    for o in decision.obligations:
        level = "warning" if o.checkable and o.status == "unmet" else "note"
        deadline = f" (deadline: {o.deadline})" if o.deadline else ""
        seen = f" Observed: {observed[o.rule_id]}." if o.rule_id in observed else ""
        add(o.rule_id, level, f"Obligation {o.id} ({o.status}): {o.text}{deadline}{seen}{bases_note(o)}",
            rule_fields(o.rule_id, packs, student_init), "obligation")
    results.sort(key=lambda r: (LEVEL_ORDER[r.level], r.line, r.column, r.rule_id))
    return JudgedPlan(path, sha256, plan_name, decision, exit_code, tuple(results),
                      tuple(_rules(decision, packs)), positions)


def _finding_text(f) -> str:
    """The explanation, then what was observed against which limit (as the terminal shows them)."""
    text = f.explanation
    if f.observed:
        text += f" Observed: {f.observed}"
        if f.threshold:
            text += f"; limit: {' '.join(filter(None, (f.comparator, f.threshold)))}"
        text += "."
    return text


def _rules(decision: Decision, packs: PolicySet) -> list[Rule]:
    """Every rule the decision names (findings first, then obligations' rules), once each; its
    summary is the pack's own explanation (the same for every plan), else the finding's."""
    from audit.policy.teachers import BASE_PREFIX

    rules: dict[str, Rule] = {}
    for f in decision.findings:
        if f.rule_id not in rules:
            found = packs.find(f.rule_id.removeprefix(BASE_PREFIX)) if f.kind != "engine" else None
            summary = getattr(found[1], "explanation", None) if found else None
            rules[f.rule_id] = Rule(f.rule_id, f"{f.pack_id}@{f.pack_version}", f.kind, summary or f.explanation,
                                    f.citation)
    for o in decision.obligations:
        if o.rule_id not in rules:
            rules[o.rule_id] = Rule(o.rule_id, "", "obligation", o.text, None)
    return list(rules.values())


def repo_path(path: str) -> str:
    """``path`` relative to the working directory when it lies under it (CI checks out the
    repository there), with ``/`` separators; an outside path stays absolute."""
    given = Path(path)
    if given.is_absolute():
        try:
            given = given.relative_to(Path.cwd())
        except ValueError:
            return given.as_posix()
    return given.as_posix()


def artifact_uri(path: str) -> str:
    """:func:`repo_path` as a URI reference (SARIF ``artifactLocation.uri``): percent-encoded,
    and an absolute path as a ``file://`` URI."""
    from urllib.parse import quote

    shown = repo_path(path)
    return Path(shown).as_uri() if Path(shown).is_absolute() else quote(shown, safe="/")


def all_rules(plans: list[JudgedPlan]) -> list[Rule]:
    """The rules of every plan, once each, in first-seen order."""
    seen: dict[str, Rule] = {}
    for plan in plans:
        if isinstance(plan, UnreadablePlan):
            seen.setdefault(INVALID_PLAN, Rule(INVALID_PLAN, "", "engine", "The plan could not be read or judged "
                                               "(bad input: exit 2); the message names the field.", None))
            continue
        for rule in plan.rules:
            seen.setdefault(rule.id, rule)
    return list(seen.values())


def citation_text(citation: Citation | None) -> str:
    """A rule's source in one paragraph (the help of a SARIF rule, a JUnit failure's body)."""
    if citation is None:
        return "An engine check of flopgate (fail closed): it has no external source."
    return (f"Source: {citation.section}, {citation.url} (dated {citation.date.isoformat()}; evidence: "
            f"{citation.evidence}). Quote: \"{citation.quote}\"")


def read_plan_bytes(path: str) -> bytes:
    """The plan's bytes, read once as :func:`audit.plan.load_plan` reads them."""
    from audit.fsutil import read_input
    from audit.limits import MAX_SMALL_FILE_BYTES

    return read_input(path, "plan", max_bytes=MAX_SMALL_FILE_BYTES)


def read_plan(path: str):
    """``(LoadedPlan, bytes)``: the plan loaded from the bytes read here, once, so that its
    lines can be placed in exactly what was judged."""
    from audit.plan import load_plan

    raw = read_plan_bytes(path)
    return load_plan(path, raw), raw


INVALID_PLAN = "flopgate.invalid-plan"
"""The rule id CI outputs give a plan that could not be judged (bad input, exit 2)."""


@dataclass(frozen=True)
class UnreadablePlan:
    """A plan that could not be judged: its one-line error, at the line of the field it names
    when the error is about the plan itself (else line 1)."""

    path: str
    message: str
    field: str | None
    line: int
    column: int
    exit_code: int
    sha256: str | None           # of the bytes read, when they could be read

    def shown_path(self) -> str:
        return repo_path(self.path)


def unreadable(path: str, exc, raw: bytes | None) -> UnreadablePlan:
    """``exc`` (a :class:`audit.errors.FlopgateError` raised reading or judging the plan at
    ``path``, whose bytes ``raw`` were read or not) placed at a line of the plan."""
    import re

    from audit.errors import FlopgateError
    from audit.fsutil import sha256_bytes

    source, field = getattr(exc, "source", None), getattr(exc, "field", None)
    about_plan = source is not None and Path(source).resolve() == Path(path).resolve()
    line = column = 1
    mark = re.fullmatch(r"line (\d+), column (\d+)", field or "")
    if about_plan and mark:
        line, column = int(mark[1]), int(mark[2])
    elif about_plan and field and raw is not None:
        try:
            positions = field_positions(raw.decode("utf-8"), path)
        except (FlopgateError, UnicodeDecodeError):
            positions = {}
        _, line, column = locate([field], positions)
    return UnreadablePlan(path, str(exc), field if about_plan else None, line, column, exc.exit_code,
                          sha256_bytes(raw) if raw is not None else None)


def packs_as_judged(policy_dirs: list[Path], decision: Decision) -> PolicySet:
    """The packs ``decision`` was made with, read again (``flopgate check`` does not hand its
    packs out) and checked against the digests the decision records: a pack that changed in
    between is an ``InputError``, never a silent mismatch."""
    from audit.errors import InputError
    from audit.policy.packs import load_packs

    packs = load_packs(policy_dirs)
    now = [(p["id"], p["version"], p["sha256"]) for p in packs.pack_files()]
    then = [(p["id"], p["version"], p["sha256"]) for p in decision.packs]
    if now != then:
        raise InputError("a policy pack changed while the plan was judged; the audit was written, but its "
                         "CI output was not: run the check again", field="--policies")
    return packs
