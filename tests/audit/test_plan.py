"""The plan file: every shipped example validates; bad plans get one clean line, always."""

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.cli.main import main
from audit.errors import InputError
from audit.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
VALID = yaml.safe_load((ROOT / "examples" / "online-logit-kd.yaml").read_text())


def test_at_least_five_examples_ship():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_plan_validates(path):
    loaded = load_plan(path)
    assert loaded.plan.plan_version == 1


def write(tmp_path, data, name="plan.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate,field,expected", [
    (lambda d: d["teacher"].update(access="telepathy"), "teacher.access", "expected"),
    (lambda d: d["data"].update(tokens=-5), "data.tokens", "greater than 0"),
    (lambda d: d.update(colour="blue"), "colour", "unknown key"),
    (lambda d: d["student"].pop("name"), "student.name", "required"),
    (lambda d: d["student"].update(init="base"), "student", "base_model"),
    (lambda d: d["organization"].update(jurisdictions=["Europe"]), "organization.jurisdictions", "EU"),
    (lambda d: d["method"].update(kind="sequence"), "method", "teacher_generated_tokens"),
    (lambda d: d["hardware"].update(utilization=1.5), "hardware.utilization", "less than or equal to 1"),
    (lambda d: d["hardware"].update(pue=0.9), "hardware.pue", "greater than or equal to 1"),
    (lambda d: d["hardware"].update(power_w=0), "hardware.power_w", "greater than 0"),
    (lambda d: d["hardware"].update(grid_gco2_per_kwh=-1), "hardware.grid_gco2_per_kwh", "greater than or equal to 0"),
])
def test_bad_plans_name_file_field_and_expectation(tmp_path, mutate, field, expected):
    data = copy.deepcopy(VALID)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(InputError) as err:
        load_plan(path)
    message = str(err.value)
    assert str(path) in message and field in message and expected in message
    assert "\n" not in message


def test_scientific_numbers_without_exponent_sign_are_numbers(tmp_path):
    text = (ROOT / "examples" / "online-logit-kd.yaml").read_text().replace("tokens: 2.0e10", "tokens: 2e10")
    assert load_plan(write(tmp_path, text)).plan.data.tokens == 2e10


def test_relative_paths_resolve_against_the_plan_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "student.json").write_text('{"model_type": "llama"}')
    data = copy.deepcopy(VALID)
    data["student"]["config"] = "./student.json"
    data["data"]["manifest"] = "manifest.json"
    loaded = load_plan(write(tmp_path / "sub", data))
    assert loaded.plan.student.config == str(tmp_path / "sub" / "student.json")
    assert loaded.plan.data.manifest == str(tmp_path / "sub" / "manifest.json")


def test_missing_file_and_broken_yaml(tmp_path):
    with pytest.raises(InputError, match="plan not found"):
        load_plan(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match=r"line \d+.*invalid YAML"):
        load_plan(write(tmp_path, "name: [unclosed\n"))


# ------------------------------------------------------------------ generated malformed plans

SECTIONS = ["organization", "teacher", "student", "data", "method", "use", "hardware", "schedule", "budget"]
BAD_VALUES = st.sampled_from([-1, -1e30, 0, "", "lots", [], {}, None, True, "2026-13-45", [1, 2], float("nan"),
                              float("inf"), float("-inf"), 1e300, 10**31])
# Written into the YAML text as they are (safe_dump would quote or normalise them): impossible
# dates, numbers that overflow to infinity or are non-finite, nesting past the parser's stack.
RAW_SCALARS = st.sampled_from(["2026-13-01", "2026-02-30", "1e400", "-1e400", ".inf", "-.inf", ".nan", "1e300",
                               "1" + "0" * 31, "[" * 5000 + "]" * 5000, "[" * 5000])


def leaf_paths(data, prefix=()):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


REQUIRED_OR_TYPED = [p for p in leaf_paths(VALID)
                     if p not in {("teacher", "config"), ("budget", "max_flops"),
                                  ("organization", "annual_revenue_usd"), ("use", "monthly_active_users"),
                                  ("organization", "monthly_active_users"), ("organization", "domicile"),
                                  ("hardware", "price_per_hour_usd"), ("use", "commercial"),
                                  ("method", "temperature"), ("use", "purpose"), ("name",),
                                  ("student", "name"), ("organization", "name"), ("teacher", "model"),
                                  ("hardware", "accelerator")}]


