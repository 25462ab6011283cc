"""Fixtures for the attestation tests: keys, a small plan folder and audit envelopes built
from a fake predicate (the real ``flopgate check`` predicate is not needed here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest import PREDICATE_AUDIT
from audit.attest.dsse import write_envelope
from audit.attest.keys import TrustedKey, key_id
from audit.attest.statement import build_subjects, make_statement, sign_statement


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reads the real ~/.config/flopgate or a passphrase from the caller's shell."""
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "flopgate-home"))
    monkeypatch.delenv("FLOPGATE_KEY_PASSPHRASE", raising=False)


@dataclass
class KeyFiles:
    private_key: Ed25519PrivateKey
    private_path: Path
    public_path: Path

    @property
    def keyid(self) -> str:
        return key_id(self.private_key.public_key())

    @property
    def trusted(self) -> TrustedKey:
        return TrustedKey(self.keyid, self.private_key.public_key(), str(self.public_path))


def _write_keypair(folder: Path, name: str) -> KeyFiles:
    """A key pair written with plain ``cryptography`` (independent of ``audit.attest.keys``)."""
    folder.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_path = folder / name
    private_path.write_bytes(private_key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    private_path.chmod(0o600)
    public_path = folder / f"{name}.pub"
    public_path.write_bytes(private_key.public_key().public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return KeyFiles(private_key, private_path, public_path)


@pytest.fixture
def signer(tmp_path) -> KeyFiles:
    return _write_keypair(tmp_path / "signer-keys", "signer")


@pytest.fixture
def reviewer(tmp_path) -> KeyFiles:
    return _write_keypair(tmp_path / "reviewer-keys", "reviewer")


@pytest.fixture
def stranger(tmp_path) -> KeyFiles:
    return _write_keypair(tmp_path / "stranger-keys", "stranger")


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
