"""Every source of model outputs is a teacher (issue 26, item 2): ``teachers:`` and
``data.sources:``; each source is judged with the teacher's terms, the strictest outcome wins and
every finding names its source."""

from __future__ import annotations

import itertools

import pytest

from audit.errors import InputError
from audit.plan import load_plan
from audit.policy.engine import decide
from audit.policy.sources import generator_access
from policy_factories import BASE_PLAN, make_compute, make_plan

LLAMA = {"model": "meta-llama/Llama-3.1-8B-Instruct", "access": "weights"}
GPT = {"model": "gpt-4o", "access": "api"}
QWEN = {"model": "Qwen/Qwen2.5-7B-Instruct", "access": "weights"}


def _decide(overrides):
    plan = make_plan(overrides)
    return plan, decide(plan, make_compute(), _decide.packs, plan.schedule.start)


@pytest.fixture(autouse=True)
def _packs(builtin_packs):
    _decide.packs = builtin_packs


# -- the plan: teacher or teachers --------------------------------------------------------------

def test_one_teacher_is_a_list_of_one():
    plan = make_plan()
    assert plan.teachers == [plan.teacher] and plan.teacher.model == BASE_PLAN["teacher"]["model"]


def test_teachers_list_sets_teacher_to_its_first():
    plan = make_plan({"teacher": None, "teachers": [QWEN, GPT]})
    assert plan.teacher.model == QWEN["model"] and [t.model for t in plan.teachers] == [QWEN["model"], "gpt-4o"]


def test_a_dumped_plan_validates_again():
    plan = make_plan({"teacher": None, "teachers": [QWEN, GPT]})
    assert type(plan).model_validate(plan.model_dump()) == plan


@pytest.mark.parametrize("overrides, message", [
    ({"teachers": [QWEN]}, "teacher is not teachers[0]"),
    ({"teacher": None, "teachers": [QWEN, {**GPT, "endpoint": "https://api.openai.com/v1"}]}, "teachers[1]: sets endpoint"),
    ({"teacher": None, "teachers": [QWEN, {**LLAMA, "parameters": 8.0e9}]}, "teachers[1]: sets parameters"),
])
def test_refused_teacher_lists(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_plan(overrides)


def test_a_second_run_teacher_is_one_line_with_exit_2(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("""\
plan_version: 1
name: two
organization: {name: Acme, jurisdictions: [EU], domicile: EU}
teachers:
  - {model: Qwen/Qwen2.5-7B-Instruct, access: weights}
  - {model: meta-llama/Llama-3.1-8B-Instruct, access: weights, config: llama-3.1-8b}
student: {name: Acme-1B, config: llama-3.2-1b}
data: {tokens: 1.0e9}
use: {purpose: support, scope: narrow, distribution: internal}
schedule: {start: 2026-12-01}
""")
    with pytest.raises(InputError) as err:
        load_plan(path)
    assert "teachers[1]: sets config" in str(err.value) and "\n" not in str(err.value)


def test_load_plan_resolves_every_teachers_paths(tmp_path):
    (tmp_path / "other").mkdir()
    path = tmp_path / "plan.yaml"
    path.write_text("""\
plan_version: 1
name: two
organization: {name: Acme, jurisdictions: [EU], domicile: EU}
teachers:
  - {model: Qwen/Qwen2.5-7B-Instruct, access: weights}
  - {model: ./other, access: weights, license: mit}
student: {name: Acme-1B, config: llama-3.2-1b}
data: {tokens: 1.0e9, sources: [{id: tatsu-lab/alpaca, license: cc-by-nc-4.0}]}
use: {purpose: support, scope: narrow, distribution: internal}
schedule: {start: 2026-12-01}
""")
    plan = load_plan(path).plan
    assert plan.teachers[1].model == str(tmp_path / "other") and plan.teacher is plan.teachers[0]


# -- the decision --------------------------------------------------------------------------------

def test_strictest_teacher_wins_in_any_order():
    outcomes = {_decide({"teacher": None, "teachers": list(order), "use": {"scope": "general"}})[1].outcome
                for order in itertools.permutations([LLAMA, GPT, QWEN])}
    assert outcomes == {"DENY"}


def test_every_finding_of_a_several_source_plan_names_its_source():
    _, decision = _decide({"teacher": None, "teachers": [LLAMA, GPT], "data": {"sources": [{"id": "Open-Orca/SlimOrca"}]}})
    teacher = [f for f in decision.findings if f.kind == "teacher" or f.rule_id.startswith("engine.")]
    assert teacher and all(f.source for f in teacher if not f.rule_id.startswith("engine.no-"))
    labels = {f.source for f in teacher}
    assert "teacher 'meta-llama/Llama-3.1-8B-Instruct'" in labels and "teachers[1] 'gpt-4o'" in labels
    assert "data.sources[0] 'Open-Orca/SlimOrca' (written by 'gpt-4')" in labels
    assert [s.source for s in decision.sources] == ["teachers[1] 'gpt-4o'",
                                                    "data.sources[0] 'Open-Orca/SlimOrca' (written by 'gpt-4')"]


def test_the_table_finding_cites_the_dataset_card():
    _, decision = _decide({"data": {"sources": [{"id": "open-orca/slimorca"}]}})  # any case
    note = next(f for f in decision.findings if f.rule_id == "dataset-table.Open-Orca/SlimOrca")
    assert note.effect == "info" and note.pack_id == "datasets"
    assert note.citation.url.startswith("https://huggingface.co/datasets/Open-Orca/SlimOrca")
    assert "'gpt-4'" in note.explanation


def test_generated_by_given_overrides_the_table():
    _, decision = _decide({"data": {"sources": [{"id": "Open-Orca/SlimOrca", "generated_by": ["Qwen/Qwen2.5-7B-Instruct"]}]}})
    assert not any(f.rule_id.startswith("dataset-table.") for f in decision.findings)
    assert decision.sources[0].entry_id is not None and "gpt" not in decision.sources[0].model


def test_empty_generated_by_means_written_by_people():
    _, decision = _decide({"data": {"sources": [{"id": "Open-Orca/SlimOrca", "generated_by": []}]}})
    assert any(f.rule_id == "engine.dataset-without-generator" and f.effect == "info" for f in decision.findings)
    assert decision.outcome == "ALLOW_WITH_OBLIGATIONS"


def test_generator_access_follows_the_packs(builtin_packs):
    assert generator_access("mistralai/Mixtral-8x7B-Instruct-v0.1", builtin_packs) == "weights"
    assert generator_access("gpt-4", builtin_packs) == "api"


def test_the_same_obligation_from_two_sources_is_listed_once():
    _, decision = _decide({"teacher": None, "teachers": [LLAMA, {**LLAMA, "model": "meta-llama/Llama-3.1-70B-Instruct"}]})
    ids = [o.id for o in decision.obligations]
    assert len(ids) == len(set(ids)) and "llama-3.1-license.use-policy" in ids


def test_one_teacher_plan_findings_are_unchanged():
    _, decision = _decide({})
    assert all(f.source is None for f in decision.findings) and decision.sources == []
