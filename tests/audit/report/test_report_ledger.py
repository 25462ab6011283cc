"""``flopgate report`` shows the audit's ledger history: events, compute charged per run, what
is left of the budget, and whether the chain verified; escaped like every other field."""

from __future__ import annotations

import hashlib
from pathlib import Path

from audit.cli.main import main
from audit.ledger.history import audit_history
from audit.ledger.store import Ledger
from keypairs import write_keypair
from pg_server import raw_sql

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
OTHER = "ab" * 32


def _audited(tmp_path, signer) -> tuple[Path, str]:
    out = tmp_path / "audit"
    assert main(["check", str(EXAMPLES / "moe-teacher.yaml"), "--out", str(out),
                 "--key", str(signer.private_path)]) == 0
    envelope = out / "audit.intoto.json"
    return envelope, hashlib.sha256(envelope.read_bytes()).hexdigest()


def _report(tmp_path, envelope, signer, *extra) -> str:
    target = tmp_path / "report.html"
    assert main(["report", str(envelope), "--pubkey", str(signer.public_path), "-o", str(target),
                 *extra]) == 0
    return target.read_text()


def test_report_shows_runs_spent_and_left(tmp_path, capsys):
    signer = write_keypair(tmp_path / "keys", "signer")
    envelope, digest = _audited(tmp_path, signer)
    with Ledger() as ledger:
        budget = ledger.rows(audit=digest)[0]["body"]["budget_flops"]
        ledger.append("gate_open", digest, {"run_id": "<b>run-a</b>", "outcome": "ALLOW"},
                      signer.private_key)
        ledger.charge(digest, budget, "<b>run-a</b>", 1, 1, 100, budget / 4, signer.private_key,
                      update_flops=budget / 8)
        ledger.charge(digest, budget, "<b>run-a</b>", 2, 2, 100, budget / 4, signer.private_key,
                      update_flops=budget / 8)
        ledger.charge(OTHER, 1e30, "elsewhere", 1, 1, 100, 7.0, signer.private_key)
    html = _report(tmp_path, envelope, signer)
    section = html[html.index('<section id="ledger">'):html.index('<section id="compute">')]
    assert "the hash chain verified" in section
    assert "&lt;b&gt;run-a&lt;/b&gt;" in section and "<b>run-a</b>" not in section
    assert section.count("gate_open") == 1 and "elsewhere" not in section
    history = audit_history(Ledger().rows(), digest, location="x", chain_problem=None)
    assert history["spent_flops"] == budget / 2 and history["left_flops"] == budget / 2
    assert history["runs"][0]["charges"] == 2 and history["runs"][0]["update_flops"] == budget / 4
    assert [e["kind"] for e in history["events"]] == ["audit", "gate_open"]


def test_report_says_when_the_chain_does_not_verify(tmp_path, capsys):
    signer = write_keypair(tmp_path / "keys", "signer")
    envelope, digest = _audited(tmp_path, signer)
    named = tmp_path / "team.sqlite"
    with Ledger(named) as ledger:
        ledger.charge(digest, 1e30, "run-a", 1, 1, 100, 5.0, signer.private_key)
        ledger.charge(digest, 1e30, "run-a", 2, 2, 100, 5.0, signer.private_key)
    raw_sql(str(named), "DELETE FROM rows WHERE seq = 1")
    html = _report(tmp_path, envelope, signer, "--ledger", str(named))
    assert "the hash chain did NOT verify" in html and "row seq 2: expected seq 1" in html


def test_report_without_a_ledger_says_so(tmp_path, capsys):
    signer = write_keypair(tmp_path / "keys", "signer")
    envelope, _ = _audited(tmp_path, signer)
    html = _report(tmp_path, envelope, signer, "--ledger", str(tmp_path / "none.sqlite"))
    assert "No ledger at" in html and not (tmp_path / "none.sqlite").exists()


def _section(html: str) -> str:
    return html[html.index('<section id="ledger">'):html.index('<section id="compute">')]


