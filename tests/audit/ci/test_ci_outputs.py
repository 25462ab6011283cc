"""``flopgate policy|check --format sarif|junit|github``: a DENY, a REVIEW and an
ALLOW_WITH_OBLIGATIONS plan give valid outputs that point at the lines of the fields they are
about, with the exit codes the table and JSON outputs give."""

from __future__ import annotations

import hashlib
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from audit.cli.main import main

HERE = Path(__file__).resolve().parent
SARIF_SCHEMA = json.loads((HERE / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
TINY_STUDENT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 512, "head_dim": 16,
                "max_position_embeddings": 512, "tie_word_embeddings": True}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(tmp_path / "flops-cache"))


def write_plan(folder: Path, name: str, *, teacher: str, access: str, scope: str, distribution: str,
               student: str = "Acme-1B") -> Path:
    """A block-style plan (one field a line), so each field's line is easy to find."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "student.json").write_text(json.dumps(TINY_STUDENT))
    path = folder / name
    path.write_text(textwrap.dedent(f"""\
        # a plan for the CI output tests
        plan_version: 1
        name: ci-{name.removesuffix('.yaml')}
        organization:
          name: Acme
          jurisdictions: [EU]
          domicile: EU
          annual_revenue_usd: 2.0e8
          monthly_active_users: 1.0e5
        teacher:
          model: {teacher}
          access: {access}
          parameters: 8.0e9
        student:
          name: {student}
          config: ./student.json
        data:
          tokens: 1.0e9
          seq_len: 256
        use:
          purpose: support
          scope: {scope}
          distribution: {distribution}
          monthly_active_users: 1.0e5
        schedule:
          start: 2026-12-01
        """))
    return path


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the plan that holds ``text`` (exactly once)."""
    lines = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if text in line]
    assert len(lines) == 1, (text, lines)
    return lines[0]


@pytest.fixture
def plans(tmp_path):
    return {
        "deny": write_plan(tmp_path, "deny.yaml", teacher="gpt-4o", access="api", scope="general",
                           distribution="internal"),
        "review": write_plan(tmp_path, "review.yaml", teacher="meta-llama/Llama-3.1-8B-Instruct", access="weights",
                             scope="narrow", distribution="open_weights"),
        "obligations": write_plan(tmp_path, "obligations.yaml", teacher="meta-llama/Llama-3.1-8B-Instruct",
                                  access="weights", scope="narrow", distribution="internal"),
    }


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def valid_sarif(text: str) -> dict:
    log = json.loads(text)
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(log)
    return log


def results_by_rule(log: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in log["runs"][0]["results"]:
        out.setdefault(r["ruleId"], []).append(r)
    return out


def region(result: dict) -> tuple[int, int]:
    reg = result["locations"][0]["physicalLocation"]["region"]
    return reg["startLine"], reg["startColumn"]


# -- the vendored schema is the official one --------------------------------------------------

def test_the_vendored_schema_is_sarif_2_1_0_and_rejects_what_it_should():
    jsonschema.Draft4Validator.check_schema(SARIF_SCHEMA)
    assert SARIF_SCHEMA["properties"]["version"]["enum"] == ["2.1.0"]
    validator = jsonschema.Draft4Validator(SARIF_SCHEMA)
    good = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [
        {"message": {"text": "m"}, "level": "error"}]}]}
    validator.validate(good)
    for bad in ({"version": "2.0.0", "runs": []},
                {"version": "2.1.0", "runs": [{"tool": {"driver": {}}}]},                 # driver needs a name
                {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [
                    {"message": {"text": "m"}, "level": "fatal"}]}]}):                     # no such level
        assert not validator.is_valid(bad)


# -- SARIF ------------------------------------------------------------------------------------

