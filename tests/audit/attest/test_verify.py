"""The whole verification of an envelope file, in order, with the first failure's reason."""

import json

import pytest

import policies
from audit.attest import PREDICATE_APPROVAL, PREDICATE_AUDIT, VerificationFailed
from audit.attest.dsse import write_envelope
from audit.attest.statement import InputFile, build_subjects, make_statement, sign_statement
from audit.attest.verify import unverified_statement, verify_envelope_file
from audit.errors import InputError
from audit.fsutil import sha256_file


def test_a_good_audit_verifies(signer, make_audit, plan_dir):
    path = make_audit(signer, "REVIEW")
    result = verify_envelope_file(path, [signer.trusted], plan_path=plan_dir / "plan.yaml")
    assert result.predicate_type == PREDICATE_AUDIT
    assert result.outcome == "REVIEW"
    assert [k.keyid for k in result.signers] == [signer.keyid]
    assert result.subjects_checked == 2
    assert result.envelope_sha256 == sha256_file(path)
    assert result.warnings == []


def test_edited_plan_fails_on_subjects_and_names_the_file(signer, make_audit, plan_dir):
    path = make_audit(signer)
    (plan_dir / "plan.yaml").write_text("plan_version: 1\nname: tiny-test-edited\n")
    with pytest.raises(VerificationFailed) as info:
        verify_envelope_file(path, [signer.trusted], plan_path=plan_dir / "plan.yaml")
    assert info.value.reason == "subjects"
    assert len(info.value.details) == 1 and info.value.details[0].startswith("plan.yaml (plan)")
    # Skipping the file check (as ``report`` may) still verifies the signature.
    assert verify_envelope_file(path, [signer.trusted], check_files=False).subjects_checked == 0


def test_signature_is_checked_before_the_files(signer, stranger, make_audit, plan_dir):
    path = make_audit(stranger)
    (plan_dir / "plan.yaml").write_text("edited")
    with pytest.raises(VerificationFailed) as info:
        verify_envelope_file(path, [signer.trusted], plan_path=plan_dir / "plan.yaml")
    assert info.value.reason == "signature"


def test_predicate_types_can_be_narrowed(signer, make_audit):
    path = make_audit(signer)
    with pytest.raises(VerificationFailed) as info:
        verify_envelope_file(path, [signer.trusted], predicate_types=(PREDICATE_APPROVAL,))
    assert info.value.reason == "predicate_type"


def test_unreadable_file_is_an_input_error(signer, tmp_path):
    with pytest.raises(InputError, match="file not found"):
        verify_envelope_file(tmp_path / "missing.json", [signer.trusted])
    with pytest.raises(InputError, match="directory"):
        verify_envelope_file(tmp_path, [signer.trusted])


def test_installed_pack_versions_callable_is_only_used_for_packs(signer, make_audit):
    calls = []
    path = make_audit(signer)
    verify_envelope_file(path, [signer.trusted], installed_pack_versions=lambda: calls.append(1) or {})
    assert calls == []  # the fake audit lists no policy pack


def test_unverified_statement_reads_without_keys(signer, make_audit):
    path = make_audit(signer, "DENY")
    statement = unverified_statement(path.read_bytes())
    assert statement["predicate"]["outcome"] == "DENY"
    with pytest.raises(VerificationFailed):
        unverified_statement(json.dumps({"payload": "x"}).encode())


def _signed_audit_with_a_stale_pack(plan_dir, signer):
    """An audit that used pack ``eu-ai-act`` 2026.1, whose bundled file has changed since."""
    subjects, inputs = build_subjects([
        ("plan", plan_dir / "plan.yaml", plan_dir),
        InputFile("policy_pack", policies.PACKAGE_DIR / "__init__.py", plan_dir,
                  {"pack_id": "eu-ai-act", "pack_version": "2026.1"}),
    ])
    for subject in subjects:
        if subject["name"].startswith("flopgate:"):
            subject["digest"]["sha256"] = "0" * 64  # the bytes the pack had at audit time
    statement = make_statement(subjects, PREDICATE_AUDIT, {"outcome": "ALLOW", "inputs": inputs})
    envelope = sign_statement(statement, signer.private_key)
    return write_envelope(plan_dir / "out" / "packs.intoto.json", envelope)


def test_a_newer_installed_pack_warns_and_passes(signer, plan_dir):
    path = _signed_audit_with_a_stale_pack(plan_dir, signer)
    result = verify_envelope_file(path, [signer.trusted],
                                  installed_pack_versions=lambda: {"eu-ai-act": "2026.2"})
    assert result.warnings == ["policy pack eu-ai-act was 2026.1 at audit time; the installed "
                               "2026.2 is newer: re-run flopgate check"]


def test_unreadable_installed_packs_fail_closed(signer, plan_dir):
    path = _signed_audit_with_a_stale_pack(plan_dir, signer)

    def broken():
        raise RuntimeError("pack file is malformed")

    with pytest.raises(VerificationFailed) as info:
        verify_envelope_file(path, [signer.trusted], installed_pack_versions=broken)
    assert info.value.reason == "subjects"
    assert "flopgate:policies/__init__.py (policy_pack): changed" in info.value.details[0]
    # Same version installed but other bytes: a silent edit, so it fails as well.
    with pytest.raises(VerificationFailed):
        verify_envelope_file(path, [signer.trusted],
                             installed_pack_versions=lambda: {"eu-ai-act": "2026.1"})
