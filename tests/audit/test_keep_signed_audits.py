"""check never destroys a signed audit: a used --out is refused, --replace keeps the old one."""

from pathlib import Path

import pytest

from audit.cli.main import main
from keypairs import write_keypair

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "online-logit-kd.yaml"


@pytest.fixture
def signer(tmp_path):
    return write_keypair(tmp_path / "keys", "signer")


def test_a_second_check_into_the_same_folder_is_refused_and_changes_nothing(tmp_path, signer, capsys):
    out = tmp_path / "out"
    args = ["check", str(EXAMPLE), "--out", str(out), "--key", str(signer.private_path)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a signed audit" in err and "--replace" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_replace_keeps_the_old_audit_under_a_dated_name(tmp_path, signer, capsys):
    out = tmp_path / "out"
    args = ["check", str(EXAMPLE), "--out", str(out), "--key", str(signer.private_path)]
    assert main(args) == 0
    old = (out / "audit.intoto.json").read_bytes()
    assert main(args + ["--replace"]) == 0
    kept = sorted(p.name for p in out.glob("audit.replaced-*"))
    assert len(kept) == 3 and any(name.endswith(".intoto.json") for name in kept)
    assert (out / next(n for n in kept if n.endswith(".intoto.json"))).read_bytes() == old
    # both verify: the kept one is unchanged, the new one is whole
    assert main(["verify", str(out / "audit.intoto.json"), "--pubkey", str(signer.public_path)]) == 0
    kept_envelope = out / next(n for n in kept if n.endswith(".intoto.json"))
    assert main(["verify", str(kept_envelope), "--pubkey", str(signer.public_path)]) == 0
