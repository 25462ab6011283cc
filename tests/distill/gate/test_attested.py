"""``distill.gate.attested``: every input of a gated run through one layer. Each input is the audited
one, read once: a file changed after the gate is refused, the tokenizer comes from the audited
folder's bytes, the --filter module runs from the bytes whose digest is recorded."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from audit.errors import InputError
from distill.gate.attested import InputsRefused, filter_function
from distill.gate.refusal import GATE_REFUSED_EXIT
from distill.gate.gated_run import verify_audit
from distill_testkit import TOKENIZER_DIR
from gate_fixtures import PACK_ID, PACK_VERSION, make_audit

pytestmark = pytest.mark.usefixtures("test_pack_installed")


def open_inputs(project, signer):
    envelope = make_audit(project, signer)
    return verify_audit(project.plan, envelope, pubkey=str(signer.public_path)).inputs


def test_only_an_open_gate_has_inputs(project, signer):
    envelope = make_audit(project, signer, outcome="DENY")
    import datetime as dt

    from audit.attest.keys import load_trusted_keys
    from distill.gate.checks import run_gate_checks

    refused = run_gate_checks(envelope, project.plan, trusted_keys=load_trusted_keys(str(signer.public_path), None),
                              now=dt.datetime.now(dt.timezone.utc), installed_pack_versions={PACK_ID: PACK_VERSION})
    assert not refused.ok
    with pytest.raises(ValueError, match="open gate only"):
        refused.inputs


def test_a_file_of_an_audited_folder_is_read_against_the_gates_digest(project, signer):
    inputs = open_inputs(project, signer)
    raw = inputs.folder_file("teacher_weights", "config.json")
    assert raw == (project.root / "teacher" / "config.json").read_bytes()
    config = json.loads(raw)
    (project.root / "teacher" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 9}))
    with pytest.raises(InputsRefused) as refused:
        inputs.folder_file("teacher_weights", "config.json")
    assert refused.value.exit_code == GATE_REFUSED_EXIT
    assert refused.value.reasons == [f"teacher_weights: {project.root / 'teacher' / 'config.json'} changed since "
                                     "the gate hashed it"]
    with pytest.raises(InputsRefused, match="has no model.bin"):
        inputs.folder_file("teacher_weights", "model.bin")


def test_the_manifest_is_read_once_and_must_be_the_audited_one(project, signer, tmp_path):
    inputs = open_inputs(project, signer)
    manifest, files = inputs.manifest()
    assert files and inputs.manifest()[0] is manifest    # read once, handed on
    again = open_inputs(project, signer)
    path = project.root / "shards" / "manifest.json"
    path.write_text(path.read_text().replace("{", "{\"edited\": 1, ", 1))
    with pytest.raises(InputError, match="is not the audited manifest"):
        again.manifest()


def test_the_default_tokenizer_is_the_audited_teacher_folders(project, signer, tmp_path):
    inputs = open_inputs(project, signer)
    tokenizer = inputs.tokenizer()
    assert tokenizer.role == "teacher_weights" and tokenizer.folder == project.root / "teacher"
    assert {f["name"] for f in tokenizer.files} == {p.name for p in TOKENIZER_DIR.iterdir()}
    assert len(tokenizer.tokenizer) > 0
    copy = shutil.copytree(TOKENIZER_DIR, tmp_path / "copy")
    assert inputs.tokenizer(copy).sha256 == tokenizer.sha256
    changed = shutil.copytree(TOKENIZER_DIR, tmp_path / "changed")
    raw = (changed / "tokenizer.json").read_bytes()
    assert b'"[UNK]"' in raw
    (changed / "tokenizer.json").write_bytes(raw.replace(b'"[UNK]"', b'"[UNX]"'))
    with pytest.raises(InputsRefused) as refused:
        inputs.tokenizer(changed)
    assert len(refused.value.reasons) == 1 and "tokenizer.json has sha256" in refused.value.reasons[0]


def test_the_tokenizer_is_built_from_the_checked_bytes(project, signer, monkeypatch):
    """The loader reads a private copy of the verified bytes, never the user's folder."""
    import distill.runtime.models

    inputs = open_inputs(project, signer)
    seen = []
    real = distill.runtime.models.load_tokenizer

    def spy(folder):
        seen.append(str(folder))
        return real(folder)

    monkeypatch.setattr(distill.runtime.models, "load_tokenizer", spy)
    inputs.tokenizer()
    assert len(seen) == 1 and "flopgate-tokenizer-" in seen[0] and str(project.root) not in seen[0]


def test_the_filter_runs_from_the_bytes_it_hashed(tmp_path, monkeypatch):
    source = tmp_path / "judge.py"
    source.write_text("def keep(sample):\n    return sample['id'] == 'a'\n")
    monkeypatch.chdir(tmp_path)
    keep, digest = filter_function("judge:keep")
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
    source.write_text("def keep(sample):\n    return True\n")   # changed after it was read: not what runs
    assert keep({"id": "a"}) is True and keep({"id": "b"}) is False
    with pytest.raises(InputError, match="has no function nope"):
        filter_function("judge:nope")
    with pytest.raises(InputError, match="expected MODULE:FUNCTION"):
        filter_function("judge")
