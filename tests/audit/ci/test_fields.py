"""Which plan fields a finding is about, and where they are written: the tables stay complete
(a new engine check, clause type or fact without a field fails here) and every field they name
is one the plan schema has."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from audit.ci.fields import (
    CLAUSE_FIELDS,
    ENGINE_FIELDS,
    FACT_FIELDS,
    WHEN_FIELDS,
    locate,
    rule_fields,
)
from audit.errors import InputError
from audit.plan import Plan
from audit.policy import schema
from audit.policy.regimes import SUB_NATIONAL_RULE
from audit.yamlio import field_positions

ROOT = Path(__file__).resolve().parents[3]


def plan_paths(model=Plan, prefix="") -> set[str]:
    """Every dotted field path of the plan model (nested models included)."""
    out = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= plan_paths(arg, path + ".")
    return out


def test_every_engine_check_in_the_code_has_its_fields():
    ids = set()
    for path in (ROOT / "audit").rglob("*.py"):
        ids |= set(re.findall(r"\"(engine\.[a-z-]+)\"", path.read_text(encoding="utf-8")))
    ids.add(SUB_NATIONAL_RULE)
    assert ids <= set(ENGINE_FIELDS), sorted(ids - set(ENGINE_FIELDS))


def test_every_clause_type_fact_and_condition_has_its_fields():
    clause_types = set()
    for name in dir(schema):
        item = getattr(schema, name)
        if isinstance(item, type) and issubclass(item, schema._Clause) and "type" in item.model_fields:
            clause_types |= set(typing.get_args(item.model_fields["type"].annotation))
    assert clause_types == set(CLAUSE_FIELDS) | {"usage_cap"}
    assert set(typing.get_args(schema.FactName)) <= set(FACT_FIELDS)
    regime_facts = typing.get_args(schema.Regime.model_fields["fact"].annotation)
    assert set(regime_facts) <= set(FACT_FIELDS)
    assert set(schema.When.model_fields) == set(WHEN_FIELDS) | {"facts"}


def test_every_field_named_is_a_plan_field():
    known = plan_paths()
    named = set(FACT_FIELDS.values()) | set(WHEN_FIELDS.values())
    named |= {f for fields in (*CLAUSE_FIELDS.values(), *ENGINE_FIELDS.values()) for f in fields}
    named |= {"teacher.config", "teacher.host"}
    assert named <= known, sorted(named - known)


def test_rules_read_the_fields_their_conditions_name(builtin_packs):
    assert rule_fields("openai-services-agreement.competitor-ban", builtin_packs)[:3] == [
        "teacher.model", "use.scope", "use.distribution"]
    assert rule_fields("llama-3.1-license.naming", builtin_packs)[0] == "student.name"
    assert rule_fields("eu-ai-act.gpai", builtin_packs)[0] == "data.tokens"
    # a base model's clause is about the base model, not the teacher
    assert rule_fields("base-model.llama-3.1-license.notice", builtin_packs)[0] == "student.base_model"
    assert rule_fields("base-model.llama-3.1-license.notice", builtin_packs, "pruned_teacher")[0] == "teacher.model"
    assert rule_fields("no-such-rule", builtin_packs) == []


@pytest.fixture(scope="module")
def builtin_packs():
    from audit.policy.packs import load_packs

    return load_packs()


TEXT = """\
# comment
name: x
teacher:
  model: gpt-4o
  access: api
organization: {name: Acme, jurisdictions: [EU, US-CA]}
base: &b {k: 1}
copy: *b
1: not a string key
"""


def test_field_positions_are_the_keys_lines_and_columns():
    pos = field_positions(TEXT, "plan.yaml")
    assert pos["name"] == (2, 1)
    assert pos["teacher.model"] == (4, 3)
    assert pos["organization.jurisdictions"] == (6, TEXT.splitlines()[5].index("jurisdictions") + 1)
    assert pos["organization.jurisdictions[1]"] == (6, TEXT.splitlines()[5].index("US-CA") + 1)
    assert pos["copy.k"] == pos["base.k"]           # an alias shares the value it names
    assert not any(key.startswith("1") for key in pos)


def test_field_positions_refuse_bad_yaml_in_one_line():
    with pytest.raises(InputError, match=r"plan.yaml: line 3, column 1: invalid YAML"):
        field_positions("a: 1\nb: [\n", "plan.yaml")


def test_locate_prefers_a_written_field_then_the_parent_then_line_one():
    pos = field_positions(TEXT, "plan.yaml")
    assert locate(["teacher.host", "teacher.access"], pos) == ("teacher.access", 5, 3)
    assert locate(["teacher.host"], pos) == ("teacher", 3, 1)
    assert locate(["use.scope"], pos) == (None, 1, 1)
    assert locate([], pos) == (None, 1, 1)


def test_a_repeated_key_points_where_the_loader_took_its_value():
    """PyYAML keeps the last of two equal keys; pointing at the first would show a reviewer the
    line whose value was NOT judged."""
    from audit.yamlio import load_yaml_text

    text = "use:\n  scope: narrow\n  distribution: internal\n  scope: general\n"
    assert load_yaml_text(text, "plan.yaml")["use"]["scope"] == "general"
    assert field_positions(text, "plan.yaml")["use.scope"] == (4, 3)


def test_merged_keys_point_at_the_mapping_they_come_from_unless_written_here():
    text = "base: &b {scope: narrow, distribution: api}\nuse:\n  <<: *b\n  distribution: internal\n"
    pos = field_positions(text, "plan.yaml")
    assert pos["use.distribution"] == (4, 3)
    assert pos["use.scope"] == (1, 11)
