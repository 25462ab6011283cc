"""The command line as a new user meets it: help texts, summaries, messages, the command registry."""

import re
from pathlib import Path

import pytest

from audit.cli import main as cli_main
from audit.cli.main import build_parser, main
from keypairs import write_keypair

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
COMMANDS = ["flops", "policy", "policies", "terms", "check", "keygen", "verify", "approve", "report", "ledger", "plan",
            "distill", "export"]


@pytest.fixture
def signer(tmp_path):
    return write_keypair(tmp_path / "keys", "signer")


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_rest_markup(command, capsys):
    text = _help(command, capsys)
    assert command in text and "``" not in text


def test_policy_help_is_about_policy_alone(capsys):
    text = _help("policy", capsys)
    assert "Decide a plan" in text
    assert "policies list" not in text and "terms TEACHER" not in text


def test_a_command_module_that_fails_to_import_is_an_error_not_a_missing_command(monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "BUILTIN_COMMANDS", [*cli_main.BUILTIN_COMMANDS, "audit.cli.no_such_cmd"])
    assert main(["--help"]) == 1
    err = capsys.readouterr().err
    assert "audit.cli.no_such_cmd" in err and "cannot be imported" in err and "\n" == err[-1]
    assert err.count("\n") == 1


def test_every_command_registers():
    parser = build_parser()
    registered = set(parser._subparsers._group_actions[0].choices)
    assert set(COMMANDS) <= registered


def test_flops_on_a_folder_without_a_config_says_so(capsys):
    assert main(["flops", str(EXAMPLES)]) == 2
    err = capsys.readouterr().err
    assert "is a folder without a config.json" in err and "not found" not in err