def test_sarif_for_a_deny_plan_is_an_error_at_the_teacher_with_the_scope_beside_it(plans, capsys):
    plan = plans["deny"]
    code, out, err = run(capsys, "policy", plan, "--format", "sarif")
    assert code == 4, err
    log = valid_sarif(out)
    run_ = log["runs"][0]
    deny = results_by_rule(log)["openai-services-agreement.competitor-ban"]
    assert [r["level"] for r in deny] == ["error"]
    assert region(deny[0]) == (line_of(plan, "model: gpt-4o"), 3)
    related = {loc["message"]["text"]: loc["physicalLocation"]["region"]["startLine"]
               for loc in deny[0]["relatedLocations"]}
    assert related["use.scope"] == line_of(plan, "scope: general")
    assert related["use.distribution"] == line_of(plan, "distribution: internal")
    # one rule per policy rule id, its citation as help and helpUri
    rules = run_["tool"]["driver"]["rules"]
    assert len({r["id"] for r in rules}) == len(rules)
    rule = rules[deny[0]["ruleIndex"]]
    assert rule["id"] == "openai-services-agreement.competitor-ban"
    source = rule["properties"]["source"]
    assert rule["helpUri"] == source["url"] and source["url"].startswith("https://")
    for part in (source["section"], source["date"], source["quote"], source["evidence"]):
        assert part in rule["help"]["text"]
    assert run_["invocations"][0]["exitCode"] == 4
    assert run_["artifacts"][0]["hashes"]["sha-256"] == hashlib.sha256(plan.read_bytes()).hexdigest()


def test_sarif_for_a_review_plan_warns_at_the_student_name(plans, capsys):
    plan = plans["review"]
    code, out, err = run(capsys, "policy", plan, "--format", "sarif")
    assert code == 3, err
    by_rule = results_by_rule(valid_sarif(out))
    naming = by_rule["llama-3.1-license.naming"]   # unmet checkable obligation: REVIEW
    assert [r["level"] for r in naming] == ["warning"]
    assert region(naming[0]) == (line_of(plan, "name: Acme-1B"), 3)
    assert not any(r["level"] == "error" for rs in by_rule.values() for r in rs)


def test_sarif_for_an_allow_with_obligations_plan_has_notes_only(plans, capsys):
    plan = plans["obligations"]
    code, out, err = run(capsys, "policy", plan, "--format", "sarif")
    assert code == 0, err
    log = valid_sarif(out)
    levels = {r["level"] for r in log["runs"][0]["results"]}
    assert levels == {"note"}
    use_policy = results_by_rule(log)["llama-3.1-license.use-policy"][0]
    assert region(use_policy) == (line_of(plan, "model: meta-llama/"), 3)
    assert log["runs"][0]["properties"]["plans"][0]["outcome"] == "ALLOW_WITH_OBLIGATIONS"


def test_the_formats_agree_with_the_json_decision(plans, capsys):
    """Every DENY/REVIEW reason the JSON decision gives is an error/warning in SARIF, and no more."""
    for plan in plans.values():
        code_json, out_json, _ = run(capsys, "policy", plan, "--json")
        code_sarif, out_sarif, _ = run(capsys, "policy", plan, "--format", "sarif")
        assert code_json == code_sarif
        decision = json.loads(out_json)
        wanted = sorted([f["rule_id"] for f in decision["findings"] if f["effect"] in ("deny", "review")]
                        + [o["rule_id"] for o in decision["obligations"] if o["checkable"] and o["status"] == "unmet"])
        got = sorted(r["ruleId"] for r in valid_sarif(out_sarif)["runs"][0]["results"]
                     if r["level"] in ("error", "warning"))
        assert got == wanted
        notes = [r for r in json.loads(out_sarif)["runs"][0]["results"] if r["level"] == "note"]
        quiet = [o for o in decision["obligations"] if not (o["checkable"] and o["status"] == "unmet")]
        engine_notes = [f for f in decision["findings"] if f["kind"] == "engine" and f["effect"] == "info"]
        assert len(notes) == len(quiet) + len(engine_notes)