def test_report_checks_each_ledger_row_against_its_roles_keys(tmp_path, capsys):
    """With role keys named, a charge row signed by the auditor's key is not trusted (as in
    ``flopgate ledger verify``); without them the page says one key list served every row."""
    auditor = write_keypair(tmp_path / "keys", "auditor")
    runner = write_keypair(tmp_path / "keys", "runner")
    runner_key = ["--runner-pubkey", str(runner.public_path)]

    def audited_ledger(name, charge_signer):
        where = tmp_path / name
        assert main(["check", str(EXAMPLES / "moe-teacher.yaml"), "--out", str(tmp_path / name / "audit"),
                     "--key", str(auditor.private_path), "--ledger", str(where / "ledger.sqlite")]) == 0
        envelope = where / "audit" / "audit.intoto.json"
        with Ledger(where / "ledger.sqlite") as ledger:
            ledger.charge(hashlib.sha256(envelope.read_bytes()).hexdigest(), 1e30, "run-a", 1, 1, 100, 5.0,
                          charge_signer.private_key)
        return envelope, ["--ledger", str(where / "ledger.sqlite")]

    envelope, ledger = audited_ledger("honest", runner)
    section = _section(_report(tmp_path, envelope, auditor, *ledger, *runner_key))
    assert "the hash chain verified" in section and "the same keys for every kind of row" not in section
    # one key list (the auditor's): the runner's row is not by a trusted key
    assert "the hash chain did NOT verify" in _section(_report(tmp_path, envelope, auditor, *ledger))
    # the auditor's key signing a charge: a one-key-list report accepts it and says how it checked...
    envelope, ledger = audited_ledger("forged", auditor)
    section = _section(_report(tmp_path, envelope, auditor, *ledger))
    assert "the hash chain verified" in section and "the same keys for every kind of row" in section
    # ...and a report by role does not
    assert "the hash chain did NOT verify" in _section(_report(tmp_path, envelope, auditor, *ledger, *runner_key))


def test_other_audits_rows_on_a_shared_ledger_need_no_key_but_must_chain(tmp_path, capsys):
    """As the gate reads a team ledger: another audit's rows, signed by a key this report does
    not know, do not fail it; this audit's rows still need their role's key, and every row's
    hash and link still count."""
    auditor = write_keypair(tmp_path / "keys", "auditor")
    runner = write_keypair(tmp_path / "keys", "runner")
    colleague = write_keypair(tmp_path / "keys", "colleague")

    def shared_ledger(name: str, our_charge_signer) -> tuple[Path, list[str]]:
        where = tmp_path / name / "team.sqlite"
        assert main(["check", str(EXAMPLES / "moe-teacher.yaml"), "--out", str(tmp_path / name / "audit"),
                     "--key", str(auditor.private_path), "--ledger", str(where)]) == 0
        envelope = tmp_path / name / "audit" / "audit.intoto.json"
        with Ledger(where) as ledger:
            ledger.charge(hashlib.sha256(envelope.read_bytes()).hexdigest(), 1e30, "run-a", 1, 1, 100, 5.0,
                          our_charge_signer.private_key)
            ledger.charge(OTHER, 1e30, "their-run", 1, 1, 100, 7.0, colleague.private_key)
        return envelope, ["--ledger", str(where), "--runner-pubkey", str(runner.public_path)]

    envelope, args = shared_ledger("honest", runner)
    assert "the hash chain verified" in _section(_report(tmp_path, envelope, auditor, *args))
    raw_sql(args[1], "UPDATE rows SET row_json = replace(row_json, 'their-run', 'their-run2') WHERE seq = 3")
    section = _section(_report(tmp_path, envelope, auditor, *args))   # another audit's row edited
    assert "the hash chain did NOT verify" in section and "row seq 3" in section
    envelope, args = shared_ledger("forged", colleague)   # this audit's charge by a key of no role here
    assert "the hash chain did NOT verify" in _section(_report(tmp_path, envelope, auditor, *args))
