"""``flopgate distill`` on a cross-tokenizer plan, end to end on the CPU: the gate verifies the
student's tokenizer folder, the trainer reads the teacher's tokenization beside the shards, and
every step is charged at the audited rate (student training + teacher forward x teacher tokens
per student token)."""

from __future__ import annotations

import json

import pytest

from audit.attest import PREDICATE_RUN_RECORD
from audit.attest.verify import verify_envelope_file
from audit.cli.main import main
from audit.compute.estimate import teacher_row_tokens
from distill.data.prepare import prepare
from distill_testkit import STUDENT_SHAPE, text_documents, tiny_bpe, write_config
from gate_fixtures import (PACK_ID, PACK_VERSION, PLAN_TOKENS, SEQ_LEN, STUDENT_TRAIN_FPT, TEACHER_FORWARD_FPT,
                           compute_block, make_audit)

ROLES = ("plan", "student_config", "teacher_config", "dataset_manifest", "policy_pack", "teacher_weights",
         "student_tokenizer")


@pytest.fixture(autouse=True)
def installed(monkeypatch):
    monkeypatch.setattr("distill.gate.gated_run._installed_pack_versions", lambda: {PACK_ID: PACK_VERSION})


@pytest.mark.slow
def test_a_cross_tokenizer_plan_trains_behind_the_gate_at_the_audited_rate(project, signer, capsys):
    root = project.root
    student_tok = tiny_bpe(text_documents(project.data), 90, sentencepiece_style=True,
                           folder=root / "student-tokenizer")
    write_config(project.student_config, {**STUDENT_SHAPE, "vocab_size": len(student_tok)})
    manifest = prepare([project.data], tokenizer_dir=root / "student-tokenizer", out=root / "shards", workers=1,
                       replace=True, teacher_tokenizer_dir=root / "teacher").manifest
    project.plan.write_text(project.plan.read_text().replace("init: scratch}",
                                                             "init: scratch, tokenizer: ./student-tokenizer}"))
    ratio = teacher_row_tokens(SEQ_LEN, manifest["total_tokens"],
                               manifest["teacher_tokenization"]["total_tokens"]) / SEQ_LEN
    compute = compute_block()
    compute["teacher_tokens_per_token"] = ratio
    compute["components"][1]["flops"] = TEACHER_FORWARD_FPT * ratio * PLAN_TOKENS
    compute["total_flops"] = (STUDENT_TRAIN_FPT + TEACHER_FORWARD_FPT * ratio) * PLAN_TOKENS
    envelope = make_audit(project, signer, roles=ROLES, compute=compute)

    code = main(["distill", str(project.plan), "--attestation", str(envelope), "--pubkey", str(signer.public_path),
                 "--key", str(signer.private_path), "--out", str(root / "out"), "--allow-cpu", "--steps", "3",
                 "--micro-batch", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = verify_envelope_file(root / "out" / "run-record.intoto.json", [signer.trusted],
                                  predicate_types=(PREDICATE_RUN_RECORD,)).predicate
    assert record["steps"] == 3 and record["tokens"] == 3 * 2 * SEQ_LEN   # the student's tokens
    rate = STUDENT_TRAIN_FPT + TEACHER_FORWARD_FPT * ratio   # per student token
    assert record["compute"]["flops"] == pytest.approx(3 * 2 * SEQ_LEN * rate)
    saved = json.loads((root / "out" / "checkpoints" / "step-00000003" / "tokenizer.json").read_text())
    assert saved["model"]["type"] == "BPE"   # the student is saved with its own tokenizer

    # the student's tokenizer folder edited after the audit: refused before anything runs
    (root / "student-tokenizer" / "tokenizer_config.json").write_text("{}")
    code = main(["distill", str(project.plan), "--attestation", str(envelope), "--pubkey", str(signer.public_path),
                 "--out", str(root / "out2"), "--allow-cpu", "--steps", "1"])
    assert code == 6 and "student_tokenizer" in capsys.readouterr().err
