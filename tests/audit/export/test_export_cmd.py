"""``flopgate export`` as a command: inputs verified first, records of the same audit only,
no file overwritten without --replace, and a signed export that ``flopgate verify`` accepts
and a changed byte fails."""

from __future__ import annotations

import json

import pytest

from audit.cli.main import main


def test_a_signed_export_verifies_and_a_changed_byte_fails(quickstart, keys, tmp_path, capsys):
    out = tmp_path / "bom.cdx.json"
    assert main(["export", str(quickstart.audit), "--format", "cyclonedx-1.6", "--pubkey", str(keys.public),
                 "--run-record", str(quickstart.run_record), "--out", str(out), "--sign", str(keys.private)]) == 0
    envelope = tmp_path / "bom.cdx.json.intoto.json"
    capsys.readouterr()
    assert main(["verify", str(envelope), "--pubkey", str(keys.public)]) == 0
    shown = capsys.readouterr().out
    assert "https://flopgate.dev/attestations/export/v1" in shown and "3 file(s) match" in shown
    out.write_bytes(out.read_bytes().replace(b"Tiny-Student", b"Tiny-Studens", 1))
    assert main(["verify", str(envelope), "--pubkey", str(keys.public)]) == 5
    assert "bom.cdx.json (export): changed since signing" in capsys.readouterr().out


def test_the_export_predicate_names_format_and_audit(quickstart, keys, tmp_path):
    from audit.attest import PREDICATE_EXPORT
    from audit.attest.keys import load_trusted_keys
    from audit.attest.verify import verify_envelope_file
    from audit.fsutil import sha256_file

    out = tmp_path / "bom.spdx.json"
    assert main(["export", str(quickstart.audit), "--format", "spdx-3.0.1", "--pubkey", str(keys.public),
                 "--out", str(out), "--sign", str(keys.private)]) == 0
    verified = verify_envelope_file(tmp_path / "bom.spdx.json.intoto.json", load_trusted_keys(keys.public),
                                    predicate_types=(PREDICATE_EXPORT,))
    predicate = verified.predicate
    assert predicate["format"] == "spdx-3.0.1"
    assert predicate["audit"]["sha256"] == sha256_file(quickstart.audit)
    assert {(e["role"], e["sha256"]) for e in predicate["inputs"]} == {
        ("export", sha256_file(out)), ("audit_envelope", sha256_file(quickstart.audit))}


def test_an_existing_file_is_kept_without_replace(quickstart, keys, tmp_path, capsys):
    out = tmp_path / "bom.json"
    out.write_text("keep me")
    args = ["export", str(quickstart.audit), "--format", "cyclonedx-1.7", "--pubkey", str(keys.public), "--out", str(out)]
    assert main(args) == 2
    assert "already exists; give --replace" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert main(args + ["--replace"]) == 0
    assert json.loads(out.read_text())["specVersion"] == "1.7"


def test_an_existing_signature_is_kept_without_replace(quickstart, keys, tmp_path):
    out = tmp_path / "bom.json"
    (tmp_path / "bom.json.intoto.json").write_text("an older signature")
    assert main(["export", str(quickstart.audit), "--format", "cyclonedx-1.7", "--pubkey", str(keys.public),
                 "--out", str(out), "--sign", str(keys.private)]) == 2
    assert not out.exists() and (tmp_path / "bom.json.intoto.json").read_text() == "an older signature"


