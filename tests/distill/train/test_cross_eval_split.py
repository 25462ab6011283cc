"""The cross-tokenizer recipe holds out by document, as the logit recipe does: on prepared shards
whose documents span several packed rows, no aligned position evaluation scores belongs to a
document a trained row reads (the old row split scored text the student had trained on)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.data.prepare import prepare
from distill.data.training_data import IGNORE_INDEX, load_training_data
from distill.runtime.models import load_tokenizer
from distill.train.cross_trainer import open_cross_data
from distill_testkit import TRAIN_TEXT, text_documents, tiny_bpe

SEQ_LEN = 16
HELD = 12


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Shards of the student's tokens (a 120-entry SentencePiece-style BPE) with a byte-level
    teacher tokenization beside them, and a config naming them."""
    root = tmp_path_factory.mktemp("cross-split")
    docs = text_documents(TRAIN_TEXT)[:120]
    (root / "data.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    tiny_bpe(docs[::-1], 120, sentencepiece_style=True, folder=root / "student-tok")
    tiny_bpe(docs, 300, folder=root / "teacher-tok")
    result = prepare([root / "data.txt"], tokenizer_dir=root / "student-tok", out=root / "shards", workers=1,
                     teacher_tokenizer_dir=root / "teacher-tok")
    cfg = SimpleNamespace(manifest=result.manifest_path, manifest_sha256=None, seq_len=SEQ_LEN, seed=0,
                          data_files=[result.out / s["bin"]["name"] for s in result.manifest["shards"]])
    student, teacher = load_tokenizer(root / "student-tok"), load_tokenizer(root / "teacher-tok")
    return cfg, student, teacher, result.manifest


def documents_of_rows(starts: np.ndarray, rows) -> set[int]:
    """The documents rows ``rows`` read a token of (inputs and labels: L + 1 stream positions)."""
    found: set[int] = set()
    for r in rows:
        positions = np.arange(r * SEQ_LEN, r * SEQ_LEN + SEQ_LEN + 1)
        found |= set(np.searchsorted(starts, positions, side="right").tolist())
    return found


def leaked_rows(data, held: torch.Tensor, starts: np.ndarray) -> tuple[int, int]:
    """(held-out rows with a scored aligned position in a document some trained row reads, scored
    positions): what the evaluation would score of text the student trains on."""
    trained_docs = documents_of_rows(starts, data.order(0).tolist())
    _inputs, labels, _teacher, pairs = data.eval_rows(held)
    leaked = set()
    for b, i in pairs[:, :2].tolist():
        assert labels[b, i] != IGNORE_INDEX          # every scored pair has a label the CE reads
        position = int(held[b]) * SEQ_LEN + 1 + i       # the stream position of the label it predicts
        if int(np.searchsorted(starts, position, side="right")) in trained_docs:
            leaked.add(int(held[b]))
    return len(leaked), len(pairs)


def test_cross_tokenizer_evaluation_scores_no_document_a_trained_row_reads(prepared):
    cfg, student, teacher, manifest = prepared
    data = open_cross_data(cfg, student, teacher, manifest)
    shards = load_training_data(cfg.data_files, student, SEQ_LEN, 0, manifest=cfg.manifest, manifest_data=manifest)
    starts = shards.document_starts()              # from the shards' .idx files, read here independently
    lengths = np.diff(np.append(starts, shards.shards.total))
    assert (lengths > SEQ_LEN).sum() > 10            # documents span rows: a row split must cut them
    held = data.hold_out(HELD)
    assert not set(held.tolist()) & set(data.order(0).tolist())
    leaked, scored = leaked_rows(data, held, starts)
    assert scored > 0
    assert leaked == 0, f"{leaked} of {len(held)} held-out rows score documents that trained rows read"


def test_cross_tokenizer_split_is_the_logit_recipes_split(prepared):
    """The same held-out rows and eval_split record as the logit recipe's data over the same
    shards: one split rule, one record."""
    cfg, student, teacher, manifest = prepared
    data = open_cross_data(cfg, student, teacher, manifest)
    shards = load_training_data(cfg.data_files, student, SEQ_LEN, 0, manifest=cfg.manifest, manifest_data=manifest)
    held = data.hold_out(HELD)
    assert torch.equal(held, shards.hold_out(HELD))
    assert data.eval_split == shards.eval_split and data.eval_split["by"] == "document"
    assert 0 < data.eval_split["rows"] == len(held) <= HELD
    assert torch.equal(data.order(0), shards.order(0))


def test_only_aligned_positions_of_wholly_held_documents_are_scored(prepared):
    """Held rows keep the pairs the rows give, minus those whose label lies in a document that also
    reaches a trained row; the other outputs are the rows' own."""
    cfg, student, teacher, manifest = prepared
    data = open_cross_data(cfg, student, teacher, manifest)
    held = data.hold_out(HELD)
    inputs, _labels, teacher_inputs, pairs = data.rows(held)
    e_inputs, e_labels, e_teacher, e_pairs = data.eval_rows(held)
    assert torch.equal(inputs, e_inputs) and torch.equal(teacher_inputs, e_teacher)
    kept = {tuple(p) for p in e_pairs.tolist()}
    assert kept <= {tuple(p) for p in pairs.tolist()} and 0 < len(kept) < len(pairs)
    assert all(e_labels[b, i] != IGNORE_INDEX for b, i, _ in kept)
    dropped = [p for p in pairs.tolist() if tuple(p) not in kept]
    assert all(e_labels[b, i] == IGNORE_INDEX for b, i, _ in dropped)
