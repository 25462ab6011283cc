"""Approvals: a reviewer signs off a REVIEW audit; the gate checks it is bound and trusted."""

import base64
import json

import pytest

from audit.attest import PREDICATE_APPROVAL, VerificationFailed
from audit.attest.approval import ApprovalRefused, approve, verify_approval
from audit.attest.canonical import canonical_json
from audit.attest.dsse import sign
from audit.attest.statement import build_subjects, make_statement
from audit.errors import InputError
from audit.fsutil import sha256_file


def test_approve_a_review_audit_and_the_gate_accepts_it(signer, reviewer, make_audit):
    audit_path = make_audit(signer, "REVIEW")
    written = approve(audit_path, reviewer.private_key, "Checked the naming obligation by hand.",
                      trusted_keys=[signer.trusted], approved_at="2026-11-30T09:00:00Z")
    assert written.path == audit_path.with_name("audit.intoto.json.approval.json")
    assert written.notes == []
    predicate = written.statement["predicate"]
    assert written.statement["predicateType"] == PREDICATE_APPROVAL
    assert written.statement["subject"] == [
        {"name": "audit.intoto.json", "digest": {"sha256": sha256_file(audit_path)}}]
    assert predicate["approver"]["keyid"] == reviewer.keyid
    assert predicate["audit"]["outcome"] == "REVIEW"
    assert predicate["audit"]["signers"] == [signer.keyid]
    assert predicate["approved_at"] == "2026-11-30T09:00:00Z"

    check = verify_approval(written.path.read_bytes(), audit_path.read_bytes(), [reviewer.trusted])
    assert check.ok, check.reason
    assert check.approver.keyid == reviewer.keyid
    assert "Checked the naming obligation" in check.reason
    # A path works as well as bytes.
    assert verify_approval(written.path, audit_path.read_bytes(), [reviewer.trusted]).ok


def test_approval_by_an_untrusted_key_fails(signer, reviewer, stranger, make_audit):
    audit_path = make_audit(signer)
    written = approve(audit_path, stranger.private_key, "looks fine")
    check = verify_approval(written.path.read_bytes(), audit_path.read_bytes(), [reviewer.trusted])
    assert not check.ok and check.reason.startswith("signature:")


def test_the_audit_signer_is_not_an_approver_unless_trusted_as_one(signer, reviewer, make_audit):
    audit_path = make_audit(signer)
    written = approve(audit_path, signer.private_key, "self", trusted_keys=[signer.trusted])
    assert "self-approval" in written.notes[0]
    assert not verify_approval(written.path, audit_path.read_bytes(), [reviewer.trusted]).ok


def test_deny_cannot_be_approved(signer, reviewer, make_audit):
    audit_path = make_audit(signer, "DENY")
    with pytest.raises(ApprovalRefused, match="DENY"):
        approve(audit_path, reviewer.private_key, "please", trusted_keys=[signer.trusted])
    assert not audit_path.with_name("audit.intoto.json.approval.json").exists()


def test_a_forged_approval_of_a_deny_audit_is_rejected_by_the_gate(signer, reviewer, make_audit, tmp_path):
    # Someone bypasses ``approve`` and signs an approval predicate for a DENY audit by hand.
    audit_path = make_audit(signer, "DENY")
    subjects, inputs = build_subjects([("audit_envelope", audit_path, audit_path.parent)])
    for claimed in ("DENY", "REVIEW"):
        statement = make_statement(subjects, PREDICATE_APPROVAL, {
            "note": "forced", "approved_at": "2026-11-30T09:00:00Z",
            "audit": {"outcome": claimed}, "inputs": inputs})
        envelope = sign(canonical_json(statement), reviewer.private_key).to_bytes()
        check = verify_approval(envelope, audit_path.read_bytes(), [reviewer.trusted])
        assert not check.ok and "'DENY' cannot be approved" in check.reason


def test_an_approval_bound_to_another_audit_fails(signer, reviewer, make_audit, plan_dir):
    first = make_audit(signer, "REVIEW", name="first.intoto.json")
    (plan_dir / "plan.yaml").write_text("plan_version: 1\nname: tiny-test-v2\n")
    second = make_audit(signer, "REVIEW", name="second.intoto.json")  # a later audit, also REVIEW
    assert first.read_bytes() != second.read_bytes()
    written = approve(first, reviewer.private_key, "ok")
    check = verify_approval(written.path.read_bytes(), second.read_bytes(), [reviewer.trusted])
    assert not check.ok and "bound to a different audit envelope" in check.reason
    # Re-writing the same audit's JSON (same payload, other bytes) also breaks the binding.
    reformatted = json.dumps(json.loads(first.read_bytes())).encode()
    assert not verify_approval(written.path, reformatted, [reviewer.trusted]).ok


def test_a_tampered_approval_fails(signer, reviewer, make_audit):
    audit_path = make_audit(signer)
    written = approve(audit_path, reviewer.private_key, "ok")
    envelope = json.loads(written.path.read_bytes())
    payload = base64.b64decode(envelope["payload"]).replace(b'"note":"ok"', b'"note":"OK"')
    envelope["payload"] = base64.b64encode(payload).decode()
    check = verify_approval(json.dumps(envelope).encode(), audit_path.read_bytes(), [reviewer.trusted])
    assert not check.ok and check.reason.startswith("signature:")


def test_an_audit_is_not_an_approval(signer, make_audit):
    audit_path = make_audit(signer)
    check = verify_approval(audit_path.read_bytes(), audit_path.read_bytes(), [signer.trusted])
    assert not check.ok and check.reason.startswith("predicate_type:")


def test_garbage_never_passes(signer, make_audit):
    audit_path = make_audit(signer)
    for junk in (b"", b"[]", b"{}", {"payload": 1}):
        assert not verify_approval(junk, audit_path.read_bytes(), [signer.trusted]).ok


def test_approve_checks_the_audit_signature_when_keys_are_given(signer, reviewer, stranger, make_audit):
    audit_path = make_audit(stranger)
    with pytest.raises(VerificationFailed) as info:
        approve(audit_path, reviewer.private_key, "ok", trusted_keys=[signer.trusted])
    assert info.value.reason == "signature"
    # Without keys only the structure is checked, and the notes say so.
    written = approve(audit_path, reviewer.private_key, "ok")
    assert "NOT checked" in written.notes[0]
    assert written.statement["predicate"]["audit"]["signature_checked"] is False


def test_approve_needs_a_note_and_never_overwrites(signer, reviewer, make_audit):
    audit_path = make_audit(signer)
    with pytest.raises(InputError, match="--note"):
        approve(audit_path, reviewer.private_key, "   ")
    written = approve(audit_path, reviewer.private_key, "first")
    before = written.path.read_bytes()
    with pytest.raises(InputError, match="never overwritten"):
        approve(audit_path, reviewer.private_key, "second")
    assert written.path.read_bytes() == before


def test_an_audit_without_an_outcome_cannot_be_approved(signer, reviewer, make_audit):
    audit_path = make_audit(signer, "MAYBE")
    with pytest.raises(VerificationFailed, match="no valid outcome"):
        approve(audit_path, reviewer.private_key, "ok")
