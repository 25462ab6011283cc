"""The training gate: every way an audit can fail to justify training is refused with its
reason, through ``flopgate distill``, before any model is loaded; valid audits open it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from types import SimpleNamespace

import pytest

from audit.attest.approval import approve
from audit.cli.main import main
from distill.gate.checks import run_gate_checks
from distill.gate.refusal import GATE_REFUSED_EXIT
from gate_fixtures import PACK_ID, PACK_VERSION, forbid_model_loads, hand_approval, iso, make_audit, obligation
from keypairs import write_keypair

NOW = dt.datetime.now(dt.timezone.utc)
INSTALLED = {PACK_ID: PACK_VERSION}


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    return SimpleNamespace(signer=write_keypair(folder, "auditor"), reviewer=write_keypair(folder, "reviewer"),
                           stranger=write_keypair(folder, "stranger"))


@pytest.fixture
def model_loads(monkeypatch):
    """Every entry that could load a model records the call and raises."""
    return forbid_model_loads(monkeypatch)


@pytest.fixture
def installed(monkeypatch):
    """The installed policy-pack versions the CLI sees (the test pack by default)."""
    versions = dict(INSTALLED)
    monkeypatch.setattr("distill.gate.gated_run._installed_pack_versions", lambda: dict(versions))
    return versions


def distill(capsys, project, envelope, pubkey, *extra):
    code = main(["distill", str(project.plan), "--attestation", str(envelope), "--pubkey", str(pubkey),
                 "--out", str(project.root / "out"), *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


def reason_lines(err: str) -> list[str]:
    return [line.strip() for line in err.splitlines() if line.startswith("  ")]


# --- refusals through the command, with model loading forbidden ------------------------------

def _edited_plan(project, keys, installed):
    envelope = make_audit(project, keys.signer)
    project.plan.write_text(project.plan.read_text() + "# edited after the audit\n")
    return envelope, [], ["plan:", "subjects: plan.yaml"]


def _edited_student_config(project, keys, installed):
    envelope = make_audit(project, keys.signer)
    config = json.loads(project.student_config.read_text())
    config["num_hidden_layers"] = 8
    project.student_config.write_text(json.dumps(config))
    return envelope, [], ["subjects: student.json (student_config)"]


def _edited_teacher_config(project, keys, installed):
    envelope = make_audit(project, keys.signer)
    project.teacher_config.write_text(project.teacher_config.read_text().replace('"hidden_size": 64',
                                                                                 '"hidden_size": 4096'))
    return envelope, [], ["subjects: teacher/config.json (teacher_config)"]


def _edited_manifest(project, keys, installed):
    envelope = make_audit(project, keys.signer)
    project.manifest.write_text(project.manifest.read_text() + " ")
    return envelope, [], ["subjects: shards/manifest.json (dataset_manifest)"]


def _untrusted_key(project, keys, installed):
    return make_audit(project, keys.stranger), [], ["signature:"]


def _deny(project, keys, installed):
    return make_audit(project, keys.signer, outcome="DENY"), [], ["outcome: the audit's outcome is DENY"]


def _deny_with_hand_made_approval(project, keys, installed):
    envelope = make_audit(project, keys.signer, outcome="DENY")
    approval = hand_approval(envelope, keys.reviewer, outcome="DENY", out=project.root / "approval.json")
    return envelope, ["--approval", approval, "--approver-pubkey", keys.reviewer.public_path], [
        "outcome: the audit's outcome is DENY"]


def _expired(project, keys, installed):
    created = iso(NOW - dt.timedelta(days=31))
    return make_audit(project, keys.signer, created=created), [], ["age:"]


def _from_the_future(project, keys, installed):
    created = iso(NOW + dt.timedelta(days=2))
    return make_audit(project, keys.signer, created=created), [], ["age:"]


def _review_without_approval(project, keys, installed):
    return make_audit(project, keys.signer, outcome="REVIEW"), [], ["approval:"]


def _review_approved_by_untrusted_key(project, keys, installed):
    envelope = make_audit(project, keys.signer, outcome="REVIEW")
    approval = approve(envelope, keys.stranger.private_key, "looked fine to me").path
    return envelope, ["--approval", approval, "--approver-pubkey", keys.reviewer.public_path], ["approval: signature"]


def _review_approval_of_another_audit(project, keys, installed):
    other = make_audit(project, keys.signer, outcome="REVIEW", name="other.intoto.json",
                       created=iso(NOW - dt.timedelta(days=2)))   # different bytes from the one used
    approval = approve(other, keys.reviewer.private_key, "approved the other one").path
    envelope = make_audit(project, keys.signer, outcome="REVIEW")
    return envelope, ["--approval", approval, "--approver-pubkey", keys.reviewer.public_path], [
        "approval: bound to a different audit envelope"]


def _review_approval_without_approver_keys(project, keys, installed):
    envelope = make_audit(project, keys.signer, outcome="REVIEW")
    approval = approve(envelope, keys.reviewer.private_key, "ok").path
    return envelope, ["--approval", approval], ["approval: no trusted approver key"]


def _newer_installed_pack(project, keys, installed):
    installed[PACK_ID] = "2026.2"   # the audit used 2026.1: it is out of date
    return make_audit(project, keys.signer), [], [f"policy_pack: policy pack {PACK_ID} was 2026.1"]


def _older_installed_pack(project, keys, installed):
    installed[PACK_ID] = "2025.9"
    return make_audit(project, keys.signer), [], [f"policy_pack: policy pack {PACK_ID} was 2026.1"]


def _unmet_checkable_obligation(project, keys, installed):
    unmet = obligation("t.naming", "Begin the student's name with Llama", status="unmet", checkable=True)
    envelope = make_audit(project, keys.signer, outcome="ALLOW_WITH_OBLIGATIONS", obligations=[unmet])
    return envelope, [], ["outcome: checkable obligation t.naming is unmet"]


def _no_outcome(project, keys, installed):
    return make_audit(project, keys.signer, outcome=None), [], ["predicate: the audit cannot be read (decision.outcome"]


def _audit_says_closed(project, keys, installed):
    return make_audit(project, keys.signer, gate_open=False), [], ["outcome: the audit itself records"]


def _manifest_not_audited(project, keys, installed):
    envelope = make_audit(project, keys.signer, roles=("plan", "student_config", "teacher_config", "policy_pack"))
    return envelope, [], ["inputs: the audit covers no dataset_manifest"]


def _historical_audit(project, keys, installed):
    """check --as-of 2024-06-01: how the law stood then, not a licence to train today."""
    return make_audit(project, keys.signer, as_of="2024-06-01", historical=True), [], [
        "dates: a historical audit (rules as of 2024-06-01"]


def _rules_older_than_the_age_limit(project, keys, installed):
    as_of = (NOW - dt.timedelta(days=45)).date().isoformat()
    return make_audit(project, keys.signer, as_of=as_of), [], [f"dates: the audit applied the rules as of {as_of}"]


def _audit_without_the_historical_flag(project, keys, installed):
    return make_audit(project, keys.signer, historical=None), [], [
        "predicate: the audit cannot be read (historical: required field is missing)"]


def _decision_the_engine_cannot_read(project, keys, installed):
    """The gate reads the predicate as the typed model check signs (the engine's own Decision
    inside): one that does not parse is refused, naming the field."""
    return make_audit(project, keys.signer, findings=[{"rule_id": "x"}]), [], [
        "predicate: the audit cannot be read (decision.findings[0]"]


def _checkable_obligation_not_met(project, keys, installed):
    """One rule, in the engine: a checkable obligation opens the gate only when met."""
    ob = obligation("o.todo", "Name the student Llama-...", status="todo", checkable=True)
    return make_audit(project, keys.signer, outcome="ALLOW_WITH_OBLIGATIONS", obligations=[ob], gate_open=True), [], [
        "outcome: checkable obligation o.todo is todo"]


REFUSALS = [_decision_the_engine_cannot_read, _checkable_obligation_not_met, _historical_audit, _rules_older_than_the_age_limit, _audit_without_the_historical_flag, _edited_plan, _edited_student_config, _edited_teacher_config, _edited_manifest, _untrusted_key,
            _deny, _deny_with_hand_made_approval, _expired, _from_the_future, _review_without_approval,
            _review_approved_by_untrusted_key, _review_approval_of_another_audit,
            _review_approval_without_approver_keys, _newer_installed_pack, _older_installed_pack,
            _unmet_checkable_obligation, _no_outcome, _audit_says_closed, _manifest_not_audited]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.__name__.strip("_") for c in REFUSALS])
def test_refused_with_its_reason_before_any_model_loads(case, project, keys, installed, model_loads, capsys):
    envelope, extra, expected = case(project, keys, installed)
    code, out, err = distill(capsys, project, envelope, keys.signer.public_path, "--allow-cpu", *extra)
    assert code == GATE_REFUSED_EXIT, err
    lines = reason_lines(err)
    for prefix in expected:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    assert "Traceback" not in err
    assert model_loads == []
    assert not (project.root / "out").exists()


def test_dry_run_refused_too(project, keys, installed, model_loads, capsys):
    envelope = make_audit(project, keys.signer, outcome="DENY")
    code, _, err = distill(capsys, project, envelope, keys.signer.public_path, "--allow-cpu", "--dry-run")
    assert code == GATE_REFUSED_EXIT and "DENY" in err
    assert model_loads == []


def test_several_failures_are_all_named(project, keys):
    """An expired DENY audit whose plan changed: three separate reasons, one line each."""
    envelope = make_audit(project, keys.signer, outcome="DENY", created=iso(NOW - dt.timedelta(days=90)))
    project.plan.write_text(project.plan.read_text() + "# edited\n")
    result = run_gate_checks(envelope, project.plan, trusted_keys=[keys.signer.trusted], now=NOW,
                             installed_pack_versions=INSTALLED)
    assert not result.ok
    codes = {reason.split(":")[0] for reason in result.reasons}
    assert {"plan", "subjects", "outcome", "age"} <= codes
    assert all("\n" not in reason for reason in result.reasons)


def test_bad_signature_stops_before_reading_the_payload(project, keys):
    envelope = make_audit(project, keys.stranger, outcome="DENY")
    result = run_gate_checks(envelope, project.plan, trusted_keys=[keys.signer.trusted], now=NOW,
                             installed_pack_versions=INSTALLED)
    assert not result.ok and result.predicate is None
    assert len(result.reasons) == 1 and result.reasons[0].startswith("signature: no valid signature by a trusted key")
    assert "signature: signature:" not in result.reasons[0]   # the code once (it was printed twice)


def test_max_age_is_configurable(project, keys):
    envelope = make_audit(project, keys.signer, created=iso(NOW - dt.timedelta(days=10)))
    kwargs = dict(trusted_keys=[keys.signer.trusted], now=NOW, installed_pack_versions=INSTALLED)
    assert run_gate_checks(envelope, project.plan, max_age_days=30, **kwargs).ok
    refused = run_gate_checks(envelope, project.plan, max_age_days=7, **kwargs)
    assert not refused.ok and refused.reasons[0].startswith("age:")


def test_organisation_packs_unknown_to_the_install_are_checked_by_digest(project, keys):
    """A pack the install does not ship is not version-compared, but its bytes are."""
    envelope = make_audit(project, keys.signer)
    kwargs = dict(trusted_keys=[keys.signer.trusted], now=NOW, installed_pack_versions={})
    assert run_gate_checks(envelope, project.plan, **kwargs).ok
    project.pack.write_text(project.pack.read_text() + "# loosened\n")
    refused = run_gate_checks(envelope, project.plan, **kwargs)
    assert not refused.ok and any(r.startswith("subjects: packs/test-pack.yaml") for r in refused.reasons)


# --- audits that open the gate ---------------------------------------------------------------

def test_allow_opens(project, keys):
    envelope = make_audit(project, keys.signer)
    result = run_gate_checks(envelope, project.plan, trusted_keys=[keys.signer.trusted], now=NOW,
                             installed_pack_versions=INSTALLED)
    assert result.ok and result.reasons == [] and result.outcome == "ALLOW"
    assert result.envelope_sha256 == hashlib.sha256(envelope.read_bytes()).hexdigest()
    assert result.predicate["plan"]["name"] == "tiny-gate-test"


def test_allow_with_met_obligations_opens_and_lists_what_is_left(project, keys):
    obligations = [obligation("t.naming", "Begin the name with Tiny", status="met", checkable=True),
                   obligation("t.attribution", 'Display "Built with Tiny"')]
    envelope = make_audit(project, keys.signer, outcome="ALLOW_WITH_OBLIGATIONS", obligations=obligations)
    result = run_gate_checks(envelope, project.plan, trusted_keys=[keys.signer.trusted], now=NOW,
                             installed_pack_versions=INSTALLED)
    assert result.ok
    assert [n for n in result.notes if "t.attribution" in n] and not [n for n in result.notes if "t.naming" in n]


def test_review_with_a_trusted_approval_opens(project, keys):
    envelope = make_audit(project, keys.signer, outcome="REVIEW")
    approval = approve(envelope, keys.reviewer.private_key, "checked the terms with legal").path
    result = run_gate_checks(envelope, project.plan, trusted_keys=[keys.signer.trusted], approval_path=approval,
                             trusted_approvers=[keys.reviewer.trusted], now=NOW, installed_pack_versions=INSTALLED)
    assert result.ok, result.reasons
    assert result.approval_sha256 == hashlib.sha256(approval.read_bytes()).hexdigest()
    assert any("checked the terms with legal" in note for note in result.notes)


@pytest.mark.parametrize("outcome", ["ALLOW", "REVIEW"])
def test_dry_run_through_the_command_opens_and_loads_nothing(outcome, project, keys, installed, model_loads,
                                                              capsys):
    envelope = make_audit(project, keys.signer, outcome=outcome)
    extra = []
    if outcome == "REVIEW":
        approval = approve(envelope, keys.reviewer.private_key, "fine").path
        extra = ["--approval", approval, "--approver-pubkey", keys.reviewer.public_path]
    code, out, err = distill(capsys, project, envelope, keys.signer.public_path, "--allow-cpu", "--dry-run", *extra)
    assert code == 0, err
    assert f"gate open: audit {envelope} (outcome {outcome}" in out
    assert "dry run: every check passed" in out
    assert model_loads == []
    assert not (project.root / "out").exists()
