"""``flopgate ledger``: verify, list, show, spent and export, run through a parser built with
the module's own ``register`` (not the CLI's command list)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

import pytest

from audit.cli import ledger_cmd
from audit.errors import FlopgateError
from audit.ledger.store import Ledger
from keypairs import write_keypair
from pg_server import raw_sql

AUDIT = "12" * 32
OTHER = "34" * 32


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="flopgate")
    ledger_cmd.register(top.add_subparsers(dest="command"))
    return top


def run(argv: list[str]) -> int:
    """Like ``flopgate.main``: a FlopgateError becomes its exit code."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FlopgateError as exc:
        print(f"flopgate: error: {exc}")
        return exc.exit_code


@pytest.fixture
def signer(tmp_path):
    return write_keypair(tmp_path / "keys", "ledger-signer")


@pytest.fixture
def filled(where, signer):
    """A ledger (on each engine) with an audit (budget 100), two charges over two months that
    say their parameter-update part, and another audit's charge that does not."""
    path = where
    key = signer.private_key
    jan = datetime(2025, 1, 15, tzinfo=timezone.utc)
    feb = datetime(2025, 2, 3, tzinfo=timezone.utc)
    with Ledger(path) as ledger:
        ledger.append("audit", AUDIT, {"plan_name": "tiny", "outcome": "ALLOW", "total_flops": 90.0,
                                       "update_flops": 30.0, "budget_flops": 100.0,
                                       "signer": "SHA256:ab"}, key, time=jan)
        ledger.charge(AUDIT, 100.0, "run-1", 0, 10, 4096, 30.0, key, update_flops=10.0, time=jan)
        ledger.charge(AUDIT, 100.0, "run-1", 10, 20, 4096, 30.0, key, update_flops=10.0, time=feb)
        ledger.charge(OTHER, 50.0, "run-2", 0, 5, 1024, 5.0, key, time=feb)
    return path


