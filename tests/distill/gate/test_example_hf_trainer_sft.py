"""examples/hf_trainer_sft.py end to end on the CPU: generate (API teacher on 127.0.0.1) ->
SFT with transformers' Trainer behind the gate, whole model and LoRA; a DENY audit stops it
before any model is built."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from audit.cli.main import main as flopgate
from audit.ledger.store import Ledger
from generate_kit import KEY_ENV, make_project, sign_audit
from openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[3]
TOKENIZER = ROOT / "tests" / "distill" / "data" / "tokenizer"


def example():
    spec = importlib.util.spec_from_file_location("hf_trainer_sft", ROOT / "examples" / "hf_trainer_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def generated(tmp_path, signer, monkeypatch):
    """A sequence plan, its audit, and the teacher's answers written by flopgate generate."""
    monkeypatch.setenv(KEY_ENV, "test-key")
    with FakeOpenAI() as server:
        project = make_project(tmp_path / "project", server.url, prompts=8, tokenizer=TOKENIZER)
        envelope = sign_audit(project, signer)
        assert flopgate(["generate", str(project.plan), "--attestation", str(envelope), "--pubkey",
                         str(signer.public_path), "--key", str(signer.private_path),
                         "--out", str(tmp_path / "gen")]) == 0
    return project, envelope


def run_example(tmp_path, project, envelope, signer, *extra) -> int:
    return example().main([str(project.plan), "--attestation", str(envelope), "--pubkey", str(signer.public_path),
                           "--key", str(signer.private_path), "--samples", str(tmp_path / "gen" / "kept-samples.jsonl"),
                           "--tokenizer", str(TOKENIZER), "--out", str(tmp_path / "sft"), "--steps", "3",
                           "--batch", "2", "--cpu", *extra])


def test_a_tokenizer_that_is_not_the_audited_one_is_refused(tmp_path, signer, generated, capsys):
    import shutil

    project, envelope = generated
    other = shutil.copytree(TOKENIZER, tmp_path / "other-tokenizer")
    (other / "tokenizer_config.json").write_text((other / "tokenizer_config.json").read_text().replace(
        '"[EOS]"', '"[UNK]"'))
    assert run_example(tmp_path, project, envelope, signer, "--tokenizer", str(other)) == 6
    assert "tokenizer_config.json has sha256" in capsys.readouterr().err
    assert not (tmp_path / "sft" / "run-record.intoto.json").exists()


@pytest.mark.parametrize("extra", [(), ("--lora", "4")], ids=["full", "lora"])
def test_sft_on_generated_answers_behind_the_gate(tmp_path, signer, generated, extra, capsys):
    project, envelope = generated
    assert run_example(tmp_path, project, envelope, signer, *extra) == 0
    assert "steps 3" in capsys.readouterr().out
    digest = hashlib.sha256(envelope.read_bytes()).hexdigest()
    with Ledger() as ledger:
        kinds = [r["kind"] for r in ledger.rows(audit=digest)]
        assert kinds.count("charge") == 3 and "gate_open" in kinds
        assert ledger.verify([signer.trusted]) == []
    assert (tmp_path / "sft" / "run-record.intoto.json").is_file()


def test_a_deny_audit_stops_before_any_model_is_built(tmp_path, signer, monkeypatch, capsys):
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was built behind a refusing gate")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", forbidden)
    project = make_project(tmp_path / "project", "https://api.example.com/v1")
    envelope = sign_audit(project, signer, outcome="DENY")
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "kept-samples.jsonl").write_text("")
    assert run_example(tmp_path, project, envelope, signer) == 6
    assert "refused" in capsys.readouterr().err