def test_check_summary_shows_the_hardware_cross_check_and_keeps_bracketed_text(tmp_path, signer, capsys):
    # online-logit-kd declares 64 H100 x 120 h at 40%: far more than the counted compute
    assert main(["check", str(EXAMPLES / "online-logit-kd.yaml"), "--out", str(tmp_path / "a"),
                 "--key", str(signer.private_path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("hardware estimate:"))
    assert "OUTSIDE ±30%" in line
    # pack notes carry evidence markers in brackets; the terminal must not eat them as markup
    main(["check", str(EXAMPLES / "api-teacher.yaml"), "--out", str(tmp_path / "b"),
          "--key", str(signer.private_path)])
    out = capsys.readouterr().out
    assert "[secondary]" in out and " ;" not in out and " .)" not in out


def test_report_to_a_file_says_what_it_wrote(tmp_path, signer, capsys):
    main(["check", str(EXAMPLES / "online-logit-kd.yaml"), "--out", str(tmp_path / "a"),
          "--key", str(signer.private_path)])
    capsys.readouterr()
    target = tmp_path / "again.html"
    assert main(["report", str(tmp_path / "a" / "audit.intoto.json"), "--pubkey", str(signer.public_path),
                 "-o", str(target)]) == 0
    out = capsys.readouterr().out
    assert target.is_file() and f"wrote {target} (verified;" in out


def test_policies_list_counts_in_words(capsys):
    assert main(["policies", "list"]) == 0
    out = capsys.readouterr().out
    assert "1 regimes" not in out and "1 regime " in out


def test_check_json_stays_parseable_when_the_first_check_creates_a_key(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "fresh-home"))
    assert main(["check", str(EXAMPLES / "moe-teacher.yaml"), "--out", str(tmp_path / "a"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["outcome"] == "ALLOW"
    assert "created a local signing key" in err


def test_a_bad_plan_on_first_use_is_one_line_and_makes_no_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "fresh-home"))
    plan = tmp_path / "bad.yaml"
    plan.write_text((EXAMPLES / "moe-teacher.yaml").read_text().replace("plan_version: 1", "plan_version: 2"))
    assert main(["check", str(plan), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plan_version" in err
    assert not (tmp_path / "fresh-home").exists()


def test_check_and_approve_are_recorded_in_the_ledger(tmp_path, signer, capsys):
    import hashlib

    from audit.ledger.store import Ledger

    assert main(["check", str(EXAMPLES / "api-teacher.yaml"), "--out", str(tmp_path / "a"),
                 "--key", str(signer.private_path)]) == 3
    envelope = tmp_path / "a" / "audit.intoto.json"
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    reviewer = write_keypair(tmp_path / "keys", "reviewer")
    assert main(["approve", str(envelope), "--key", str(reviewer.private_path), "--note", "reviewed",
                 "--pubkey", str(signer.public_path)]) == 0
    with Ledger() as ledger:
        rows = ledger.rows(audit=digest)
        assert [r["kind"] for r in rows] == ["audit", "approval"]
        assert rows[0]["body"]["outcome"] == "REVIEW" and rows[0]["keyid"] == signer.keyid
        assert rows[1]["keyid"] == reviewer.keyid
        assert ledger.verify([signer.trusted, reviewer.trusted]) == []


def test_ledger_option_names_the_ledger_and_refuses_other_urls(tmp_path, signer, capsys):
    from audit.ledger.store import Ledger

    named = tmp_path / "team-ledger.sqlite"
    assert main(["check", str(EXAMPLES / "moe-teacher.yaml"), "--out", str(tmp_path / "a"),
                 "--key", str(signer.private_path), "--ledger", str(named)]) == 0
    with Ledger(named, create=False) as ledger:
        assert [r["kind"] for r in ledger.rows()] == ["audit"]
    with pytest.raises(SystemExit) as raised:
        main(["check", str(EXAMPLES / "moe-teacher.yaml"), "--ledger", "mysql://db/ledger"])
    assert raised.value.code == 2 and "postgresql:// URL, got mysql://" in capsys.readouterr().err


def test_check_records_in_a_postgresql_ledger(pg, tmp_path, signer, monkeypatch):
    from audit.ledger.store import Ledger

    url = pg.create_database("cli_check")
    monkeypatch.setenv("FLOPGATE_LEDGER_URL", url)  # no --ledger: the URL in the environment
    assert main(["check", str(EXAMPLES / "moe-teacher.yaml"), "--out", str(tmp_path / "a"),
                 "--key", str(signer.private_path)]) == 0
    with Ledger(url, create=False) as ledger:
        assert [r["kind"] for r in ledger.rows()] == ["audit"]
        assert ledger.verify([signer.trusted]) == []


def _merged_duty_plan(tmp_path) -> Path:
    """The base-init example grown to a 405B student on 6e12 tokens: above one third of its base's
    compute and above 1e25 FLOP, so the EU systemic-risk and downstream-modifier rules both owe
    the Commission notification and the Art. 55 duties (one obligation each, two legal bases)."""
    text = (EXAMPLES / "base-init-student.yaml").read_text()
    for old, new in (("config: llama-3.1-8b", "config: llama-3.1-405b"), ("base_model: meta-llama/Llama-3.1-8B",
                     "base_model: meta-llama/Llama-3.1-405B"), ("tokens: 5.0e10", "tokens: 6.0e12"),
                     ("budget: {max_flops: 2.0e23}", "")):
        assert old in text, old
        text = text.replace(old, new)
    plan = tmp_path / "merged-duty.yaml"
    plan.write_text(text)
    return plan


def test_the_terminal_names_every_legal_basis_of_a_merged_duty(tmp_path, signer, capsys):
    plan = _merged_duty_plan(tmp_path)
    assert main(["check", str(plan), "--out", str(tmp_path / "audit"), "--key", str(signer.private_path)]) == 0
    text = " ".join(capsys.readouterr().out.split())   # lines joined where the terminal wrapped them
    obligations = re.split(r" obligation (?:to do|met|UNMET): ", text)[1:]
    notify = [o for o in obligations if o.startswith("Notify the European Commission")]
    assert len(notify) == 1, notify                 # one duty, listed once...
    assert ("Owed under: eu-ai-act.systemic-risk (Art. 52(1)" in notify[0]
            and "eu-ai-act.downstream-modifier-systemic (" in notify[0])   # ...naming both rules
    assert main(["policy", str(plan)]) == 0
    table = capsys.readouterr().out
    assert table.count("eu-ai-act.systemic-risk.notify") == 1 and "Owed under:" in table
