"""``flopgate data prepare --teacher-tokenizer``: the student's shards plus the teacher's tokens
of the same text and both tokenizations' character boundaries, signed through the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.errors import InputError
from audit.policy.facts import read_manifest_facts
from distill.data.cross_tokenized import FILES, encode_documents, read_teacher_tokenization
from distill.data.prepare import prepare
from distill.data.shards import DTYPES
from distill.train.cross_tokenizer import CrossRows, teacher_len_for
from distill_testkit import CHAT, TRAIN_TEXT, text_documents, tiny_bpe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    docs = text_documents(TRAIN_TEXT)
    text = root / "data.txt"
    text.write_text("\n\n".join(docs[:60]) + "\n", encoding="utf-8")
    student = tiny_bpe(docs[::-1], 120, sentencepiece_style=True, folder=root / "student-tok")
    teacher = tiny_bpe(docs, 300, folder=root / "teacher-tok")
    return root, text, student, teacher


def _prepared(folders, name="out"):
    root, text, _, _ = folders
    return prepare([text], tokenizer_dir=root / "student-tok", out=root / name, workers=1,
                   teacher_tokenizer_dir=root / "teacher-tok")


def _stream(out, manifest):
    dtype = DTYPES[manifest["dtype"]]
    return np.concatenate([np.fromfile(out / s["bin"]["name"], dtype=dtype) for s in manifest["shards"]])


def test_both_tokenizations_are_stored_and_read_back_aligned(folders):
    _, text, student_tok, teacher_tok = folders
    result = _prepared(folders)
    manifest = result.manifest
    docs = text_documents(text)
    teacher = encode_documents(docs, teacher_tok, eos=teacher_tok.eos_token_id)
    cross = manifest["teacher_tokenization"]
    assert cross["total_tokens"] == len(teacher) != manifest["total_tokens"]
    student_stream, teacher_stream = read_teacher_tokenization(manifest, result.out, _stream(result.out, manifest),
                                                               teacher_tokenizer=teacher_tok)
    assert np.array_equal(teacher_stream.ids, teacher.ids)
    assert np.array_equal(student_stream.boundaries,
                          encode_documents(docs, student_tok, eos=student_tok.eos_token_id).boundaries)
    rows = CrossRows(student_stream, teacher_stream, 16, teacher_len_for(student_stream, teacher_stream, 16))
    assert len(rows.rows([0, 1])[3]) > 0
    # the audit reads the teacher's count from the (signed) manifest
    facts = read_manifest_facts(str(result.manifest_path), source="plan.yaml")
    assert (facts.manifest_tokens, facts.manifest_teacher_tokens) == (manifest["total_tokens"], len(teacher))


def test_a_changed_file_is_refused_when_read(folders):
    result = _prepared(folders, "tampered")
    path = result.out / FILES["teacher_ids"]
    raw = bytearray(path.read_bytes())
    raw[0] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="teacher_tokenization.files.teacher_ids.sha256"):
        read_teacher_tokenization(result.manifest, result.out, _stream(result.out, result.manifest))


def test_another_teacher_tokenizer_is_refused_when_read(folders):
    _, _, student_tok, _ = folders
    result = _prepared(folders, "other")
    with pytest.raises(InputError, match="another teacher tokenizer"):
        read_teacher_tokenization(result.manifest, result.out, _stream(result.out, result.manifest),
                                  teacher_tokenizer=student_tok)


def test_a_manifest_without_the_teachers_tokens_is_refused_when_read(folders):
    result = _prepared(folders, "plain")
    manifest = {k: v for k, v in json.loads(result.manifest_path.read_text()).items() if k != "teacher_tokenization"}
    with pytest.raises(InputError, match="--teacher-tokenizer"):
        read_teacher_tokenization(manifest, result.out, _stream(result.out, manifest))


def test_chat_records_are_refused(folders):
    root = folders[0]
    with pytest.raises(InputError, match="plain text"):
        prepare([CHAT], tokenizer_dir=root / "student-tok", out=root / "chat", workers=1,
                teacher_tokenizer_dir=root / "teacher-tok", chat_template=None)
    assert not (root / "chat").exists()


def test_the_command_prepares_both_tokenizations(folders, capsys):
    from audit.cli.main import main

    root, text, _, _ = folders
    out = root / "cli"
    assert main(["data", "prepare", str(text), "--tokenizer", str(root / "student-tok"), "--teacher-tokenizer",
                 str(root / "teacher-tok"), "--out", str(out), "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    count = manifest["teacher_tokenization"]["total_tokens"]
    assert f"teacher tokenization: {count:,} tokens" in capsys.readouterr().out