def test_flow_style_plans_get_columns_and_a_missing_field_its_parent(tmp_path, capsys):
    """examples/api-teacher.yaml writes a block on one line: results point at the field's column
    there; a field the plan leaves out (organization.monthly_active_users, which the Llama user
    cap reads) points at the block that would hold it."""
    plan = write_plan(tmp_path, "flow.yaml", teacher="meta-llama/Llama-3.1-8B-Instruct", access="weights",
                      scope="narrow", distribution="internal")
    text = plan.read_text()
    org_start, org_end = text.index("organization:"), text.index("teacher:")
    teacher_end = text.index("student:")
    text = (text[:org_start] + "organization: {name: Acme, jurisdictions: [EU], domicile: EU}\n"
            + "teacher: {model: meta-llama/Llama-3.1-8B-Instruct, access: weights, parameters: 8.0e9}\n"
            + text[teacher_end:])
    assert org_end < teacher_end
    plan.write_text(text)
    code, out, err = run(capsys, "policy", plan, "--format", "sarif")
    assert code == 3, err
    by_rule = results_by_rule(valid_sarif(out))
    teacher_line = line_of(plan, "teacher: {")
    assert region(by_rule["llama-3.1-license.use-policy"][0]) == (
        teacher_line, text.splitlines()[teacher_line - 1].index("model:") + 1)
    cap = by_rule["llama-3.1-license.user-cap"][0]
    assert cap["level"] == "warning"
    assert region(cap) == (line_of(plan, "organization: {"), 1)


# -- JUnit ------------------------------------------------------------------------------------

def test_junit_one_case_per_rule_with_failures_for_deny_and_review(plans, capsys):
    code, out, err = run(capsys, "policy", plans["deny"], plans["review"], plans["obligations"], "--format", "junit")
    assert code == 4, err   # several plans: the highest exit code
    root = ET.fromstring(out.encode())
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name").rsplit("/", 1)[-1] for s in suites] == ["deny.yaml", "review.yaml", "obligations.yaml"]
    total_tests = total_failures = 0
    for suite in suites:
        cases = suite.findall("testcase")
        names = [c.get("name") for c in cases]
        assert len(names) == len(set(names))                       # one case per rule
        failures = [c.find("failure") for c in cases if c.find("failure") is not None]
        assert int(suite.get("tests")) == len(cases) and int(suite.get("failures")) == len(failures)
        assert suite.get("errors") == "0" and suite.get("skipped") == "0"
        total_tests += len(cases)
        total_failures += len(failures)
    assert int(root.get("tests")) == total_tests and int(root.get("failures")) == total_failures
    deny, review, obligations = suites

    def case(suite, rule_id):
        return next(c for c in suite.findall("testcase") if c.get("name") == rule_id)

    ban = case(deny, "openai-services-agreement.competitor-ban")
    # file and line attributes, which test-report tools read to annotate the plan's line
    assert ban.get("file") == ban.get("classname") and ban.get("file").endswith("deny.yaml")
    assert ban.get("line") == str(line_of(plans["deny"], "model: gpt-4o"))
    failure = ban.find("failure")
    assert failure.get("type") == "DENY"
    assert f"deny.yaml:{line_of(plans['deny'], 'model: gpt-4o')}" in failure.get("message")
    assert "https://" in failure.text                           # the citation travels with it
    naming = case(review, "llama-3.1-license.naming").find("failure")
    assert naming.get("type") == "REVIEW"
    assert f"review.yaml:{line_of(plans['review'], 'name: Acme-1B')}" in naming.get("message")
    assert obligations.find("testcase/failure") is None
    passing = [c for s in suites for c in s.findall("testcase") if not len(c)]
    assert passing and all(c.get("line") is None and c.get("file") for c in passing)   # no result, no line
    use_policy = case(obligations, "llama-3.1-license.use-policy")
    assert use_policy.get("line") == str(line_of(plans["obligations"], "model: meta-llama/Llama-3.1-8B-Instruct"))
    out_text = use_policy.find("system-out").text
    assert "Obligation llama-3.1-license.use-policy (todo)" in out_text
    props = {p.get("name"): p.get("value") for p in obligations.find("properties")}
    assert props["outcome"] == "ALLOW_WITH_OBLIGATIONS" and props["exit_code"] == "0"


