"""Key files: creation mode, no overwrite, permissions, passphrases, fingerprints, trust."""

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest.keys import (default_key_path, ensure_default_key, generate_key, key_id,
                               load_private_key, load_public_key, load_trusted_keys)
from audit.errors import InputError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generated_private_key_is_0600_and_public_key_matches(tmp_path):
    old = os.umask(0o022)
    try:
        key, pub_path = generate_key(tmp_path / "keys" / "k")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "keys" / "k") == 0o600
    assert _mode(tmp_path / "keys") == 0o700
    assert pub_path == tmp_path / "keys" / "k.pub"
    assert (tmp_path / "keys" / "k").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded_pub = ser.load_pem_public_key(pub_path.read_bytes())
    assert loaded_pub == key.public_key()
    reloaded = load_private_key(tmp_path / "keys" / "k")
    assert reloaded.sign(b"m") == key.sign(b"m")  # Ed25519 is deterministic: same key


def test_mode_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        generate_key(tmp_path / "k")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o600


def test_never_overwrites_an_existing_key_or_public_key(tmp_path):
    generate_key(tmp_path / "k")
    before = (tmp_path / "k").read_bytes(), (tmp_path / "k.pub").read_bytes()
    with pytest.raises(InputError, match="never overwrites"):
        generate_key(tmp_path / "k")
    assert ((tmp_path / "k").read_bytes(), (tmp_path / "k.pub").read_bytes()) == before
    # A stray .pub alone also blocks generation, and no private key appears.
    (tmp_path / "other.pub").write_text("x")
    with pytest.raises(InputError, match="other.pub"):
        generate_key(tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_a_planted_symlink_is_not_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious")
    (tmp_path / "k").symlink_to(target)
    with pytest.raises(InputError):
        generate_key(tmp_path / "k")
    assert target.read_text() == "precious"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_private_key_readable_by_group_or_others_is_refused(tmp_path, mode):
    generate_key(tmp_path / "k")
    os.chmod(tmp_path / "k", mode)
    with pytest.raises(InputError) as info:
        load_private_key(tmp_path / "k")
    message = str(info.value)
    assert f"{mode:04o}" in message and "chmod 600" in message and str(tmp_path / "k") in message
    assert "\n" not in message


def test_encrypted_key_round_trips_with_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOPGATE_KEY_PASSPHRASE", "correct horse")
    key, _ = generate_key(tmp_path / "k")
    pem = (tmp_path / "k").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # Independently: only the right passphrase opens it.
    assert ser.load_pem_private_key(pem, b"correct horse").public_key() == key.public_key()
    assert load_private_key(tmp_path / "k").public_key() == key.public_key()

    monkeypatch.setenv("FLOPGATE_KEY_PASSPHRASE", "wrong")
    with pytest.raises(InputError, match="cannot decrypt"):
        load_private_key(tmp_path / "k")
    monkeypatch.delenv("FLOPGATE_KEY_PASSPHRASE")
    with pytest.raises(InputError, match="encrypted; set FLOPGATE_KEY_PASSPHRASE"):
        load_private_key(tmp_path / "k")


def test_unencrypted_key_loads_even_when_a_passphrase_is_set(tmp_path, monkeypatch):
    key, _ = generate_key(tmp_path / "k")
    monkeypatch.setenv("FLOPGATE_KEY_PASSPHRASE", "anything")
    assert load_private_key(tmp_path / "k").public_key() == key.public_key()


def test_key_id_is_sha256_of_the_raw_public_key(tmp_path):
    key, pub_path = generate_key(tmp_path / "k")
    der = ser.load_pem_public_key(pub_path.read_bytes()).public_bytes(
        ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    raw = der[-32:]  # an Ed25519 SubjectPublicKeyInfo ends with the 32 raw key bytes
    assert len(der) == 44
    assert key_id(key.public_key()) == hashlib.sha256(raw).hexdigest()


def test_openssl_and_openssh_keys_load(tmp_path):
    # Written with plain cryptography in the formats openssl genpkey and ssh-keygen produce.
    key = Ed25519PrivateKey.generate()
    ssh = tmp_path / "id_ed25519"
    ssh.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
    ssh.chmod(0o600)
    (tmp_path / "id_ed25519.pub").write_bytes(
        key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b" me@host\n")
    assert load_private_key(ssh).public_key() == key.public_key()
    assert load_public_key(tmp_path / "id_ed25519.pub") == key.public_key()


def test_non_ed25519_and_non_key_files_are_refused(tmp_path):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(InputError, match="expected an Ed25519 public key"):
        load_public_key(tmp_path / "ec.pub")
    (tmp_path / "ec").write_bytes(ec_key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    os.chmod(tmp_path / "ec", 0o600)
    with pytest.raises(InputError, match="expected an Ed25519 key"):
        load_private_key(tmp_path / "ec")
    (tmp_path / "notes.pub").write_text("hello")
    with pytest.raises(InputError, match="not a PEM or OpenSSH public key"):
        load_public_key(tmp_path / "notes.pub")
    generate_key(tmp_path / "priv")
    with pytest.raises(InputError, match="private key; trust the .pub"):
        load_public_key(tmp_path / "priv")
    with pytest.raises(InputError, match="not found"):
        load_public_key(tmp_path / "missing.pub")


def test_trust_dir_loads_every_pub_file_and_nothing_else(tmp_path):
    trust = tmp_path / "trust"
    a, _ = generate_key(trust / "alice")
    b, _ = generate_key(tmp_path / "bob")
    os.rename(tmp_path / "bob.pub", trust / "bob.pub")
    keys = load_trusted_keys(trust_dir=trust)
    assert {k.keyid for k in keys} == {key_id(a.public_key()), key_id(b.public_key())}
    assert {os.path.basename(k.source) for k in keys} == {"alice.pub", "bob.pub"}
    # A single --pubkey gives exactly that key.
    only = load_trusted_keys(pubkey=trust / "bob.pub")
    assert [k.keyid for k in only] == [key_id(b.public_key())]


def test_trust_needs_a_named_key(tmp_path):
    with pytest.raises(InputError, match="--pubkey FILE or --trust DIR"):
        load_trusted_keys()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no \\*.pub files"):
        load_trusted_keys(trust_dir=tmp_path / "empty")
    with pytest.raises(InputError, match="expected a folder"):
        load_trusted_keys(trust_dir=tmp_path / "nope")


def test_default_key_is_created_once_under_flopgate_home(tmp_path):
    home = tmp_path / "flopgate-home"  # set by the autouse fixture
    assert default_key_path() == home / "keys" / "flopgate-ed25519"
    key, path, created = ensure_default_key()
    assert created and path == home / "keys" / "flopgate-ed25519"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    again, path2, created2 = ensure_default_key()
    assert not created2 and path2 == path
    assert again.public_key() == key.public_key()


def test_default_home_is_under_the_user_config_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOPGATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_key_path() == tmp_path / "user" / ".config" / "flopgate" / "keys" / "flopgate-ed25519"
