"""The ready-made integrations: the pre-commit hooks file passes pre-commit's own manifest
check and its entry decides plans (run as pre-commit would, with several files), and the GitHub
Actions workflow in docs/ci.md validates against the GitHub workflow schema and has the steps it
promises."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
HOOKS = ROOT / ".pre-commit-hooks.yaml"
DOC = ROOT / "docs" / "ci.md"


def hooks() -> list[dict]:
    data = yaml.safe_load(HOOKS.read_text(encoding="utf-8"))
    assert isinstance(data, list) and data
    return data


def test_the_hooks_file_has_what_pre_commit_needs():
    ids = [h["id"] for h in hooks()]
    assert ids == ["flopgate-policy", "flopgate-policy-system"]
    for hook in hooks():
        assert {"id", "name", "entry", "language"} <= set(hook)
        assert hook["language"] in ("python", "system")
        assert shlex.split(hook["entry"])[:2] == ["flopgate", "policy"]
        assert hook.get("pass_filenames", True) is True          # the changed files are the arguments
        pattern = re.compile(hook["files"])
        for path in ("plans/acme.yaml", "ml/plans/a/b.yml", "flopgate.yaml", "configs/flopgate-kd.yml",
                     "run.plan.yaml"):
            assert pattern.search(path), path
        for path in ("docs/ci.yaml", ".pre-commit-config.yaml", "plans/readme.md", "plan.yaml.bak"):
            assert not pattern.search(path), path


@pytest.mark.slow
def test_the_hook_entry_decides_several_plans_and_fails_on_review(tmp_path):
    """pre-commit runs ``entry`` followed by the changed files; the console script is replaced by
    ``python -m audit.cli.main`` (the installed one may be another checkout)."""
    entry = shlex.split(hooks()[0]["entry"])
    command = [sys.executable, "-m", "audit.cli.main", *entry[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOPGATE_CACHE_DIR": str(tmp_path / "cache")}
    allowed = ["examples/moe-teacher.yaml", "examples/base-init-student.yaml"]
    done = subprocess.run(command + allowed, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "== examples/moe-teacher.yaml" in done.stdout and "== examples/base-init-student.yaml" in done.stdout
    done = subprocess.run(command + allowed + ["examples/api-teacher.yaml"], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr
    assert "REVIEW" in done.stdout


def documented_block(heading: str, language: str) -> str:
    """The first ``language`` code block after ``heading`` in docs/ci.md."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(rf"```{language}\n(.*?)```", text[text.index(heading):], re.DOTALL)
    assert block, f"no {language} block under {heading!r}"
    return block.group(1)


def workflow() -> dict:
    """The YAML block under the GitHub Actions heading of docs/ci.md."""
    return yaml.safe_load(documented_block("## GitHub Actions", "yaml"))


def test_the_documented_workflow_checks_plans_and_uploads_sarif():
    flow = workflow()
    triggers = flow.get("on", flow.get(True))   # YAML 1.1 reads a bare `on` key as true
    assert "pull_request" in triggers
    assert flow["permissions"]["security-events"] == "write"
    (job,) = flow["jobs"].values()
    steps = job["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    upload = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif@"))
    assert upload["if"] == "always()"                        # uploads even when the plans fail
    decide = next(s for s in steps if "flopgate policy" in s.get("run", ""))
    sarif_out = re.search(r"flopgate policy \S+ --format sarif > (\S+)", decide["run"]).group(1)
    assert upload["with"]["sarif_file"] == sarif_out
    assert "--format github" in decide["run"]
    last = steps[-1]["run"]
    assert f"steps.{decide['id']}.outputs.code" in last        # the job fails on the recorded exit code
    assert steps.index(upload) < len(steps) - 1


def test_the_documented_examples_are_what_the_command_prints(capsys, monkeypatch):
    """The GitHub annotation shown in docs/ci.md is the command's output today."""
    from audit.cli.main import main

    monkeypatch.chdir(ROOT)
    code = main(["policy", "examples/api-teacher.yaml", "--format", "github"])
    out = capsys.readouterr().out
    assert code == 3
    text = DOC.read_text(encoding="utf-8")
    shown = text[text.index("### GitHub annotations"):text.index("## pre-commit")]
    for line in out.splitlines():
        assert line in shown


def test_the_documented_junit_report_is_what_the_command_prints(capsys, monkeypatch):
    """The JUnit report shown in docs/ci.md, but for the date the rules are applied as of (the
    later of the plan's start and today), which moves with the calendar."""
    from audit.cli.main import main

    monkeypatch.chdir(ROOT)
    assert main(["policy", "examples/api-teacher.yaml", "--format", "junit"]) == 3
    out = capsys.readouterr().out
    shown = documented_block("### JUnit XML", "xml")
    as_of = re.compile(r'(<property name="as_of" value=")[0-9-]+(")')
    assert as_of.sub(r"\1DATE\2", out) == as_of.sub(r"\1DATE\2", shown)


def _validate(tool: list[str], path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}   # nothing in the user's cache
    return subprocess.run([sys.executable, "-m", *tool, str(path)], check=False, capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_hooks_file_validates_with_pre_commit_itself(tmp_path):
    """pre-commit's own manifest check (offline), and a hook it would refuse is refused."""
    tool = ["pre_commit", "validate-manifest"]
    done = _validate(tool, HOOKS, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / ".pre-commit-hooks.yaml"
    broken.write_text(HOOKS.read_text(encoding="utf-8").replace("language: python", "language: pythn", 1))
    done = _validate(tool, broken, tmp_path)
    assert done.returncode == 1 and "pythn" in done.stdout + done.stderr


def test_the_documented_workflow_validates_against_the_github_workflow_schema(tmp_path):
    """check-jsonschema's vendored SchemaStore schema for GitHub workflows (no network), and a
    workflow broken the way a copy-paste breaks one is refused."""
    tool = ["check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
    block = documented_block("## GitHub Actions", "yaml")
    good = tmp_path / "flopgate.yml"
    good.write_text(block)
    done = _validate(tool, good, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "broken.yml"
    bad.write_text(block.replace("runs-on:", "runs_on:", 1))   # a job without runs-on
    assert "runs_on:" in bad.read_text()
    done = _validate(tool, bad, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