def test_junit_writes_no_control_characters(tmp_path):
    from audit.ci.junit import _clean

    assert _clean("a\x00b\x1bc\td") == "a\ufffdb\ufffdc\td"


def test_junit_reads_the_same_in_the_parser_a_ci_report_action_uses(plans, tmp_path, capsys):
    """JUnit has no one schema, so the test is a reader: junitparser, the parser behind the
    publish-unit-test-result GitHub action, must see the suites, cases, failures (with their
    type), the erroring unreadable plan and the obligations' output as flopgate wrote them, and
    the counts flopgate wrote must equal the ones it recomputes from the cases."""
    import junitparser   # a test extra

    bad = tmp_path / "bad.yaml"
    bad.write_text("plan_version: 1\nname: [unclosed\n")
    code, out, err = run(capsys, "policy", plans["deny"], plans["review"], plans["obligations"], bad,
                         "--format", "junit")
    assert code == 4, err
    report = junitparser.JUnitXml.fromstring(out.encode())
    suites = list(report)
    assert [s.name.rsplit("/", 1)[-1] for s in suites] == ["deny.yaml", "review.yaml", "obligations.yaml", "bad.yaml"]
    written = [(s.tests, s.failures, s.errors, s.skipped) for s in suites]
    for suite in suites:
        suite.update_statistics()                     # recounted from the cases by the parser
    assert [(s.tests, s.failures, s.errors, s.skipped) for s in suites] == written
    deny, review, obligations, unreadable = suites
    assert deny.failures >= 1 and review.failures >= 1 and obligations.failures == 0

    def case(suite, name):
        return next(c for c in suite if c.name == name)

    ban = case(deny, "openai-services-agreement.competitor-ban")
    assert not ban.is_passed and [r.type for r in ban.result] == ["DENY"]
    assert f"deny.yaml:{line_of(plans['deny'], 'model: gpt-4o')}" in ban.result[0].message
    assert [r.type for r in case(review, "llama-3.1-license.naming").result] == ["REVIEW"]
    assert all(c.is_passed for c in obligations)
    assert "Obligation llama-3.1-license.use-policy" in case(obligations, "llama-3.1-license.use-policy").system_out
    invalid = case(unreadable, "flopgate.invalid-plan")
    assert invalid.is_error and unreadable.errors == 1 and "bad.yaml" in invalid.result[0].message


# -- GitHub annotations -----------------------------------------------------------------------

def test_github_annotations_point_at_the_lines(plans, capsys):
    code, out, err = run(capsys, "policy", plans["deny"], "--format", "github")
    assert code == 4, err
    lines = out.splitlines()
    errors = [line for line in lines if line.startswith("::error ")]
    line = line_of(plans["deny"], "model: gpt-4o")
    assert any(f",line={line},col=3,title=flopgate openai-services-agreement.competitor-ban::" in e for e in errors)
    assert lines[-1].startswith("flopgate: ") and "DENY" in lines[-1]
    assert all("\n" not in e and "\r" not in e for e in lines)


def test_github_escaping_follows_the_runner_rules():
    from audit.ci.github import escape_data, escape_property

    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    # a property value cannot end the property list or start the message
    assert "," not in escape_property("x,line=1") and "::" not in escape_property("x::y")


def test_github_annotation_of_a_hostile_plan_name_stays_one_command(tmp_path, capsys):
    plan = write_plan(tmp_path, "x.yaml", teacher="gpt-4o", access="api", scope="general", distribution="internal")
    plan.write_text(plan.read_text().replace("name: ci-x", 'name: "x\\n::error file=evil::pwned"'))
    code, out, _ = run(capsys, "policy", plan, "--format", "github")
    assert code == 4
    assert not any(line.startswith("::error file=evil") for line in out.splitlines())


