"""``flopgate plan init``: a commented starting plan that flopgate policy accepts, never
overwriting; ``flopgate policy`` shows the sub-national scope note in every output."""

import json

import jsonschema
import pytest

from audit.cli.main import main
from audit.plan import load_plan
from audit.plan_schema import SCHEMA_FILE
from audit.yamlio import load_yaml_text

ARGS = ["--teacher", "meta-llama/Llama-3.1-8B-Instruct", "--access", "weights", "--teacher-config",
        "llama-3.1-8b", "--student-config", "llama-3.2-1b", "--jurisdictions", "EU,US", "--scope", "narrow",
        "--distribution", "internal", "--organization", "Acme: Labs #1", "--start", "2027-01-04"]


def _init(tmp_path, *extra, name="plan.yaml"):
    path = tmp_path / name
    return path, main(["plan", "init", str(path), *ARGS, *extra])


def test_init_writes_a_plan_policy_accepts(tmp_path, capsys):
    path, code = _init(tmp_path)
    assert code == 0
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    assert (path.parent / first.split("=", 1)[1]).resolve() == SCHEMA_FILE
    plan = load_plan(path).plan
    assert plan.organization.name == "Acme: Labs #1"   # quoted: ':' and '#' stay in the name
    assert plan.organization.jurisdictions == ["EU", "US"]
    assert (plan.use.scope, plan.use.distribution, plan.use.commercial) == ("narrow", "internal", True)
    assert plan.student.config.endswith("llama-3.2-1b") and plan.method.kind == "logits"
    assert plan.schedule.start.isoformat() == "2027-01-04"
    data = load_yaml_text(text, str(path))
    data["schedule"]["start"] = data["schedule"]["start"].isoformat()
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    capsys.readouterr()
    # the policy check runs on it (REVIEW: the organisation's users are unknown, which init leaves to edit)
    assert main(["policy", str(path), "--json"]) in (0, 3)
    decision = json.loads(capsys.readouterr().out)
    notes = [f for f in decision["findings"] if f["rule_id"] == "engine.sub-national-scope"]
    assert len(notes) == 1 and notes[0]["effect"] == "info"
    assert "add US-CA, US-NY" in notes[0]["explanation"]
    main(["policy", str(path)])
    out = capsys.readouterr().out
    assert "engine.sub-national-scope" in out and "California SB 53" in out


def test_api_teacher_gets_a_sequence_method(tmp_path):
    path = tmp_path / "api.yaml"
    assert main(["plan", "init", str(path), "--teacher", "gpt-4o", "--access", "api", "--host", "openai",
                 "--student-config", "llama-3.2-3b", "--jurisdictions", "US-CA", "--scope", "narrow",
                 "--distribution", "api", "--organization", "Acme", "--tokens", "123456789",
                 "--non-commercial"]) == 0
    plan = load_plan(path).plan
    assert plan.method.kind == "sequence" and plan.teacher.host == "openai"
    assert plan.data.tokens == 123456789 and plan.method.teacher_generated_tokens == 123456789
    assert plan.use.commercial is False


def test_init_never_overwrites(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text("mine\n")
    _, code = _init(tmp_path)
    assert code == 2
    assert path.read_text() == "mine\n"
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("change,field", [
    (("--jurisdictions", "usa"), "organization.jurisdictions"),
    (("--student-config", "no-such-model"), "student.config"),
])
def test_a_bad_answer_writes_nothing(tmp_path, capsys, change, field):
    args = list(ARGS)
    args[args.index(change[0]) + 1] = change[1]
    path = tmp_path / "plan.yaml"
    assert main(["plan", "init", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_missing_flag_is_a_usage_error(tmp_path, capsys):
    args = ARGS[:ARGS.index("--scope")] + ARGS[ARGS.index("--scope") + 2:]
    with pytest.raises(SystemExit) as caught:
        main(["plan", "init", str(tmp_path / "p.yaml"), *args])
    assert caught.value.code == 2
    assert "--scope" in capsys.readouterr().err


def test_check_prints_the_scope_note_and_signs_it(tmp_path, capsys):
    from keypairs import write_keypair

    signer = write_keypair(tmp_path / "keys", "signer")
    path, code = _init(tmp_path)
    assert code == 0
    capsys.readouterr()
    main(["check", str(path), "--out", str(tmp_path / "a"), "--key", str(signer.private_path)])
    out = capsys.readouterr().out
    assert "NOTE engine.sub-national-scope: US: sub-national laws apply only when listed" in out
    payload = json.loads((tmp_path / "a" / "audit.json").read_text())
    html = (tmp_path / "a" / "audit.html").read_text()
    assert "engine.sub-national-scope" in json.dumps(payload) and "engine.sub-national-scope" in html
