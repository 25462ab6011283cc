"""``flopgate keygen``, ``verify`` and ``approve`` through ``audit.cli.main.main`` (in process)."""

import base64
import hashlib
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization as ser

from audit.cli.main import main
from keypairs import KeyFiles


def test_keygen_writes_a_0600_key_and_never_prints_it(tmp_path, capsys):
    out = tmp_path / "keys" / "ci"
    assert main(["keygen", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    private = ser.load_pem_private_key(out.read_bytes(), None)
    raw = private.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    pem_body = "".join(out.read_text().splitlines()[1:-1])
    for secret in (pem_body, raw.hex(), base64.b64encode(raw).decode(), "PRIVATE KEY-----"):
        assert secret not in text
    assert str(out) in text and str(out) + ".pub" in text
    raw_pub = private.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    assert hashlib.sha256(raw_pub).hexdigest() in text  # the fingerprint is shown


def test_keygen_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "k"
    assert main(["keygen", "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["keygen", "--out", str(out)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_keygen_default_location(tmp_path, capsys):
    assert main(["keygen"]) == 0
    assert (tmp_path / "flopgate-home" / "keys" / "flopgate-ed25519").is_file()


def test_verify_success(signer, make_audit, plan_dir, capsys):
    path = make_audit(signer)
    code = main(["verify", str(path), "--pubkey", str(signer.public_path),
                 "--plan", str(plan_dir / "plan.yaml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("VERIFIED") and "outcome REVIEW" in out and "2 file(s) match" in out


def test_verify_with_a_trust_folder(signer, make_audit, capsys):
    path = make_audit(signer)
    assert main(["verify", str(path), "--trust", str(signer.public_path.parent)]) == 0


def test_verify_failures_exit_5_with_the_reason(signer, stranger, make_audit, plan_dir, capsys):
    path = make_audit(signer)
    assert main(["verify", str(path), "--pubkey", str(stranger.public_path)]) == 5
    out = capsys.readouterr().out
    assert out.startswith("FAILED") and "signature:" in out

    (plan_dir / "configs" / "student.json").write_text("{}")
    assert main(["verify", str(path), "--pubkey", str(signer.public_path)]) == 5
    out = capsys.readouterr().out
    assert "subjects:" in out and "configs/student.json (student_config): changed" in out

    envelope = json.loads(path.read_bytes())
    envelope["payloadType"] = "text/plain"
    path.write_text(json.dumps(envelope))
    assert main(["verify", str(path), "--pubkey", str(signer.public_path)]) == 5
    assert "payload_type:" in capsys.readouterr().out


def test_a_wrong_key_hints_at_the_signer_and_the_local_key(signer, stranger, make_audit, capsys):
    """A run record signed by this machine's local key (no --key given) verified with the
    auditor's key, the natural guess: the failure names the signer and the file to use."""
    from audit.attest.keys import ensure_default_key, public_key_path, short_fingerprint

    local, local_path, _ = ensure_default_key()
    path = make_audit(signer)
    assert main(["verify", str(path), "--pubkey", str(stranger.public_path)]) == 5
    out = capsys.readouterr().out
    assert f"hint: the envelope names its signer(s) as {short_fingerprint(signer.keyid)}" in out
    assert "local key" not in out
    by_local = make_audit(KeyFiles(local, local_path, public_key_path(local_path)), name="run.intoto.json")
    assert main(["verify", str(by_local), "--pubkey", str(stranger.public_path)]) == 5
    out = capsys.readouterr().out
    assert f"is this machine's local key (used when no --key is given): flopgate verify {by_local} " \
           f"--pubkey {public_key_path(local_path)}" in out


def test_verify_on_a_folder_names_the_signed_files_in_it(signer, make_audit, capsys):
    path = make_audit(signer)
    assert main(["verify", str(path.parent), "--pubkey", str(signer.public_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the signed files in it: {path}" in err


def test_verify_input_errors_exit_2(signer, make_audit, tmp_path, capsys):
    path = make_audit(signer)
    assert main(["verify", str(path)]) == 2  # no trusted key named
    assert "--pubkey FILE or --trust DIR" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "none.json"), "--pubkey", str(signer.public_path)]) == 2
    assert main(["verify", str(path), "--pubkey", str(tmp_path / "none.pub")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 2


def test_approve_then_verify_the_approval(signer, reviewer, make_audit, capsys):
    path = make_audit(signer, "REVIEW")
    code = main(["approve", str(path), "--key", str(reviewer.private_path), "--note", "Reviewed by legal.",
                 "--pubkey", str(signer.public_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    approval = path.with_name(path.name + ".approval.json")
    assert approval.is_file() and str(approval) in out
    assert main(["verify", str(approval), "--pubkey", str(reviewer.public_path)]) == 0
    assert "approval/v1" in capsys.readouterr().out
    # The approval names the audit file: editing the audit breaks the approval.
    path.write_bytes(path.read_bytes() + b"\n")
    assert main(["verify", str(approval), "--pubkey", str(reviewer.public_path)]) == 5


def test_approve_refuses_deny_with_exit_4(signer, reviewer, make_audit, capsys):
    path = make_audit(signer, "DENY")
    assert main(["approve", str(path), "--key", str(reviewer.private_path), "--note", "x",
                 "--pubkey", str(signer.public_path)]) == 4
    assert "DENY" in capsys.readouterr().err
    assert not path.with_name(path.name + ".approval.json").exists()


def test_approve_an_untrusted_audit_exits_5(signer, reviewer, stranger, make_audit, capsys):
    path = make_audit(stranger)
    assert main(["approve", str(path), "--key", str(reviewer.private_path), "--note", "x",
                 "--pubkey", str(signer.public_path)]) == 5
    assert not path.with_name(path.name + ".approval.json").exists()


def test_approve_refuses_a_world_readable_reviewer_key(signer, reviewer, make_audit, capsys):
    path = make_audit(signer)
    os.chmod(reviewer.private_path, 0o644)
    assert main(["approve", str(path), "--key", str(reviewer.private_path), "--note", "x",
                 "--pubkey", str(signer.public_path)]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_approve_needs_the_auditor_key(signer, reviewer, make_audit, capsys):
    """A reviewer signs off only an audit whose signature was checked: the CLI requires a key."""
    path = make_audit(signer, "REVIEW")
    with pytest.raises(SystemExit) as raised:
        main(["approve", str(path), "--key", str(reviewer.private_path), "--note", "x"])
    assert raised.value.code == 2
    assert "--pubkey" in capsys.readouterr().err
    assert not path.with_name(path.name + ".approval.json").exists()
