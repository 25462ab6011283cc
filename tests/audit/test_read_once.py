"""check reads each input once and signs the digest of the bytes it decided on.

The attack: swap a file after it was parsed and counted but before it was hashed for signing,
and get a signed ALLOW that verifies against a plan that is DENY on its own. A deterministic
hook (wrapping the estimate) does the swap; no sleeps."""

import hashlib
import shutil
from pathlib import Path

import pytest

import audit.check
from audit.cli.main import main
from keypairs import write_keypair

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def project(tmp_path):
    plan = tmp_path / "plan.yaml"
    text = (EXAMPLES / "online-logit-kd.yaml").read_text()
    plan.write_text(text)
    return plan


def _swap_after_estimate(monkeypatch, path: Path, new_bytes: bytes):
    real = audit.check.estimate_plan

    def estimate_then_swap(*args, **kwargs):
        result = real(*args, **kwargs)
        path.write_bytes(new_bytes)
        return result

    monkeypatch.setattr(audit.check, "estimate_plan", estimate_then_swap)


def test_a_plan_swapped_during_check_is_not_what_gets_signed(project, tmp_path, monkeypatch, capsys):
    signer = write_keypair(tmp_path / "keys", "signer")
    original = project.read_bytes()
    hostile = original.replace(b"  distribution: internal", b"  distribution: open_weights").replace(
        b"  model: meta-llama/Llama-3.1-70B-Instruct\n  access: weights\n  config: llama-3.1-70b",
        b"  model: gpt-4o\n  access: api\n  parameters: 2.0e11")
    assert hostile.count(b"gpt-4o") == 1 and b"open_weights" in hostile
    assert main(["policy", _write(tmp_path / "hostile.yaml", hostile)]) == 4   # DENY on its own
    _swap_after_estimate(monkeypatch, project, hostile)
    out = tmp_path / "out"
    assert main(["check", str(project), "--out", str(out), "--key", str(signer.private_path), "--json"]) == 0
    payload = capsys.readouterr().out
    assert hashlib.sha256(original).hexdigest() in payload            # what was decided on is signed
    assert hashlib.sha256(hostile).hexdigest() not in payload
    monkeypatch.undo()
    # the signed ALLOW does not verify against the swapped plan now on disk
    assert main(["verify", str(out / "audit.intoto.json"), "--pubkey", str(signer.public_path)]) == 5


def test_a_config_swapped_during_check_is_not_what_gets_signed(project, tmp_path, monkeypatch, capsys):
    signer = write_keypair(tmp_path / "keys", "signer")
    config = tmp_path / "student.json"
    shutil.copy(Path(audit.__file__).parent / "model_configs" / "llama-3.2-1b.json", config)
    project.write_text(project.read_text().replace("config: llama-3.2-1b", "config: ./student.json"))
    original = config.read_bytes()
    bigger = original.replace(b'"num_hidden_layers": 16', b'"num_hidden_layers": 160')
    assert bigger != original
    _swap_after_estimate(monkeypatch, config, bigger)
    assert main(["check", str(project), "--out", str(tmp_path / "out"), "--key", str(signer.private_path),
                 "--json"]) == 0
    payload = capsys.readouterr().out
    assert hashlib.sha256(original).hexdigest() in payload and hashlib.sha256(bigger).hexdigest() not in payload
