"""Ed25519 key pairs for the tests, written with plain ``cryptography`` (independent of
``audit.attest.keys``, whose loading they exercise). Shared by the attestation and gate tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.keys import TrustedKey, key_id


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


def write_keypair(folder: Path, name: str) -> KeyFiles:
    """``folder/name`` (PEM PKCS#8, unencrypted, mode 0600) and ``folder/name.pub`` (PEM SPKI)."""
    folder.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_path = folder / name
    private_path.write_bytes(private_key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                                       ser.NoEncryption()))
    private_path.chmod(0o600)
    public_path = folder / f"{name}.pub"
    public_path.write_bytes(private_key.public_key().public_bytes(ser.Encoding.PEM,
                                                                  ser.PublicFormat.SubjectPublicKeyInfo))
    return KeyFiles(private_key, private_path, public_path)