def test_verify_ok_and_failed(filled, signer, tmp_path, capsys):
    assert run(["ledger", "verify", "--ledger", filled, "--pubkey", str(signer.public_path),
                "--runner-pubkey", str(signer.public_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VERIFIED") and "rows      4 (seq 1..4)" in out and "head      seq 4" in out
    stranger = write_keypair(tmp_path / "other", "stranger")
    assert run(["ledger", "verify", "--ledger", filled, "--trust", str(tmp_path / "other")]) == 5
    out = capsys.readouterr().out
    assert out.startswith("FAILED") and "row seq 1: signed by untrusted key" in out
    raw_sql(filled, "DELETE FROM rows WHERE seq = 2")
    assert run(["ledger", "verify", "--ledger", filled, "--pubkey", str(signer.public_path),
                "--runner-pubkey", str(signer.public_path)]) == 5
    assert "row seq 3: expected seq 2" in capsys.readouterr().out
    assert stranger  # its .pub made the trust folder


def test_each_kind_of_row_needs_a_key_trusted_for_it(filled, signer, tmp_path, capsys):
    """Attack: any trusted key could write any row. Now an auditor key is trusted for audit
    rows only, a runner key for what runs book, a reviewer key for approvals."""
    runner = write_keypair(tmp_path / "runner", "runner")
    assert run(["ledger", "verify", "--ledger", filled, "--pubkey", str(signer.public_path)]) == 5
    out = capsys.readouterr().out
    assert "row seq 2: a charge row signed by SHA256:" in out and "trusted only as auditor" in out
    with Ledger(filled) as ledger:  # a runner's key writes an audit row and an approval
        ledger.append("audit", AUDIT, {"plan_name": "tiny", "outcome": "ALLOW", "total_flops": 1.0,
                                       "update_flops": 1.0, "budget_flops": 1e30, "signer": "SHA256:ab"},
                      runner.private_key)
        ledger.append("approval", AUDIT, {"outcome": "REVIEW"}, runner.private_key)
    assert run(["ledger", "verify", "--ledger", filled, "--pubkey", str(signer.public_path),
                "--runner-trust", str(tmp_path / "runner"), "--approver-pubkey", str(signer.public_path)]) == 5
    out = capsys.readouterr().out
    assert "row seq 2: a charge row signed by" in out  # the auditor's key is no runner's
    assert "trusted only as auditor, approver: charge rows are written by a trusted runner key" in out
    both = tmp_path / "both"
    both.mkdir()
    for pub in (signer.public_path, runner.public_path):
        (both / pub.name).write_bytes(pub.read_bytes())
    assert run(["ledger", "verify", "--ledger", filled, "--pubkey", str(signer.public_path),
                "--runner-trust", str(both), "--approver-pubkey", str(signer.public_path)]) == 5
    out = capsys.readouterr().out
    assert "row seq 5: an audit row signed by SHA256:" in out and "trusted only as runner" in out
    assert "audit rows are written by a trusted auditor key" in out
    assert run(["ledger", "verify", "--ledger", filled, "--pubkey", str(signer.public_path),
                "--runner-pubkey", str(signer.public_path)]) == 5  # the runner's rows: no role given
    out = capsys.readouterr().out
    assert "row seq 5: signed by untrusted key SHA256:" in out
    assert "audit rows are written by a trusted auditor key" in out


def test_an_untrusted_approval_row_names_the_role_it_needs(filled, signer, tmp_path, capsys):
    """The quickstart's ledger holds an approval by the reviewer's key: verifying it without
    --approver-pubkey said only 'signed by untrusted key', which left the user guessing."""
    reviewer = write_keypair(tmp_path / "reviewer", "reviewer")
    with Ledger(filled) as ledger:
        ledger.append("approval", AUDIT, {"outcome": "REVIEW"}, reviewer.private_key)
    trust = ["--pubkey", str(signer.public_path), "--runner-pubkey", str(signer.public_path)]
    assert run(["ledger", "verify", "--ledger", filled, *trust]) == 5
    assert "row seq 5: signed by untrusted key SHA256:" in (out := capsys.readouterr().out)
    assert "approval rows are written by a trusted approver key" in out
    assert run(["ledger", "verify", "--ledger", filled, *trust, "--approver-pubkey", str(reviewer.public_path)]) == 0


def test_verify_needs_a_trusted_key(filled):
    with pytest.raises(SystemExit):
        parser().parse_args(["ledger", "verify", "--ledger", filled])


def test_missing_ledger_is_input_error(tmp_path, signer, capsys):
    missing = tmp_path / "none.sqlite"
    assert run(["ledger", "list", "--ledger", str(missing)]) == 2
    assert "ledger not found" in capsys.readouterr().out
    assert not missing.exists()


def test_default_ledger_from_env(filled, monkeypatch, capsys):
    monkeypatch.setenv("FLOPGATE_LEDGER_URL" if filled.startswith("postgresql") else "FLOPGATE_LEDGER",
                       filled)
    assert run(["ledger", "list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_list_filters_and_json(filled, capsys):
    assert run(["ledger", "list", "--ledger", filled]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "audit" in lines[0] and "tiny ALLOW budget 100 FLOP" in lines[0]
    assert "run-1 steps 0-10 30 FLOP" in lines[1]
    assert run(["ledger", "list", "--ledger", filled, "--audit", OTHER[:8], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["seq"] for r in rows] == [4]
    assert run(["ledger", "list", "--ledger", filled, "--since", "2025-02-01"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert run(["ledger", "list", "--ledger", filled, "--since", "February"]) == 2


def test_show(filled, capsys):
    assert run(["ledger", "show", "2", "--ledger", filled]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["seq"] == 2 and row["kind"] == "charge" and row["body"]["flops"] == 30
    assert run(["ledger", "show", "99", "--ledger", filled]) == 2
    assert "no row with seq 99" in capsys.readouterr().out


def test_spent_by_audit_and_month(filled, capsys):
    assert run(["ledger", "spent", "--by", "audit", "--json", "--ledger", filled]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals == [
        {"audit": AUDIT, "charges": 2, "flops": 60.0, "budget_flops": 100, "left_flops": 40.0},
        {"audit": OTHER, "charges": 1, "flops": 5.0, "budget_flops": None, "left_flops": None},
    ]
    assert run(["ledger", "spent", "--by", "month", "--json", "--ledger", filled]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"month": "2025-01", "charges": 1, "flops": 30.0},
        {"month": "2025-02", "charges": 2, "flops": 35.0},
    ]
    assert run(["ledger", "spent", "--ledger", filled]) == 0
    out = capsys.readouterr().out
    assert f"{AUDIT[:12]}       2 charge(s)  60 FLOP  of 100 budget, 40 left" in out


def test_spent_by_regime_notion(filled, capsys):
    assert run(["ledger", "spent", "--by", "regime-notion", "--json", "--ledger", filled]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"audit": AUDIT, "charges": 2, "flops": 60.0, "charges_without_update": 0,
         "update_flops": 20.0, "plan_name": "tiny", "audited_total_flops": 90,
         "audited_update_flops": 30},
        {"audit": OTHER, "charges": 1, "flops": 5.0, "charges_without_update": 1,
         "update_flops": None, "plan_name": None, "audited_total_flops": None,
         "audited_update_flops": None},
    ]
    assert run(["ledger", "spent", "--by", "regime-notion", "--ledger", filled]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{AUDIT[:12]}  tiny: charged cumulative 60 FLOP, parameter updates 20 FLOP; "
                      f"audited cumulative 90, parameter updates 30")
    assert out[1] == (f"{OTHER[:12]}  (no audit row): charged cumulative 5 FLOP, parameter updates "
                      f"unknown (1 charge(s) do not say)")


def test_export_jsonl_verifies_on_its_own(filled, signer, capsys):
    from audit.ledger.chain import verify_chain

    assert run(["ledger", "export", "--format", "jsonl", "--ledger", filled]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert verify_chain(rows, [signer.trusted]) == []


def test_no_subcommand_prints_help(capsys):
    assert run(["ledger"]) == 2
    assert "verify" in capsys.readouterr().out


def test_empty_ledger_verifies(tmp_path, signer, capsys):
    Ledger(tmp_path / "empty.sqlite").close()
    assert run(["ledger", "verify", "--ledger", str(tmp_path / "empty.sqlite"),
                "--pubkey", str(signer.public_path)]) == 0
    assert "rows      0" in capsys.readouterr().out
