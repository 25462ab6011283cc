"""Documents in the packed stream: the held-out split is by document (no held-out document
touches a trained row; the old row split leaks), evaluation scores only wholly held documents,
and the document masks' layout and kept pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.errors import InputError
from distill.data.documents import DocumentIndex
from distill.data.training_data import IGNORE_INDEX, load_training_data
from distill.runtime.models import load_tokenizer
from distill_testkit import TOKENIZER_DIR, TRAIN_TEXT

SEQ_LEN = 16


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER_DIR)


def fresh(tokenizer):
    return load_training_data([TRAIN_TEXT], tokenizer, SEQ_LEN, seed=0)


def rows_of_documents(data, rows) -> dict[int, set]:
    """Per row id, the documents it reads a token of (L + 1 tokens: inputs and labels)."""
    starts = data.document_starts()
    rows = rows.tolist() if isinstance(rows, torch.Tensor) else rows
    return {int(r): set(np.searchsorted(starts, np.arange(r * SEQ_LEN, r * SEQ_LEN + SEQ_LEN + 1), side="right")
                        .tolist()) for r in rows}


def test_the_row_split_leaks_documents_into_training(tokenizer):
    """The split used before: held-out rows are random rows, and documents span rows."""
    data = fresh(tokenizer)
    held = data.hold_out(20, by_document=False)
    trained = sorted(set(range(data.total_rows())) - set(held.tolist()))
    held_docs = set().union(*rows_of_documents(data, held).values())
    trained_docs = set().union(*rows_of_documents(data, trained).values())
    assert held_docs & trained_docs                      # a held-out document is trained on
    assert data.eval_split["by"] == "row"


def test_held_out_documents_never_appear_in_trained_rows(tokenizer):
    data = fresh(tokenizer)
    held = data.hold_out(20)                             # the default: by document
    assert 0 < len(held) <= 20 and data.eval_split["by"] == "document"
    trained = data.order(0)
    assert not set(trained.tolist()) & set(held.tolist())
    assert sorted(set(trained.tolist()) | set(held.tolist())) == list(range(data.total_rows()))
    trained_docs = set().union(*rows_of_documents(data, trained.tolist()).values())
    # every label evaluation scores belongs to a document no trained row reads
    inputs, labels = data.eval_rows(held)
    starts = data.document_starts()
    scored_docs = set()
    for r, row in zip(held.tolist(), labels):
        for j in torch.nonzero(row != IGNORE_INDEX).flatten().tolist():
            scored_docs.add(int(np.searchsorted(starts, r * SEQ_LEN + 1 + j, side="right")))
    assert scored_docs and not scored_docs & trained_docs
    assert len(scored_docs) == data.eval_split["documents"]
    assert (labels != IGNORE_INDEX).sum() > labels.numel() // 4   # most of the held rows are scored
    # deterministic from the seed; another seed holds out other rows
    assert torch.equal(fresh(tokenizer).hold_out(20), held)
    other = load_training_data([TRAIN_TEXT], tokenizer, SEQ_LEN, seed=1)
    assert not torch.equal(other.hold_out(20), held)


def test_the_split_stays_within_a_teacher_cache_limit(tokenizer):
    data = fresh(tokenizer)
    data.limit(60)
    held = data.hold_out(10)
    assert held.max() < 60 and len(data) + len(held) == 60


def test_a_document_longer_than_the_held_rows_cannot_be_held_out():
    index = DocumentIndex.build([0, 100], tokens=161, seq_len=16, rows=10)
    with pytest.raises(InputError, match="eval_sequences"):
        index.split(torch.arange(10), 3, seed=0)


def test_row_layout_restarts_positions_and_counts_pieces():
    index = DocumentIndex.build([0, 5, 20, 21, 40], tokens=49, seq_len=16, rows=3)
    positions, segments = index.row_layout(torch.tensor([0, 1]))
    assert positions[0].tolist() == [0, 1, 2, 3, 4] + list(range(11))
    assert segments[0].tolist() == [0] * 5 + [1] * 11
    assert positions[1].tolist() == [0, 1, 2, 3, 0] + list(range(11))  # 16..19, 20, 21..31
    assert segments[1].tolist() == [0] * 4 + [1] + [2] * 11
    # kept pairs equal the pairs of the block-diagonal causal masks built from the layout
    from distill.train.sequence import packed_attention_mask

    ids = torch.arange(3)
    kept = int(packed_attention_mask(index.row_layout(ids)[1]).sum())
    assert index.kept_pairs() == kept == index.kept_pairs(ids)
    assert index.kept_pairs(torch.tensor([1])) == 4 * 5 // 2 + 1 + 11 * 12 // 2


def test_prepared_shards_record_the_same_documents_as_raw_files(tokenizer, tmp_path):
    """Shards know their documents from their .idx files: the same starts, split and layout as
    the raw-file path, which records them while tokenizing."""
    from distill.data.prepare import prepare
    from distill.data.shards import MANIFEST_NAME
    from distill.data.training_data import read_manifest

    out = tmp_path / "prepared"
    prepare([TRAIN_TEXT], tokenizer_dir=TOKENIZER_DIR, out=out, workers=1, shard_tokens=8000)
    manifest, bins = read_manifest(out / MANIFEST_NAME)
    shards = load_training_data(bins, tokenizer, SEQ_LEN, seed=0, manifest=out / MANIFEST_NAME)
    raw = fresh(tokenizer)
    assert np.array_equal(shards.document_starts(), raw.document_starts())
    assert torch.equal(shards.hold_out(20), raw.hold_out(20)) and shards.eval_split == raw.eval_split
    shards.mask_documents = raw.mask_documents = True
    for got, want in zip(shards.batch(0, 6), raw.batch(0, 6)):
        assert torch.equal(got, want)