def test_a_record_of_another_audit_is_refused(quickstart, example_audit, keys, tmp_path, capsys):
    other = example_audit("moe-teacher.yaml")
    out = tmp_path / "bom.json"
    assert main(["export", str(other), "--format", "spdx-3.0.1", "--pubkey", str(keys.public),
                 "--run-record", str(quickstart.run_record), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run-record.intoto.json: audit.sha256: expected" in err and "belongs to another audit" in err
    assert not out.exists()


@pytest.mark.parametrize("what", ["changed payload", "untrusted key"])
def test_an_audit_that_does_not_verify_exports_nothing(what, quickstart, keys, tmp_path, capsys):
    import base64

    from audit.attest.keys import generate_key

    audit, public = quickstart.audit, keys.public
    if what == "changed payload":   # the student renamed after signing
        envelope = json.loads(audit.read_bytes())
        payload = base64.b64decode(envelope["payload"]).replace(b"Tiny-Student", b"Tiny-Studenx")
        envelope["payload"] = base64.b64encode(payload).decode()
        audit = tmp_path / "audit.intoto.json"
        audit.write_text(json.dumps(envelope))
    else:
        public = generate_key(tmp_path / "other")[1]
    out = tmp_path / "bom.json"
    assert main(["export", str(audit), "--format", "cyclonedx-1.6", "--pubkey", str(public), "--out", str(out)]) == 5
    assert f"signature: {audit} (audit): no valid signature by a trusted key" in capsys.readouterr().err
    assert not out.exists()


def test_sign_needs_an_output_file(quickstart, keys, capsys):
    assert main(["export", str(quickstart.audit), "--format", "cyclonedx-1.6", "--pubkey", str(keys.public),
                 "--sign", str(keys.private)]) == 2
    assert "--sign needs --out FILE" in capsys.readouterr().err


def test_an_output_that_is_one_of_the_inputs_is_refused_even_with_replace(quickstart, keys, capsys):
    before = quickstart.run_record.read_bytes()
    assert main(["export", str(quickstart.audit), "--format", "cyclonedx-1.6", "--pubkey", str(keys.public),
                 "--run-record", str(quickstart.run_record), "--out", str(quickstart.run_record), "--replace"]) == 2
    assert "is one of the signed inputs" in capsys.readouterr().err
    assert quickstart.run_record.read_bytes() == before


def resign(envelope, keys, tmp_path, change) -> object:
    """A copy of ``envelope`` whose statement ``change`` edited, signed again by the test's key."""
    from audit.attest.dsse import parse_envelope, write_envelope
    from audit.attest.keys import load_private_key
    from audit.attest.statement import sign_statement

    statement = json.loads(parse_envelope(envelope.read_bytes()).payload)
    change(statement["predicate"])
    return write_envelope(tmp_path / envelope.name, sign_statement(statement, load_private_key(keys.private)))


def test_a_signed_audit_of_the_wrong_shape_is_bad_input(quickstart, keys, tmp_path, capsys):
    audit = resign(quickstart.audit, keys, tmp_path, lambda p: p["compute"].update(total_flops="a lot"))
    out = tmp_path / "bom.json"
    assert main(["export", str(audit), "--format", "spdx-3.0.1", "--pubkey", str(keys.public), "--out", str(out)]) == 2
    assert "predicate.compute.total_flops" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_record_of_another_shape_is_read_for_what_it_has(quickstart, keys, tmp_path):
    def change(predicate):
        predicate.update(eval=[3.25], energy="2 kWh", compute=None)

    record = resign(quickstart.run_record, keys, tmp_path, change)
    out = tmp_path / "bom.json"
    assert main(["export", str(quickstart.audit), "--format", "cyclonedx-1.7", "--pubkey", str(keys.public),
                 "--run-record", str(record), "--out", str(out)]) == 0
    card = json.loads(out.read_text())["metadata"]["component"]["modelCard"]
    assert "quantitativeAnalysis" not in card and "environmentalConsiderations" not in card["considerations"]


def test_a_record_signed_by_an_untrusted_runner_key_is_named(quickstart, keys, tmp_path, capsys):
    """The audit verifies and the run record does not: the error names the record (it used to be
    ``signature: no valid signature by a trusted key`` alone, which reads as the audit failing)."""
    import shutil

    from audit.attest.dsse import parse_envelope, write_envelope
    from audit.attest.keys import generate_key
    from audit.attest.statement import sign_statement

    runner_private, runner_public = generate_key(tmp_path / "runner")
    statement = json.loads(parse_envelope(quickstart.run_record.read_bytes()).payload)
    (tmp_path / "records").mkdir()
    record = write_envelope(tmp_path / "records" / quickstart.run_record.name,
                            sign_statement(statement, runner_private))
    out = tmp_path / "bom.json"
    args = ["export", str(quickstart.audit), "--format", "cyclonedx-1.6", "--run-record", str(record),
            "--out", str(out)]
    assert main([*args, "--pubkey", str(keys.public)]) == 5
    err = capsys.readouterr().err
    assert f"signature: {record} (run record): no valid signature by a trusted key" in err
    assert "trust it too" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(keys.public, trusted / "auditor.pub")
    shutil.copy(runner_public, trusted / "runner.pub")
    assert main([*args, "--trust", str(trusted)]) == 0
    assert "1 run record(s)" in capsys.readouterr().out

