"""The published plan schema and reference: generated from the plan model, shipped up to date,
and true of every bundled example plan."""

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest

from audit.cli.main import main
from audit.plan import Plan
from audit.plan_doc import plan_doc
from audit.plan_schema import SCHEMA_FILE, id_lists, plan_schema, schema_text
from audit.validation import validate_model
from audit.yamlio import load_yaml_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PLANS = sorted(p for pattern in ("examples/*.yaml", "examples/*/*.yaml") for p in ROOT.glob(pattern)
                       if "plan_version" in p.read_text())
DOC = ROOT / "docs" / "plan.md"


def _as_editor_reads(node):
    """YAML 1.2 (what editors use) has no timestamp type: an unquoted date is a string."""
    if isinstance(node, dict):
        return {k: _as_editor_reads(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_as_editor_reads(v) for v in node]
    return node.isoformat() if isinstance(node, dt.date) else node


def _validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_shipped_schema_is_what_the_model_generates():
    assert SCHEMA_FILE.read_text() == schema_text(plan_schema()), \
        "audit/plan.schema.json is out of date: run flopgate plan schema --out audit/plan.schema.json"


def test_shipped_reference_is_what_the_model_generates():
    assert DOC.read_text() == plan_doc(), "docs/plan.md is out of date: run flopgate plan doc --out docs/plan.md"


def _fields(schema):
    yield "Plan", schema
    yield from schema["$defs"].items()


def test_every_field_is_described_and_choices_are_enums():
    schema = plan_schema()
    for model, node in _fields(schema):
        for name, prop in node["properties"].items():
            assert prop.get("description"), f"{model}.{name} has no description"
    defs = schema["$defs"]
    assert defs["Use"]["properties"]["scope"]["enum"] == ["narrow", "general"]
    assert defs["Use"]["properties"]["distribution"]["enum"] == ["internal", "api", "open_weights"]
    assert defs["Teacher"]["properties"]["access"]["enum"] == ["weights", "api", "consumer_app"]
    assert set(defs["Use"]["required"]) >= {"scope", "distribution"}


def test_id_lists_come_from_the_packs_and_configs():
    lists = id_lists()
    defs = plan_schema()["$defs"]
    # the values the packs and bundled files name, not a copy kept by hand
    assert {"US-CA", "US-NY", "EU", "KR"} <= set(lists["jurisdictions"])
    assert "aws-bedrock" in lists["hosts"] and "apache-2.0" in lists["licenses"]
    assert lists["configs"] == sorted(p.stem for p in (ROOT / "audit" / "model_configs").glob("*.json"))
    assert defs["Student"]["properties"]["config"]["examples"] == lists["configs"]
    assert defs["Organization"]["properties"]["jurisdictions"]["items"]["examples"] == lists["jurisdictions"]
    assert defs["Teacher"]["properties"]["host"]["anyOf"][0]["examples"] == lists["hosts"]
    text = DOC.read_text()
    assert all(f"`{code}`" in text for code in lists["jurisdictions"] + lists["hosts"] + lists["configs"])


def test_at_least_ten_example_plans_are_checked():
    assert len(EXAMPLE_PLANS) >= 10


@pytest.mark.parametrize("path", EXAMPLE_PLANS, ids=[str(p.relative_to(ROOT)) for p in EXAMPLE_PLANS])
def test_example_plan_names_the_schema_and_validates(path):
    text = path.read_text()
    first = text.splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    assert (path.parent / first[len(prefix):]).resolve() == SCHEMA_FILE
    data = load_yaml_text(text, str(path))
    errors = [e.message for e in _validator().iter_errors(_as_editor_reads(data))]
    assert errors == []
    assert validate_model(Plan, data, str(path)).plan_version == 1


@pytest.mark.parametrize("mutate", [
    lambda d: d["use"].update(scope="broad"),
    lambda d: d["teacher"].update(access="telepathy"),
    lambda d: d.update(organisation=d["organization"]),
    lambda d: d["data"].update(tokens=-5),
    lambda d: d["organization"].update(jurisdictions=["usa"]),
])
def test_schema_refuses_what_the_model_refuses(mutate):
    path = ROOT / "examples" / "api-teacher.yaml"
    data = load_yaml_text(path.read_text(), str(path))
    mutate(data)
    assert list(_validator().iter_errors(_as_editor_reads(data)))
    with pytest.raises(Exception):
        validate_model(Plan, data, str(path))


def test_plan_schema_command_prints_and_writes(tmp_path, capsys):
    assert main(["plan", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == plan_schema()
    assert main(["plan", "doc", "--out", str(tmp_path / "plan.md")]) == 0
    assert (tmp_path / "plan.md").read_text() == plan_doc()


def test_organisation_packs_join_the_id_lists(capsys):
    org = ROOT / "tests" / "audit" / "policy" / "org_packs" / "za-regime"
    builtin = plan_schema()["$defs"]["Organization"]["properties"]["jurisdictions"]["items"]["examples"]
    assert main(["plan", "schema", "--policies", str(org)]) == 0
    schema = json.loads(capsys.readouterr().out)
    codes = schema["$defs"]["Organization"]["properties"]["jurisdictions"]["items"]["examples"]
    assert "ZA" not in builtin and set(codes) == set(builtin) | {"ZA"}
    assert main(["plan", "doc", "--policies", str(org)]) == 0
    assert "`ZA`" in capsys.readouterr().out
