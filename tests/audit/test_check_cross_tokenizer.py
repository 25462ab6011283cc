"""``flopgate check`` on a plan whose student has its own tokenizer: the folder is signed (role
student_tokenizer) and the teacher's forward is counted on the teacher's tokens, read from the
manifest's second count; without that count the teacher's forward is a missing fact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from audit.attest.keys import generate_key, load_trusted_keys
from audit.attest.verify import verify_envelope_file
from audit.cli.main import main
from audit.compute.estimate import teacher_row_tokens

ROOT = Path(__file__).resolve().parents[2]
SHAPE = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 304, "max_position_embeddings": 256}


@pytest.fixture()
def key(tmp_path):
    _, pub = generate_key(tmp_path / "keys" / "auditor")
    return tmp_path / "keys" / "auditor", pub


def write_project(root: Path, manifest: dict) -> Path:
    shutil.copytree(ROOT / "tests" / "distill" / "data" / "tokenizer", root / "student-tok")
    (root / "teacher.json").write_text(json.dumps(SHAPE))
    (root / "student.json").write_text(json.dumps({**SHAPE, "hidden_size": 32, "num_hidden_layers": 1}))
    (root / "manifest.json").write_text(json.dumps(manifest))
    plan = root / "plan.yaml"
    plan.write_text(
        "plan_version: 1\nname: cross\norganization: {name: O, jurisdictions: [EU]}\n"
        "teacher: {model: acme/teacher, access: weights, config: ./teacher.json, license: apache-2.0}\n"
        "student: {name: S, config: ./student.json, tokenizer: ./student-tok}\n"
        "data: {tokens: 1000, seq_len: 32, manifest: ./manifest.json}\n"
        "method: {kind: logits}\n"
        "use: {purpose: x, scope: narrow, distribution: internal}\nschedule: {start: 2026-12-01}\n")
    return plan


def signed(out: Path, key) -> dict:
    return verify_envelope_file(out / "audit.intoto.json", load_trusted_keys(pubkey=key[1])).predicate


def test_check_signs_the_student_tokenizer_and_counts_the_teachers_tokens(tmp_path, key, capsys):
    from audit.weights import folder_digest

    plan = write_project(tmp_path, {"total_tokens": 1000, "teacher_tokenization": {"total_tokens": 1500}})
    out = tmp_path / "out"
    assert main(["check", str(plan), "--out", str(out), "--key", str(key[0])]) in (0, 3), capsys.readouterr().err
    predicate = signed(out, key)
    role = [i for i in predicate["inputs"] if i["role"] == "student_tokenizer"]
    assert len(role) == 1 and role[0]["sha256"] == folder_digest(tmp_path / "student-tok").root_sha256
    compute = predicate["compute"]
    ratio = teacher_row_tokens(32, 1000, 1500) / 32
    assert compute["teacher_tokens_per_token"] == pytest.approx(ratio)
    teacher = next(c for c in compute["components"] if c["id"] == "teacher_forward")
    assert teacher["flops"] == pytest.approx(compute["teacher"]["forward_flops_per_token"] * 1000 * ratio)


def test_without_the_teachers_count_the_teacher_forward_is_missing(tmp_path, key):
    plan = write_project(tmp_path, {"total_tokens": 1000})
    out = tmp_path / "out"
    main(["check", str(plan), "--out", str(out), "--key", str(key[0])])
    compute = signed(out, key)["compute"]
    assert next(c for c in compute["components"] if c["id"] == "teacher_forward")["flops"] is None
    assert any("teacher's token count" in m for m in compute["missing_facts"])
