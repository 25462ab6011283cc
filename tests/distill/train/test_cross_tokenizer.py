"""Cross-tokenizer distillation: boundaries from offsets, aligned positions, the vocabulary map, the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.compute.estimate import teacher_row_tokens
from distill.data.cross_tokenized import TokenStream, encode_documents, token_boundaries
from distill.train.cross_tokenizer import (CrossRows, VocabularyMap, aligned_agreement, aligned_divergence,
                                           aligned_positions, cross_tokenizer_loss)
from distill_testkit import TRAIN_TEXT, text_documents, tiny_bpe


@pytest.fixture(scope="module")
def tokenizers():
    docs = text_documents(TRAIN_TEXT)
    return tiny_bpe(docs, 300), tiny_bpe(docs[::-1], 120, sentencepiece_style=True)


# -- boundaries ------------------------------------------------------------------------------------

def test_boundary_is_the_end_of_the_previous_token():
    assert token_boundaries([(0, 3), (3, 4), (4, 8)], "abcdefgh").tolist() == [0, 3, 4]
    assert token_boundaries([(0, 3), (3, 4)], "abcd", base=10).tolist() == [10, 13]


def test_a_left_out_space_belongs_to_the_next_token():
    # "ab cd" with offsets that trim the space off " cd": the boundary is before the space
    assert token_boundaries([(0, 2), (3, 5)], "ab cd").tolist() == [0, 2]


def test_a_piece_of_a_character_is_no_boundary():
    # "a\u00e9 b": the two bytes of \u00e9 are two tokens with the same offsets (1, 2)
    bounds = token_boundaries([(0, 1), (1, 2), (1, 2), (2, 4)], "a\u00e9 b")
    assert bounds.tolist() == [0, 1, 1, 2]  # the second byte repeats the first's boundary
    s, t = aligned_positions(bounds[1:], np.array([1, 2]))
    assert s.tolist() == [0, 2] and t.tolist() == [0, 1]


def test_text_the_tokenizer_dropped_is_no_boundary():
    # "ab\u00e9cd" where the tokenizer cannot spell \u00e9 and drops it: "cd" does not start where "ab" ends
    assert token_boundaries([(0, 2), (3, 5)], "ab\u00e9cd").tolist() == [0, 0]
    assert token_boundaries([(1, 3)], "\u00e9cd").tolist() == [-1]  # nor a first token after dropped text


def test_aligned_positions_only_where_both_start_a_token():
    student_next = np.array([3, 5, 6, 8])   # student positions 0..3 predict tokens at these characters
    teacher_next = np.array([5, 8])
    s, t = aligned_positions(student_next, teacher_next)
    assert s.tolist() == [1, 3] and t.tolist() == [0, 1]
    assert [len(x) for x in aligned_positions(np.array([1, 2]), np.array([3, 4]))] == [0, 0]  # no common span


def test_boundaries_match_the_decoded_text(tokenizers):
    """At every boundary, the text decoded from the tokens before it is the text before it."""
    text = "a small child finds many horses . every baker likes the red dog ."
    for tok in tokenizers:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        bounds = token_boundaries(enc["offset_mapping"], text)
        first = np.r_[True, bounds[1:] != bounds[:-1]]
        for k in np.flatnonzero(first)[1:]:
            assert tok.decode(enc["input_ids"][:k]).strip() == text[:bounds[k]].strip()


def test_documents_end_in_aligned_eos_tokens(tokenizers):
    teacher_tok, student_tok = tokenizers
    docs = ["a dog sees the cat .", "two farmers follow a bird ."]
    student = encode_documents(docs, student_tok, eos=student_tok.eos_token_id)
    teacher = encode_documents(docs, teacher_tok, eos=teacher_tok.eos_token_id)
    assert len(student) != len(teacher)  # the two tokenizations differ
    s, t = aligned_positions(student.boundaries[1:], teacher.boundaries[1:])
    s_eos = np.flatnonzero(student.ids == student_tok.eos_token_id) - 1   # positions predicting EOS
    t_eos = np.flatnonzero(teacher.ids == teacher_tok.eos_token_id) - 1
    pairs = set(zip(s.tolist(), t.tolist()))
    assert {(int(a), int(b)) for a, b in zip(s_eos, t_eos)} <= pairs
    # both predict the second document's first token after the first EOS
    assert (int(s_eos[0]) + 1, int(t_eos[0]) + 1) in pairs


def test_rows_pair_positions_that_predict_the_same_text(tokenizers):
    teacher_tok, student_tok = tokenizers
    docs = text_documents(TRAIN_TEXT)[:40]
    student = encode_documents(docs, student_tok, eos=student_tok.eos_token_id)
    teacher = encode_documents(docs, teacher_tok, eos=teacher_tok.eos_token_id)
    seq_len = 16
    rows = CrossRows(student, teacher, seq_len, teacher_row_tokens(seq_len, len(student), len(teacher)))
    inputs, labels, teacher_inputs, pairs = rows.rows([0, 3])
    assert inputs.shape == labels.shape == (2, seq_len) and teacher_inputs.shape == (2, rows.teacher_len)
    assert len(pairs) > 0
    for b, i, j in pairs.tolist():
        r = [0, 3][b]
        s_bound = student.boundaries[r * seq_len + i + 1]
        t_first = int(np.searchsorted(teacher.boundaries, student.boundaries[r * seq_len], side="left"))
        assert teacher.boundaries[t_first + j + 1] == s_bound
        assert teacher_inputs[b, j] == teacher.ids[t_first + j]


def test_a_teacher_span_longer_than_its_row_is_cut():
    student = TokenStream(np.arange(9), np.arange(9) * 10)
    teacher = TokenStream(np.arange(90), np.arange(90))  # ten teacher tokens per student token
    rows = CrossRows(student, teacher, seq_len=4, teacher_len=12)
    _, _, teacher_inputs, pairs = rows.rows([0])
    assert teacher_inputs.shape == (1, 12)
    assert pairs[:, 2].max() < 12 and pairs[:, 1].tolist() == [0]  # only the boundary within the cut row


def test_teacher_row_tokens_covers_the_mean_and_refuses_nonsense():
    assert teacher_row_tokens(4096, 1000, 1000) > 4096
    assert teacher_row_tokens(100, 1000, 500) >= 50
    with pytest.raises(ValueError):
        teacher_row_tokens(100, 0, 5)


# -- vocabulary map, loss, agreement ---------------------------------------------------------------

def test_vocabulary_map_matches_the_same_text_across_spellings(tokenizers):
    teacher_tok, student_tok = tokenizers
    vmap = VocabularyMap.from_tokenizers(student_tok, teacher_tok)
    student_to_teacher = vmap.student_to_teacher
    teacher_vocab = teacher_tok.get_vocab()
    words = [(i, teacher_vocab["\u0120" + text[1:]]) for text, i in student_tok.get_vocab().items()
             if text.startswith("\u2581") and len(text) > 2 and "\u0120" + text[1:] in teacher_vocab]
    assert len(words) >= 5   # SentencePiece "\u2581dog" is byte-level "\u0120dog": both " dog"
    assert all(student_to_teacher[s] == t for s, t in words)
    assert student_to_teacher[student_tok.eos_token_id] == teacher_tok.eos_token_id
    assert len(vmap.student_ids) == len(set(vmap.student_ids.tolist()))
    assert len(vmap.teacher_ids) == len(set(vmap.teacher_ids.tolist()))


def test_divergence_is_zero_only_for_the_same_distribution():
    # student ids 0..3, teacher ids 0..5; student i <-> teacher i + 2
    vmap = VocabularyMap(torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 4, 5]), 4, 6)
    z_s = torch.randn(5, 4, dtype=torch.float64)
    z_t = torch.full((5, 6), -1e9, dtype=torch.float64)
    z_t[:, 2:] = z_s
    assert aligned_divergence(z_s, z_t, vmap).abs().max() < 1e-12
    shuffled = z_t.clone()
    shuffled[:, 2:] = z_s[:, [1, 0, 3, 2]]
    assert (aligned_divergence(z_s, shuffled, vmap) > 1e-3).all()  # same sorted values: ULD alone would be 0
    flatter = z_t.clone()
    flatter[:, 2:] = z_s / 3
    assert (aligned_divergence(z_s, flatter, vmap) > 1e-3).all()


def test_loss_sums_aligned_positions_and_divides_by_labelled_tokens():
    torch.manual_seed(0)
    vmap = VocabularyMap(torch.arange(6), torch.arange(6), 6, 8)
    hs, ht = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True), torch.randn(2, 7, 3, dtype=torch.float64)
    head_s, head_t = torch.randn(6, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    labels = torch.randint(0, 6, (2, 5))
    pairs = torch.tensor([[0, 1, 2], [1, 4, 6]])
    got = cross_tokenizer_loss(hs, head_s, labels, ht, head_t, pairs, vmap, 10, temperature=2.0, hard_label_weight=0.25,
                               chunk=3)  # several chunks: the divergence in one, the hard labels in four
    z_s = torch.stack([hs[0, 1] @ head_s.T, hs[1, 4] @ head_s.T])
    z_t = torch.stack([ht[0, 2] @ head_t.T, ht[1, 6] @ head_t.T])
    ce = torch.nn.functional.cross_entropy((hs @ head_s.T).reshape(-1, 6), labels.reshape(-1), reduction="sum")
    want = (0.75 * 4 * aligned_divergence(z_s, z_t, vmap, 2.0).sum() + 0.25 * ce) / 10
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    got.backward()
    assert hs.grad is not None and hs.grad.abs().sum() > 0
    chunked = hs.grad.clone()
    hs.grad = None
    cross_tokenizer_loss(hs, head_s, labels, ht, head_t, pairs, vmap, 10, temperature=2.0,
                         hard_label_weight=0.25).backward()   # one chunk: the same gradient
    torch.testing.assert_close(chunked, hs.grad)


def test_agreement_reads_top_tokens_through_the_map():
    vmap = VocabularyMap(torch.tensor([0, 1]), torch.tensor([1, 0]), 3, 2)
    z_s = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    z_t = torch.tensor([[0, 5.0], [0, 5.0], [5.0, 0]])
    assert aligned_agreement(z_s, z_t, vmap).tolist() == [1.0, 0.0, 0.0]  # id 2 is unmatched: no agreement
