"""Plan validation errors: every error listed, one line each with its field and what was
expected; an unknown key close to a known one suggests it."""

from pathlib import Path

import pytest

from audit.cli.main import main
from audit.errors import InputError
from audit.plan import Plan, load_plan
from audit.validation import known_keys

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "api-teacher.yaml"


def _plan(tmp_path, *edits):
    text = EXAMPLE.read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def test_british_spelling_at_the_top_level_names_both_errors_and_the_fix(tmp_path, capsys):
    # before: "plan.yaml: organisation: unknown key (and 1 more)" -- the other error unnamed
    path = _plan(tmp_path, ("\norganization:", "\norganisation:"))
    assert main(["policy", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "more)" not in err
    lines = err.strip().splitlines()
    assert lines[0] == f"flopgate: error: {path}: 2 problems:"
    assert lines[1:] == ["  organisation: unknown key; did you mean 'organization'?",
                         "  organization: required field is missing"]


def test_every_error_is_listed_with_its_field(tmp_path):
    path = _plan(tmp_path, ("  access: api", "  acess: api"), ("scope: narrow", "scope: broad"),
                 ("tokens: 1.0e9", "tokens: -5"))
    with pytest.raises(InputError) as caught:
        load_plan(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 4 problems:"
    fields = [line.strip().split(": ", 1)[0] for line in lines[1:]]
    assert fields == ["data.tokens", "teacher.access", "teacher.acess", "use.scope"]
    assert "did you mean 'access'?" in lines[3]
    assert "expected 'narrow' or 'general', got 'broad'" in lines[4]
    assert "greater than 0" in lines[1]
    assert caught.value.field == "data.tokens"


def test_one_error_stays_one_line(tmp_path):
    path = _plan(tmp_path, ("scope: narrow", "scope: broad"))
    with pytest.raises(InputError) as caught:
        load_plan(path)
    assert str(caught.value) == f"{path}: use.scope: expected 'narrow' or 'general', got 'broad'"


def test_a_far_unknown_key_gets_no_guess(tmp_path):
    path = _plan(tmp_path, ("\nschedule:", "\ncolour: blue\nschedule:"))
    with pytest.raises(InputError) as caught:
        load_plan(path)
    assert str(caught.value) == f"{path}: colour: unknown key"


def test_known_keys_follow_nested_and_optional_models():
    assert "organization" in known_keys(Plan, ())
    assert "access" in known_keys(Plan, ("teacher",))
    assert "sha256" in known_keys(Plan, ("teacher", "authorization"))   # Optional[Authorization]
    assert "rank" in known_keys(Plan, ("student", "adapter"))
    assert known_keys(Plan, ("name",)) == []