def _set(data, path, value):
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@st.composite
def malformed_plans(draw):
    """A plan broken in one way that the schema must reject."""
    kind = draw(st.sampled_from(["unknown_key", "drop_required", "bad_value", "not_mapping", "bad_yaml", "bad_section",
                                 "raw_scalar"]))
    data = copy.deepcopy(VALID)
    if kind == "unknown_key":
        section = draw(st.sampled_from([None] + [s for s in SECTIONS if isinstance(data.get(s), dict)]))
        key = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12))
        target = data if section is None else data[section]
        if key in target:
            key = key + "_x"
        target[key] = draw(st.integers())
        return yaml.safe_dump(data)
    if kind == "drop_required":
        key = draw(st.sampled_from(["plan_version", "name", "organization", "teacher", "student", "data", "use", "schedule"]))
        del data[key]
        return yaml.safe_dump(data)
    if kind == "bad_value":
        path = draw(st.sampled_from(REQUIRED_OR_TYPED))
        value = draw(BAD_VALUES)
        if path in {("method", "synthetic_data_public")} and isinstance(value, bool):
            value = "lots"
        _set(data, path, value)
        try:
            text = yaml.safe_dump(data)
        except yaml.YAMLError:
            text = "[broken"
        return text
    if kind == "raw_scalar":
        _set(data, draw(st.sampled_from(REQUIRED_OR_TYPED)), "RAW_SCALAR_HERE")
        return yaml.safe_dump(data).replace("RAW_SCALAR_HERE", draw(RAW_SCALARS))
    if kind == "bad_section":
        section = draw(st.sampled_from(["organization", "teacher", "student", "data", "use", "schedule"]))
        data[section] = draw(st.sampled_from([5, "text", [1, 2]]))
        return yaml.safe_dump(data)
    if kind == "not_mapping":
        return draw(st.sampled_from(["- a\n- b\n", "42\n", "just text\n", ""]))
    return draw(st.sampled_from(["name: [\n", "a: b: c\n", "{unclosed\n", "key: 'open\n", "\t- tab\n"]))


