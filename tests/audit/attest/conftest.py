"""Fixtures for the attestation tests: keys, a small plan folder and audit envelopes built
from a fake predicate (the real ``flopgate check`` predicate is not needed here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.attest import PREDICATE_AUDIT
from audit.attest.dsse import write_envelope
from audit.attest.statement import build_subjects, make_statement, sign_statement
from keypairs import KeyFiles, write_keypair


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reads the real ~/.config/flopgate or a passphrase from the caller's shell."""
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "flopgate-home"))
    monkeypatch.delenv("FLOPGATE_KEY_PASSPHRASE", raising=False)


@pytest.fixture
def signer(tmp_path) -> KeyFiles:
    return write_keypair(tmp_path / "signer-keys", "signer")


@pytest.fixture
def reviewer(tmp_path) -> KeyFiles:
    return write_keypair(tmp_path / "reviewer-keys", "reviewer")


@pytest.fixture
def stranger(tmp_path) -> KeyFiles:
    return write_keypair(tmp_path / "stranger-keys", "stranger")


@pytest.fixture
def plan_dir(tmp_path) -> Path:
    folder = tmp_path / "project"
    (folder / "configs").mkdir(parents=True)
    (folder / "plan.yaml").write_text("plan_version: 1\nname: tiny-test\n")
    (folder / "configs" / "student.json").write_text('{"hidden_size": 64, "num_hidden_layers": 2}\n')
    return folder


def _audit_statement(plan_dir: Path, outcome: str) -> dict:
    subjects, inputs = build_subjects([
        ("plan", plan_dir / "plan.yaml", plan_dir),
        ("student_config", plan_dir / "configs" / "student.json", plan_dir),
    ])
    predicate = {"outcome": outcome, "decision": {"outcome": outcome}, "inputs": inputs,
                 "plan": {"name": "tiny-test"}}
    return make_statement(subjects, PREDICATE_AUDIT, predicate)


@pytest.fixture
def audit_statement(plan_dir):
    """``audit_statement(outcome)``: a fake audit Statement covering the plan and a config."""
    return lambda outcome="REVIEW": _audit_statement(plan_dir, outcome)


@pytest.fixture
def make_audit(plan_dir):
    """``make_audit(key, outcome="REVIEW", name=...)``: sign a fake audit of ``plan_dir`` and
    write it to ``plan_dir/out/<name>``; returns the path."""
    def make(key: KeyFiles, outcome: str = "REVIEW", name: str = "audit.intoto.json") -> Path:
        envelope = sign_statement(_audit_statement(plan_dir, outcome), key.private_key)
        return write_envelope(plan_dir / "out" / name, envelope)
    return make