# -- check, flags and several plans -------------------------------------------------------------

def test_check_format_sarif_writes_the_audit_and_keeps_the_exit_code(plans, tmp_path, capsys):
    out_dir = tmp_path / "audit"
    code, out, err = run(capsys, "check", plans["deny"], "--out", out_dir, "--format", "sarif")
    assert code == 4, err
    log = valid_sarif(out)
    assert (out_dir / "audit.intoto.json").exists()
    assert "openai-services-agreement.competitor-ban" in results_by_rule(log)
    code, out, err = run(capsys, "check", plans["obligations"], "--out", tmp_path / "b", "--format", "junit")
    assert code == 0, err
    assert ET.fromstring(out.encode()).find("testsuite/testcase/failure") is None


def test_json_and_another_format_together_is_bad_input(plans, capsys):
    code, out, err = run(capsys, "policy", plans["deny"], "--json", "--format", "sarif")
    assert code == 2 and out == ""
    assert "--json or --format sarif" in err


def test_several_plans_one_bad_the_others_are_still_decided(plans, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan_version: 1\nname: [unclosed\n")
    code, out, err = run(capsys, "policy", plans["obligations"], bad, "--format", "sarif")
    assert code == 2                                  # the bad plan's code is the highest here
    assert "bad.yaml" in err and err.count("flopgate: error:") == 1
    log = valid_sarif(out)
    assert [a["location"]["uri"].rsplit("/", 1)[-1] for a in log["runs"][0]["artifacts"]] == [
        "obligations.yaml", "bad.yaml"]
    assert log["runs"][0]["properties"]["plans"][0]["outcome"] == "ALLOW_WITH_OBLIGATIONS"
    invalid = results_by_rule(log)["flopgate.invalid-plan"]
    assert [r["level"] for r in invalid] == ["error"] and invalid[0]["locations"][0]["physicalLocation"][
        "artifactLocation"]["index"] == 1
    code, out, _ = run(capsys, "policy", plans["review"], plans["obligations"], "--json")
    assert code == 3
    assert [d["outcome"] for d in json.loads(out)] == ["REVIEW", "ALLOW_WITH_OBLIGATIONS"]


def test_one_plan_keeps_the_old_json_and_errors(plans, tmp_path, capsys):
    code, out, _ = run(capsys, "policy", plans["deny"], "--json")
    assert code == 4 and isinstance(json.loads(out), dict) and "plan" not in json.loads(out)
    code, _, err = run(capsys, "policy", tmp_path / "missing.yaml", "--format", "sarif")
    assert code == 2 and "missing.yaml" in err


def test_results_refuse_bytes_other_than_the_judged_ones(plans):
    from audit.check import assess
    from audit.ci.results import judge, read_plan

    loaded, raw = read_plan(str(plans["deny"]))
    found = assess(loaded)
    with pytest.raises(ValueError, match="not the bytes that were judged"):
        judge(str(plans["deny"]), raw + b"\n# edited after reading\n", loaded.sha256, found.plan.name,
              found.plan.student.init, found.decision, found.packs, 4)


def test_a_pack_changed_since_the_decision_is_refused(plans):
    from audit.check import assess
    from audit.ci.results import packs_as_judged, read_plan
    from audit.errors import InputError

    loaded, _ = read_plan(str(plans["deny"]))
    decision = assess(loaded).decision
    assert packs_as_judged([], decision).pack_files()  # the same packs: accepted
    forged = decision.model_copy(update={"packs": [{**decision.packs[0], "sha256": "0" * 64}] + decision.packs[1:]})
    with pytest.raises(InputError, match="policy pack changed"):
        packs_as_judged([], forged)


def test_a_path_with_a_space_is_a_uri_in_sarif_and_a_path_in_annotations(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = write_plan(tmp_path / "my plans", "deny.yaml", teacher="gpt-4o", access="api", scope="general",
                      distribution="internal")
    code, out, _ = run(capsys, "policy", plan, "--format", "sarif")
    assert code == 4
    log = valid_sarif(out)
    assert log["runs"][0]["artifacts"][0]["location"]["uri"] == "my%20plans/deny.yaml"
    code, out, _ = run(capsys, "policy", plan, "--format", "github")
    assert "::error file=my plans/deny.yaml,line=" in out


def test_a_plan_that_does_not_read_is_an_error_at_its_field_in_every_ci_format(plans, tmp_path, capsys):
    plan = plans["deny"]
    plan.write_text(plan.read_text().replace("scope: general", "scope: wide"))
    line = line_of(plan, "scope: wide")
    code, out, err = run(capsys, "policy", plan, "--format", "github")
    assert code == 2 and "use.scope" in err
    assert out.splitlines()[0].startswith(f"::error file={plan.as_posix()},line={line},col=3,"
                                          "title=flopgate flopgate.invalid-plan::")
    code, out, _ = run(capsys, "policy", plan, "--format", "sarif")
    (result,) = valid_sarif(out)["runs"][0]["results"]
    assert code == 2 and result["level"] == "error" and region(result) == (line, 3)
    code, out, _ = run(capsys, "check", plan, "--out", tmp_path / "audit", "--format", "junit")
    assert code == 2 and not (tmp_path / "audit").exists()     # nothing signed or written
    root = ET.fromstring(out.encode())
    assert root.get("errors") == "1" and root.get("tests") == "1"
    error = root.find("testsuite/testcase/error")
    assert error.get("type") == "InputError" and f":{line} (use.scope)" in error.get("message")
    assert root.find("testsuite/testcase").get("line") == str(line)
    # a YAML syntax error names its line and column; a missing file points at line 1
    plan.write_text("plan_version: 1\nname: [unclosed\n")
    code, out, _ = run(capsys, "policy", plan, "--format", "sarif")
    (result,) = valid_sarif(out)["runs"][0]["results"]
    assert code == 2 and region(result)[0] == 3
    code, out, _ = run(capsys, "policy", tmp_path / "missing.yaml", "--format", "sarif")
    (result,) = valid_sarif(out)["runs"][0]["results"]
    assert code == 2 and region(result) == (1, 1)
    assert "hashes" not in valid_sarif(out)["runs"][0]["artifacts"][0]   # nothing was read


def test_findings_about_other_sources_point_at_their_own_entries(tmp_path, capsys):
    """A plan with `teachers:` and `data.sources:`: a finding about the second teacher or a
    dataset's generator points at that entry's line, not at line 1 or at the first teacher."""
    folder = tmp_path / "several"
    folder.mkdir()
    (folder / "student.json").write_text(json.dumps(TINY_STUDENT))
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent("""\
        plan_version: 1
        name: ci-several
        organization: {name: Acme, jurisdictions: [EU], domicile: EU}
        teachers:
          - model: Qwen/Qwen2.5-7B-Instruct
            access: weights
            parameters: 7.0e9
          - model: gpt-4o
            access: api
        student: {name: Acme-1B, config: ./student.json}
        data:
          tokens: 1.0e9
          seq_len: 256
          sources:
            - id: acme/drafts
              generated_by: [claude-sonnet-4]
        use: {purpose: chat, scope: general, distribution: internal}
        schedule: {start: 2027-01-10}
        """))
    code, out, _ = run(capsys, "policy", path, "--format", "sarif")
    log = valid_sarif(out)
    errors = [r for r in log["runs"][0]["results"] if r["level"] == "error"]
    lines = {region(r)[0] for r in errors}
    assert code != 0 and line_of(path, "model: gpt-4o") in lines
    assert line_of(path, "generated_by: [claude-sonnet-4]") in lines
    assert 1 not in lines and line_of(path, "model: Qwen/Qwen2.5-7B-Instruct") not in lines