def check_one_clean_line(tmp_path, capsys, text):
    """One clean line per error: a single error is one line naming the file; several are a line
    ``FILE: N problems:`` and then one indented ``field: what was expected`` line each."""
    path = tmp_path / "generated.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_plan(path)
    message = str(err.value).splitlines()
    assert str(path) in message[0]
    if len(message) > 1:
        assert message[0] == f"{path}: {len(message) - 1} problems:"
        assert all(line.startswith("  ") and ": " in line for line in message[1:])
    assert main(["flops", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(message) and lines[0].startswith("flopgate: error: ")
    assert "Traceback" not in captured.err and captured.out == ""


QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
THOROUGH = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@QUICK
@given(text=malformed_plans())
def test_generated_malformed_plans_get_one_clean_line(tmp_path, capsys, text):
    """A few dozen cases for the fast loop; the slow run below tries many more."""
    check_one_clean_line(tmp_path, capsys, text)


@pytest.mark.slow
@THOROUGH
@given(text=malformed_plans())
def test_many_generated_malformed_plans_get_one_clean_line(tmp_path, capsys, text):
    check_one_clean_line(tmp_path, capsys, text)


# ------------------------------------------------------------------ values that used to escape

EXAMPLE_TEXT = (ROOT / "examples" / "online-logit-kd.yaml").read_text()


@pytest.mark.parametrize("old,new,field,expected", [
    ("start: 2026-12-01", "start: 2026-13-01", "schedule.start", "month value is outside"),
    ("start: 2026-12-01", "start: 2026-02-30", "schedule.start", "day value is outside"),
    ("tokens: 2.0e10", "tokens: 1e400", "data.tokens", "expected a finite number"),
    ("tokens: 2.0e10", "tokens: .inf", "data.tokens", "expected a finite number"),
    ("tokens: 2.0e10", "tokens: 'nan'", "data.tokens", "expected a finite number"),
    ("tokens: 2.0e10", "tokens: 1e300", "data.tokens", "at most 1e30"),
    ("hours: 120", "hours: -.inf", "hardware.hours", "expected a finite number"),
    ("utilization: 0.4", "utilization: .nan", "hardware.utilization", "expected a finite number"),
    ("price_per_hour_usd: 2.5", "price_per_hour_usd: .inf", "hardware.price_per_hour_usd", "finite"),
    ("monthly_active_users: 1.0e6", "monthly_active_users: 1e999", "use.monthly_active_users", "finite"),
    ("max_flops: 1.0e22", "max_flops: .nan", "budget.max_flops", "expected a finite number"),
    ("count: 64", "count: 1e30", "hardware.count", "less than or equal to 10000000, got 1e+30"),
    ("count: 64", "count: " + "1" + "0" * 30, "hardware.count", "less than or equal to 10000000"),
    ("count: 64", "count: 10000001", "hardware.count", "less than or equal to 10000000"),
    ("count: 64", "count: .nan", "hardware.count", "expected a finite number"),
    ("seq_len: 4096", "seq_len: 1e30", "data.seq_len", "less than or equal to 10000000"),
    ("name: acme-support-1b", "name: " + "[" * 10_000 + "]" * 10_000, "", "nesting too deep"),
])
def test_values_that_used_to_escape_validation_name_the_field(tmp_path, old, new, field, expected):
    assert old in EXAMPLE_TEXT
    path = write(tmp_path, EXAMPLE_TEXT.replace(old, new, 1))
    with pytest.raises(InputError) as err:
        load_plan(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {field}") and expected in message, message
    assert "\n" not in message


def test_whole_numbers_written_as_floats_still_count(tmp_path):
    text = EXAMPLE_TEXT.replace("count: 64", "count: 6.4e1").replace("seq_len: 4096", "seq_len: 4096.0")
    loaded = load_plan(write(tmp_path, text))
    assert loaded.plan.hardware.count == 64 and isinstance(loaded.plan.hardware.count, int)
    assert loaded.plan.data.seq_len == 4096
    with pytest.raises(InputError, match="hardware.count: .*integer"):
        load_plan(write(tmp_path, EXAMPLE_TEXT.replace("count: 64", "count: 64.5")))


LORA = {"kind": "lora", "rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def test_a_lora_adapter_is_part_of_the_student(tmp_path):
    data = copy.deepcopy(VALID)
    data["student"]["adapter"] = dict(LORA)
    adapter = load_plan(write(tmp_path, data)).plan.student.adapter
    assert (adapter.kind, adapter.rank, adapter.alpha, adapter.target_modules, adapter.dropout) == \
        ("lora", 8, 16.0, ["q_proj", "v_proj"], 0.0)
    assert load_plan(write(tmp_path, VALID, "plain.yaml")).plan.student.adapter is None


@pytest.mark.parametrize("change,field,expected", [
    ({"kind": "dora"}, "student.adapter.kind", "'lora'"),
    ({"rank": 0}, "student.adapter.rank", "greater than 0"),
    ({"rank": True}, "student.adapter.rank", "boolean"),
    ({"alpha": -1}, "student.adapter.alpha", "greater than 0"),
    ({"target_modules": []}, "student.adapter.target_modules", "at least 1"),
    ({"target_modules": ["q_proj", "q_proj"]}, "student.adapter.target_modules", "once"),
    ({"target_modules": ["q proj"]}, "student.adapter.target_modules", "module names"),
    ({"dropout": 1.0}, "student.adapter.dropout", "less than 1"),
    ({"bias": "all"}, "student.adapter.bias", "unknown key"),
    ({"rank": 2.5}, "student.adapter.rank", "integer"),
])
def test_a_bad_adapter_gets_one_line_naming_its_field(tmp_path, change, field, expected):
    data = copy.deepcopy(VALID)
    data["student"]["adapter"] = {**LORA, **change}
    with pytest.raises(InputError) as err:
        load_plan(write(tmp_path, data))
    message = str(err.value)
    assert field in message and expected in message and "\n" not in message


def test_an_adapter_needs_its_kind_rank_and_targets_and_no_pruned_teacher(tmp_path):
    for key in ("kind", "rank", "target_modules"):
        data = copy.deepcopy(VALID)
        data["student"]["adapter"] = {k: v for k, v in LORA.items() if k != key}
        with pytest.raises(InputError, match=f"student.adapter.{key}"):
            load_plan(write(tmp_path, data))
    data = copy.deepcopy(VALID)
    data["student"].update(adapter=dict(LORA), init="pruned_teacher")
    with pytest.raises(InputError, match="pruned"):
        load_plan(write(tmp_path, data))
